"""Generation-side embeddings (spec 1.6): DiT timestep embedder and the fixed 2-D sin-cos position tables."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """t (N,) in [0, 1], used as is (not x1000) -> (N, dim) = [cos(t f_k), sin(t f_k)], f_k = P^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """DiT timestep embedder: Linear(256, D) -> SiLU -> Linear(D, D) over sinusoidal features."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_frequencies(t, self.frequency_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(freqs)


def sincos_2d_table(grid_size: int, dim: int) -> torch.Tensor:
    """(grid_size^2, dim) MAE/DiT 2-D sin-cos table; row r*S + c = [sin(c w), cos(c w), sin(r w), cos(r w)]."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class PositionTable(nn.Module):
    """A fixed (non-trained) position table stored in checkpoints as `<name>.pos_embed`."""

    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(sincos_2d_table(grid_size, dim), requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


def latent_position_ids(height: int, width: int, max_latent_size: int, device=None) -> torch.Tensor:
    """Row indices into a max_latent_size^2 table for an h x w latent grid ("extrapolate": top-left sub-grid)."""
    if height > max_latent_size or width > max_latent_size:
        raise ValueError(f"latent grid {height}x{width} exceeds max_latent_size {max_latent_size}")
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return (rows * max_latent_size + cols).reshape(-1)
