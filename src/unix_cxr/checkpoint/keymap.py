"""The one map between the authors' UniX state-dict keys (spec 9.2) and ours.

Authors (released model.safetensors)                         ours (UniX.state_dict())
language_model.model.embed_tokens.weight                      decoder.embed_tokens.weight
language_model.model.layers.{i}.self_attn.q_proj[_moe_gen].*  decoder.layers.{i}.{und|gen}.q_proj.*   (k, v, o alike)
language_model.model.layers.{i}.self_attn.q_norm[_moe_gen].*  decoder.layers.{i}.{und|gen}.q_norm.*   (k_norm alike)
language_model.model.layers.{i}.input_layernorm[_moe_gen].*   decoder.layers.{i}.{und|gen}.input_layernorm.*
language_model.model.layers.{i}.post_attention_layernorm[_moe_gen].*   ...{und|gen}.post_attention_layernorm.*
language_model.model.layers.{i}.mlp[_moe_gen].{gate,up,down}_proj.*   ...{und|gen}.mlp.{gate,up,down}_proj.*
language_model.model.norm[_moe_gen].weight                    decoder.norm[_gen].weight
language_model.lm_head.weight                                 lm_head.weight
vit_model.vision_tower.* (timm names; Janus files: vision_model.vision_tower.*)   vision.tower.* (transformers)
connector.layers.{0,2}.* (Janus files: aligner.layers.{0,2}.*)  vision.connector.fc{1,2}.*
time_embedder.*, vae2llm.*, llm2vae.*, latent_pos_embed.*, vit_pos_embed.*   unchanged
"""

from __future__ import annotations

import re

import torch

from .vision_keys import connector_from_authors, connector_to_authors, tower_from_authors, tower_to_authors

_LAYER = re.compile(
    r"^language_model\.model\.layers\.(\d+)\.(?:self_attn\.)?"
    r"(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm|input_layernorm|post_attention_layernorm|mlp)(_moe_gen)?\.(.+)$"
)
_OUR_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(und|gen)\.([a-z_]+)\.(.+)$")
_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"}
_RENAMES = {
    "language_model.model.embed_tokens.weight": "decoder.embed_tokens.weight",
    "language_model.model.norm.weight": "decoder.norm.weight",
    "language_model.model.norm_moe_gen.weight": "decoder.norm_gen.weight",
    "language_model.lm_head.weight": "lm_head.weight",
}
_UNCHANGED = ("time_embedder.", "vae2llm.", "llm2vae.", "latent_pos_embed.", "vit_pos_embed.")
_TOWER_PREFIXES = ("vit_model.vision_tower.", "vision_model.vision_tower.")


_INVERSE_RENAMES = {v: k for k, v in _RENAMES.items()}


def llm_key_from_authors(key: str) -> str | None:
    """Our name for one of the authors' language-model keys (`language_model.*`), or None when the map has none."""
    if key in _RENAMES:
        return _RENAMES[key]
    if m := _LAYER.match(key):
        layer, part, gen, rest = m.groups()
        return f"decoder.layers.{layer}.{'gen' if gen else 'und'}.{part}.{rest}"
    return None


def llm_key_to_authors(key: str) -> str | None:
    """The authors' name for one of our decoder / lm_head keys (the inverse of `llm_key_from_authors`), or None."""
    if key in _INVERSE_RENAMES:
        return _INVERSE_RENAMES[key]
    if m := _OUR_LAYER.match(key):
        layer, expert, part, rest = m.groups()
        suffix = "_moe_gen" if expert == "gen" else ""
        scope = "self_attn." if part in _ATTN else ""
        return f"language_model.model.layers.{layer}.{scope}{part}{suffix}.{rest}"
    return None


def from_authors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' keys -> ours. Keys that belong to no known part raise ValueError (listed)."""
    out: dict[str, torch.Tensor] = {}
    tower: dict[str, torch.Tensor] = {}
    connector: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if (ours := llm_key_from_authors(key)) is not None:
            out[ours] = value
        elif key.startswith(_UNCHANGED):
            out[key] = value
        elif prefix := next((p for p in _TOWER_PREFIXES if key.startswith(p)), None):
            tower[key[len(prefix):]] = value
        elif key.startswith("connector."):
            connector[key[len("connector."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint keys belong to no UniX part: {unknown[:8]}")
    out.update({f"vision.tower.{k}": v for k, v in tower_from_authors(tower).items()} if tower else {})
    out.update({f"vision.connector.{k}": v for k, v in connector_from_authors(connector).items()} if connector else {})
    return out


def to_authors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the authors' keys (exact inverse of from_authors for the vit_model.* naming)."""
    out: dict[str, torch.Tensor] = {}
    tower: dict[str, torch.Tensor] = {}
    connector: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if (theirs := llm_key_to_authors(key)) is not None:
            out[theirs] = value
        elif key.startswith(_UNCHANGED):
            out[key] = value
        elif key.startswith("vision.tower."):
            tower[key[len("vision.tower."):]] = value
        elif key.startswith("vision.connector."):
            connector[key[len("vision.connector."):]] = value
        else:
            raise ValueError(f"state-dict key {key!r} has no place in the authors' layout")
    out.update({f"vit_model.vision_tower.{k}": v for k, v in tower_to_authors(tower).items()} if tower else {})
    out.update({f"connector.{k}": v for k, v in connector_to_authors(connector).items()} if connector else {})
    return out


def is_generation_key(authors_key: str) -> bool:
    """Authors' keys that a report-only model does not hold."""
    return "_moe_gen" in authors_key or authors_key.startswith(("time_embedder.", "vae2llm.", "llm2vae.",
                                                               "latent_pos_embed."))
