"""Safe checkpoint file handling shared by the UniX and VAE loaders: safetensors only, atomic writes, precise errors.

* `refuse_pickle(path)`: pickled checkpoints (.ckpt, .pt, .pth, .bin, .pkl) are never opened; unpickling can run
  arbitrary code. The one-time conversion commands (`unix-cxr convert-vae CKPT OUT.safetensors --trust-pickle`,
  `unix-cxr convert-janus FOLDER --trust-pickle`) are the only places that unpickle (`.pickled`), and only when
  told to.
* `read_safetensors(path, skip, allow_non_finite)`: read a .safetensors file, never reading the tensors of skipped
  keys; a file that is not safetensors (garbage, truncated, a header claiming more data than the file holds) is a
  ValueError naming it, and so is a tensor holding NaN or infinity (unless `allow_non_finite`).
* `check_finite(tensors, where)`: the non-finite check itself (one `torch.isfinite(t).all()` per tensor).
* `open_safetensors(path)`: `safe_open`, with safetensors' own errors turned into a ValueError naming the file.
* `stored_float_dtype(path)`: the floating dtype that most of a file's tensor bytes are stored in (header only;
  `FLOAT_DTYPES` names them); `stored_floats(path)`: that dtype and how many floats the file holds.
* `write_safetensors_atomic(tensors, path, metadata)`: write beside the target, then rename over it.
* `state_dict_mismatch(expected, given)`: missing / unexpected keys and shape differences, readably.

This module imports nothing from `unix_cxr.model`, so model code can use it without import cycles.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..utils.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "FLOAT_DTYPES",
    "PICKLE_SUFFIXES",
    "check_finite",
    "find_non_finite",
    "non_finite_count",
    "open_safetensors",
    "read_safetensors",
    "refuse_non_finite",
    "refuse_pickle",
    "state_dict_mismatch",
    "stored_float_dtype",
    "stored_floats",
    "summarise_keys",
    "unreadable_safetensors",
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
            "unix-cxr convert-vae CKPT OUT.safetensors --trust-pickle (a Janus-Pro folder: "
            "unix-cxr convert-janus FOLDER --trust-pickle)"
        )


def unreadable_safetensors(path: str | Path, err: BaseException) -> ValueError:
    """The ValueError for a file that safetensors cannot read (garbage, truncated, a lying header)."""
    return ValueError(f"{path}: not a readable .safetensors file (garbage or truncated: {' '.join(str(err).split())})")


@contextlib.contextmanager
def open_safetensors(path: str | Path) -> Iterator[Any]:
    """`safe_open(path)` (PyTorch tensors); SafetensorError on opening or reading becomes a ValueError naming the
    file (the file is opened and its header checked here; tensors are read lazily, inside the block)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as err:
        raise unreadable_safetensors(path, err) from None


FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
"""safetensors' names of the floating dtypes."""


def stored_floats(path: str | Path) -> tuple[torch.dtype | None, int | None]:
    """(the floating dtype holding most of the file's tensor bytes, how many floating-point numbers it holds), from
    its header alone (no tensor is read); (None, None) for a file without floating tensors, missing, or that is not
    safetensors."""
    import math

    numels: dict[torch.dtype, int] = {}
    try:
        with open_safetensors(path) as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                part = f.get_slice(key)
                dtype = FLOAT_DTYPES.get(part.get_dtype())
                if dtype is not None:
                    numels[dtype] = numels.get(dtype, 0) + math.prod(part.get_shape())
    except (OSError, ValueError):
        return None, None
    if not numels:
        return None, None
    return max(numels, key=lambda d: numels[d] * d.itemsize), sum(numels.values())


def stored_float_dtype(path: str | Path) -> torch.dtype | None:
    """The first of `stored_floats(path)`."""
    return stored_floats(path)[0]


def non_finite_count(tensor: torch.Tensor) -> int:
    """How many elements of `tensor` are NaN or infinite (0 for integer, bool and meta tensors)."""
    if tensor.is_meta or not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    finite = torch.isfinite(tensor)
    return 0 if bool(finite.all()) else int((~finite).sum())


def find_non_finite(tensors: Mapping[str, torch.Tensor], where: str | Path) -> tuple[str, int]:
    """(`WHERE: tensor NAME has N non-finite values ...` for the first tensor holding NaN or infinity, how many
    tensors hold some); ("", 0) when all are finite. One `torch.isfinite(t).all()` per tensor."""
    first, count = "", 0
    for name, tensor in tensors.items():
        bad = non_finite_count(tensor)
        if bad:
            first = first or (f"{where}: tensor {name} has {bad} non-finite values (NaN or infinity) of "
                              f"{tensor.numel()}")
            count += 1
    return first, count


def refuse_non_finite(first: str, count: int, allow: bool = False) -> None:
    """Refuse (ValueError) what `find_non_finite` found, or with `allow` warn once naming the first tensor."""
    if not count:
        return
    if not allow:
        raise ValueError(f"{first}; refusing to load these weights (to load them anyway: allow_non_finite=True, "
                         "or --allow-non-finite where a command has it)")
    log.warning("%s (%d tensor(s) with non-finite values in all); loading them anyway (allow_non_finite)", first,
                count)


def check_finite(tensors: Mapping[str, torch.Tensor], where: str | Path, allow: bool = False) -> None:
    """Refuse (ValueError) the first tensor holding NaN or infinity: `WHERE: tensor NAME has N non-finite values`.

    `allow=True` loads them anyway, with one warning naming the first.
    """
    refuse_non_finite(*find_non_finite(tensors, where), allow=allow)


def read_safetensors(path: str | Path, skip: Callable[[str], bool] | None = None,
                     allow_non_finite: bool = False) -> dict[str, torch.Tensor]:
    """Read a .safetensors file, leaving out the keys for which `skip(key)` is true (they are never read).

    ValueError naming the file when it is not safetensors, and (unless `allow_non_finite`) naming the first tensor
    that holds NaN or infinity.
    """
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    with open_safetensors(path) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if skip is None or not skip(k)}  # noqa: SIM118 - not iterable
    check_finite(tensors, path, allow_non_finite)
    return tensors


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
