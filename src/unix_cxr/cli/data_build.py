"""`unix-cxr data build`: a public data set -> records, patient-level splits and training files.

The command line only: arguments, checks and the summary. The job, its input and output formats and its
handling of bad items are `unix_cxr.data.build`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..data.adapters import ADAPTERS

log = logging.getLogger(__name__)


def _cmd_build(args: argparse.Namespace) -> int:
    from ..data.adapters import AdapterOptions, Columns
    from ..data.build import build, log_summary

    opts = AdapterOptions(frontal_only=args.frontal_only, clean=args.clean, check_images=not args.skip_image_check,
                          image_root=Path(args.images) if args.images else None,
                          reports_dir=Path(args.reports) if args.reports else None,
                          columns=Columns.from_pairs(args.column or ()))
    if args.images and not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images} is not a folder")
    out = Path(args.out)
    summary = build(args.source, Path(args.root), out, stage=args.stage, seed=args.seed,
                    val_fraction=args.val_fraction, test_fraction=args.test_fraction, opts=opts,
                    progress=not args.no_progress)
    log_summary(summary, out)
    return 1 if summary["failures"] else 0
def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build`` to the ``unix-cxr data`` subcommands."""
    p = subparsers.add_parser(
        "build", help="read a data set into records, patient-level splits and stage 1/2/3 training files",
        description="Read a chest X-ray data set (MIMIC-CXR-JPG, CheXpert-Plus, IU X-Ray, the authors' chat JSON, "
                    "generic JSONL/CSV or a phantom set) and write records.jsonl, the training files of one stage "
                    "and summary.json. Exit status: 0 all items read, 1 some items failed (the others are "
                    "written), 2 bad arguments or missing ROOT.")
    p.add_argument("--source", required=True, choices=list(ADAPTERS), help="the layout of ROOT")
    p.add_argument("root", metavar="ROOT", help="data set folder, or the file for chexpert-plus, iu (.tgz), chat, "
                                                "jsonl and csv")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files are replaced)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), default=1,
                   help="1: chat JSONL for understanding SFT; 2 or 3: image-caption JSONL (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hashed splits and the prompt choice (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                   help="share of patients without an official split put in val (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.05, metavar="F",
                   help="share of patients without an official split put in test (default %(default)s)")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--frontal-only", dest="frontal_only", action="store_true", default=True,
                       help="keep PA/AP images only, as the paper does (default)")
    views.add_argument("--all-views", dest="frontal_only", action="store_false", help="keep every view")
    p.add_argument("--clean", action=argparse.BooleanOptionalAction, default=True,
                   help="clean report text with the rule-based cleaner (default); --no-clean: section extraction only")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="image root that image paths are relative to (default: ROOT, or ROOT's folder for a file)")
    p.add_argument("--reports", metavar="DIR", default=None,
                   help="mimic: folder of pXX/pXXXXXXXX/sXXXXXXXX.txt reports (default: ROOT/mimic-cxr-reports/files, "
                        "else ROOT/files)")
    p.add_argument("--column", action="append", metavar="FIELD=NAME",
                   help="jsonl/csv: the column holding a field (patient_id, study_id, image_paths, view_position, "
                        "findings, impression, report, split, labels, image_sep); repeatable")
    p.add_argument("--skip-image-check", action="store_true",
                   help="do not check that image files exist (e.g. reports without their images)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_build)
