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
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_label(args: argparse.Namespace) -> int:
    from ..eval.label_batch import label_file

    source, output = Path(args.input), Path(args.output)
    if not source.is_file():
        raise FileNotFoundError(f"INPUT {source} does not exist or is not a file")
    run = label_file(source, output, progress=not args.no_progress)
    log.info("wrote %s: %d report(s) labelled, %d line(s) failed, %d dropped report(s) skipped", output, run.done,
             len(run.failures), run.dropped)
    return 1 if run.failures else 0
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
