"""Loading and saving UniX weights: safetensors only, in the authors' layout, strict with a precise report.

Pickled checkpoints (.ckpt, .pt, .pth, .bin, .pkl) are never opened here; the one-time conversion commands
(`unix-cxr convert-vae CKPT OUT.safetensors --trust-pickle`, `unix-cxr convert-janus FOLDER --trust-pickle`) are
the only places that unpickle (`.pickled`), and only when told to. The file handling itself (pickle refusal,
reading, atomic writing, mismatch reports) is `.safetensors_io`; starting from a Janus-Pro folder is `.janus`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..model.unix import UniX
from .keymap import from_authors, is_generation_key, to_authors
from .safetensors_io import check_finite, read_safetensors, state_dict_mismatch, write_safetensors_atomic

log = logging.getLogger(__name__)


# Tensors that no forward path reads: the two fixed sin-cos tables (BAGEL's loader drops and rebuilds them) and
# SigLIP's attention-pooling head. A release file may lack them; then our own values stay, and a line is logged.
UNUSED_PREFIXES = ("vit_pos_embed.", "latent_pos_embed.", "vision.tower.head.")


def load_authors_weights(model: UniX, source: str | Path | dict[str, torch.Tensor],
                         allow_non_finite: bool = False) -> None:
    """Load a state dict in the authors' layout (file or dict) into `model`, strictly.

    A report-only model skips the generation tensors without reading them. Raises ValueError naming every
    missing, unexpected or mis-shaped key (only the unused tensors of UNUSED_PREFIXES may be absent), a file that
    is not safetensors, and (unless `allow_non_finite`) the first tensor that holds NaN or infinity.
    """
    skip = None if model.with_generation else is_generation_key
    if isinstance(source, dict):
        authors = {k: v for k, v in source.items() if skip is None or not skip(k)}
        check_finite(authors, "state dict", allow_non_finite)
    else:
        authors = read_safetensors(source, skip, allow_non_finite)
    ours = from_authors(authors)
    expected = model.state_dict()
    absent_unused = [k for k in expected if k not in ours and k.startswith(UNUSED_PREFIXES)]
    if absent_unused:
        log.info("checkpoint lacks %d unused tensors (%s...); keeping the model's own", len(absent_unused),
                 absent_unused[0])
        ours.update({k: expected[k] for k in absent_unused})
    problem = state_dict_mismatch(expected, ours)
    if problem:
        raise ValueError(f"checkpoint does not fit this UniX config: {problem}")
    dtype = next(iter(expected.values())).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=True)
    log.info("loaded %d tensors into UniX", len(ours))


def save_authors_weights(model: UniX, path: str | Path) -> Path:
    """Save `model` in the authors' layout (a file the released inference code can load)."""
    return write_safetensors_atomic(to_authors(model.state_dict()), path, metadata={"format": "pt"})
