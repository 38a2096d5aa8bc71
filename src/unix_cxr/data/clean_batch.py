"""`unix-cxr data clean INPUT -o OUTPUT`: clean raw reports in bulk (unix_cxr.data.cleaning).

INPUT is a folder of raw report `.txt` files (MIMIC-CXR layout, searched recursively; id = file stem) or a
JSONL file of `{"id": ..., "text": ...}` lines. OUTPUT is JSONL, one line per report in input order:
`{"id": ..., "report": "FINDINGS: ... IMPRESSION: ...", "changes": [rule names that fired]}`, or for a report
that yields no findings or impression `{"id": ..., "report": null, "dropped": "<reason>", "changes": [...]}`.
OUTPUT is written atomically (a temporary file next to it, then os.replace).

Each bad item (unreadable file, bytes that are not UTF-8, malformed JSONL line, missing or mistyped id/text,
duplicate id) is logged as one error line and left out; the batch goes on, the failures are listed at the end
and the exit status is 1 if any item failed, 0 otherwise. A missing INPUT is a FileNotFoundError (exit 2 in
`unix_cxr.cli.main`). A progress bar goes to stderr and a summary (cleaned, dropped by reason, failed, per-rule
counts) is logged at the end.
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

from ..utils.atomic import atomic_open
from .cleaning import RULE_NAMES, CleanResult
from .records import iter_jsonl_lines

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


def iter_folder(folder: Path) -> tuple[int, Iterator[Item]]:
    """(number of files, items) for every `*.txt` under `folder`, sorted by path; id = file stem."""
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file() or p.is_symlink())  # a broken link: one error

    def items() -> Iterator[Item]:
        for path in files:
            try:
                yield Item(str(path), path.stem, _decode(path.read_bytes()))
            except OSError as err:
                yield Item(str(path), path.stem, None, f"cannot read: {err.strerror or err}")
            except ValueError as err:
                yield Item(str(path), path.stem, None, str(err))

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


def clean_items(items: Iterator[Item], output: Path, cleaner: Callable[[str], CleanResult],
                total: int | None = None, progress: bool = True) -> Summary:
    """Clean `items` into the JSONL file `output` (written atomically) and return the summary."""
    summary, seen = Summary(), {}  # id -> where it was first seen
    with atomic_open(output) as out, logging_redirect_tqdm():
        bar = tqdm(items, total=total, desc="cleaning reports", unit="report", file=sys.stderr,
                   disable=not progress)
        for item in bar:
            error = item.error
            if error is None and item.id in seen:
                error = f"duplicate id {item.id!r} (first at {seen[item.id]})"
            result = None
            if error is None:
                try:
                    result = cleaner(item.text)
                except Exception as err:  # one bad report must not end the batch; it is listed as failed
                    error = f"cleaning failed: {type(err).__name__}: {err}"
            if error is not None:
                log.error("%s: %s", item.where, error)
                summary.failures.append((item.where, error))
                continue
            seen[item.id] = item.where
            out.write(json.dumps(_record(item.id, result), ensure_ascii=False) + "\n")
            summary.rules.update(result.changes)
            if result.report is None:
                summary.dropped[result.dropped_reason] += 1
            else:
                summary.cleaned += 1
    return summary


def log_summary(summary: Summary, output: Path) -> None:
    dropped = sum(summary.dropped.values())
    log.info("wrote %s: %d cleaned, %d dropped, %d failed", output, summary.cleaned, dropped, len(summary.failures))
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
