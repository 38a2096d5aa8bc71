"""Key maps between the authors' vision-tower / connector state dicts and our modules (spec 9.2).

The authors' tower is Janus's timm-style SigLIP ViT, stored under `vit_model.vision_tower.` (keys such as
`blocks.0.attn.qkv.weight`, `pos_embed`, `attn_pool.latent`); ours is transformers' `SiglipVisionModel`
(`unix_cxr.model.vision.VisionEncoder.tower`; keys such as `encoder.layers.0.self_attn.q_proj.weight`).
In transformers >= 5 `SiglipVisionModel` holds `embeddings` / `encoder` / `post_layernorm` / `head` directly;
there is no `vision_model.` level in its state dict.

The connector is stored Janus-style as `connector.layers.0/2` and is our `connector.fc1/fc2`.

All keys here are relative: to `vit_model.vision_tower.` / our `tower.` and to `connector.` on both sides.
The map is declared once, as the rule tables below; both directions are derived from it. A rule says:
the authors' tensors, concatenated along dim 0 (after dropping a leading singleton dim where `squeeze` is
set), equal our tensors concatenated along dim 0; `*_parts` give the relative sizes of the pieces along
dim 0. This covers plain renames, the fused qkv split into q/k/v, the attention-pool q + kv merged into
`nn.MultiheadAttention.in_proj_*`, and pos_embed (1, N, D) <-> position_embedding.weight (N, D).

timm `AttentionPoolLatent` and HF `SiglipMultiheadAttentionPoolingHead` compute the same function:
latent/probe (1, 1, D) queries the tokens through multi-head attention whose q rows come from `q` and whose
k, v rows come from `kv` (split as (2, heads, head_dim), i.e. first D rows k, last D rows v), exactly the
layout of `in_proj_weight` = [Wq; Wk; Wv]; then `proj` = `out_proj`, and x + mlp(norm(x)). Our forward never
calls this head; it only gives the checkpoint's `attn_pool` tensors a home.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

__all__ = [
    "CONNECTOR_RULES",
    "TOWER_RULES",
    "KeyRule",
    "connector_from_authors",
    "connector_to_authors",
    "tower_from_authors",
    "tower_to_authors",
]


@dataclass(frozen=True)
class KeyRule:
    """cat(authors tensors, dim 0) == cat(our tensors, dim 0); `{i}` in a key is a layer index."""

    authors: tuple[str, ...]
    ours: tuple[str, ...]
    authors_parts: tuple[int, ...] = (1,)  # relative sizes along dim 0 of the authors' pieces
    ours_parts: tuple[int, ...] = (1,)
    squeeze: bool = False  # the authors' tensor has an extra leading dim of size 1 that ours lacks


def _rename(authors: str, ours: str) -> KeyRule:
    return KeyRule((authors,), (ours,))


def _weight_bias(authors: str, ours: str) -> tuple[KeyRule, ...]:
    return tuple(_rename(f"{authors}.{p}", f"{ours}.{p}") for p in ("weight", "bias"))


_QKV = tuple(f"encoder.layers.{{i}}.self_attn.{n}_proj" for n in "qkv")

TOWER_RULES: tuple[KeyRule, ...] = (
    *_weight_bias("patch_embed.proj", "embeddings.patch_embedding"),
    KeyRule(("pos_embed",), ("embeddings.position_embedding.weight",), squeeze=True),
    *_weight_bias("blocks.{i}.norm1", "encoder.layers.{i}.layer_norm1"),
    KeyRule(("blocks.{i}.attn.qkv.weight",), tuple(f"{k}.weight" for k in _QKV), ours_parts=(1, 1, 1)),
    KeyRule(("blocks.{i}.attn.qkv.bias",), tuple(f"{k}.bias" for k in _QKV), ours_parts=(1, 1, 1)),
    *_weight_bias("blocks.{i}.attn.proj", "encoder.layers.{i}.self_attn.out_proj"),
    *_weight_bias("blocks.{i}.norm2", "encoder.layers.{i}.layer_norm2"),
    *_weight_bias("blocks.{i}.mlp.fc1", "encoder.layers.{i}.mlp.fc1"),
    *_weight_bias("blocks.{i}.mlp.fc2", "encoder.layers.{i}.mlp.fc2"),
    *_weight_bias("norm", "post_layernorm"),
    # timm AttentionPoolLatent (unused by the forward) -> HF SiglipMultiheadAttentionPoolingHead
    _rename("attn_pool.latent", "head.probe"),
    KeyRule(("attn_pool.q.weight", "attn_pool.kv.weight"), ("head.attention.in_proj_weight",), authors_parts=(1, 2)),
    KeyRule(("attn_pool.q.bias", "attn_pool.kv.bias"), ("head.attention.in_proj_bias",), authors_parts=(1, 2)),
    *_weight_bias("attn_pool.proj", "head.attention.out_proj"),
    *_weight_bias("attn_pool.norm", "head.layernorm"),
    *_weight_bias("attn_pool.mlp.fc1", "head.mlp.fc1"),
    *_weight_bias("attn_pool.mlp.fc2", "head.mlp.fc2"),
)

CONNECTOR_RULES: tuple[KeyRule, ...] = (
    *_weight_bias("layers.0", "fc1"),
    *_weight_bias("layers.2", "fc2"),
)

# Our keys that are not checkpoint tensors (non-persistent buffers some checkpoints still carry): dropped.
_OURS_IGNORED = frozenset({"embeddings.position_ids"})


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z")


def _convert(
    sd: dict[str, torch.Tensor], rules: tuple[KeyRule, ...], to_ours: bool, what: str,
    ignored: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Apply `rules` in one direction; every input key must be consumed by exactly one complete rule."""
    src_of = (lambda r: r.authors) if to_ours else (lambda r: r.ours)
    patterns = [(idx, slot, _pattern(t)) for idx, rule in enumerate(rules) for slot, t in enumerate(src_of(rule))]
    groups: dict[tuple[int, str | None], dict[int, str]] = {}
    unknown = []
    for key in sd:
        if not to_ours and key in ignored:
            log.debug("dropping non-checkpoint key %s", key)
            continue
        for idx, slot, pat in patterns:
            m = pat.match(key)
            if m:
                groups.setdefault((idx, m.groupdict().get("i")), {})[slot] = key
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{what}: unknown keys {sorted(unknown)}")

    out: dict[str, torch.Tensor] = {}
    for (rule_idx, layer), found in groups.items():
        rule = rules[rule_idx]
        src_t, dst_t = (rule.authors, rule.ours) if to_ours else (rule.ours, rule.authors)
        src_parts, dst_parts = (
            (rule.authors_parts, rule.ours_parts) if to_ours else (rule.ours_parts, rule.authors_parts)
        )
        missing = [_fill(t, layer) for slot, t in enumerate(src_t) if slot not in found]
        if missing:
            raise ValueError(f"{what}: incomplete tensor group, have {sorted(found.values())} but missing {missing}")
        pieces = [sd[found[slot]] for slot in range(len(src_t))]
        _check_parts(pieces, src_parts, what, [found[s] for s in range(len(src_t))])
        if to_ours and rule.squeeze:
            pieces = [_squeeze0(p, found[0], what) for p in pieces]
        whole = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        if len(dst_t) == 1:
            result = [whole]
        else:
            unit, rem = divmod(whole.shape[0], sum(dst_parts))
            if rem:
                raise ValueError(f"{what}: {sorted(found.values())} dim 0 = {whole.shape[0]} is not divisible "
                                 f"into parts {dst_parts}")
            # clone: the pieces must not share storage (safetensors refuses to save shared tensors)
            result = [p.clone() for p in torch.split(whole, [unit * n for n in dst_parts], dim=0)]
        if not to_ours and rule.squeeze:
            result = [r.unsqueeze(0) for r in result]
        for t, tensor in zip(dst_t, result, strict=False):
            out[_fill(t, layer)] = tensor
    return out


def _fill(template: str, layer: str | None) -> str:
    return template if layer is None else template.replace("{i}", layer)


def _check_parts(pieces: list[torch.Tensor], parts: tuple[int, ...], what: str, keys: list[str]) -> None:
    if len(pieces) < 2:
        return
    unit = pieces[0].shape[0] / parts[0]
    if any(p.shape[0] != unit * n for p, n in zip(pieces, parts, strict=False)) or any(
        p.shape[1:] != pieces[0].shape[1:] for p in pieces
    ):
        shapes = {k: tuple(p.shape) for k, p in zip(keys, pieces, strict=False)}
        raise ValueError(f"{what}: tensors {shapes} do not have the relative sizes {parts} along dim 0")


def _squeeze0(t: torch.Tensor, key: str, what: str) -> torch.Tensor:
    if t.dim() < 1 or t.shape[0] != 1:
        raise ValueError(f"{what}: {key} must have a leading dim of size 1, got shape {tuple(t.shape)}")
    return t.squeeze(0)


def tower_from_authors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' tower keys (relative to `vit_model.vision_tower.`) -> ours (relative to `tower.`)."""
    return _convert(sd, TOWER_RULES, to_ours=True, what="vision tower (authors -> ours)")


def tower_to_authors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tower keys (relative to `tower.`) -> authors' (relative to `vit_model.vision_tower.`); exact inverse."""
    return _convert(sd, TOWER_RULES, to_ours=False, what="vision tower (ours -> authors)", ignored=_OURS_IGNORED)


def connector_from_authors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`layers.0/2.*` -> `fc1/fc2.*` (both relative to `connector.`)."""
    return _convert(sd, CONNECTOR_RULES, to_ours=True, what="connector (authors -> ours)")


def connector_to_authors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`fc1/fc2.*` -> `layers.0/2.*` (both relative to `connector.`); exact inverse."""
    return _convert(sd, CONNECTOR_RULES, to_ours=False, what="connector (ours -> authors)")
