"""Seconds of each pass of the phantom recipe's `vae` stage after training, on a run's phantoms (a script that
prints figures, not a test).

Runs the stage alone (a few training steps, then every pass after training: reconstruction errors before and
after folding the latent statistics, the statistics, the latent cache of every caption's image, the normalised
statistics) on the data stage of an existing run, and prints how long each took, so that a change to those
passes can be timed before and after on one machine.

Usage: python benchmarks/bench_vae_passes.py --run RUN [--steps 3] [key=value ...]
    RUN: a `unix-cxr train --config phantom-tiny` output folder whose `data` stage is done
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from unix_cxr.train import vae_stage
from unix_cxr.train.parallel import Dist
from unix_cxr.train.recipe import load_recipe
from unix_cxr.train.trainer import run_preparation

log = logging.getLogger("bench_vae_passes")
PASSES = ("load_pixels", "fit", "_reconstruction_l1", "latent_statistics", "_cache", "_normalised_statistics")


def timed(name: str, seconds: dict[str, list[float]]) -> None:
    """Replace `vae_stage.<name>` by a wrapper that appends each call's seconds to `seconds[name]`."""
    inner = getattr(vae_stage, name)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds.setdefault(name, []).append(time.perf_counter() - began)

    setattr(vae_stage, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if not (args.run / "data" / "done.json").is_file():
        parser.error(f"--run {args.run}: no finished data stage")
    log.info("python benchmarks/bench_vae_passes.py %s", " ".join(argv or sys.argv[1:]))
    log.info("CPU %s, %d threads, torch %s", platform.processor() or platform.machine(), torch.get_num_threads(),
             torch.__version__)
    seconds: dict[str, list[float]] = {}
    for name in PASSES:
        timed(name, seconds)
    recipe = load_recipe("phantom-tiny", args.overrides).with_output(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vae"
        began = time.perf_counter()
        run_preparation(recipe, "vae", recipe.stages["vae"], out, Dist.from_env("cpu"), False, args.steps,
                        progress=False)
        total = time.perf_counter() - began
    for name in PASSES:
        log.info("%-24s %s s", name.lstrip("_"), " + ".join(f"{s:.1f}" for s in seconds.get(name, [])))
    log.info("%-24s %.1f s", "stage total", total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
