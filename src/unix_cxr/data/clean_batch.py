"""`unix-cxr data clean INPUT -o OUTPUT`: clean raw reports in bulk (unix_cxr.data.cleaning).

INPUT is a folder of raw report `.txt` files (MIMIC-CXR layout, searched recursively; id = file stem) or a
JSONL file of `{"id": ..., "text": ...}` lines. OUTPUT is JSONL, one line per report in input order:
`{"id": ..., "report": "FINDINGS: ... IMPRESSION: ...", "changes": [rule names that fired]}`, or for a report
that yields no findings or impression `{"id": ..., "report": null, "dropped": "<reason>", "changes": [...]}`.
OUTPUT is written atomically (a temporary file next to it, then os.replace).

Each bad item (unreadable file, bytes that are not UTF-8, a file name that is not UTF-8, malformed JSONL line --
not JSON, nested too deeply, an integer too long, a lone surrogate --, missing or mistyped id/text, duplicate id)
is logged as one error line and left out; the batch goes on, the failures are listed at the end and the exit
status is 1 if any item failed, 0 otherwise. When every item failed, OUTPUT is not written (an existing one is
kept). A missing INPUT is a FileNotFoundError (exit 2 in `unix_cxr.cli.main`). A progress bar goes to stderr and
a summary (cleaned, dropped by reason, failed, per-rule counts) is logged at the end.

Resumable: the outcome of each item goes to ``OUTPUT.partial`` as it is known (`unix_cxr.data.records.
BatchProgress`); after an interruption (Ctrl-C, a crash, an unreachable LLM endpoint) the same command continues
after the last item done, and the final OUTPUT is the same as that of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..utils.atomic import atomic_open, check_output_path
from .cleaning import RULE_NAMES, CleanResult, LLMUnavailable
from .records import BatchProgress, iter_jsonl_lines, name_error, shown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    where: str  # file path or "FILE:LINE", for messages
    id: str | int | None
    text: str | None
    error: str | None = None


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def folder_files(folder: Path) -> list[Path]:
    """Every `*.txt` under `folder` (recursively), sorted by path; a broken link is listed (it fails as one item)."""
    return sorted(p for p in folder.rglob("*.txt") if p.is_file() or p.is_symlink())


def iter_folder(folder: Path, files: list[Path] | None = None) -> tuple[int, Iterator[Item]]:
    """(number of files, items) for every `*.txt` under `folder` (`folder_files`, unless given); id = file stem.
    A file whose name is not UTF-8 is one failed item (its id could not be written)."""
    files = folder_files(folder) if files is None else files

    def items() -> Iterator[Item]:
        for path in files:
            where = shown(path)
            if (bad_name := name_error(path.name)) is not None:
                yield Item(where, None, None, bad_name)
                continue
            try:
                yield Item(where, path.stem, _decode(path.read_bytes()))
            except OSError as err:
                yield Item(where, path.stem, None, f"cannot read: {err.strerror or err}")
            except ValueError as err:
                yield Item(where, path.stem, None, str(err))

    return len(files), items()


def iter_jsonl(path: Path) -> tuple[int | None, Iterator[Item]]:
    """(None, items) for the lines of a JSONL file; blank lines are skipped, each bad line is one failed item."""
    lines = iter_jsonl_lines(path)

    def items() -> Iterator[Item]:
        for line in lines:
            where, record = line.where, line.obj
            if line.error is not None:
                yield Item(where, None, None, line.error)
            elif not isinstance(record, dict):
                yield Item(where, None, None, f"expected a JSON object, got {type(record).__name__}")
            elif missing := [key for key in ("id", "text") if record.get(key) is None]:
                yield Item(where, record.get("id"), None, f"missing {' and '.join(repr(k) for k in missing)}")
            elif not isinstance(rid := record["id"], (str, int)) or isinstance(rid, bool):
                yield Item(where, None, None, f"'id' must be a string or an integer, got {type(rid).__name__}")
            elif not isinstance(text := record["text"], str):
                yield Item(where, rid, None, f"'text' must be a string, got {type(text).__name__}")
            else:
                yield Item(where, rid, text)

    return None, items()


def _record(rid: str | int, result: CleanResult) -> dict:
    changes = list(result.changes)
    if result.report is None:
        return {"id": rid, "report": None, "dropped": result.dropped_reason, "changes": changes}
    return {"id": rid, "report": result.report, "changes": changes}


@dataclass
class Summary:
    cleaned: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    rules: Counter = field(default_factory=Counter)  # rule name -> count
    failures: list[tuple[str, str]] = field(default_factory=list)  # (where, error)
    written: bool = True  # False when every item failed and OUTPUT was left as it was
    resumed: int = 0  # items whose outcome came from OUTPUT.partial


class _KeepOutput(Exception):
    """Every item failed: leave OUTPUT as it was."""


def _outcome(item: Item, seen: dict, cleaner: Callable[[str], CleanResult]) -> dict:
    """What one item gives: ``{"where", "row", "counts"}`` (the output line and how often each rule changed
    something) or ``{"where", "error"}``."""
    error = item.error
    if error is None and item.id in seen:
        error = f"duplicate id {item.id!r} (first at {seen[item.id]})"
    if error is None:
        try:
            result = cleaner(item.text)
            return {"where": item.where, "row": _record(item.id, result), "counts": dict(result.changes)}
        except LLMUnavailable:
            raise  # the endpoint is down: stop (the progress so far is kept), not one failure per report
        except Exception as err:  # one bad report must not end the batch; it is listed as failed
            error = f"cleaning failed: {type(err).__name__}: {err}"
    return {"where": item.where, "error": error}


def clean_items(items: Iterator[Item], output: Path, cleaner: Callable[[str], CleanResult],
                total: int | None = None, progress: bool = True, resume: dict | None = None,
                restart: bool = False) -> Summary:
    """Clean `items` into the JSONL file `output` (written atomically) and return the summary.

    `resume`: the header of ``OUTPUT.partial`` (``{"input": input_fingerprint(...), "options": {...}}``); with
    it the run records its progress there and continues a run of the same header that was interrupted
    (`restart`: start over instead). None: no progress file.
    """
    check_output_path(output)  # before its progress file is looked for
    summary, seen = Summary(), {}  # id -> where it was first seen
    tracker = BatchProgress(output, {"job": "data clean", **resume}, resume=not restart) if resume else None
    written = 0
    try:
        with atomic_open(output) as out, logging_redirect_tqdm():
            bar = tqdm(items, total=total, desc="cleaning reports", unit="report", file=sys.stderr,
                       disable=not progress)
            for k, item in enumerate(bar):
                outcome = tracker.replay(k, item.where) if tracker else None
                if outcome is not None:
                    summary.resumed += 1
                else:
                    outcome = _outcome(item, seen, cleaner)
                    if tracker:
                        tracker.add(outcome)
                if "error" in outcome:
                    log.error("%s: %s", outcome["where"], outcome["error"])
                    summary.failures.append((outcome["where"], outcome["error"]))
                    continue
                row = outcome["row"]
                seen[row["id"]] = outcome["where"]
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
                summary.rules.update(outcome["counts"])
                if row["report"] is None:
                    summary.dropped[row["dropped"]] += 1
                else:
                    summary.cleaned += 1
            if not written and summary.failures:
                raise _KeepOutput
    except _KeepOutput:
        summary.written = False
    except BaseException:
        if tracker:
            tracker.close()
            if tracker.path.exists():
                log.warning("stopped: the items done so far are kept in %s; run the same command again to resume",
                            shown(tracker.path))
        raise
    if tracker:
        tracker.finish()
    return summary


def log_summary(summary: Summary, output: Path) -> None:
    dropped = sum(summary.dropped.values())
    if summary.resumed:
        log.info("%d item(s) resumed from %s", summary.resumed, shown(output) + ".partial")
    if summary.written:
        log.info("wrote %s: %d cleaned, %d dropped, %d failed", output, summary.cleaned, dropped,
                 len(summary.failures))
    else:
        log.error("every item failed: %s not written (an existing file is left as it was)", output)
    for reason, count in summary.dropped.most_common():
        log.info("  dropped (%s): %d", reason, count)
    order = {name: i for i, name in enumerate(RULE_NAMES)}
    rules = sorted(summary.rules.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    if rules:
        log.info("  rule counts: %s", ", ".join(f"{name}={count}" for name, count in rules))
    if summary.failures:
        log.error("%d item(s) failed:", len(summary.failures))
        for where, error in summary.failures:
            log.error("  %s: %s", where, error)
