"""Training forward (spec 3.1): a packed batch + noise + timesteps -> per-token CE and per-element velocity MSE.

The objective lives here, not in the model: x_t = (1 - t) x0 + t eps, target eps - x0, one t per image.
Losses are returned unreduced; the trainer decides how to average them over tokens, ranks and steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.unix import UniX
from .packing import PackedBatch


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = shift*t / (1 + (shift - 1)*t); shift 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(num_images: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal timesteps, sigmoid(N(0, 1)), then the training shift (released: 1.0)."""
    return shift_timesteps(torch.sigmoid(torch.randn(num_images, generator=generator)), shift)


@dataclass
class TrainingOutput:
    ce: torch.Tensor  # (n_ce,) per-token cross-entropy
    mse: torch.Tensor  # (n_mse, C) per-element squared velocity error
    hidden_states: list[torch.Tensor] | None = None  # residual stream after each layer, if requested


def training_forward(model: UniX, batch: PackedBatch, noise: torch.Tensor | None = None,
                     timesteps: torch.Tensor | None = None, keep_hidden_states: bool = False) -> TrainingOutput:
    """Run one packed sequence. noise: (M, C) per latent token; timesteps: (num latent images,) in [0, 1].

    Clean (not noised) latent images always get t = 0. Missing noise / timesteps are required whenever the
    batch has noised latents (the trainer draws them, so that runs are reproducible).
    """
    device = model.lm_head.weight.device
    dtype = model.lm_head.weight.dtype
    n, dim = batch.position_ids.numel(), model.cfg.decoder.hidden_size
    seq = torch.zeros(n, dim, device=device, dtype=dtype)
    seq = seq.index_copy(0, batch.text_indexes.to(device), model.embed_text(batch.text_ids.to(device)))
    if batch.vit_pixel_values is not None:
        vis = model.embed_images(batch.vit_pixel_values.to(device))
        seq = seq.index_copy(0, batch.vit_indexes.to(device), vis.reshape(-1, dim))

    gen_mask = torch.zeros(n, dtype=torch.bool, device=device)
    mse_rows = torch.zeros(0, dtype=torch.long, device=device)
    target = None
    if batch.latent_indexes.numel():
        noised = batch.latent_noised.to(device)
        if bool(noised.any()) and (noise is None or timesteps is None):
            raise ValueError("the batch has noised latents: pass `noise` and `timesteps`")
        x0 = batch.latent_tokens.to(device=device, dtype=torch.float32)
        t_img = timesteps.to(device) if timesteps is not None else torch.zeros(batch.num_latent_images, device=device)
        if t_img.numel() != batch.num_latent_images:
            raise ValueError(f"{batch.num_latent_images} latent images but {t_img.numel()} timesteps")
        t = torch.where(noised, t_img[batch.latent_image_ids.to(device)], torch.zeros((), device=device))
        eps = noise.to(device=device, dtype=torch.float32) if noise is not None else torch.zeros_like(x0)
        if eps.shape != x0.shape:
            raise ValueError(f"noise must have shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
        x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
        latent_rows = batch.latent_indexes.to(device)
        emb = model.embed_latents(x_t, t, batch.latent_position_ids.to(device))
        seq = seq.index_copy(0, latent_rows, emb.to(dtype))
        gen_mask[latent_rows] = True
        supervised = noised & (t > 0)
        mse_rows = latent_rows[supervised]
        target = (eps - x0)[supervised]

    hidden_states = [] if keep_hidden_states else None
    hidden = model.decoder(seq[None], batch.position_ids.to(device)[None], gen_mask[None], batch.layout,
                           hidden_states)[0]
    ce_rows = batch.ce_indexes.to(device)
    ce = F.cross_entropy(model.logits(hidden[ce_rows]).float(), batch.ce_labels.to(device), reduction="none")
    if target is not None and mse_rows.numel():
        mse = (model.velocity(hidden[mse_rows]).float() - target) ** 2
    else:
        mse = hidden.new_zeros(0, model.cfg.vae.z_channels, dtype=torch.float32)
    return TrainingOutput(ce, mse, [h[0] for h in hidden_states] if hidden_states is not None else None)
