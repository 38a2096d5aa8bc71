"""Rotary position embedding (default RoPE, rotate-half convention, angles computed in float32)."""

from __future__ import annotations

import torch


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """position_ids (B, L) -> cos, sin (B, 1, L, head_dim) in `dtype`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32)
                               / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, d)."""
    return x * cos + rotate_half(x) * sin
