"""Image generation (spec 2.4 b', 4.2): prompts -> latents -> images, by flow-matching Euler sampling.

  * time grid and Euler updates: `unix_cxr.flow.EulerScheduler` (num_timesteps points, num_timesteps - 1 updates
    x <- x - v(x, t_i) * (t_i - t_{i+1}); the velocity points from data, t = 0, to noise, t = 1);
  * text CFG where lo < t_i <= hi: v = v_u + s*(v_c - v_u), then renorm (global: times
    clamp(||v_c|| / (||v|| + 1e-8), min, 1) over the whole image; channel / text_channel: per token);
  * the conditional context [BOS] prompt [EOS] is prefilled once into a KV cache; the unconditional branch is
    the query block with no context at all (position 0), as in training with a dropped caption;
  * conditional and unconditional rows run as one batch; the query block [BOI][latents][EOI] is never cached;
  * optionally (`step_cache: taylor`, `infer/step_cache.py`) the model runs only at some steps and the
    conditional and unconditional velocities are forecast in between; guidance is applied after, on every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..config import SamplingConfig
from ..flow import EulerScheduler
from ..model.decoder import CacheAttention, KVCache
from ..model.embeddings import latent_position_ids
from ..model.unix import UniX
from ..model.vae import LatentVAE, to_uint8_hwc
from .step_cache import TaylorCache


def in_cfg_interval(t: float, interval: tuple[float, float]) -> bool:
    return interval[0] < t <= interval[1]


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, renorm_type: str = "global",
                renorm_min: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance with renorm. v_* (B, n, C); global norms are per image over (n, C)."""
    v = v_uncond + scale * (v_cond - v_uncond)
    if renorm_type == "none":
        return v
    dims = (-2, -1) if renorm_type == "global" else (-1,)
    if renorm_type not in ("global", "channel", "text_channel"):
        raise ValueError(f"unknown cfg_renorm_type {renorm_type!r}")
    ratio = v_cond.norm(dim=dims, keepdim=True) / (v.norm(dim=dims, keepdim=True) + 1e-8)
    return v * ratio.clamp(min=renorm_min, max=1.0)


def latents_to_nchw(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w)."""
    return tokens.view(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


@dataclass
class SamplingTrace:
    timesteps: list[float] = field(default_factory=list)
    x_t: list[torch.Tensor] = field(default_factory=list)  # state before each update (B, n, C)
    velocity: list[torch.Tensor] = field(default_factory=list)  # guided velocity of each update
    evaluated: list[bool] = field(default_factory=list)  # whether the model ran at the update (step cache)


class ImageGenerator:
    def __init__(self, model: UniX, sampling: SamplingConfig | None = None, vae: LatentVAE | None = None):
        self.model = model
        self.vae = vae
        self.tokens = model.cfg.tokens
        self.sampling = sampling or model.cfg.sampling
        self.downsample = model.cfg.vae.downsample

    @torch.inference_mode()
    def encode_context(self, prompt_ids: list[list[int]]) -> KVCache:
        """Prefill [BOS] prompt [EOS] of every prompt (ids without special tokens) into one cache."""
        model, tok = self.model, self.tokens
        device = model.device
        blocks = [[tok.bos, *p, tok.eos] for p in prompt_ids]
        lens = torch.tensor([len(b) for b in blocks], device=device)
        longest = int(lens.max())
        if longest > model.cfg.decoder.max_position_embeddings:
            raise ValueError(f"prompt of {longest} tokens exceeds the context of "
                             f"{model.cfg.decoder.max_position_embeddings} tokens")
        ids = torch.full((len(blocks), longest), tok.eos, dtype=torch.long, device=device)
        for row, block in enumerate(blocks):
            ids[row, : len(block)] = torch.tensor(block, device=device)
        cache = model.decoder.new_cache(len(blocks), longest)
        positions = torch.arange(longest, device=device).expand(len(blocks), -1)
        model.decoder(model.embed_text(ids), positions, None, CacheAttention(cache, causal=True, write=True))
        cache.lens = lens
        return cache

    @torch.inference_mode()
    def velocity(self, x_t: torch.Tensor, t: float, cache: KVCache, grid: tuple[int, int]) -> torch.Tensor:
        """v(x_t, t) for rows (R, n, C) against a cache of R rows (a row with length 0 is unconditional)."""
        model, tok = self.model, self.tokens
        rows, n, _ = x_t.shape
        device = x_t.device
        pos_ids = latent_position_ids(*grid, model.cfg.max_latent_size, device=device)
        t_rows = torch.full((rows * n,), float(t), device=device)
        latents = model.embed_latents(x_t.reshape(rows * n, -1), t_rows, pos_ids.repeat(rows)).view(rows, n, -1)
        markers = model.embed_text(torch.tensor([tok.start_of_image, tok.end_of_image], device=device))
        query = torch.cat([markers[0].expand(rows, 1, -1), latents, markers[1].expand(rows, 1, -1)], dim=1)
        gen_mask = torch.zeros(rows, n + 2, dtype=torch.bool, device=device)
        gen_mask[:, 1:-1] = True
        positions = cache.lens[:, None].expand(rows, n + 2)
        hidden = model.decoder(query, positions, gen_mask, CacheAttention(cache, causal=False, write=False))
        return model.velocity(hidden[:, 1:-1]).float()

    @torch.inference_mode()
    def sample(self, prompt_ids: list[list[int]], height: int | None = None, width: int | None = None,
               generator: torch.Generator | None = None, init_noise: torch.Tensor | None = None,
               trace: SamplingTrace | None = None, on_step: Callable[[int, int], None] | None = None,
               **sampling_overrides) -> torch.Tensor:
        """Prompts -> normalised latents (B, C, h, w). Noise from `init_noise` (B, n, C) or `generator`.

        `on_step(step, total)`: called after each Euler update, step = 1 .. total = num_timesteps - 1.
        """
        cfg = replace(self.sampling, **sampling_overrides)
        cfg.validate()
        height = height or cfg.image_size
        width = width or cfg.image_size
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"image size {height}x{width} is not a multiple of the VAE factor {self.downsample}")
        grid = (height // self.downsample, width // self.downsample)
        b, n, c = len(prompt_ids), grid[0] * grid[1], self.model.cfg.vae.z_channels
        device = self.model.device
        if init_noise is None:
            init_noise = torch.stack([torch.randn(n, c, generator=generator) for _ in range(b)])
        if init_noise.shape != (b, n, c):
            raise ValueError(f"init_noise must have shape {(b, n, c)}, got {tuple(init_noise.shape)}")
        x = init_noise.to(device=device, dtype=torch.float32)

        cond = self.encode_context(prompt_ids)
        both = cond.with_empty_rows(b)
        scheduler = EulerScheduler(cfg.timestep_shift)
        scheduler.set_timesteps(cfg.num_timesteps)
        cache = TaylorCache(cfg.step_cache_interval, cfg.step_cache_warmup) if cfg.step_cache == "taylor" else None
        for i, t in enumerate(scheduler.timesteps[:-1]):
            guided = cfg.cfg_text_scale != 1.0 and in_cfg_interval(t, cfg.cfg_interval)
            evaluate = cache is None or cache.evaluates(i, guided)
            if not evaluate:
                v_cond, v_uncond = cache.cond.forecast(t), cache.uncond.forecast(t) if guided else None
            elif guided:
                v_both = self.velocity(torch.cat([x, x]), t, both, grid)
                v_cond, v_uncond = v_both[:b], v_both[b:]
            else:
                v_cond, v_uncond = self.velocity(x, t, cond, grid), None
            if cache is not None and evaluate:
                cache.cond.record(t, v_cond)
                if v_uncond is not None:
                    cache.uncond.record(t, v_uncond)
            v = cfg_combine(v_cond, v_uncond, cfg.cfg_text_scale, cfg.cfg_renorm_type, cfg.cfg_renorm_min) \
                if guided else v_cond
            if trace is not None:
                trace.timesteps.append(t)
                trace.x_t.append(x.clone())
                trace.velocity.append(v.clone())
                trace.evaluated.append(evaluate)
            x = scheduler.step(v, i, x)
            if on_step is not None:
                on_step(i + 1, scheduler.num_steps)
        return latents_to_nchw(x, *grid)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[list[int]], height: int | None = None, width: int | None = None,
                 generator: torch.Generator | None = None, **sampling_overrides) -> torch.Tensor:
        """Prompts -> (B, H, W, 3) uint8 images: sample latents, then decode them with the VAE."""
        if self.vae is None:
            raise ValueError("ImageGenerator needs a VAE to decode images (pass vae=...); sample() returns latents")
        latents = self.sample(prompt_ids, height, width, generator=generator, **sampling_overrides)
        return to_uint8_hwc(self.vae.decode(latents.to(self.vae.dtype)))
