"""`unix-cxr label INPUT -o OUTPUT`: CheXpert labels for a JSONL file of reports (unix_cxr.eval.labeler).

The command line only: arguments, checks and the summary. The job, its input and output formats and its
handling of bad items and its resume file (``OUTPUT.partial``) are `unix_cxr.eval.label_batch`.
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
    if output.is_dir():
        raise ValueError(f"OUTPUT {output} is a folder; give the JSONL file to write")
    run = label_file(source, output, progress=not args.no_progress, restart=args.no_resume, reading=args.reading)
    if run.resumed:
        log.info("%d line(s) resumed from %s.partial", run.resumed, output)
    if run.written:
        log.info("wrote %s: %d report(s) labelled, %d line(s) failed, %d dropped report(s) skipped", output,
                 run.done, len(run.failures), run.dropped)
    else:
        log.error("every line failed: %s not written (an existing file is left as it was)", output)
    return 1 if run.failures else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``label`` to the top-level ``unix-cxr`` subcommands."""
    p = subparsers.add_parser(
        "label", help="CheXpert labels (rule-based, offline) for a JSONL file of reports",
        description="Label each {\"id\", \"report\"} line of INPUT with the 14 CheXpert observations "
                    "(1 positive, 0 negative, -1 uncertain, null not mentioned); rules in docs/labeler.md. A run that "
                    "was interrupted continues where it stopped when run again (progress in OUTPUT.partial).")
    p.add_argument("input", metavar="INPUT", help='JSONL file, one {"id": ..., "report": "..."} per line')
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help='JSONL file to write, one {"id": ..., "labels": {...}} per labelled line')
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if OUTPUT.partial holds the progress of an interrupted run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # eval.labeler.READINGS, spelled out: importing the labeler compiles its patterns, which the parser need not
    p.add_argument("--reading", choices=("conventions", "negbio"), default="conventions",
                   help="conventions: the project's labelling conventions (default); negbio: as NegBio's OpenI gold "
                        "reads reports, for comparisons with figures measured on it (docs/labeler.md)")
    p.set_defaults(func=_cmd_label)
