"""Safe checkpoint file handling shared by the UniX and VAE loaders: safetensors only, atomic writes, precise errors.

* `refuse_pickle(path)`: pickled checkpoints (.ckpt, .pt, .pth, .bin, .pkl) are never opened; unpickling can run
  arbitrary code. The VAE's one-time conversion command (`unix-cxr convert-vae CKPT OUT.safetensors
  --trust-pickle`) is the only place that unpickles, and only when told to.
* `read_safetensors(path, skip)`: read a .safetensors file, never reading the tensors of skipped keys.
* `write_safetensors_atomic(tensors, path, metadata)`: write beside the target, then rename over it.
* `state_dict_mismatch(expected, given)`: missing / unexpected keys and shape differences, readably.

This module imports nothing from `unix_cxr.model`, so model code can use it without import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils.atomic import atomic_path

__all__ = [
    "PICKLE_SUFFIXES",
    "read_safetensors",
    "refuse_pickle",
    "state_dict_mismatch",
    "summarise_keys",
    "write_safetensors_atomic",
]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def refuse_pickle(path: str | Path) -> None:
    """Raise ValueError if `path` names a pickled checkpoint (by its suffix); do nothing otherwise."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: pickled checkpoints are not loaded (unpickling can run arbitrary code); use a .safetensors "
            "file. For a VAE checkpoint from a source you trust, convert it once with: "
            "unix-cxr convert-vae CKPT OUT.safetensors --trust-pickle"
        )


def read_safetensors(path: str | Path, skip: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Read a .safetensors file, leaving out the keys for which `skip(key)` is true (they are never read)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if skip is None or not skip(k)}  # noqa: SIM118 - not iterable


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path,
                             metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` to `path` as safetensors through the one atomic writer (`unix_cxr.utils.atomic`).

    Tensors are detached, made contiguous and moved to the CPU first.
    """
    with atomic_path(path, "checkpoint") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def summarise_keys(items: list[str], limit: int = 5) -> str:
    """`a, b, c, ... (N more)`: the first `limit` items and how many were left out."""
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                        limit: int = 5) -> str | None:
    """Describe how `given` (a checkpoint's tensors) differs from `expected` (the model's), or None if they fit.

    Gives the count and the first `limit` of the missing keys, the unexpected keys and the shape mismatches
    (`key: file (shape) vs model (shape)`), e.g. `1 missing key(s): a.weight; 2 unexpected key(s): x, y`.
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(given) & set(expected)) if tuple(given[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {summarise_keys(missing, limit)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {summarise_keys(unexpected, limit)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {summarise_keys(mismatched, limit)}")
    return "; ".join(problems) if problems else None
