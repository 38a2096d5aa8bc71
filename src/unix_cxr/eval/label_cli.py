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

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.records import iter_jsonl_lines
from .labeler import Labeler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Line:
    """One input line: where it is, and either its id and report or why it cannot be labelled."""

    where: str
    id: str | int | None = None
    report: str | None = None
    error: str | None = None


def read_jsonl(path: Path) -> Iterator[Line]:
    """The lines of a report JSONL file; each bad line is a `Line` with ``error`` set (blank lines are skipped)."""
    for line in iter_jsonl_lines(path):
        where, record = line.where, line.obj
        if line.error is not None:
            yield Line(where, error=line.error)
        elif not isinstance(record, dict):
            yield Line(where, error=f"expected a JSON object, got {type(record).__name__}")
        elif missing := [key for key in ("id", "report") if record.get(key) is None]:
            yield Line(where, error=f"missing {' and '.join(repr(k) for k in missing)}")
        elif not isinstance(rid := record["id"], (str, int)) or isinstance(rid, bool):
            yield Line(where, error=f"'id' must be a string or an integer, got {type(rid).__name__}")
        elif not isinstance(report := record["report"], str):
            yield Line(where, rid, error=f"'report' must be a string, got {type(report).__name__}")
        else:
            yield Line(where, rid, report)


def label_file(source: Path, output: Path, labeler: Labeler | None = None, progress: bool = True) -> \
        tuple[int, list[tuple[str, str]]]:
    """Label every good line of ``source`` into ``output`` (atomically); return (labelled count, failures)."""
    labeler = labeler or Labeler()
    output.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    seen: dict[str | int, str] = {}
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, logging_redirect_tqdm():
            for line in tqdm(read_jsonl(source), desc="labelling reports", unit="report", file=sys.stderr,
                             disable=not progress):
                error = line.error
                if error is None and line.id in seen:
                    error = f"duplicate id {line.id!r} (first at {seen[line.id]})"
                if error is not None:
                    log.error("%s: %s", line.where, error)
                    failures.append((line.where, error))
                    continue
                seen[line.id] = line.where
                labels = labeler.label(line.report)
                out.write(json.dumps({"id": line.id, "labels": labels}, ensure_ascii=False) + "\n")
                done += 1
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return done, failures


def _cmd_label(args: argparse.Namespace) -> int:
    source, output = Path(args.input), Path(args.output)
    if not source.is_file():
        raise FileNotFoundError(f"INPUT {source} does not exist or is not a file")
    done, failures = label_file(source, output, progress=not args.no_progress)
    log.info("wrote %s: %d report(s) labelled, %d line(s) failed", output, done, len(failures))
    return 1 if failures else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``label`` to the top-level ``unix-cxr`` subcommands."""
    p = subparsers.add_parser(
        "label", help="CheXpert labels (rule-based, offline) for a JSONL file of reports",
        description="Label each {\"id\", \"report\"} line of INPUT with the 14 CheXpert observations "
                    "(1 positive, 0 negative, -1 uncertain, null not mentioned); rules in docs/labeler.md.")
    p.add_argument("input", metavar="INPUT", help='JSONL file, one {"id": ..., "report": "..."} per line')
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help='JSONL file to write, one {"id": ..., "labels": {...}} per labelled line')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_label)
