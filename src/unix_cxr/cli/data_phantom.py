"""`unix-cxr data phantom`: write a synthetic phantom chest radiograph data set (images, labels, reports).

    unix-cxr data phantom --n N --seed S --size 64|128|256 --out DIR [--workers W]

writes ``DIR/images/phantom_00000.png`` ..., ``DIR/labels.jsonl`` (``{"id", "labels"}`` with the 14 CheXpert
labels), ``DIR/reports.jsonl`` (``{"id", "report": "FINDINGS: ... IMPRESSION: ..."}``) and ``DIR/specs.jsonl``
(the drawn findings with side, zone and severity). The same seed gives byte-identical files, whatever the
number of worker processes that draw them (default: one per usable CPU). The images are synthetic (see
docs/phantoms.md).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from ..data.phantom import check_size, write_dataset

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    check_size(args.size)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    start = time.perf_counter()
    summary = write_dataset(args.out, n=args.n, seed=args.seed, size=args.size, progress=not args.no_progress,
                            workers=args.workers)
    seconds = time.perf_counter() - start
    log.info("wrote %d synthetic phantoms (%d px) to %s in %.1f s (%.1f ms per image)", summary["n"], args.size,
             args.out, seconds, 1000.0 * seconds / summary["n"])
    log.info("normal (no pathology): %d of %d", summary["normal"], summary["n"])
    for kind, count in summary["findings"].items():
        log.info("finding %-18s %6d", kind, count)
    for label, count in summary["positive_labels"].items():
        log.info("positive %-26s %6d", label, count)
    return 0


def add_cli(subparsers: Any) -> None:
    """Add ``phantom`` to the ``unix-cxr data`` subcommands."""
    p = subparsers.add_parser(
        "phantom", help="write synthetic phantom chest radiographs with reports and CheXpert labels",
        description="Procedurally drawn, synthetic frontal chest radiographs with controllable findings, a report "
                    "and ground-truth CheXpert labels for each. Same seed, same bytes.")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128,
                   help="image side in pixels: 64, 128 or 256 (any multiple of 16 from 64 to 512; default 128)")
    p.add_argument("--out", required=True, help="output directory (created; existing files are overwritten)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that draw the images (default: one per usable CPU; the files do not depend on it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantom)
