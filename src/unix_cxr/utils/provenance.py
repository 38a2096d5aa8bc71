"""Provenance for results cards: file hashes, installed package versions, the environment, a UTC timestamp.

Standard library only (no torch, no numpy), so command-line modules and light tools can use it freely.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["environment", "package_versions", "sha256_file", "sha256_file_list", "utc_now"]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file_list(paths: Sequence[Path]) -> str:
    """sha256 over the lines ``<file name>\\t<sha256 of the file>\\n`` of the (already sorted) list: it changes
    when a file is added, removed, renamed or altered."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(packages: Sequence[str], **extra: Any) -> dict[str, Any]:
    """``{"python", "platform", "packages": package_versions(packages), **extra}`` (extra: e.g. torch threads)."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": package_versions(packages), **extra}


def utc_now() -> str:
    """The current UTC time, to the second, as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
