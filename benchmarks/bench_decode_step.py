"""What a report decoding step costs besides its matmuls (a script that prints figures, not a test).

A report-only model with `unix-full`'s depth (24 layers) but a width at which every matmul is negligible (hidden
64, 4 heads, the tiny config's vocabulary of 324, fp32): the time of one greedy decoding step is then the
per-step Python and ATen overhead of `ReportGenerator.decode` (embedding, RoPE tables, the cache's mask, 24 x
(norms, projections, q/k norms, RoPE, cache write, attention, MLP), final norm, lm_head, argmax). Printed:
seconds per step (median of `--repeats` runs of `--new-tokens` steps from the same prefilled state), the ATen
operators dispatched per step (`torch.profiler`), the most dispatched ones, and the overhead per layer. Compare
the figures of two commits on one machine.

`--compile` times the compiled step (`ReportGenerator(compile=True)`) next to the eager one and prints the compile
time. `--kernels` adds what a one-row product costs at the full model's weight shapes: `F.linear` against
`torch.mv` (what `model.linear.Linear` runs for one bf16 row on CPU), in bf16 and float32, with the weights cycled
through about 1 GB so that they come from DRAM, as in decoding.

Usage: python benchmarks/bench_decode_step.py [--layers 24] [--new-tokens 32] [--repeats 5] [--compile] [--kernels]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import build_random, cpu_model, no_stop, random_ids, random_pixels, timed, timed_interleaved

from unix_cxr.config import load_config
from unix_cxr.infer.report import ReportGenerator

log = logging.getLogger("bench_decode_step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="list the N most dispatched ATen operators")
    parser.add_argument("--compile", action="store_true", help="also time the compiled step against the eager one")
    parser.add_argument("--kernels", action="store_true", help="also time one-row products, F.linear against mv")
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

    if args.compile:
        compiled = ReportGenerator(model, compile=True)
        fast = no_stop(compiled)
        t0 = time.perf_counter()
        state.cache.lens = lens0.clone()
        fast.decode(state, 1)
        log.info("compile (first step): %.1f s", time.perf_counter() - t0)

        def run_compiled() -> None:
            state.cache.lens = lens0.clone()
            fast.decode(state, args.new_tokens)

        times = timed_interleaved({"eager": run, "compiled": run_compiled}, args.repeats)
        for name, t in times.items():
            log.info("%s step: %.3f ms (median of %d runs of %d steps; other processes used %.0f%% of the CPU)", name,
                     1e3 * t.median / args.new_tokens, args.repeats, args.new_tokens, 100 * t.other_cpu)
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
    if args.kernels:
        one_row_products()
    return 0


def _mv_product(row: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.mv(weight, row[0])


def _each(product, weights: list[torch.Tensor], row: torch.Tensor) -> None:
    for w in weights:
        product(row[None], w)


def one_row_products(shapes=((2048, 2048), (5632, 2048), (2048, 5632), (102400, 2048)), cycled_bytes=1e9) -> None:
    """GB/s of one activation row times each weight shape, F.linear against torch.mv, weights from DRAM."""
    for dtype in (torch.bfloat16, torch.float32):
        for n, k in shapes:
            count = max(2, int(cycled_bytes // (n * k * dtype.itemsize)))
            weights = [torch.randn(n, k, dtype=dtype) for _ in range(count)]
            row = torch.randn(k, dtype=dtype)
            speeds = []
            for product in (F.linear, _mv_product):
                t = timed(functools.partial(_each, product, weights, row), 5)
                speeds.append(count * n * k * dtype.itemsize / t.median / 1e9)
            log.info("one-row product %-9s %6d x %-5d F.linear %5.1f GB/s, mv %5.1f GB/s (%.2fx)",
                     str(dtype).removeprefix("torch."), n, k, *speeds, speeds[1] / speeds[0])
            del weights


if __name__ == "__main__":
    raise SystemExit(main())
