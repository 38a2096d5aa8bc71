"""The `vae` stage (stage 0 of the phantom recipe): train the model config's KL-f16 VAE, export it, cache latents.

UniX never trains its VAE (the released kl-f16 is frozen); a phantom model needs one of its own size. This stage
builds `LatentVAE(cfg.vae)` (the CompVis architecture of `unix_cxr.model.vae`, at the width the model config
gives) and trains it on `vae.images` at `vae.size` px:

    loss = l1_weight * |x - x'| + l2_weight * (x - x')^2 + edge_weight * |grad (x - x')|    (means over pixels)
         + kl_weight * KL(q(z|x) || N(0, I))                  (summed over latent elements, mean over images)

with x' decoded from a posterior sample, in fp32 or, with `vae.precision` bf16-mixed (or auto on a device with
hardware bf16), under bf16 autocast with fp32 weights (for the phantom VAE 1.7x the images per second of fp32 on
an AMX CPU, benchmarks/bench_vae.py); the passes after training (below) run in the same precision. It is
deterministic and exactly resumable like the UniX stages: the images of step s are a function of (seed, s) (one
seeded permutation per epoch), so is the posterior noise, and the loop (`train.small_loop.fit`) keeps model,
optimizer and scheduler in the trainer's DCP checkpoints.

At the end, with `vae.normalize`, the per-channel mean and standard deviation of the posterior means over the
first `vae.statistics_images` training images (2,048: 32,768 latent positions per channel; the images are in
random order) are folded into `quant_conv` and `post_quant_conv`: the exported VAE decodes every image as before,
and the model config's fixed latent normalisation `scale * (z - shift)` now gives latents of mean 0 and standard
deviation 1 per channel, as flow matching expects. Then:

    OUTPUT/<stage>/
        metrics.jsonl          one line per step: step, loss, l1, l2, edge, kl, lr, grad_norm, items_per_s
        checkpoints/step-N/    as the UniX stages
        final/                 vae.safetensors (ldm keys) + config.yaml (latent-diffusion): what `load_vae` reads
        latents/<name>/        one latent cache per `vae.cache` entry (`unix_cxr.data.latent_cache`)
        summary.json           reconstruction error on those images, latent statistics, seconds

Those figures read a fixed subset because each pass over the training images costs an encode (and a decode for
the errors) of every one: with 12,000 phantoms the five passes took 3 minutes of the stage, the latent cache (which
encodes every caption's image once) 1.2 more.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import UniXConfig, ldm_vae_yaml, load_config
from ..utils.atomic import write_atomic
from .parallel import Dist
from .recipe import StageConfig, TrainRecipe
from .small_loop import PreparationResult, adamw, fit

log = logging.getLogger(__name__)


def load_pixels(images: str, image_root: str | None, size: int, cfg: UniXConfig) -> torch.Tensor:
    """(N, size, size) uint8: every image of a folder or caption JSONL, squared and resized as `vae_transform`."""
    from ..data.latent_cache import read_items
    from ..data.transforms import vae_image

    items = [it for it in read_items(images, image_root) if it.error is None]
    if not items:
        raise ValueError(f"vae.images {images}: no images")
    arrays = [np.asarray(vae_image(it.image, size, cfg)) for it in items]
    return torch.from_numpy(np.stack(arrays))


def _to_model(grey: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (B, S, S) -> float (B, C, S, S) in [-1, 1], as `vae_transform`."""
    x = (grey.to(torch.float32) / 255.0 - 0.5) / 0.5
    return x[:, None].repeat(1, channels, 1, 1)


def batch_indices(step: int, batch: int, n: int, seed: int) -> np.ndarray:
    """The image indices of optimizer step `step` (0-based): positions [step * batch, (step + 1) * batch) of the
    concatenated epoch permutations (epoch e: `default_rng([seed, e]).permutation(n)`)."""
    positions = np.arange(step * batch, (step + 1) * batch)
    out = np.empty(batch, dtype=np.int64)
    for epoch in np.unique(positions // n):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        mask = positions // n == epoch
        out[mask] = perm[positions[mask] % n]
    return out


def bf16_autocast(precision: str, device: torch.device) -> bool:
    """Whether a stage of `precision` (fp32 | bf16-mixed | auto) trains under bf16 autocast on `device`: auto is
    bf16-mixed where the device does bf16 in hardware (the dtype policy's test) and fp32 elsewhere."""
    from ..utils.dtype_policy import native_bf16

    return precision == "bf16-mixed" or (precision == "auto" and native_bf16(device))


def stage_precision(bf16: bool, d: Dist):
    """The stage's precision (bf16 autocast, or none), for its training steps and for its passes over the images
    after training (statistics, reconstruction errors, latent caches): under bf16 autocast those encode 2.2x the
    images per second of fp32 on an AVX512-BF16 EPYC (`python benchmarks/bench_vae.py`), and the latents are the
    ones the trained VAE gives."""
    return torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16)


def vae_losses(vae, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1, L2, edge (L1 of the horizontal and vertical pixel differences; pixel means) and KL (sum over latent
    elements, mean over images) of a batch in [-1, 1]."""
    from ..model.vae import LOGVAR_RANGE

    mean, logvar = vae.moments(x).chunk(2, dim=1)
    logvar = logvar.clamp(*LOGVAR_RANGE)
    z = mean + torch.exp(0.5 * logvar) * eps
    ae = vae.autoencoder
    rec = ae.decoder(ae.post_quant_conv(z))
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
    err = rec - x
    edge = (err[..., 1:, :] - err[..., :-1, :]).abs().mean() + (err[..., :, 1:] - err[..., :, :-1]).abs().mean()
    return {"l1": err.abs().mean(), "l2": err.pow(2).mean(), "edge": edge, "kl": kl}


@torch.no_grad()
def latent_statistics(vae, pixels: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of the raw posterior means over `pixels` (uint8 (N, S, S))."""
    means = []
    for start in range(0, len(pixels), batch):
        x = _to_model(pixels[start:start + batch], vae.cfg.in_channels)
        means.append(vae.moments(x).chunk(2, dim=1)[0].double())
    z = torch.cat(means).transpose(0, 1).flatten(1)  # (Z, N * h * w)
    return z.mean(1), z.std(1).clamp_min(1e-6)


@torch.no_grad()
def fold_normalization(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Re-parametrise the latent space in place so that `vae.scale_factor * (z' - vae.shift_factor)` equals
    `(z - mean) / std` per channel; decoding is unchanged (z = (z' - b) / a inside post_quant_conv)."""
    ae = vae.autoencoder
    zc = vae.cfg.z_channels
    a = 1.0 / (std * vae.scale_factor)  # z' = a z + b
    b = vae.shift_factor - mean * a
    qw, qb = ae.quant_conv.weight.double(), ae.quant_conv.bias.double()
    qw[:zc] *= a[:, None, None, None]
    qb[:zc] = qb[:zc] * a + b
    qb[zc:] += 2.0 * torch.log(a)  # the posterior's std scales with a
    pw, pb = ae.post_quant_conv.weight.double(), ae.post_quant_conv.bias.double()
    pb = pb - (pw[:, :, 0, 0] * (b / a)[None]).sum(1)
    pw = pw / a[None, :, None, None]
    for param, value in ((ae.quant_conv.weight, qw), (ae.quant_conv.bias, qb), (ae.post_quant_conv.weight, pw),
                         (ae.post_quant_conv.bias, pb)):
        param.copy_(value.to(param.dtype))


def export_vae(vae, folder: Path) -> Path:
    """`vae.safetensors` (ldm layout) + `config.yaml` (latent-diffusion) in `folder`, replaced whole."""
    import yaml

    from ..checkpoint.vae import save_vae

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_vae(vae, tmp / "vae.safetensors")
    write_atomic(tmp / "config.yaml", yaml.safe_dump(ldm_vae_yaml(vae.cfg), sort_keys=False))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def train_vae(recipe: TrainRecipe, name: str, stage: StageConfig, out: Path, d: Dist, *, resume: bool,
              max_steps: int | None, lr_schedule: Callable[[int], float], should_stop: Callable[[], bool],
              progress: bool = True) -> PreparationResult:
    """Run the stage into `out` (see the module doc). `lr_schedule(step)` multiplies `optim.lr` (the trainer's
    warm-up / cosine rule); `should_stop()` is asked after every step (SIGTERM / SIGINT: checkpoint and return)."""
    from ..model.vae import LatentVAE

    began = time.perf_counter()
    v = stage.vae
    cfg = load_config(recipe.model, recipe.model_overrides)
    target = min(stage.steps, max_steps) if max_steps else stage.steps
    pixels = load_pixels(v.images, v.image_root, v.size, cfg)
    torch.manual_seed(recipe.seed)
    vae = LatentVAE(cfg.vae).to(d.device).train()
    optimizer, scheduler = adamw(vae, stage, lr_schedule)
    bf16 = bf16_autocast(v.precision, d.device)
    log.info("stage %s: a %s-parameter VAE on %d images of %d px, %d steps of %d, %s", name,
             f"{sum(p.numel() for p in vae.parameters()):,}", len(pixels), v.size, target, stage.global_batch_size,
             "fp32 weights with bf16 autocast" if bf16 else "fp32")
    side = v.size // cfg.vae.downsample

    def step_loss(step: int):
        idx = batch_indices(step, stage.global_batch_size, len(pixels), recipe.seed)
        x = _to_model(pixels[idx], cfg.vae.in_channels).to(d.device)
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        eps = torch.randn((len(idx), cfg.vae.z_channels, side, side), generator=gen).to(d.device)
        with stage_precision(bf16, d):
            parts = vae_losses(vae, x, eps)
        parts = {k: t.float() for k, t in parts.items()}
        loss = (v.l1_weight * parts["l1"] + v.l2_weight * parts["l2"] + v.edge_weight * parts["edge"]
                + v.kl_weight * parts["kl"])
        return loss, {k: float(t.detach()) for k, t in parts.items()}, len(idx)

    steps, interrupted = fit(name, vae, optimizer, scheduler, step_loss, stage, out, d, target=target,
                             resume=resume, should_stop=should_stop, progress=progress, shown=("l1", "kl"))
    if interrupted:
        return PreparationResult(steps, None, interrupted=True)
    vae.eval()
    sample = pixels[:v.statistics_images]
    summary = {"steps": steps, "images": len(pixels), "statistics_images": len(sample), "size": v.size}
    final = out / "final"
    with stage_precision(bf16, d):
        summary["l1_before_folding"] = _reconstruction_l1(vae, sample)
        if v.normalize:
            mean, std = latent_statistics(vae, sample)
    if v.normalize:  # in float64, outside autocast (which would round the folded weights)
        fold_normalization(vae, mean, std)
        summary["raw_latent_mean"], summary["raw_latent_std"] = mean.tolist(), std.tolist()
    with stage_precision(bf16, d):
        summary["l1"] = _reconstruction_l1(vae, sample)  # in [-1, 1] units; x 127.5 for grey levels
        if d.is_main:
            export_vae(vae, final)
            for cname, c in v.cache.items():
                _cache(vae, c, out / "latents" / cname, v.size, progress)
            after_mean, after_std = _normalised_statistics(vae, sample)
            summary["normalised_latent_mean"], summary["normalised_latent_std"] = after_mean, after_std
            summary["seconds"] = round(time.perf_counter() - began, 1)
            write_atomic(out / "summary.json", json.dumps(summary, indent=1))
            log.info("stage %s: reconstruction L1 %.4f (%.1f grey levels); normalised latents mean %.3f, std %.3f",
                     name, summary["l1"], 127.5 * summary["l1"], after_mean, after_std)
    d.barrier()
    return PreparationResult(steps, final)


@torch.no_grad()
def _reconstruction_l1(vae, pixels: torch.Tensor, batch: int = 64) -> float:
    total = 0.0
    for start in range(0, len(pixels), batch):
        x = _to_model(pixels[start:start + batch], vae.cfg.in_channels)
        total += float((vae(x) - x).abs().mean()) * len(x)
    return total / len(pixels)


@torch.no_grad()
def _normalised_statistics(vae, pixels: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    z = torch.cat([vae.encode(_to_model(pixels[s:s + batch], vae.cfg.in_channels))
                   for s in range(0, len(pixels), batch)])
    return float(z.mean()), float(z.std())


def _cache(vae, c, folder: Path, size: int, progress: bool) -> None:
    from ..data.latent_cache import cache_latents, read_items

    summary = cache_latents(read_items(c.input, c.image_root), vae, folder, size=size, store=c.store,
                            overwrite=True, progress=progress, batch_size=64)
    if summary.failed:
        raise ValueError(f"latent cache {folder}: {len(summary.failed)} image(s) failed, e.g. {summary.failed[0]}")
    log.info("latent cache %s: %d latents", folder, summary.cached)


__all__ = ["batch_indices", "export_vae", "fold_normalization", "latent_statistics",
           "load_pixels", "train_vae", "vae_losses"]
