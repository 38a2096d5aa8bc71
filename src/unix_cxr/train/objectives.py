"""The training objective (spec 3.1): a packed batch + noise + timesteps -> per-token CE and per-element velocity MSE.

The objective lives here, not in the model: it draws nothing itself (the trainer passes noise and timesteps, so
runs are reproducible), noises the latents with `unix_cxr.flow` (x_t = (1 - t) x0 + t eps, one t per image, clean
conditioning images at t = 0), runs `UniX.forward` once and compares the heads with their targets (next token;
velocity eps - x0). Losses are returned unreduced; the trainer decides how to average them over tokens, ranks
and steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.packing import PackedBatch
from ..flow import interpolate, sample_timesteps, velocity_target
from ..model.unix import PackedInputs, UniX


@dataclass
class TrainingOutput:
    ce: torch.Tensor  # (n_ce,) per-token cross-entropy
    mse: torch.Tensor  # (n_mse, C) per-element squared velocity error
    hidden_states: list[torch.Tensor] | None = None  # residual stream after each layer, if requested


def training_forward(model: UniX, batch: PackedBatch, noise: torch.Tensor | None = None,
                     timesteps: torch.Tensor | None = None, keep_hidden_states: bool = False) -> TrainingOutput:
    """Run one packed sequence. noise: (M, C) per latent token; timesteps: (num latent images,) in [0, 1].

    Clean (not noised) latent images always get t = 0. Noise and timesteps are required whenever the batch has
    noised latents. `model` may be wrapped (FSDP2, DDP): it is called, never reached into.
    """
    x0 = batch.latent_tokens.to(torch.float32)
    noised = batch.latent_noised
    if bool(noised.any()) and (noise is None or timesteps is None):
        raise ValueError("the batch has noised latents: pass `noise` and `timesteps`")
    t_img = timesteps.cpu() if timesteps is not None else torch.zeros(batch.num_latent_images)
    if t_img.numel() != batch.num_latent_images:
        raise ValueError(f"{batch.num_latent_images} latent images but {t_img.numel()} timesteps")
    t = torch.where(noised, t_img[batch.latent_image_ids], torch.zeros(()))
    eps = noise.to(device="cpu", dtype=torch.float32) if noise is not None else torch.zeros_like(x0)
    if eps.shape != x0.shape:
        raise ValueError(f"noise must have shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    supervised = noised & (t > 0)
    inputs = PackedInputs(
        layout=batch.layout, position_ids=batch.position_ids, text_ids=batch.text_ids,
        text_indexes=batch.text_indexes, vit_pixel_values=batch.vit_pixel_values, vit_indexes=batch.vit_indexes,
        latent_x_t=interpolate(x0, eps, t[:, None]), latent_timesteps=t, latent_indexes=batch.latent_indexes,
        latent_position_ids=batch.latent_position_ids, logit_rows=batch.ce_indexes,
        velocity_rows=batch.latent_indexes[supervised])
    out = model(inputs, keep_hidden_states=keep_hidden_states)
    ce = F.cross_entropy(out.logits.float(), batch.ce_labels.to(out.logits.device), reduction="none")
    target = velocity_target(x0, eps)[supervised].to(out.velocity.device)
    mse = (out.velocity.float() - target) ** 2
    return TrainingOutput(ce, mse, out.hidden_states)


def draw_flow_inputs(batch: PackedBatch, keys: list, seed: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise (M, C), timesteps (num latent images,)) for a packed batch, drawn per sample from its key.

    Each latent image gets its logit-normal timestep and its Gaussian noise from a generator seeded by
    (seed, the sample's source, epoch, index, the image's place in the sample), so a sample gets the same draws
    whichever rank, micro-batch or packing position it lands in: N accumulation steps on one rank and one step
    on N ranks see identical noise, and a resumed run redraws exactly what the interrupted one drew.
    """
    from ..data.sources import SampleRandom, stable_hash

    c = batch.latent_tokens.shape[1]
    noise = torch.zeros(batch.latent_tokens.shape, dtype=torch.float32)
    timesteps = torch.zeros(batch.num_latent_images)
    sample_of_row = batch.layout.sample_id[batch.latent_indexes]
    seen: dict[int, int] = {}
    for image in range(batch.num_latent_images):
        rows = (batch.latent_image_ids == image).nonzero().squeeze(1)
        sample = int(sample_of_row[rows[0]])
        place = seen.get(sample, 0)
        seen[sample] = place + 1
        key = keys[sample]
        gen = SampleRandom(seed, stable_hash(key.source), key.epoch, key.index).torch_generator(f"flow{place}")
        timesteps[image] = sample_timesteps(1, shift, gen)[0]
        noise[rows] = torch.randn(rows.numel(), c, generator=gen)
    return noise, timesteps


def window_counts(window) -> tuple[int, int, int]:
    """(CE tokens, noised latent tokens, all tokens) of a list of loader batches (an accumulation window)."""
    ce = sum(int(b.batch.ce_indexes.numel()) for b in window)
    mse = sum(int(b.batch.latent_noised.sum()) for b in window)
    tokens = sum(b.num_tokens for b in window)
    return ce, mse, tokens
