"""Loading and saving UniX weights: safetensors only, in the authors' layout, strict with a precise report.

Pickled checkpoints (.ckpt, .pt, .pth, .bin, .pkl) are never opened here; the one-time conversion commands
(`unix-cxr convert-vae CKPT OUT.safetensors --trust-pickle`, `unix-cxr convert-janus FOLDER --trust-pickle`) are
the only places that unpickle (`.pickled`), and only when told to. The file handling itself (pickle refusal,
reading, atomic writing, mismatch reports) is `.safetensors_io`; starting from a Janus-Pro folder is `.janus`.

Loading streams: the file's key set and shapes are checked against the model from its header alone, then its
tensors are read and copied into the model one group at a time (a decoder layer, a vision block, one other
tensor), the file opened afresh for each group. So a load needs the model's memory plus one group's, never a
second copy of the weights (safetensors reads through a memory map, and every page read through one open map
stays in the process's resident memory until the map is closed). A module that keeps a weight in another form
than the checkpoint's declares the checkpoint's tensors with `checkpoint_layout()` (name -> a tensor of the
checkpoint's shape) and takes them in its own `_load_from_state_dict`: `infer.quantize.Int8Linear` (and
`Int4Linear`) quantizes each float weight as it arrives, so a quantized model is loaded without its float weights
ever being whole.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..model.unix import UniX
from ..utils.memory import release_freed_memory
from .keymap import from_authors, is_generation_key, to_authors
from .safetensors_io import (
    find_non_finite,
    open_safetensors,
    refuse_non_finite,
    refuse_pickle,
    state_dict_mismatch,
    write_safetensors_atomic,
)

log = logging.getLogger(__name__)


# Tensors that no forward path reads: the two fixed sin-cos tables (BAGEL's loader drops and rebuilds them) and
# SigLIP's attention-pooling head. A release file may lack them; then our own values stay, and a line is logged.
UNUSED_PREFIXES = ("vit_pos_embed.", "latent_pos_embed.", "vision.tower.head.")


# Keys read and loaded together: everything of one decoder layer or vision block (a vision rule may combine
# tensors, e.g. q and kv into one in_proj), the rest of the vision tower, the connector; any other key alone.
_GROUP = re.compile(r"^.*?\.(?:layers|blocks)\.\d+\.|^(?:vit_model|vision_model)\.vision_tower\.|^connector\.")


def load_groups(keys: Iterable[str]) -> list[list[str]]:
    """The authors' keys in the groups that are loaded together, in file order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        m = _GROUP.match(key)
        groups.setdefault(m.group(0) if m else key, []).append(key)
    return list(groups.values())


def expected_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold for `model`, by name: its state dict, except that a module declaring
    `checkpoint_layout()` (weights kept in another form, e.g. int8) contributes the tensors it takes instead."""
    out: dict[str, torch.Tensor] = {}
    declared = []
    for name, module in model.named_modules():
        layout = getattr(module, "checkpoint_layout", None)
        if layout is not None:
            out.update({f"{name}.{k}": v for k, v in layout().items()})
            declared.append(f"{name}.")
    out.update({k: v for k, v in model.state_dict().items() if not k.startswith(tuple(declared))})
    return out


def load_authors_weights(model: UniX, source: str | Path | dict[str, torch.Tensor],
                         allow_non_finite: bool = False) -> None:
    """Load a state dict in the authors' layout (file or dict) into `model`, strictly, one group at a time.

    A report-only model skips the generation tensors without reading them. Raises ValueError naming every
    missing, unexpected or mis-shaped key (only the unused tensors of UNUSED_PREFIXES may be absent) before any
    tensor is read, a file that is not safetensors, and (unless `allow_non_finite`) the first tensor that holds
    NaN or infinity (the tensors before it are then already loaded).
    """
    skip = None if model.with_generation else is_generation_key
    if isinstance(source, dict):
        authors = {k: v for k, v in source.items() if skip is None or not skip(k)}
        layout, where = {k: v.to("meta") for k, v in authors.items()}, "state dict"

        def read(keys: list[str]) -> dict[str, torch.Tensor]:
            return {k: authors[k] for k in keys}
    else:
        where = path = Path(source)
        refuse_pickle(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such checkpoint file")
        layout = _file_layout(path, skip)

        def read(keys: list[str]) -> dict[str, torch.Tensor]:
            with open_safetensors(path) as f:  # a fresh map per group: its pages leave memory when it closes
                return {k: f.get_tensor(k) for k in keys}
    _check_layout(model, layout)
    _stream(model, load_groups(layout), read, where, allow_non_finite)


def _file_layout(path: Path, skip: Callable[[str], bool] | None) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors of their shapes (all that the checks compare), from its header alone."""
    with open_safetensors(path) as f:
        keys = [k for k in f.keys() if skip is None or not skip(k)]  # noqa: SIM118 - safe_open is not iterable
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in keys}


def _check_layout(model: UniX, layout: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint whose keys or shapes do not fit `model` (from the layout alone, nothing read)."""
    ours = from_authors(layout)
    expected = expected_layout(model)
    absent_unused = [k for k in expected if k not in ours and k.startswith(UNUSED_PREFIXES)]
    if absent_unused:
        log.info("checkpoint lacks %d unused tensors (%s...); keeping the model's own", len(absent_unused),
                 absent_unused[0])
        ours.update({k: expected[k] for k in absent_unused})
    problem = state_dict_mismatch(expected, ours)
    if problem:
        raise ValueError(f"checkpoint does not fit this UniX config: {problem}")


@torch.no_grad()
def _stream(model: UniX, groups: list[list[str]], read: Callable[[list[str]], dict[str, torch.Tensor]],
            where: str | Path, allow_non_finite: bool) -> None:
    """Read each group, check it is finite, map it to our names and copy it into the model (into each tensor's
    own dtype). With `allow_non_finite`, one warning for the whole file, naming its first non-finite tensor."""
    loaded, first, bad = 0, "", 0
    for keys in groups:
        group = read(keys)
        message, count = find_non_finite(group, where)
        if not allow_non_finite:
            refuse_non_finite(message, count)  # names the first non-finite tensor, in file order
        first, bad = first or message, bad + count
        ours = from_authors(group)
        result = model.load_state_dict(ours, strict=False)
        if result.unexpected_keys:  # cannot happen after _check_layout; a map bug must not pass silently
            raise ValueError(f"checkpoint tensors with no place in the model: {result.unexpected_keys[:5]}")
        loaded += len(ours)
    refuse_non_finite(first, bad, allow=True)
    release_freed_memory()  # the groups' temporaries, which glibc would keep resident
    log.info("loaded %d tensors into UniX", loaded)


def save_authors_weights(model: UniX, path: str | Path) -> Path:
    """Save `model` in the authors' layout (a file the released inference code can load)."""
    return write_safetensors_atomic(to_authors(model.state_dict()), path, metadata={"format": "pt"})
