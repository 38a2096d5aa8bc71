"""Resumable JSONL outputs of batch jobs that may run as several processes (`unix-cxr report`, `generate`).

A job's OUTPUT (JSONL, one record per line) is written once, atomically, at the end (`finish`). While the job
runs, each process appends the records of the items it has done to its own part -- ``OUTPUT.partial`` for a single
process, ``OUTPUT.rank-R.partial`` for process R of several -- and flushes them (`Part.write`). Only whole lines
are written, so whatever kills a process (even SIGKILL) every record written before stays readable; a torn last
line is skipped when read and closed with a newline before the next append. A rerun reads OUTPUT and every part,
whatever the number of processes that wrote them (`read_all`), to skip the items already done; `finish` writes
the merged OUTPUT and removes the parts.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from .atomic import atomic_open

log = logging.getLogger(__name__)

PART_SUFFIX = ".partial"


def part_path(output: Path, rank: int = 0, world_size: int = 1) -> Path:
    """The part of process `rank` of `world_size` writing `output`."""
    infix = "" if world_size == 1 else f".rank-{rank}"
    return output.with_name(f"{output.name}{infix}{PART_SUFFIX}")


def part_paths(output: Path) -> list[Path]:
    """The parts of `output` on disk (of any number of processes), oldest first."""
    names = {part_path(output), *output.parent.glob(f"{output.name}.rank-*{PART_SUFFIX}")}
    found = []
    for path in names:
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime_ns, path.name, path))
    return [path for *_, path in sorted(found)]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of the whole lines of `path` (none if it is missing); other lines are skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for raw in data.split(b"\n")[:-1]:  # the piece after the last newline is empty or a torn line
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def read_all(output: Path, include_output: bool = True) -> list[dict[str, Any]]:
    """The records of `output` (unless not `include_output`) then of its parts, oldest first: a later record of an
    item is the newer one."""
    records = read_records(output) if include_output else []
    for part in part_paths(output):
        records += read_records(part)
    return records


class Part:
    """One process's part (`part_path`), opened for appending; `write` appends whole lines and flushes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = open(path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed in close())
        if self._handle.tell() and not self._torn_free():
            self._handle.write("\n")  # close a line torn by a kill: the next record starts on a line of its own

    def _torn_free(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if text:
            self._handle.write(text)
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Part:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def finish(output: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write `records` as `output` (atomically), then remove its parts; returns the number of records."""
    count = 0
    with atomic_open(output) as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    for part in part_paths(output):
        part.unlink(missing_ok=True)
    return count
