"""The UniX image autoencoder: CompVis latent-diffusion AutoencoderKL (kl-f16) built on diffusers' `AutoencoderKL`.

* `build_autoencoder(cfg)` builds a diffusers `AutoencoderKL` whose module tree is the CompVis one exactly:
  attention blocks at the levels whose resolution (cfg.resolution / 2**level) is in `attn_resolutions`, single-head
  attention in the middle blocks, zero-pad (0, 1, 0, 1) + stride-2 conv downsampling, nearest x2 + conv upsampling,
  GroupNorm(32, eps 1e-6), swish. Weights map 1:1 through `unix_cxr.checkpoint.vae_keys`.
* `LatentVAE` wraps it with UniX's latent normalisation: latent = scale_factor * (z - shift_factor);
  decode undoes it. Images are (B, C, H, W) in [-1, 1].
* `load_vae(path)` reads safetensors only (ldm or diffusers layout, auto-detected) and loads strictly;
  `convert_pickled_vae` turns the authors' pickled `kl-f16d16.ckpt` into an ldm-layout safetensors file once,
  only when the caller states that the pickle is trusted. `save_vae` writes either layout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from unix_cxr.checkpoint.safetensors_io import (
    PICKLE_SUFFIXES,
    refuse_pickle,
    state_dict_mismatch,
    summarise_keys,
    write_safetensors_atomic,
)
from unix_cxr.checkpoint.vae_keys import (
    convert_layout,
    count_levels,
    detect_layout,
    diffusers_to_ldm,
    ldm_to_diffusers,
)
from unix_cxr.config import VAEConfig, vae_config_from_ldm_yaml

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

PREFERRED_FILES = ("vae.safetensors", "kl-f16d16.safetensors")
AUTOENCODER_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
CONFIG_METADATA_KEY = "unix_cxr.vae_config"
LOGVAR_RANGE = (-30.0, 20.0)  # ldm DiagonalGaussianDistribution clamps the log-variance to this range


# ---- building -----------------------------------------------------------------------------------------------
def attention_levels(cfg: VAEConfig) -> list[bool]:
    """Per level (0 = full resolution): does the CompVis model put attention blocks there?"""
    return [cfg.resolution // 2**level in cfg.attn_resolutions for level in range(len(cfg.ch_mult))]


def build_autoencoder(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised diffusers AutoencoderKL with the CompVis module layout of `cfg`."""
    cfg.validate()
    if cfg.embed_dim != cfg.z_channels:
        raise ValueError(f"vae embed_dim {cfg.embed_dim} != z_channels {cfg.z_channels}: diffusers' AutoencoderKL "
                         "uses one latent width for quant_conv and the decoder")
    if cfg.ch_mult[0] != 1:
        # CompVis conv_in outputs `ch` channels, diffusers outputs ch * ch_mult[0]; they agree only for 1.
        raise ValueError(f"vae ch_mult must start with 1 (got {tuple(cfg.ch_mult)}) to match the CompVis layout")
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # heavy import (~5 s), only when building

    attn = attention_levels(cfg)
    return AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        act_fn="silu",
        latent_channels=cfg.z_channels,
        norm_num_groups=32,
        sample_size=cfg.resolution,
        scaling_factor=cfg.scale_factor,
        shift_factor=cfg.shift_factor,
        use_quant_conv=True,
        use_post_quant_conv=True,
        mid_block_add_attention=True,
    )


# ---- the wrapper ----------------------------------------------------------------------------------------------
class LatentVAE(nn.Module):
    """Encoder/decoder with UniX's latent normalisation. Images in [-1, 1]; latents = scale * (z - shift)."""

    def __init__(self, cfg: VAEConfig, autoencoder: AutoencoderKL | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.autoencoder = autoencoder if autoencoder is not None else build_autoencoder(cfg)
        self.scale_factor = float(cfg.scale_factor)
        self.shift_factor = float(cfg.shift_factor)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    # -- checks
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"VAE input must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"VAE input must be 4-D (B, C, H, W), got {images.ndim}-D shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"VAE input must be a floating-point image in [-1, 1], got dtype {images.dtype}")
        _, c, h, w = images.shape
        if c != self.cfg.in_channels:
            raise ValueError(f"VAE input has {c} channels, expected {self.cfg.in_channels} "
                             f"(shape {tuple(images.shape)}, layout (B, C, H, W))")
        f = self.downsample
        if h % f or w % f:
            raise ValueError(f"VAE input size {h}x{w} is not a multiple of the downsampling factor {f}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"VAE latents must be a torch.Tensor, got {type(latents).__name__}")
        if latents.ndim != 4:
            raise ValueError(f"VAE latents must be 4-D (B, Z, h, w), got {latents.ndim}-D shape "
                             f"{tuple(latents.shape)}")
        if latents.shape[1] != self.cfg.z_channels:
            raise ValueError(f"VAE latents have {latents.shape[1]} channels, expected z_channels "
                             f"{self.cfg.z_channels}")

    # -- encoding
    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """quant_conv(encoder(images)): (B, 2Z, H/f, W/f); channels [:Z] = mean, [Z:] = log-variance (unclamped)."""
        self._check_images(images)
        ae = self.autoencoder
        return ae.quant_conv(ae.encoder(images.to(self.dtype)))

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               eps: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latent scale * (z - shift); z = posterior mean, or mean + std * eps when `sample`.

        The reference `encode()` samples by default (image-conditioned generation uses that); here the
        deterministic mean is the default. `eps` (same shape as the latent) overrides drawing from `generator`.
        """
        mean, logvar = self.moments(images).chunk(2, dim=1)
        if sample:
            if eps is None:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            elif eps.shape != mean.shape:
                raise ValueError(f"eps has shape {tuple(eps.shape)}, expected the latent shape {tuple(mean.shape)}")
            std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
            z = mean + std * eps.to(device=mean.device, dtype=mean.dtype)
        elif eps is not None:
            raise ValueError("eps is only used with sample=True")
        else:
            z = mean
        return self.scale_factor * (z - self.shift_factor)

    # -- decoding
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Image in about [-1, 1] from normalised latents: decoder(post_quant_conv(latents / scale + shift))."""
        self._check_latents(latents)
        ae = self.autoencoder
        z = latents.to(self.dtype) / self.scale_factor + self.shift_factor
        return ae.decoder(ae.post_quant_conv(z))

    def decode_to_01(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode` mapped to [0, 1] the way the reference displays images."""
        return to_01(self.decode(latents))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(images))


def to_01(images: torch.Tensor) -> torch.Tensor:
    """clamp(x / 2 + 0.5, 0, 1): [-1, 1] images to [0, 1] (reference `denormalize_vae_output`)."""
    return (images / 2 + 0.5).clamp(0, 1)


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """Decoded (B, 3, H, W) images in about [-1, 1] -> (B, H, W, 3) uint8, truncating as the authors do."""
    return (to_01(images).float() * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


# ---- loading --------------------------------------------------------------------------------------------------
def _resolve_file(path: Path) -> tuple[Path, Path | None]:
    """The safetensors file to read and the LDM config.yaml beside it (folders only)."""
    if path.is_dir():
        config = path / "config.yaml"
        config = config if config.is_file() else None
        for name in PREFERRED_FILES:
            if (path / name).is_file():
                return path / name, config
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0], config
        if len(found) > 1:
            raise ValueError(f"{path}: several .safetensors files and none named {' or '.join(PREFERRED_FILES)}: "
                             f"{[p.name for p in found]}")
        pickled = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled:
            refuse_pickle(pickled[0])
        raise ValueError(f"{path}: no VAE weights (*.safetensors) in this folder")
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    refuse_pickle(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file or a folder holding one")
    return path, None


def _config_from_metadata(file: Path) -> VAEConfig | None:
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_METADATA_KEY not in meta:
        return None
    data = json.loads(meta[CONFIG_METADATA_KEY])
    return VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], cfg: VAEConfig,
                     layout: str = "diffusers") -> None:
    """Strict comparison of a state dict with the expected one (same layout): ValueError naming the problems."""
    problem = state_dict_mismatch(expected, sd)
    if problem:
        raise ValueError(f"VAE weights do not fit the config (ch={cfg.ch}, ch_mult={tuple(cfg.ch_mult)}, "
                         f"num_res_blocks={cfg.num_res_blocks}, z_channels={cfg.z_channels}): {problem}"
                         f" (keys in {layout} naming)")


def vae_from_state_dict(sd: dict[str, torch.Tensor], cfg: VAEConfig, dtype: torch.dtype = torch.float32) -> LatentVAE:
    """Build a LatentVAE from a state dict in either layout (auto-detected), strictly."""
    layout = detect_layout(sd)
    with torch.device("meta"):
        autoencoder = build_autoencoder(cfg)
    expected = autoencoder.state_dict()
    if layout == "ldm":  # check in the file's own naming, so that messages name the keys the user has
        check_state_dict(sd, diffusers_to_ldm(expected, cfg), cfg, layout)
        sd = ldm_to_diffusers(sd, cfg)
    check_state_dict(sd, expected, cfg, "diffusers")
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    autoencoder.load_state_dict(sd, strict=True, assign=True)
    return LatentVAE(cfg, autoencoder).eval()


def load_vae(path: str | Path, cfg: VAEConfig | None = None, dtype: torch.dtype = torch.float32) -> LatentVAE:
    """Load the VAE from a .safetensors file or a folder holding one (plus an optional LDM `config.yaml`).

    Config, first found: `cfg`; the folder's `config.yaml`; the config stored by `save_vae` in the file's
    metadata; the default `VAEConfig()` (the released kl-f16). Pickled checkpoints are refused.
    """
    file, yaml_path = _resolve_file(Path(path))
    if cfg is None and yaml_path is not None:
        cfg = vae_config_from_ldm_yaml(yaml_path)
        log.info("VAE config from %s", yaml_path)
    if cfg is None:
        cfg = _config_from_metadata(file)
    if cfg is None:
        log.info("no VAE config given or found next to %s; using the default kl-f16 config", file)
        cfg = VAEConfig()
    vae = vae_from_state_dict(load_file(str(file)), cfg, dtype)
    log.info("loaded VAE from %s (%d parameters)", file, sum(p.numel() for p in vae.parameters()))
    return vae


# ---- writing ---------------------------------------------------------------------------------------------------
def save_vae(vae: LatentVAE, path: str | Path, layout: Literal["ldm", "diffusers"] = "ldm") -> Path:
    """Write the autoencoder weights as safetensors in the ldm (CompVis) or diffusers layout, with the config."""
    if layout not in ("ldm", "diffusers"):
        raise ValueError(f"layout must be 'ldm' or 'diffusers', got {layout!r}")
    sd = vae.autoencoder.state_dict()
    if layout == "ldm":
        sd = diffusers_to_ldm(sd, vae.cfg)
    metadata = {"format": "pt", "layout": layout, CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(vae.cfg))}
    out = write_safetensors_atomic(sd, Path(path), metadata)
    log.info("saved VAE (%s layout, %d tensors) to %s", layout, len(sd), out)
    return out


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        log.warning("%s does not load with weights_only=True (%s: %s); unpickling it fully because "
                    "trust_pickle is set", path, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return torch.load(path, map_location="cpu", weights_only=False)


def convert_pickled_vae(ckpt_path: str | Path, out_path: str | Path, trust_pickle: bool) -> Path:
    """Convert a pickled VAE checkpoint (e.g. the authors' kl-f16d16.ckpt) into an ldm-layout safetensors file.

    Refused unless `trust_pickle`. Loads with weights_only=True first and falls back to a full unpickle (logged)
    only if that fails. Keeps only the autoencoder tensors (drops e.g. `loss.*`); the write is atomic.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if not trust_pickle:
        raise ValueError(f"refusing to unpickle {ckpt_path}: pickled checkpoints can run arbitrary code. "
                         "Pass trust_pickle=True (CLI: --trust-pickle) only for a file from a source you trust")
    if out_path.suffix != ".safetensors":
        raise ValueError(f"output {out_path} must end in .safetensors")
    if not ckpt_path.is_file():
        raise ValueError(f"{ckpt_path}: no such file")
    obj = _torch_load(ckpt_path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TypeError(f"{ckpt_path}: expected a state dict (or {{'state_dict': ...}}), got {type(obj).__name__}")
    # a whole latent-diffusion model holds the autoencoder under `first_stage_model.`
    prefix = "first_stage_model."
    nested = not any(k.startswith(AUTOENCODER_PREFIXES) for k in obj) and any(
        k.startswith(prefix + "encoder.") for k in obj)
    kept: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in obj.items():
        name = key[len(prefix):] if nested and key.startswith(prefix) else key
        if isinstance(value, torch.Tensor) and name.startswith(AUTOENCODER_PREFIXES) and (
                not nested or key.startswith(prefix)):
            kept[name] = value
        else:
            dropped.append(key)
    if dropped:
        log.info("dropping %d non-autoencoder entries from %s: %s", len(dropped), ckpt_path, summarise_keys(dropped))
    layout = detect_layout(kept)
    if layout == "diffusers":
        kept = convert_layout(kept, count_levels(kept, layout), "diffusers")
    tensors = {k: v.detach().clone().contiguous() for k, v in kept.items()}
    out = write_safetensors_atomic(tensors, out_path, {"format": "pt", "layout": "ldm", "source": ckpt_path.name})
    log.info("wrote %d VAE tensors (ldm layout) from %s to %s", len(tensors), ckpt_path, out)
    return out


__all__ = ["LatentVAE", "attention_levels", "build_autoencoder", "check_state_dict", "convert_pickled_vae", "load_vae",
           "save_vae", "to_01", "vae_from_state_dict"]
