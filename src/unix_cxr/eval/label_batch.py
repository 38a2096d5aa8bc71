"""`unix-cxr label INPUT -o OUTPUT`: CheXpert labels for a JSONL file of reports (unix_cxr.eval.labeler).

INPUT is JSONL, one ``{"id": ..., "report": "..."}`` object per line (``id`` a string or an integer; other keys are
ignored; blank lines are skipped). OUTPUT is JSONL, one ``{"id": ..., "labels": {...}}`` line per good input line,
in input order, where ``labels`` has exactly the 14 CheXpert observation names as keys (CheXpert's order) and values
1 (positive), 0 (negative), -1 (uncertain) or null (not mentioned). OUTPUT is written atomically (a temporary file
next to it, then os.replace): it appears complete or not at all.

Bad lines (bytes that are not UTF-8, malformed JSON, not an object, missing ``id`` or ``report``, an ``id`` that is
not a string or integer, a ``report`` that is not a string, a duplicate ``id``) are reported as one error line each
on stderr and left out; the batch goes on and the exit status is 1 if any line failed, 0 otherwise. An empty or
white-space-only report is not an error: its labels are all null (documented in docs/labeler.md). A missing INPUT
is a FileNotFoundError (exit 2 in `unix_cxr.cli.main`). A progress bar goes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.records import iter_jsonl_lines
from ..utils.atomic import atomic_open
from .labeler import Labeler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Line:
    """One input line: where it is, and either its id and report, why it cannot be labelled (`error`), or why
    `unix-cxr data clean` dropped its report (`dropped`: a ``{"id", "report": null, "dropped": REASON}`` line)."""

    where: str
    id: str | int | None = None
    report: str | None = None
    error: str | None = None
    dropped: str | None = None


@dataclass
class LabelRun:
    """What `label_file` did: reports labelled, bad lines (where, error), dropped reports skipped."""

    done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0


def _valid_id(rid: object) -> bool:
    return isinstance(rid, str | int) and not isinstance(rid, bool)


def read_jsonl(path: Path) -> Iterator[Line]:
    """The lines of a report JSONL file; each bad line is a `Line` with ``error`` set (blank lines are skipped)."""
    for line in iter_jsonl_lines(path):
        where, record = line.where, line.obj
        if line.error is not None:
            yield Line(where, error=line.error)
        elif not isinstance(record, dict):
            yield Line(where, error=f"expected a JSON object, got {type(record).__name__}")
        elif record.get("report") is None and isinstance(record.get("dropped"), str) and _valid_id(record.get("id")):
            yield Line(where, record["id"], dropped=record["dropped"])
        elif missing := [key for key in ("id", "report") if record.get(key) is None]:
            yield Line(where, error=f"missing {' and '.join(repr(k) for k in missing)}")
        elif not _valid_id(rid := record["id"]):
            yield Line(where, error=f"'id' must be a string or an integer, got {type(rid).__name__}")
        elif not isinstance(report := record["report"], str):
            yield Line(where, rid, error=f"'report' must be a string, got {type(report).__name__}")
        else:
            yield Line(where, rid, report)


def label_file(source: Path, output: Path, labeler: Labeler | None = None, progress: bool = True) -> LabelRun:
    """Label every good line of ``source`` into ``output`` (atomically). Lines that `data clean` dropped
    (``"report": null`` with a ``"dropped"`` reason) are skipped and counted, so the two commands chain."""
    labeler = labeler or Labeler()
    run = LabelRun()
    seen: dict[str | int, str] = {}
    with atomic_open(output) as out, logging_redirect_tqdm():
        for line in tqdm(read_jsonl(source), desc="labelling reports", unit="report", file=sys.stderr,
                         disable=not progress):
            error = line.error
            if error is None and line.dropped is not None:
                run.dropped += 1
                continue
            if error is None and line.id in seen:
                error = f"duplicate id {line.id!r} (first at {seen[line.id]})"
            if error is not None:
                log.error("%s: %s", line.where, error)
                run.failures.append((line.where, error))
                continue
            seen[line.id] = line.where
            labels = labeler.label(line.report)
            out.write(json.dumps({"id": line.id, "labels": labels}, ensure_ascii=False) + "\n")
            run.done += 1
    return run
