"""The one attention operation of the MoT decoder, behind three interchangeable backends.

  sdpa   torch.nn.functional.scaled_dot_product_attention with a boolean mask (default; runs everywhere);
         packed training sequences are attended sample by sample, so memory is O(sum of L_s^2);
  flex   torch flex_attention with a block mask derived from the same mask rule (one call per sequence);
  flash  flash_attn_varlen_func (optional accelerator, CUDA + the flash-attn package; inference masks only).

Shapes: q (B, H, Lq, d), k / v (B, Hkv, Lk, d) with H a multiple of Hkv (grouped-query attention);
the result is (B, Lq, H*d). Softmax scale 1/sqrt(d).

A decoding step on CPU with a bf16 KV cache (one query per row, sdpa backend) is attended in float32 instead
(`_one_query_fp32`: q, k, v upcast, two batched products and a float32 softmax): SDPA's CPU kernel runs one bf16
query slowly (1.40 against 0.43 ms per layer for 16 heads of 128 and 597 keys on an AMD EPYC with AVX512-BF16,
`python benchmarks/bench_core.py --only kern`), and float32 scores are the more exact of the two.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ATTENTION_BACKENDS as BACKENDS
from .masks import PackedLayout


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name == "flash" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError("attention backend 'flash' needs the flash-attn package (pip install 'unix-cxr[flash]')")
    if name == "flex" and not hasattr(torch.nn.attention, "flex_attention"):
        raise ValueError(f"attention backend 'flex' needs torch >= 2.5 (found {torch.__version__})")
    return name


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    b, h, lq, d = out.shape
    return out.transpose(1, 2).reshape(b, lq, h * d)


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


@functools.cache
def _flex_kernel(device_type: str):
    """flex_attention compiled into a fused kernel on accelerators; the eager (unfused) reference on CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention if device_type == "cpu" else torch.compile(flex_attention, dynamic=True)


def _block_mask(mask_mod, q_len: int, kv_len: int, batch: int | None, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)


def _flex(q, k, v, block_mask):
    with warnings.catch_warnings():  # on CPU the unfused eager path is the intended one
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return _flex_kernel(q.device.type)(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def _flash_rows(q, k, v, mask, causal: bool):
    """Unpad each row's visible keys (read off the mask's last query row) and call flash-attn varlen."""
    from flash_attn import flash_attn_varlen_func

    b, h, lq, d = q.shape
    valid = mask[:, 0, -1, :]  # (B, Lk): the last query row sees every valid key in both modes
    k_rows = k.transpose(1, 2)[valid]  # (sum Lk_b, Hkv, d)
    v_rows = v.transpose(1, 2)[valid]
    lens_k = valid.sum(-1, dtype=torch.int32)
    cu_k = F.pad(lens_k.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    out = flash_attn_varlen_func(q.transpose(1, 2).reshape(b * lq, h, d), k_rows, v_rows, cu_q, cu_k, lq,
                                 int(lens_k.max()), causal=causal)
    return out.reshape(b, lq, h * d)


def _one_query_fp32(q, k, v, mask) -> torch.Tensor:
    """Attention of one query per row in float32, result in q's dtype: q (B, H, 1, d), k / v (B, Hkv, Lk, d),
    mask (B, 1, 1, Lk); the H / Hkv query heads of a key head attend as one block of rows (no copy of k, v)."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    rows = q.float().reshape(b, hkv, h // hkv, d)  # query head i reads key head i // (H / Hkv), as enable_gqa
    scores = torch.matmul(rows, k.float().transpose(-1, -2)) * d ** -0.5  # (B, Hkv, H / Hkv, Lk)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.matmul(weights, v.float()).reshape(b, h, 1, d).to(q.dtype)


def cached_attention(q, k, v, mask: torch.Tensor, causal: bool, backend: str) -> torch.Tensor:
    """Attention for inference blocks: `mask` (B, 1, Lq, Lk) from masks.cache_attention_mask."""
    if backend == "sdpa" and q.shape[2] == 1 and k.dtype == torch.bfloat16 and k.is_cpu:
        return _merge_heads(_one_query_fp32(q, k, v, mask))
    if backend == "flash":
        return _flash_rows(q, k, v, mask, causal)
    if backend == "flex":
        dense = mask[:, 0]
        block_mask = _block_mask(lambda b, h, qi, ki: dense[b, qi, ki], q.shape[2], k.shape[2], q.shape[0], q.device)
        return _merge_heads(_flex(q, k, v, block_mask))
    return _merge_heads(_sdpa(q, k, v, mask))


@dataclass(frozen=True)
class PackedStep:
    """The attention plan of one packed training sequence (B = 1), made once per forward and shared by every
    layer: for sdpa the boolean mask of each sample (samples never see each other, so each is attended alone
    and memory is O(sum of L_s^2)); for flex one block mask over the whole sequence."""

    backend: str
    sample_masks: tuple[tuple[int, int, torch.Tensor], ...] = ()  # sdpa: (start, end, (L_s, L_s) mask)
    block_mask: object | None = None  # flex

    @classmethod
    def prepare(cls, layout: PackedLayout, backend: str, device: torch.device) -> PackedStep:
        """The split semantics of masks.PackedLayout for `backend`, on `device`."""
        if backend == "flash":
            raise ValueError("the flash backend covers inference only; packed training masks need 'sdpa' or 'flex'")
        if backend == "flex":
            on = PackedLayout(layout.sample_id.to(device), layout.split_id.to(device), layout.mode.to(device))
            n = len(layout)
            return cls(backend, block_mask=_block_mask(lambda b, h, qi, ki: on.allowed(qi, ki), n, n, None, device))
        masks = []
        for start, end in layout.sample_bounds():
            idx = torch.arange(start, end)
            masks.append((start, end, layout.allowed(idx[:, None], idx[None, :]).to(device)))
        return cls(backend, sample_masks=tuple(masks))

    def attend(self, layer: int, q, k, v) -> torch.Tensor:
        """q (1, H, N, d), k / v (1, Hkv, N, d) -> (1, N, H*d); the same for every layer."""
        if self.block_mask is not None:
            return _merge_heads(_flex(q, k, v, self.block_mask))
        # cast once to autocast's dtype (SDPA would cast every sample's slice, and their gradients back) and
        # split, whose backward concatenates the samples' gradients, where each slice's would be a zero-filled
        # full-length tensor, summed over the samples: the same values; the phantom recipe's generation stages
        # 1.25x faster (docs/benchmarks.md, "Training throughput")
        dtype = _autocast_dtype(q.device.type)
        if dtype is not None:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        sizes = [e - s for s, e, _ in self.sample_masks]
        outs = [_sdpa(qs, ks, vs, mask)
                for qs, ks, vs, (_, _, mask) in zip(q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2),
                                                     self.sample_masks, strict=True)]
        return _merge_heads(torch.cat(outs, dim=2))


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes attention in on `device_type`, or None where it is off."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
