"""`unix-cxr train --config RECIPE [key=value ...] --output DIR [--resume] [--max-steps N]` (also under torchrun).

    torchrun --nproc-per-node N -m unix_cxr train --config RECIPE --output DIR

RECIPE is a YAML file or the name of a shipped recipe; `key=value` overrides go through the recipe loader
(`unix_cxr.train.recipe`). Exit status: 0 done, 1 stopped by a non-finite loss (the last good checkpoint kept),
130 stopped by SIGINT / SIGTERM after saving a checkpoint (continue with --resume), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _recipes_epilog() -> str:
    from ..train.recipe import shipped_recipes

    lines = [f"  {name:<18} {about}" for name, about in shipped_recipes().items()]
    return "shipped recipes:\n" + ("\n".join(lines) if lines else "  (none)")


def _cmd_train(args: argparse.Namespace) -> int:
    from ..train.recipe import load_recipe
    from ..train.trainer import TrainingStopped, train

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # rank 0 logs; the others only warn
        logging.getLogger("unix_cxr").setLevel(logging.WARNING)
    from ..eval.training_samples import PipelineSampler

    recipe = load_recipe(args.config, args.overrides)
    paths = recipe.with_output(args.output)  # the tokenizer and VAE folders, maybe written by an earlier stage
    try:
        results = train(recipe, Path(args.output), resume=args.resume, max_steps=args.max_steps,
                        device=args.device, progress=not args.no_progress,
                        sampler=PipelineSampler(paths.tokenizer, paths.vae))
    except TrainingStopped as err:
        sys.stderr.write(f"unix-cxr train: stopped: {err}\n")
        return 1
    if results and results[-1].interrupted:
        sys.stderr.write(f"unix-cxr train: interrupted in stage {results[-1].name} at step {results[-1].steps}; "
                         f"checkpoint saved, continue with --resume\n")
        return 130
    for r in results:
        log.info("stage %s: %d steps -> %s", r.name, r.steps, r.final)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train UniX: the paper's stages from a recipe (one process or torchrun)",
                       description=__doc__, epilog=_recipes_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="RECIPE", help="recipe YAML or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted recipe overrides (e.g. optim.lr=2e-4)")
    p.add_argument("--output", required=True, metavar="DIR", help="run folder: one sub-folder per stage")
    p.add_argument("--resume", action="store_true", help="continue the unfinished stage from its last checkpoint")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="cap every stage at N optimizer steps (and write a checkpoint there)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
