"""Report generation (spec 2.4 a', 4.1): images + prompt -> text, with one KV cache for the whole batch.

Sequence per row:  [BOI][vision tokens][EOI]  (one RoPE position, bidirectional, cached)
                   [BOS]([BOS]) prompt [EOS]   (causal, cached; the second BOS is the released behaviour)
                   BOS, then one token per step (greedy or temperature / top-p sampling) until EOS.
Rows may have prompts of different lengths and stop at different steps; the cache keeps per-row lengths.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..config import DecodingConfig, SpecialTokens
from ..model.decoder import CacheAttention, KVCache
from ..model.unix import UniX
from .quantize import decoding_steps


@dataclass
class ReportOutput:
    token_ids: list[list[int]]  # generated ids per row, without the start BOS and the stop EOS
    finished: list[bool]  # True where the row stopped at EOS (False: max_new_tokens reached)
    step_logits: list[torch.Tensor] = field(default_factory=list)  # per step (B, V), if requested


@dataclass
class PrefillState:
    cache: KVCache
    next_position: torch.Tensor  # (B,) RoPE position of the first decoded token
    image_hidden: torch.Tensor  # (B, N + 2, D) final hidden states of the image block
    prompt_hidden: torch.Tensor  # (B, Lp, D) final hidden states of the prompt block (padded)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (the top token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def choose_next(logits: torch.Tensor, decoding: DecodingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) -> (B,) next ids: argmax, or a sample at the given temperature / top-p."""
    if not decoding.do_sample:
        return logits.argmax(-1)
    if decoding.temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {decoding.temperature}")
    probs = top_p_filter(logits.float() / decoding.temperature, decoding.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def decode_step(model: UniX, ids: torch.Tensor, position: torch.Tensor, cache: KVCache,
                read: int | None = None) -> torch.Tensor:
    """One decoding step: the (B,) ids just chosen, at RoPE positions (B,), are written into the cache after each
    row's valid prefix and attended with it; -> next-token logits (B, V). `read`: see `CacheAttention` (a
    compiled step passes the columns to read, so that its graph does not depend on the values of `cache.lens`)."""
    hidden = model.decoder(model.embed_text(ids[:, None]), position[:, None], None,
                           CacheAttention(cache, causal=True, write=True, read=read))
    return model.logits(hidden[:, 0])


@functools.cache
def compiled_decode_step() -> Callable:
    """`decode_step` through `torch.compile`, made once per process: one graph for every step, cache capacity and
    batch of two or more (dynamic shapes), and one for a batch of one (torch.compile specialises sizes of 1)."""
    return torch.compile(decode_step, fullgraph=True, dynamic=True)


class ReportGenerator:
    """compile: run each decoding step through `torch.compile` (`compiled_decode_step`): the norms, RoPE, cache
    writes and the per-operator dispatch of a step fused into a few kernels, the matmuls left to their libraries.
    It pays after a compile of tens of seconds per process (docs/benchmarks.md). In float32 the tokens are those
    of the eager step (tested); in bf16 the fused kernels round differently, so the logits agree to bf16 rounding
    (tested) and a token whose two best logits nearly tie may differ."""

    def __init__(self, model: UniX, decoding: DecodingConfig | None = None, compile: bool = False):
        self.model = model
        self.tokens: SpecialTokens = model.cfg.tokens
        self.decoding = decoding or model.cfg.decoding
        self.compile = compile

    def prompt_block(self, prompt_ids: list[int], double_bos: bool | None = None) -> list[int]:
        """[BOS] (+[BOS]) prompt [EOS] for ids of the prompt text encoded without special tokens."""
        double = self.decoding.double_bos if double_bos is None else double_bos
        bos = [self.tokens.bos] * (2 if double else 1)
        return bos + list(prompt_ids) + [self.tokens.eos]

    @torch.inference_mode()
    def prefill(self, pixel_values: torch.Tensor, prompt_blocks: list[list[int]], max_new_tokens: int) -> PrefillState:
        """Cache the image block, then the (already wrapped) prompt blocks of each row."""
        model, tok = self.model, self.tokens
        b = pixel_values.shape[0]
        if len(prompt_blocks) != b:
            raise ValueError(f"{b} images but {len(prompt_blocks)} prompts")
        device = model.device
        vis = model.embed_images(pixel_values.to(device))  # (B, N, D)
        markers = model.embed_text(torch.tensor([tok.start_of_image, tok.end_of_image], device=device))
        image = torch.cat([markers[0].expand(b, 1, -1), vis, markers[1].expand(b, 1, -1)], dim=1)
        lens = torch.tensor([len(p) for p in prompt_blocks], device=device)
        longest = int(lens.max())
        capacity = image.shape[1] + longest + max_new_tokens + 1
        limit = model.cfg.decoder.max_position_embeddings
        if capacity > limit:
            raise ValueError(f"prompt of {longest} tokens + {image.shape[1]} image tokens + {max_new_tokens} new "
                             f"tokens exceeds the context of {limit} tokens")
        cache = model.decoder.new_cache(b, capacity)
        zeros = torch.zeros(b, image.shape[1], dtype=torch.long, device=device)
        image_hidden = model.decoder(image, zeros, None, CacheAttention(cache, causal=False, write=True))

        ids = torch.full((b, longest), tok.eos, dtype=torch.long, device=device)
        for row, block in enumerate(prompt_blocks):
            ids[row, : len(block)] = torch.tensor(block, device=device)
        positions = 1 + torch.arange(longest, device=device).expand(b, -1)
        start = cache.lens.clone()
        prompt_hidden = model.decoder(model.embed_text(ids), positions, None,
                                      CacheAttention(cache, causal=True, write=True))
        cache.lens = start + lens  # ragged rows: only the real prompt tokens count
        return PrefillState(cache, 1 + lens, image_hidden, prompt_hidden)

    @torch.inference_mode()
    def decode(self, state: PrefillState, max_new_tokens: int, generator: torch.Generator | None = None,
               keep_logits: bool = False, decoding: DecodingConfig | None = None,
               on_token: Callable[[torch.Tensor], None] | None = None) -> ReportOutput:
        """Feed BOS, then each chosen token, until every row has produced EOS or max_new_tokens tokens.

        `on_token`: called after each step with the (B,) ids just chosen (a token stream; rows that have already
        produced EOS keep receiving ids, which the output drops).
        """
        model, decoding = self.model, decoding or self.decoding
        cache, position = state.cache, state.next_position.clone()
        b = position.shape[0]
        current = torch.full((b,), self.tokens.bos, dtype=torch.long, device=position.device)
        done = torch.zeros(b, dtype=torch.bool, device=position.device)
        chosen, logits_per_step = [], []
        step = decode_step
        if self.compile:
            if model.decoder.attention_backend != "sdpa":
                raise ValueError(f"compiled decoding needs the sdpa attention backend, not "
                                 f"{model.decoder.attention_backend!r} (set_attention_backend('sdpa') or "
                                 "compile=False)")
            for t in (cache.k, cache.v):  # symbolic: batch and capacity; static: layers, kv heads, head_dim
                for dim in (0, 2, 4):
                    torch._dynamo.mark_static(t, dim)
            step = compiled_decode_step()
        for _ in range(max_new_tokens):
            read = int(cache.lens.max()) + 1 if self.compile else None
            with decoding_steps():  # int8 layers (--quantize int8) run their decoding kernel
                logits = step(model, current, position, cache, read)
            if keep_logits:
                logits_per_step.append(logits.float().cpu())
            current = choose_next(logits, decoding, generator)
            chosen.append(current)
            if on_token is not None:
                on_token(current)
            done |= current == self.tokens.eos
            if bool(done.all()):
                break
            position += 1
        return ReportOutput(self._until_eos(chosen, b), done.tolist(), logits_per_step)

    def _until_eos(self, chosen: list[torch.Tensor], batch: int) -> list[list[int]]:
        """Per row, the chosen ids before the first EOS."""
        if not chosen:
            return [[] for _ in range(batch)]
        rows = torch.stack(chosen, dim=1).tolist()  # (B, steps)
        return [row[: row.index(self.tokens.eos)] if self.tokens.eos in row else row for row in rows]

    def generate(self, pixel_values: torch.Tensor, prompt_ids: list[list[int]], max_new_tokens: int | None = None,
                 generator: torch.Generator | None = None, **decoding_overrides) -> ReportOutput:
        """Normalised images (B, 3, S, S) + prompt ids (no special tokens) -> generated report ids per row."""
        decoding = replace(self.decoding, **decoding_overrides)
        steps = decoding.max_new_tokens if max_new_tokens is None else max_new_tokens
        blocks = [self.prompt_block(p, decoding.double_bos) for p in prompt_ids]
        state = self.prefill(pixel_values, blocks, steps)
        return self.decode(state, steps, generator, decoding=decoding)
