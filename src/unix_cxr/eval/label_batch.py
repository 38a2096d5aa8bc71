"""`unix-cxr label INPUT -o OUTPUT`: CheXpert labels for a JSONL file of reports (unix_cxr.eval.labeler).

INPUT is JSONL, one ``{"id": ..., "report": "..."}`` object per line (``id`` a string or an integer; other keys are
ignored; blank lines are skipped). OUTPUT is JSONL, one ``{"id": ..., "labels": {...}}`` line per good input line,
in input order, where ``labels`` has exactly the 14 CheXpert observation names as keys (CheXpert's order) and values
1 (positive), 0 (negative), -1 (uncertain) or null (not mentioned). OUTPUT is written atomically (a temporary file
next to it, then os.replace): it appears complete or not at all.

Bad lines (bytes that are not UTF-8, malformed JSON -- not JSON, nested too deeply, an integer too long, a lone
surrogate --, not an object, missing ``id`` or ``report``, an ``id`` that is not a string or integer, a ``report``
that is not a string, a duplicate ``id``) are reported as one error line each on stderr and left out; the batch
goes on and the exit status is 1 if any line failed, 0 otherwise. When every line failed, OUTPUT is not written (an
existing one is kept). An empty or white-space-only report is not an error: its labels are all null (documented in
docs/labeler.md). A missing INPUT is a FileNotFoundError (exit 2 in `unix_cxr.cli.main`). A progress bar goes to
stderr.

Resumable: the outcome of each line goes to ``OUTPUT.partial`` as it is known (`unix_cxr.data.records.
BatchProgress`); after an interruption the same command continues after the last line done, and the final OUTPUT
is the same as that of an uninterrupted run.
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

from ..data.records import BatchProgress, input_fingerprint, iter_jsonl_lines, shown
from ..utils.atomic import atomic_open, check_output_path
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
    written: bool = True  # False when every line failed and OUTPUT was left as it was
    resumed: int = 0  # lines whose outcome came from OUTPUT.partial


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


class _KeepOutput(Exception):
    """Every line failed: leave OUTPUT as it was."""


def _outcome(line: Line, seen: dict[str | int, str], labeler: Labeler) -> dict:
    """What one line gives: ``{"where", "row"}``, ``{"where", "dropped"}`` or ``{"where", "error"}``."""
    if line.error is None and line.dropped is not None:
        return {"where": line.where, "dropped": line.dropped}
    error = line.error
    if error is None and line.id in seen:
        error = f"duplicate id {line.id!r} (first at {seen[line.id]})"
    if error is not None:
        return {"where": line.where, "error": error}
    return {"where": line.where, "row": {"id": line.id, "labels": labeler.label(line.report)}}


def label_file(source: Path, output: Path, labeler: Labeler | None = None, progress: bool = True,
               resume: bool = True, restart: bool = False, reading: str = "conventions") -> LabelRun:
    """Label every good line of ``source`` into ``output`` (atomically). Lines that `data clean` dropped
    (``"report": null`` with a ``"dropped"`` reason) are skipped and counted, so the two commands chain.

    With `resume` the progress is recorded in ``OUTPUT.partial`` and a run of the same input that was interrupted
    is continued (`restart`: start over instead). `reading`: the labeler's reading when no `labeler` is given
    (`Labeler`; a resumed run continues only a run of the same reading)."""
    labeler = labeler or Labeler(reading=reading)
    run = LabelRun()
    seen: dict[str | int, str] = {}
    check_output_path(output)  # before its progress file is looked for
    options = {"labeler": "rules"}  # a conventions run keeps the header of the runs before readings existed
    if labeler.reading != "conventions":
        options["reading"] = labeler.reading
    header = {"job": "label", "input": input_fingerprint(source), "options": options}
    tracker = BatchProgress(output, header, resume=not restart) if resume else None
    try:
        with atomic_open(output) as out, logging_redirect_tqdm():
            for k, line in enumerate(tqdm(read_jsonl(source), desc="labelling reports", unit="report",
                                          file=sys.stderr, disable=not progress)):
                outcome = tracker.replay(k, line.where) if tracker else None
                if outcome is not None:
                    run.resumed += 1
                else:
                    outcome = _outcome(line, seen, labeler)
                    if tracker:
                        tracker.add(outcome)
                if "dropped" in outcome:
                    run.dropped += 1
                elif "error" in outcome:
                    log.error("%s: %s", outcome["where"], outcome["error"])
                    run.failures.append((outcome["where"], outcome["error"]))
                else:
                    seen[outcome["row"]["id"]] = outcome["where"]
                    out.write(json.dumps(outcome["row"], ensure_ascii=False) + "\n")
                    run.done += 1
            if not run.done and run.failures:
                raise _KeepOutput
    except _KeepOutput:
        run.written = False
    except BaseException:
        if tracker:
            tracker.close()
            if tracker.path.exists():
                log.warning("stopped: the lines done so far are kept in %s; run the same command again to resume",
                            shown(tracker.path))
        raise
    if tracker:
        tracker.finish()
    return run
