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

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .cleaning import RULE_NAMES, CleanResult, LLMRewriter, clean_report
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
    output.parent.mkdir(parents=True, exist_ok=True)
    summary, seen = Summary(), {}  # id -> where it was first seen
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would otherwise carry over to OUTPUT
        with os.fdopen(fd, "w", encoding="utf-8") as out, logging_redirect_tqdm():
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
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
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


def _cmd_clean(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"INPUT {source} does not exist")
    if (args.llm_endpoint is None) != (args.llm_model is None):
        raise ValueError("--llm-endpoint and --llm-model go together")
    if source.is_dir():
        total, items = iter_folder(source)
        if total == 0:
            log.warning("no .txt files under %s", source)
    elif source.suffix.lower() == ".txt":
        raise ValueError(f"INPUT {source} is a single .txt file; give its folder, or a JSONL file")
    else:
        total, items = iter_jsonl(source)
    cleaner: Callable[[str], CleanResult] = clean_report
    if args.llm_endpoint:
        cleaner = LLMRewriter(args.llm_endpoint, args.llm_model, api_key_env=args.llm_api_key_env,
                              timeout=args.llm_timeout).clean
        log.info("LLM rewriting through %s (model %s) with the self-check pass", args.llm_endpoint, args.llm_model)
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"OUTPUT {output} is a folder; give the JSONL file to write")
    summary = clean_items(items, output, cleaner, total=total, progress=not args.no_progress)
    log_summary(summary, output)
    return 1 if summary.failures else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean", help="clean raw reports into 'FINDINGS: ... IMPRESSION: ...' JSONL",
        description="Clean raw chest X-ray reports (rule-based, offline; optional LLM rewriting). "
                    "Exit status: 0 all items processed, 1 some items failed, 2 bad arguments or missing INPUT.")
    p.add_argument("input", metavar="INPUT",
                   help="folder of raw report .txt files (searched recursively; id = file stem) or a JSONL file "
                        'of {"id": ..., "text": ...}')
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="JSONL file to write (atomically)")
    p.add_argument("--llm-endpoint", metavar="URL", default=None,
                   help="OpenAI-compatible base URL (…/v1) to rewrite reports with an LLM; off by default")
    p.add_argument("--llm-model", metavar="NAME", default=None, help="model name for --llm-endpoint")
    p.add_argument("--llm-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: %(default)s; unset: no key sent)")
    p.add_argument("--llm-timeout", type=float, default=60.0, metavar="S", help="seconds per HTTP request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_clean)
