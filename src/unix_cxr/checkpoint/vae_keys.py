"""Key map between the CompVis latent-diffusion (ldm) AutoencoderKL layout and diffusers' `AutoencoderKL`.

The map is declared once, as data (`MODULE_RULES` + `LEAVES`), and read in both directions:

  * `MODULE_RULES`: ordered (ldm module, diffusers module, leaf kind) templates. Placeholders:
      {side}  encoder | decoder                 {i} level index (0 .. levels-1), same on both sides
      {j}     block index inside a level        {up} decoder level: ldm `up.{i}` <-> diffusers `up_blocks.{levels-1-i}`
  * `LEAVES[kind]`: (ldm leaf, diffusers leaf, reshape) for every parameter of that kind of module.
    Reshape "conv1x1": the ldm attention projections are 1x1 convs [C, C, 1, 1], diffusers uses linears [C, C].

`ldm_to_diffusers(sd, cfg)` / `diffusers_to_ldm(sd, cfg)` rename every key (and reshape the attention weights);
a key that no rule maps raises ValueError listing the keys. The two directions are exact inverses (no arithmetic,
only views/reshapes of the same values). `cfg` supplies the number of levels (len(cfg.ch_mult)), needed to reverse
the decoder's level order.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unix_cxr.config import VAEConfig

Tensor = torch.Tensor

# ---- the map, declared once -----------------------------------------------------------------------------
MODULE_RULES: tuple[tuple[str, str, str], ...] = (
    ("{side}.conv_in", "{side}.conv_in", "param"),
    ("encoder.down.{i}.block.{j}", "encoder.down_blocks.{i}.resnets.{j}", "resnet"),
    ("encoder.down.{i}.attn.{j}", "encoder.down_blocks.{i}.attentions.{j}", "attn"),
    ("encoder.down.{i}.downsample.conv", "encoder.down_blocks.{i}.downsamplers.0.conv", "param"),
    ("{side}.mid.block_1", "{side}.mid_block.resnets.0", "resnet"),
    ("{side}.mid.attn_1", "{side}.mid_block.attentions.0", "attn"),
    ("{side}.mid.block_2", "{side}.mid_block.resnets.1", "resnet"),
    ("decoder.up.{up}.block.{j}", "decoder.up_blocks.{up}.resnets.{j}", "resnet"),
    ("decoder.up.{up}.attn.{j}", "decoder.up_blocks.{up}.attentions.{j}", "attn"),
    ("decoder.up.{up}.upsample.conv", "decoder.up_blocks.{up}.upsamplers.0.conv", "param"),
    ("{side}.norm_out", "{side}.conv_norm_out", "param"),
    ("{side}.conv_out", "{side}.conv_out", "param"),
    ("quant_conv", "quant_conv", "param"),
    ("post_quant_conv", "post_quant_conv", "param"),
)

LEAVES: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "param": (("weight", "weight", None), ("bias", "bias", None)),
    "resnet": tuple(
        (f"{ldm}.{p}", f"{diff}.{p}", None)
        for ldm, diff in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
                          ("nin_shortcut", "conv_shortcut"))
        for p in ("weight", "bias")
    ),
    "attn": (
        ("norm.weight", "group_norm.weight", None),
        ("norm.bias", "group_norm.bias", None),
        ("q.weight", "to_q.weight", "conv1x1"),
        ("q.bias", "to_q.bias", None),
        ("k.weight", "to_k.weight", "conv1x1"),
        ("k.bias", "to_k.bias", None),
        ("v.weight", "to_v.weight", "conv1x1"),
        ("v.bias", "to_v.bias", None),
        ("proj_out.weight", "to_out.0.weight", "conv1x1"),
        ("proj_out.bias", "to_out.0.bias", None),
    ),
}

_PLACEHOLDER_RE = {"side": r"(?P<side>encoder|decoder)", "i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)",
                   "up": r"(?P<up>\d+)"}
_TARGETS = ("ldm", "diffusers")


# ---- the machinery ---------------------------------------------------------------------------------------
def _compile(template: str) -> str:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(_PLACEHOLDER_RE[m.group(1)])
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return "".join(out)


def _build_matchers(source: str) -> list[tuple[re.Pattern[str], str, dict[str, tuple[str, str | None]]]]:
    """For one source layout: (regex over the whole key, target module template,
    {source leaf: (target leaf, reshape)})."""
    src_idx = _TARGETS.index(source)
    matchers = []
    for rule in MODULE_RULES:
        src_tmpl, dst_tmpl, kind = rule[src_idx], rule[1 - src_idx], rule[2]
        leaves = {leaf[src_idx]: (leaf[1 - src_idx], leaf[2]) for leaf in LEAVES[kind]}
        alternatives = "|".join(re.escape(leaf) for leaf in leaves)
        pattern = re.compile(rf"^{_compile(src_tmpl)}\.(?P<leaf>{alternatives})$")
        matchers.append((pattern, dst_tmpl, leaves))
    return matchers


_MATCHERS = {source: _build_matchers(source) for source in _TARGETS}


def _reshape(tensor: Tensor, kind: str | None, to: str, key: str) -> Tensor:
    if kind is None:
        return tensor
    if to == "diffusers":  # conv 1x1 [C_out, C_in, 1, 1] -> linear [C_out, C_in]
        if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
            return tensor.reshape(tensor.shape[0], tensor.shape[1])
        if tensor.ndim == 2:
            return tensor
    else:  # linear -> conv 1x1
        if tensor.ndim == 2:
            return tensor.reshape(tensor.shape[0], tensor.shape[1], 1, 1)
        if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
            return tensor
    raise ValueError(f"{key}: attention projection weight has shape {tuple(tensor.shape)}, "
                     "expected [C, C] or [C, C, 1, 1]")


def map_key(key: str, levels: int, source: str) -> tuple[str, str | None] | None:
    """Target name and reshape kind of one `source`-layout key, or None when no rule maps it."""
    for pattern, dst_tmpl, leaves in _MATCHERS[source]:
        m = pattern.match(key)
        if m is None:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        for name in ("i", "up"):
            if name in groups:
                level = int(groups[name])
                if level >= levels:
                    return None
                if name == "up":  # the decoder runs its levels in the opposite order in diffusers
                    groups[name] = str(levels - 1 - level)
        leaf, reshape = leaves[groups.pop("leaf")]
        return f"{dst_tmpl.format(**groups)}.{leaf}", reshape
    return None


def _convert(sd: dict[str, Tensor], levels: int, source: str) -> dict[str, Tensor]:
    target = _TARGETS[1 - _TARGETS.index(source)]
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in sd.items():
        mapped = map_key(key, levels, source)
        if mapped is None:
            unmapped.append(key)
            continue
        new_key, reshape = mapped
        if new_key in out:
            raise ValueError(f"two {source} keys map to the same {target} key {new_key!r}")
        out[new_key] = _reshape(tensor, reshape, target, key)
    if unmapped:
        shown = ", ".join(unmapped[:10]) + (f", ... ({len(unmapped) - 10} more)" if len(unmapped) > 10 else "")
        raise ValueError(f"{len(unmapped)} VAE key(s) have no {source} -> {target} mapping "
                         f"(levels={levels}): {shown}")
    return out


def ldm_to_diffusers(sd: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Rename a CompVis (ldm) AutoencoderKL state dict to diffusers' AutoencoderKL names."""
    return _convert(sd, len(cfg.ch_mult), "ldm")


def diffusers_to_ldm(sd: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Rename a diffusers AutoencoderKL state dict to the CompVis (ldm) names."""
    return _convert(sd, len(cfg.ch_mult), "diffusers")


# ---- layout detection ------------------------------------------------------------------------------------
_LDM_MARK = re.compile(r"^(encoder\.(down|mid)\.|decoder\.(up|mid)\.)")
_DIFFUSERS_MARK = re.compile(r"^(encoder\.(down_blocks|mid_block)\.|decoder\.(up_blocks|mid_block)\.)")


def detect_layout(keys: list[str] | dict[str, Tensor]) -> str:
    """'ldm' or 'diffusers', from the block names; ValueError when the keys are neither or a mix of both."""
    keys = list(keys)
    ldm = any(_LDM_MARK.match(k) for k in keys)
    diffusers = any(_DIFFUSERS_MARK.match(k) for k in keys)
    if ldm and diffusers:
        raise ValueError("VAE state dict mixes ldm keys (encoder.down.*) and diffusers keys (encoder.down_blocks.*)")
    if not (ldm or diffusers):
        shown = ", ".join(keys[:5])
        raise ValueError(f"not an AutoencoderKL state dict (no encoder.down / encoder.down_blocks keys); "
                         f"first keys: {shown}")
    return "ldm" if ldm else "diffusers"


def count_levels(keys: list[str] | dict[str, Tensor], layout: str) -> int:
    """Number of resolution levels (len(ch_mult)) that a state dict's keys use."""
    pattern = re.compile(r"^encoder\.down\.(\d+)\." if layout == "ldm" else r"^encoder\.down_blocks\.(\d+)\.")
    levels = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    if not levels:
        raise ValueError(f"no encoder level keys found in a {layout}-layout VAE state dict")
    return max(levels) + 1


def convert_layout(sd: dict[str, Tensor], levels: int, source: str) -> dict[str, Tensor]:
    """`ldm_to_diffusers` / `diffusers_to_ldm` with an explicit level count (when no config is at hand)."""
    if source not in _TARGETS:
        raise ValueError(f"unknown layout {source!r}; expected one of {_TARGETS}")
    return _convert(sd, levels, source)


__all__: list[str] = ["LEAVES", "MODULE_RULES", "convert_layout", "count_levels", "detect_layout", "diffusers_to_ldm",
                      "ldm_to_diffusers", "map_key"]
