"""Qwen2-style mixture-of-transformers decoder of UniX (spec 1.2).

Notable features, relative to a plain Qwen2 decoder:
  * every layer holds two experts, `und` (text, image markers, SigLIP tokens) and `gen` (VAE latent tokens):
    two instances of one `Expert` class with norms, q/k/v (bias) / o projections, per-head q/k RMSNorm, SwiGLU;
  * all tokens share ONE attention over the sequence: each expert projects its own rows, the rows are
    attended jointly, and each expert finishes its own rows (o_proj, MLP);
  * the final norm is per expert too; the output heads (lm_head, llm2vae) live outside the decoder.
Routing is a boolean `gen_mask` (B, L): True rows use the gen expert. Tensors are named with shape suffixes
where it helps: B batch, L sequence, D hidden, H heads, K kv heads, d head_dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from ..utils.dtype_policy import native_bf16
from .attention import PackedStep, cached_attention, check_backend
from .linear import Linear
from .masks import PackedLayout, cache_attention_mask
from .rope import apply_rope, rope_cos_sin


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: normalise in float32, cast back, then multiply by the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = _cast(x, torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * _cast(x32, x.dtype)


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(dtype)` without dispatching a no-op cast (a decoding step made hundreds: bench_decode_step.py)."""
    return x if x.dtype == dtype else x.to(dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=False)
        self.up_proj = Linear(dim, hidden, bias=False)
        self.down_proj = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Expert(nn.Module):
    """One expert's weights of one layer. `qkv` and `finish` bracket the shared attention."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d, kv = cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * d, bias=cfg.qkv_bias)
        self.k_proj = Linear(cfg.hidden_size, kv, bias=cfg.qkv_bias)
        self.v_proj = Linear(cfg.hidden_size, kv, bias=cfg.qkv_bias)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.o_proj = Linear(cfg.num_heads * d, cfg.hidden_size, bias=False)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.head_dim = d

    def qkv(self, x_TD: torch.Tensor) -> torch.Tensor:
        """Rows (T, D) -> concatenated [q | k | v] (T, (H + 2K) d), q and k RMS-normalised per head."""
        h = self.input_layernorm(x_TD)
        t, d = x_TD.shape[0], self.head_dim
        q = self.q_norm(self.q_proj(h).view(t, -1, d)).view(t, -1)
        k = self.k_norm(self.k_proj(h).view(t, -1, d)).view(t, -1)
        return torch.cat([q, k, self.v_proj(h)], dim=-1)

    def finish(self, attn_TD: torch.Tensor, x_TD: torch.Tensor) -> torch.Tensor:
        """Residual updates after attention: x + o(attn), then + MLP(norm(.))."""
        x_TD = x_TD + self.o_proj(attn_TD)
        return x_TD + self.mlp(self.post_attention_layernorm(x_TD))


@dataclass(frozen=True)
class Route:
    """Which flattened rows go to which expert: all of them to one (`only`), or split by index."""

    only: str | None  # "und", "gen" or None (mixed)
    und_idx: torch.Tensor | None = None
    gen_idx: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, gen_mask: torch.Tensor | None) -> Route:
        if gen_mask is None or not bool(gen_mask.any()):
            return cls("und")
        flat = gen_mask.reshape(-1)
        if bool(flat.all()):
            return cls("gen")
        return cls(None, torch.nonzero(~flat).squeeze(1), torch.nonzero(flat).squeeze(1))

    def map(self, und: Callable, gen: Callable, *xs_TD: torch.Tensor) -> torch.Tensor:
        """Apply `und` to the und rows and `gen` to the gen rows of every (T, .) input; rows keep their order."""
        if self.only is not None:
            return (und if self.only == "und" else gen)(*xs_TD)
        # index_select, not x[idx]: its backward is an index_add, where indexing's is a 4x slower accumulating
        # index_put (docs/benchmarks.md)
        y_und = und(*(x.index_select(0, self.und_idx) for x in xs_TD))
        y_gen = gen(*(x.index_select(0, self.gen_idx) for x in xs_TD))
        out = y_und.new_empty(xs_TD[0].shape[0], y_und.shape[-1])
        out.index_copy_(0, self.und_idx, y_und)  # in place: the out-of-place index_copy copies `out` twice more
        return out.index_copy_(0, self.gen_idx, y_gen)


class KVCache:
    """Preallocated per-layer keys/values (B, K, capacity, d) with per-row valid lengths `lens` (B,)."""

    def __init__(self, num_layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_layers, batch, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def write(self, layer: int, k_BKLd: torch.Tensor, v_BKLd: torch.Tensor, start: int | None) -> None:
        """Write a block after each row's valid prefix: at column `start` when every row has that length,
        else row by row (scatter)."""
        if start is not None:
            length = k_BKLd.shape[2]
            self.k[layer, :, :, start:start + length] = k_BKLd
            self.v[layer, :, :, start:start + length] = v_BKLd
            return
        b, heads, length, _ = k_BKLd.shape
        device = self.lens.device
        pos = (self.lens[:, None] + torch.arange(length, device=device))[:, None, :]  # (B, 1, L)
        rows = torch.arange(b, device=device)[:, None, None]
        head_idx = torch.arange(heads, device=device)[None, :, None]
        # indexing the whole tensor (not the view self.k[layer]): torch.compile then writes in place instead of
        # copying the cache of every layer at every step
        index = (torch.full((1, 1, 1), layer, device=device), rows, head_idx, pos)
        self.k.index_put_(index, k_BKLd)
        self.v.index_put_(index, v_BKLd)

    def view(self, layer: int, used: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer, :, :, :used], self.v[layer, :, :, :used]

    def with_empty_rows(self, extra: int) -> KVCache:
        """A copy followed by `extra` rows holding no context (length 0), e.g. the unconditional CFG branch."""
        out = KVCache.__new__(KVCache)
        shape = (self.k.shape[0], extra, *self.k.shape[2:])
        out.k = torch.cat([self.k, self.k.new_zeros(shape)], dim=1)
        out.v = torch.cat([self.v, self.v.new_zeros(shape)], dim=1)
        out.lens = torch.cat([self.lens, self.lens.new_zeros(extra)])
        return out


@dataclass(frozen=True)
class CacheAttention:
    """How a query block meets the cache: written into it (prefill / decoding) or only read (denoising).

    `read`, for a written block: the cache columns every layer reads, given by the caller (at least the longest
    row's length after the write). Then nothing in the forward depends on the values of `lens` (each row is
    written at its own length by a scatter, and the mask hides what a row does not own), so a compiled decoding
    step traces one graph for every step; without it the forward reads `lens` to choose the columns and the write.
    Only the capacity is checked: a `read` below a row's length would leave that row's last keys out.
    """

    cache: KVCache
    causal: bool
    write: bool
    read: int | None = None

    def prepare(self, query_len: int, backend: str) -> CacheStep:
        """What every layer of one forward shares, computed once: mask, cache columns read, write offset."""
        lens = self.cache.lens
        if self.read is not None:
            if not self.write or self.read > self.cache.capacity:
                raise ValueError(f"read={self.read} needs a written block and at most {self.cache.capacity} columns")
            mask = cache_attention_mask(lens, query_len, self.causal, self.read, appended=True)
            return CacheStep(self, mask, self.read, None, backend)
        longest = int(lens.max())
        uniform = bool((lens == longest).all())
        if self.write:
            if longest + query_len > self.cache.capacity:
                raise ValueError(f"KV cache overflow: {longest + query_len} tokens > capacity {self.cache.capacity}")
            read, key_len = longest + query_len, longest + query_len
        else:
            read, key_len = longest, longest + query_len
        mask = cache_attention_mask(lens, query_len, self.causal, key_len, appended=self.write)
        return CacheStep(self, mask, read, longest if uniform else None, backend)


@dataclass(frozen=True)
class CacheStep:
    spec: CacheAttention
    mask: torch.Tensor  # (B, 1, Lq, Lk)
    read: int  # cache columns each layer reads
    write_start: int | None  # common write offset, None for ragged rows
    backend: str

    def attend(self, layer: int, q, k, v) -> torch.Tensor:
        cache = self.spec.cache
        k, v = _cast(k, cache.k.dtype), _cast(v, cache.v.dtype)
        if self.spec.write:
            cache.write(layer, k, v, self.write_start)
            k_all, v_all = cache.view(layer, self.read)
        else:
            k_c, v_c = cache.view(layer, self.read)
            k_all, v_all = torch.cat([k_c, k], dim=2), torch.cat([v_c, v], dim=2)
        out = cached_attention(_cast(q, k_all.dtype), k_all, v_all, self.mask, self.spec.causal, self.backend)
        return _cast(out, q.dtype)


class MoTLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, with_generation: bool = True):
        super().__init__()
        self.und = Expert(cfg)
        self.gen = Expert(cfg) if with_generation else None
        self.cfg = cfg

    def forward(self, x_BLD, cos, sin, route: Route, layer_idx: int, step: PackedStep | CacheStep):
        b, length, dim = x_BLD.shape
        h, kv, d = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
        x_TD = x_BLD.reshape(b * length, dim)
        gen = self.gen or self.und  # report-only layers never see gen rows (checked by MoTDecoder)
        qkv = route.map(self.und.qkv, gen.qkv, x_TD).view(b, length, -1)
        qk, v = qkv.split([(h + kv) * d, kv * d], dim=-1)
        q, k = apply_rope(qk.view(b, length, h + kv, d).transpose(1, 2), cos, sin).split([h, kv], dim=1)  # q|k at once
        v = v.view(b, length, kv, d).transpose(1, 2)
        attn_BLD = step.attend(layer_idx, q, k, v)
        out = route.map(self.und.finish, gen.finish, attn_BLD.reshape(b * length, -1), x_TD)
        return out.view(b, length, dim)


class MoTDecoder(nn.Module):
    """Token embedding, MoT layers and the two final norms. Input: embeddings; output: normed hidden states."""

    def __init__(self, cfg: DecoderConfig, with_generation: bool = True):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.with_generation = with_generation
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTLayer(cfg, with_generation) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if with_generation else None
        self.attention_backend = check_backend(cfg.attention_backend)

    def set_attention_backend(self, name: str) -> None:
        self.attention_backend = check_backend(name)

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype | None = None) -> KVCache:
        """A cache in the weights' dtype, except on CPU, where it is float32 unless the weights are bf16 and the
        CPU has native bf16: CPUs without it run bf16 attention several times slower than fp32
        (docs/benchmarks.md), and with it the bf16 cache is the faster one (half the bytes a decoding step reads)."""
        w = self.norm.weight  # the compute dtype (the embeddings may be int8)
        cpu_fp32 = w.device.type == "cpu" and not (w.dtype == torch.bfloat16 and native_bf16(w.device))
        default = torch.float32 if cpu_fp32 else w.dtype
        return KVCache(self.cfg.num_layers, batch, self.cfg.num_kv_heads, capacity, self.cfg.head_dim,
                       dtype or default, w.device)

    def forward(self, x_BLD: torch.Tensor, position_ids: torch.Tensor, gen_mask: torch.Tensor | None,
                attention: PackedLayout | CacheAttention, hidden_states: list | None = None) -> torch.Tensor:
        """Run every layer and the per-expert final norm.

        attention: a PackedLayout (training, B = 1) or a CacheAttention (inference); a written cache's `lens`
        advance by L (for ragged blocks, the caller sets `lens` afterwards). hidden_states, if a list, receives
        the residual stream after each layer (for REPA and debugging).
        """
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x_BLD.dtype)
        route = Route.from_mask(gen_mask)
        if route.only != "und" and not self.with_generation:
            raise ValueError("generation tokens given to a report-only decoder (built with_generation=False)")
        if isinstance(attention, PackedLayout):  # the mask (sdpa) or block mask (flex) is made once, here
            step = PackedStep.prepare(attention, self.attention_backend, x_BLD.device)
        else:
            step = attention.prepare(x_BLD.shape[1], self.attention_backend)
        for i, layer in enumerate(self.layers):
            x_BLD = layer(x_BLD, cos, sin, route, i, step)
            if hidden_states is not None:
                hidden_states.append(x_BLD)
        if isinstance(attention, CacheAttention) and attention.write:
            attention.cache.lens += x_BLD.shape[1]
        b, length, dim = x_BLD.shape
        norm_gen = self.norm_gen or self.norm
        return route.map(self.norm, norm_gen, x_BLD.reshape(b * length, dim)).view(b, length, dim)
