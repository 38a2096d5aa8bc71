"""`unix-cxr generate REPORT... -o DIR`: draw radiographs from reports, in bulk.

The command line only: arguments, checks and the summary. The inputs are `unix_cxr.infer.batch_inputs.report_items`;
the job, its files and records, the seed rule, resuming, per-report failures and torchrun sharding are
`unix_cxr.infer.batch`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import add_model_options, load_pipeline

log = logging.getLogger(__name__)

IMAGES_JSONL = "images.jsonl"

DESCRIPTION = f"""\
Draw N radiographs from each report.

REPORT is the text of one report (id text-1, text-2, ... in argument order), or a file when it starts with @ or
ends with .jsonl, .csv or .txt:
  @reports.jsonl / reports.jsonl   {{"id", "report"}} per line
  @reports.csv / reports.csv       a header row with the columns id,report
  @report.txt / report.txt         the whole file is one report, id = the file name without the suffix

DIR gets <id>-<k>.png for k = 0 .. N-1 (with --dicom also <id>-<k>.dcm; an id with other characters than letters,
digits and _.- is written with those replaced and a hash added), each marked as synthetic in the file
(unix_cxr.infer.marking), and DIR/{IMAGES_JSONL}, one line per image in input order:
  {{"id", "k", "file", "seed", "prompt", "seconds"}}   prompt: the text the image was drawn from (the findings)
  {{"id", "error"}}                                  a report that could not be drawn: the others go on

Seeds: the images of a report are drawn from the seed sha256("SEED:ID") (first 63 bits; SEED = --seed), recorded
as "seed" and in the PNG, so they do not depend on the batch size, the order of the reports, resuming or the
number of processes; the same --seed and id give the same images. --batch-size batches the N images of a report.

Resumable: DIR/{IMAGES_JSONL}.partial (.rank-R.partial under torchrun) records each report as it is drawn and
DIR/{IMAGES_JSONL} is written whole at the end; running the same command again skips the reports whose N images
(same id, prompt and seed) are recorded and still in DIR, and retries the failed ones. Other options (--steps,
--cfg, --size, --model) are not compared: after changing them use --no-resume or another DIR.

Several processes: torchrun --nproc-per-node P -m unix_cxr generate ... -o DIR: process R takes the reports
i % P == R (one GPU each on CUDA) and process 0 merges DIR/{IMAGES_JSONL} once all are done.

Exit status: 0 when every report was drawn, 1 when some failed (listed at the end), 2 for bad arguments."""


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..infer.batch import GenerateJob, log_summary, run_batch
    from ..infer.batch_inputs import report_items
    from ..utils.ranks import Ranks

    ranks = Ranks.from_env()
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {folder} exists and is not a folder")
    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    if args.steps is not None and args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (steps - 1 Euler updates), got {args.steps}")
    items = report_items(args.reports)
    args.device = ranks.device(args.device)
    pipe = load_pipeline(args, sampling={"step_cache": args.step_cache} if args.step_cache != "none" else None)
    try:
        job = GenerateJob(pipe, folder, n=args.n, seed=args.seed, steps=args.steps, cfg=args.cfg, size=args.size,
                          dicom=args.dicom)
    except ValueError as err:
        raise ValueError(f"--size {args.size}: {err}") from None
    folder.mkdir(parents=True, exist_ok=True)
    if ranks.is_main:
        log.info("drawing %d image(s) of %d px from each of %d report(s) with %s%s", args.n, job.size, len(items),
                 pipe.name, f" on {ranks.world_size} processes" if ranks.world_size > 1 else "")
    with ranks:
        summary = run_batch(items, job, folder / IMAGES_JSONL, ranks=ranks, resume=not args.no_resume,
                            progress=not args.no_progress)
    if ranks.is_main:
        log_summary(summary, "generate", folder / IMAGES_JSONL)
    return 1 if summary.failed else 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``generate`` to the top-level ``unix-cxr`` subcommands."""
    p = sub.add_parser("generate", help="draw radiographs from reports, in bulk (marked synthetic, resumable)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", metavar="REPORT", help="report texts, or @FILE / .jsonl / .csv / .txt files")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write the images into")
    p.add_argument("-n", type=int, default=1, help="images per report (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run; each report's seed comes from it (default 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling time points, steps - 1 Euler updates (default: the model's)")
    p.add_argument("--cfg", type=float, default=None, help="text guidance scale, 1 = none (default: the model's)")
    p.add_argument("--size", type=int, default=None,
                   help="image side in px: 256 or 512, or any multiple of 16 the model takes (default: the model's)")
    p.add_argument("--step-cache", choices=("none", "taylor"), default="none",
                   help="taylor: run the model at about every other step and forecast the velocity in between "
                        "(about 1.9x fewer model evaluations at 50 steps; docs/usage.md)")
    p.add_argument("--dicom", action="store_true", help="also write each image as a DICOM Secondary Capture (.dcm)")
    add_model_options(p)
    p.add_argument("--no-resume", action="store_true", help="start over: ignore what DIR/images.jsonl records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)
