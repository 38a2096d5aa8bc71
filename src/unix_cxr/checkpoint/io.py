"""Loading and saving UniX weights: safetensors only, in the authors' layout, strict with a precise report.

Pickled checkpoints (.ckpt, .pt, .pth, .bin) are never opened here; the VAE's one-time conversion command
(`unix-cxr convert-vae CKPT OUT --trust-pickle`) is the only place that unpickles, and only when told to.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..model.unix import UniX
from .keymap import from_authors, is_generation_key, to_authors

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def refuse_pickle(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: pickled checkpoints are not loaded (they can run code); use safetensors "
                         "(for the VAE: unix-cxr convert-vae CKPT OUT.safetensors --trust-pickle, once)")


def read_safetensors(path: str | Path, skip=lambda key: False) -> dict[str, torch.Tensor]:
    """Read a .safetensors file, leaving out the keys for which `skip(key)` is true (they are never read)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if not skip(k)}


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """A readable description of missing / unexpected keys and shape differences, or None if they agree."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(given[k].shape)}"
              for k in sorted(set(expected) & set(given)) if expected[k].shape != given[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)):
        if items:
            parts.append(f"{len(items)} {name}: {items[:6]}{' ...' if len(items) > 6 else ''}")
    return "; ".join(parts)


def load_authors_weights(model: UniX, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load a state dict in the authors' layout (file or dict) into `model`, strictly.

    A report-only model skips the generation tensors without reading them. Raises ValueError naming every
    missing, unexpected or mis-shaped key.
    """
    skip = (lambda key: is_generation_key(key)) if not model.with_generation else (lambda key: False)
    if isinstance(source, dict):
        authors = {k: v for k, v in source.items() if not skip(k)}
    else:
        authors = read_safetensors(source, skip)
    ours = from_authors(authors)
    expected = model.state_dict()
    problem = state_dict_mismatch(expected, ours)
    if problem:
        raise ValueError(f"checkpoint does not fit this UniX config: {problem}")
    dtype = next(iter(expected.values())).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=True)
    log.info("loaded %d tensors into UniX", len(ours))


def save_authors_weights(model: UniX, path: str | Path) -> Path:
    """Save `model` in the authors' layout (a file the released inference code can load)."""
    return write_safetensors_atomic(to_authors(model.state_dict()), path, metadata={"format": "pt"})
