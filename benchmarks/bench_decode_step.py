"""What a report decoding step costs besides its matmuls (a script that prints figures, not a test).

A report-only model with `unix-full`'s depth (24 layers) but a width at which every matmul is negligible (hidden
64, 4 heads, the tiny config's vocabulary of 324, fp32): the time of one greedy decoding step is then the
per-step Python and ATen overhead of `ReportGenerator.decode` (embedding, RoPE tables, the cache's mask, 24 x
(norms, projections, q/k norms, RoPE, cache write, attention, MLP), final norm, lm_head, argmax). Printed:
seconds per step (median of `--repeats` runs of `--new-tokens` steps from the same prefilled state), the ATen
operators dispatched per step (`torch.profiler`), the most dispatched ones, and the overhead per layer. Compare
the figures of two commits on one machine.

Usage: python benchmarks/bench_decode_step.py [--layers 24] [--new-tokens 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import build_random, cpu_model, no_stop, random_ids, random_pixels, timed

from unix_cxr.config import load_config
from unix_cxr.infer.report import ReportGenerator

log = logging.getLogger("bench_decode_step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="list the N most dispatched ATen operators")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info("python benchmarks/bench_decode_step.py %s", " ".join(argv or sys.argv[1:]))
    log.info("CPU %s, %d threads, torch %s", cpu_model(), torch.get_num_threads(), torch.__version__)

    cfg = load_config("tiny")
    cfg.decoder = replace(cfg.decoder, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4,
                          num_layers=args.layers)
    cfg = cfg.validate()
    model = build_random(cfg, torch.float32, with_generation=False)
    base = ReportGenerator(model)
    gen = no_stop(base)  # decoding never stops early
    with torch.inference_mode():
        state = base.prefill(random_pixels(cfg, 1), [base.prompt_block(random_ids(16, cfg, 1, 0)[0])],
                             args.new_tokens)

    lens0 = state.cache.lens.clone()

    def run() -> None:  # from the same prefilled state: the cache is rewound, its later columns overwritten
        state.cache.lens = lens0.clone()
        gen.decode(state, args.new_tokens)

    r = timed(run, args.repeats)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    aten = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")), key=lambda e: -e.count)
    ops = sum(e.count for e in aten) / args.new_tokens
    step = r.median / args.new_tokens
    log.info("decode step: %.3f ms (median of %d runs of %d steps; min %.3f ms; other processes used %.0f%% of the "
             "CPU), %.0f ATen operators per step, %.1f us per layer", 1e3 * step, args.repeats, args.new_tokens,
             1e3 * min(r.times) / args.new_tokens, 100 * r.other_cpu, ops, 1e6 * step / args.layers)
    top = [f"{e.key.removeprefix('aten::')} {e.count / args.new_tokens:.0f}" for e in aten[:args.top]]
    log.info("most dispatched, per step: %s", ", ".join(top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
