"""Full-size report decoding with weight-only int8 (`--quantize int8`) against the storage dtype, as ratios to the
memory-bandwidth bound measured in the same run (a script that prints figures, not a test).

For the report-only `unix-full` model with random weights (stored in bf16): the streaming read bandwidth (a
large bf16 buffer summed), then one prefill of a 384 px image and a prompt, then decoding of `--new-tokens`
tokens from that state (median of `--repeats`, cache rewound), first in bf16, then after `quantize_decoding`
in int8. Bound = weight bytes read per decoded token (understanding experts, final norm, one embedding row,
lm_head; int8 weights plus their float32 scales) / the measured bandwidth. Also the peak resident memory.

Usage: python benchmarks/bench_int8.py [--new-tokens 16] [--repeats 3] [--prompt-len 32] [--bw-gb 2] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import platform
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    PeakRSS,
    build_random,
    cpu_model,
    measure_bandwidth,
    no_stop,
    quick_config,
    random_ids,
    random_pixels,
    timed,
    timed_once,
)

from unix_cxr.config import load_config
from unix_cxr.infer.quantize import quantize_decoding
from unix_cxr.infer.report import ReportGenerator


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def decode_bytes(model) -> int:
    """Weight bytes one decoded token reads (the vision tower is not touched after the prefill)."""
    dec = model.decoder
    row = dec.embed_tokens.weight[0]
    return (sum(tensor_bytes(layer.und) for layer in dec.layers) + tensor_bytes(dec.norm)
            + row.numel() * row.element_size() + tensor_bytes(model.lm_head))


def decode_seconds(model, args) -> tuple[float, float, int]:
    """(s per decoded token, prefill s, context tokens) of the report path on one random image."""
    gen = ReportGenerator(model)
    decoder_only = no_stop(gen)
    pixels = random_pixels(model.cfg, 1)
    blocks = [gen.prompt_block(random_ids(args.prompt_len, model.cfg, 1, seed=6)[0])]
    prefill_s, _, state = timed_once(functools.partial(gen.prefill, pixels, blocks, args.new_tokens + 2))
    lens0 = state.cache.lens.clone()

    def decode() -> None:
        state.cache.lens = lens0.clone()
        decoder_only.decode(state, args.new_tokens)

    r = timed(decode, args.repeats)
    return r.median / args.new_tokens, prefill_s, int(lens0[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--bw-gb", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="a tiny config (checks the script, not the machine)")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s", force=True)
    torch.set_num_threads(args.threads)
    print(f"CPU {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    bw = measure_bandwidth(argparse.Namespace(bw_gb=args.bw_gb))
    read_gbs = max(bw["bf16 sum (read)"][0], bw["fp32 sum (read)"][0])
    print(f"streaming read bandwidth {read_gbs:.2f} GB/s ({args.bw_gb:g} GB buffer)")
    cfg = quick_config() if args.quick else load_config("unix-full")
    meter = PeakRSS()
    model = build_random(cfg, torch.bfloat16, with_generation=False)
    rows = []
    for label in ("bf16", "int8"):
        if label == "int8":
            quantize_decoding(model, "int8")
            gc.collect()
            meter = PeakRSS()
        s_tok, prefill_s, context = decode_seconds(model, args)
        nbytes = decode_bytes(model)
        bound = nbytes / (read_gbs * 1e9)
        rows.append((label, nbytes / 1e9, s_tok, bound, bound / s_tok, prefill_s, meter.peak() / 1e9, context))
    print(f"\nreport-only unix-full, batch 1, {rows[0][7]} context tokens, {args.new_tokens} new tokens, median of "
          f"{args.repeats}")
    print(f"{'weights':8} {'GB/token':>9} {'s/token':>8} {'bound s':>8} {'of bound':>9} {'prefill s':>10} "
          f"{'peak RSS GB':>12}")
    for label, gb, s_tok, bound, frac, prefill_s, peak, _ in rows:
        print(f"{label:8} {gb:9.3f} {s_tok:8.3f} {bound:8.3f} {100 * frac:8.1f}% {prefill_s:10.2f} {peak:12.2f}")
    print(f"int8 / bf16 decode speed: {rows[0][2] / rows[1][2]:.2f}x; bytes per token {rows[1][1] / rows[0][1]:.2f}x"
          " (peak RSS of the int8 row: after quantizing; the bf16 model was built first)")


if __name__ == "__main__":
    main()
