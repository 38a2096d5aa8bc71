"""`unix-cxr report IMAGE... [-o FILE.jsonl]`: write a report for each radiograph, in bulk.

The command line only: arguments, checks and the summary. The inputs are `unix_cxr.infer.batch_inputs.image_items`;
the job, its output records, resuming, per-image failures and torchrun sharding are `unix_cxr.infer.batch`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .options import add_model_options, load_pipeline

log = logging.getLogger(__name__)

DESCRIPTION = """\
Write a report (and its 14 CheXpert labels) for each radiograph.

IMAGE is an image file (PNG, JPEG, DICOM; id = its name without the suffix), a folder (its images, sorted; with
--recursive its subfolders too; id = the path inside the folder without the suffix), a .jsonl file
({"id", "image"} per line, image paths relative to the file's folder) or a .csv file (header row with the columns
id,image; paths relative to the file's folder).

With -o, FILE.jsonl gets one line per image, in input order:
  {"id", "image", "report", "labels", "finished", "seconds"}   finished: false when --max-new-tokens stopped it
  {"id", "image", "error"}                                       an image that could not be read: the others go on
Progress is appended to FILE.jsonl.partial (FILE.jsonl.rank-R.partial under torchrun) after each batch and
FILE.jsonl is written whole at the end, so a killed run loses at most its current batch. Running the same
command again skips the images already reported (same id and image file, in FILE.jsonl or its .partial files)
and retries the failed ones; other options are not compared: after changing the model or the decoding, use
--no-resume or another FILE. Without -o the reports go to stdout, one "ID<TAB>REPORT" line each.

Greedy decoding (the default) gives the same report for an image whatever the batch size; --sample draws from
one generator per batch, so its texts also depend on the batch size and on the sharding.

Several processes: torchrun --nproc-per-node N -m unix_cxr report ... -o FILE.jsonl: process R takes the items
i % N == R (one GPU each on CUDA) and process 0 merges FILE.jsonl once all are done.

Exit status: 0 when every image got a report, 1 when some failed (listed at the end), 2 for bad arguments."""


def _echo(record: dict[str, Any]) -> None:
    sys.stdout.write(f"{record['id']}\t{record['report']}\n")
    sys.stdout.flush()


def _decoding(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding overrides of the options (ValueError naming a bad one)."""
    decoding: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        decoding["max_new_tokens"] = args.max_new_tokens
    if not args.sample:
        named = [flag for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p))
                 if value is not None]
        if named:
            raise ValueError(f"{' and '.join(named)} need --sample (the default decoding is greedy)")
        return decoding
    temperature = 1.0 if args.temperature is None else args.temperature
    top_p = 1.0 if args.top_p is None else args.top_p
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    return {**decoding, "do_sample": True, "temperature": temperature, "top_p": top_p}


def _cmd_report(args: argparse.Namespace) -> int:
    from ..infer.batch import ReportJob, log_summary, run_batch
    from ..infer.batch_inputs import image_items
    from ..utils.atomic import check_output_path
    from ..utils.ranks import Ranks

    ranks = Ranks.from_env()
    output = check_output_path(args.output, "-o") if args.output else None
    if output is None and ranks.world_size > 1:
        raise ValueError("under torchrun give -o FILE.jsonl: the processes write their parts and merge them there")
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty")
    decoding = _decoding(args)
    items = image_items(args.images, recursive=args.recursive)
    args.device = ranks.device(args.device)
    pipe = load_pipeline(args, decoding=decoding)
    if ranks.is_main:
        log.info("reporting on %d image(s) with %s%s", len(items), pipe.name,
                 f" on {ranks.world_size} processes" if ranks.world_size > 1 else "")
    with ranks:
        summary = run_batch(items, ReportJob(pipe, args.prompt, args.batch_size), output, ranks=ranks,
                            resume=not args.no_resume, progress=not args.no_progress,
                            echo=_echo if output is None else None)
    if ranks.is_main:
        log_summary(summary, "report", output)
    return 1 if summary.failed else 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to the top-level ``unix-cxr`` subcommands."""
    p = sub.add_parser("report", help="write reports for radiographs, in bulk (JSONL output, resumable, torchrun)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders, .jsonl or .csv files")
    p.add_argument("-o", "--output", metavar="FILE.jsonl", help="JSONL file to write (default: reports to stdout)")
    p.add_argument("-r", "--recursive", action="store_true", help="also the images in the subfolders of a folder")
    p.add_argument("--prompt", default=None, help="the instruction (default: the model's report prompt)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest report, in tokens (default: the model's)")
    p.add_argument("--sample", action="store_true", help="sample the tokens instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --sample; default 1)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (with --sample; default 1)")
    add_model_options(p)
    p.add_argument("--no-resume", action="store_true", help="start over: ignore what FILE.jsonl and its parts hold")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_report)
