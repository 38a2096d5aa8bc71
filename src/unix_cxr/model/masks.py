"""Attention masks and RoPE positions of UniX's packed sequences (spec 2.2, 2.3). Pure functions, no modules.

A packed training sequence is a list of samples; a sample is a list of *splits*, each with a mode:
  causal  text: sees every earlier split of its sample and itself causally;
  full    ViT image or clean VAE image: sees every earlier split and all of itself;
  noise   noised VAE latents (MSE target): like full, but no token outside the split may see it.
Samples never see each other. Every token of an image split shares one RoPE position; the position counter
advances by one after a full split and not at all after a noise split.

Mask convention: boolean, True = may attend (row = query, column = key).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CAUSAL, FULL, NOISE = 0, 1, 2
MODES = {"causal": CAUSAL, "full": FULL, "noise": NOISE}


def _mode_code(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {sorted(MODES)}")
    return MODES[mode]


@dataclass(frozen=True)
class PackedLayout:
    """Per-token metadata of a packed sequence from which every mask is derived: (N,) int64 tensors."""

    sample_id: torch.Tensor
    split_id: torch.Tensor  # globally unique, increasing along the sequence
    mode: torch.Tensor

    @classmethod
    def from_splits(cls, samples: list[tuple[list[int], list[str]]]) -> PackedLayout:
        """`samples[s] = (split_lens, split_modes)` in sequence order."""
        sample_id, split_id, mode = [], [], []
        next_split = 0
        for s, (lens, modes) in enumerate(samples):
            if len(lens) != len(modes):
                raise ValueError(f"sample {s}: {len(lens)} split lengths but {len(modes)} modes")
            for length, name in zip(lens, modes, strict=False):
                if length <= 0:
                    raise ValueError(f"sample {s}: split lengths must be positive, got {length}")
                sample_id += [s] * length
                split_id += [next_split] * length
                mode += [_mode_code(name)] * length
                next_split += 1
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long)
        return cls(as_long(sample_id), as_long(split_id), as_long(mode))

    def __len__(self) -> int:
        return self.sample_id.numel()

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """The mask rule for query/key index tensors (broadcasting); usable as a flex-attention mask_mod."""
        same_sample = self.sample_id[q_idx] == self.sample_id[kv_idx]
        same_split = self.split_id[q_idx] == self.split_id[kv_idx]
        earlier_visible = (self.split_id[kv_idx] < self.split_id[q_idx]) & (self.mode[kv_idx] != NOISE)
        within = same_split & ((self.mode[q_idx] != CAUSAL) | (kv_idx <= q_idx))
        return same_sample & (earlier_visible | within)

    def dense(self) -> torch.Tensor:
        """(N, N) boolean mask."""
        idx = torch.arange(len(self))
        return self.allowed(idx[:, None], idx[None, :])

    def sample_bounds(self) -> list[tuple[int, int]]:
        """[start, end) of every sample, in order."""
        counts = torch.bincount(self.sample_id).tolist()
        bounds, start = [], 0
        for c in counts:
            bounds.append((start, start + c))
            start += c
        return bounds


def split_position_ids(split_lens: list[int], split_modes: list[str], start: int = 0) -> list[int]:
    """RoPE positions of one sample: text consecutive, one shared position per image split."""
    pos, out = start, []
    for length, mode in zip(split_lens, split_modes, strict=False):
        code = _mode_code(mode)
        if code == CAUSAL:
            out += list(range(pos, pos + length))
            pos += length
        else:
            out += [pos] * length
            if code == FULL:
                pos += 1
    return out


def cache_attention_mask(cache_lens: torch.Tensor, query_len: int, causal: bool, key_len: int,
                         appended: bool) -> torch.Tensor:
    """(B, 1, Lq, Lk) mask for a query block attending to a per-row KV cache of valid lengths `cache_lens`.

    appended=True: the block's own keys were written into the cache right after each row's valid prefix
    (keys [0, cache_len + Lq) are meaningful). appended=False: keys = [cache (Lk - Lq columns, padded) ; block].
    causal: bottom-right aligned (query i sees the whole cache and block keys 0..i), as flash-attn varlen does.
    """
    cols = torch.arange(key_len, device=cache_lens.device)[None, None, :]  # (1, 1, Lk)
    rows = torch.arange(query_len, device=cache_lens.device)[None, :, None]  # (1, Lq, 1)
    lens = cache_lens[:, None, None]  # (B, 1, 1)
    if appended:
        limit = lens + (rows + 1 if causal else query_len)
        mask = cols < limit
    else:
        cache_cols = key_len - query_len
        in_cache = (cols < lens) & (cols < cache_cols)
        block_col = cols - cache_cols
        in_block = (block_col >= 0) & (block_col <= rows) if causal else block_col >= 0
        mask = in_cache | in_block
    return mask.expand(-1, query_len, -1)[:, None]
