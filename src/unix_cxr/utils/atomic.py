"""The one atomic writer: every output file appears whole or not at all, and an old file survives a failed write.

A write goes to a temporary file in the target's own folder (same file system), is flushed and fsynced, gets the
permissions of a normally created file (0666 less the umask, not mkstemp's 0600) and is renamed over the target;
the folder is fsynced so that the rename survives a crash. On any error (disk full, interrupt) the temporary file
is removed and the target is untouched. `atomic_folder` does the same for a whole folder (release folders,
adapters). Temporary files are named `.NAME.<random>.unix-cxr-tmp`; those left by a
killed process (SIGKILL runs no cleanup) are removed by the next write of the same target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".unix-cxr-tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """`path` as a Path, refused (ValueError naming it) when it is an existing folder or sits under a regular file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give the file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path}: {parent} is not a folder")
            break
    return path


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files of earlier, killed writes of `path` (our own naming pattern only)."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """fsync a file or folder by path (not every file system lets a folder be opened / fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write by any means (e.g. a library's own save); on success it
    replaces `path` atomically, on error it is removed and `path` is left as it was."""
    path = check_output_path(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # again: a library's save may replace the file (safetensors gives 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                what: str = "output") -> Iterator[IO]:
    """`open(path, mode)` for writing ("w" or "wb"), atomically: see the module doc."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    text = "b" not in mode
    with atomic_path(path, what) as tmp, open(tmp, mode, encoding=encoding if text else None,
                                              newline="\n" if text else None) as f:
        yield f
        f.flush()


def write_atomic(path: str | Path, data: bytes | str, what: str = "output") -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_open(path, "wb", what=what) as f:
        f.write(payload)
    return Path(path)


# ---- folders, written whole or not at all ------------------------------------------------------------------
def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (deepest first) and `folder` itself."""
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        _fsync_folder(path)


@contextlib.contextmanager
def atomic_folder(target: str | Path, what: str, keep_if: str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` (an existing folder is
    replaced only when it holds the file `keep_if`, i.e. is an earlier output of the same kind), on error it is
    removed and `target` is left as it was. Temporary folders of killed writes are removed by the next one.

    An existing `target` is first renamed aside (`.NAME.<random>.old.unix-cxr-tmp`), then the new folder takes its
    name: a kill between those two renames leaves no `target` but the old folder aside, which the next write keeps
    (and names in a warning) instead of removing it."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{what} {target} is a file; give a folder to write")
    if target.is_dir() and any(target.iterdir()) and not (target / keep_if).is_file():
        raise ValueError(f"{what} {target} exists and holds no {keep_if}: refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    ours = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{8}}(\.old)?{re.escape(TEMP_SUFFIX)}")
    for stale in (p for p in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}") if ours.fullmatch(p.name)):
        if stale.name.endswith(f".old{TEMP_SUFFIX}") and not target.exists():
            log.warning("%s is missing and %s holds its previous version (a write was killed): kept", target, stale)
        elif stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    tmp.mkdir()
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old{TEMP_SUFFIX}"
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(target.parent)  # the renames survive a crash
