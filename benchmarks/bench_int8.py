"""Full-size report decoding with weight-only int8 and int4 (`--quantize int8|int4`) against the dense weights, as
ratios to the memory-bandwidth bound measured in the same run, and the peak memory of the whole job (a script
that prints figures, not a test).

The report-only `unix-full` model with random weights stored in bf16 is written once as a release folder (or
`--release DIR` is used). Then each mode runs in a fresh process, as a user's job would: `load_for_inference` (the
one dtype policy; int8, int4: quantized while loading), one prefill of a 384 px image and a prompt, and decoding of
`--new-tokens` tokens from that state (median of `--repeats`, cache rewound). Bound = weight bytes read per
decoded token (understanding experts, final norm, one embedding row, lm_head; int8 / int4 weights plus their
scales) / the streaming read bandwidth measured first. Peak = the process's VmHWM from its start (the Python
runtime and torch included), after loading and at the end. `--kernels` adds the int8 kernel's read speed at
the model's weight shapes, plain and with paired rows (`Int8Linear` pairs weights of <= 4,096 columns).

`--modes` picks the modes (default dense int8 int4: the weights as loaded, int8, int4). `--dtype` is what every
mode loads with, as `unix-cxr report --dtype` (default auto: the one policy, `unix_cxr.utils.dtype_policy`, which
keeps the stored bf16 on a CPU with native bf16 and computes in fp32 on an AVX2 CPU); the table names the dtype
each mode ran in ("float32<-bf16": float32 compute with the float weights held in bf16 and upcast on the fly, what
the policy picks on an AVX2 CPU under int8 or int4, and what `--upcast` asks for on any CPU). `--compile` decodes
with the compiled step (`ReportGenerator(compile=True)`; compiled in the untimed warm-up). `--no-pack` keeps bf16
weights unpacked (by default `load_for_inference` packs them for oneDNN where that pays, `unix_cxr.infer.packed`).

Usage: python benchmarks/bench_int8.py [--new-tokens 16] [--repeats 3] [--prompt-len 32] [--bw-gb 2] [--kernels]
                                       [--release DIR] [--quick] [--compile] [--modes dense int8 int4]
                                       [--dtype auto|bfloat16|float32] [--upcast] [--no-pack]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import subprocess
import sys
import tempfile
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

from unix_cxr.cli.options import DTYPE_CHOICES
from unix_cxr.config import load_config
from unix_cxr.infer.packed import packed_bytes
from unix_cxr.infer.quantize import Int8Embedding
from unix_cxr.infer.report import ReportGenerator

MODES = ("dense", "int8", "int4")


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) + packed_bytes(module)


def decode_bytes(model) -> int:
    """Weight bytes one decoded token reads (the vision tower is not touched after the prefill)."""
    dec = model.decoder
    table = dec.embed_tokens
    int8_rows = isinstance(table, Int8Embedding)
    row = table.weight_int8[0] if int8_rows else table.weight[0]
    return (sum(tensor_bytes(layer.und) for layer in dec.layers) + tensor_bytes(dec.norm)
            + row.numel() * row.element_size() + 4 * int8_rows + tensor_bytes(model.lm_head))


def decode_seconds(model, args) -> tuple[float, float, int]:
    """(s per decoded token, prefill s, context tokens) of the report path on one random image."""
    gen = ReportGenerator(model, compile=args.compile)  # compiled in timed()'s untimed warm-up
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


def write_random_release(cfg, folder: Path) -> None:
    """A release folder of the report-only model with random weights stored in bf16."""
    import yaml

    from unix_cxr.checkpoint.io import save_authors_weights
    from unix_cxr.config import OWN_CONFIG, to_authors_config

    model = build_random(cfg, torch.bfloat16, with_generation=False)
    folder.mkdir(parents=True, exist_ok=True)
    save_authors_weights(model, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(to_authors_config(cfg)))
    (folder / OWN_CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def child(args) -> None:
    """One mode in this fresh process: load, prefill, decode; one JSON line of figures."""
    from unix_cxr.infer.loading import load_for_inference
    from unix_cxr.infer.upcast import UpcastLinear
    from unix_cxr.utils.dtype_policy import DtypeChoice

    meter = PeakRSS()  # VmHWM from here: the runtime and torch already imported, nothing loaded
    base = meter.peak()
    choice = DtypeChoice(torch.float32, "--upcast", torch.bfloat16) if args.upcast else None
    load_s, _, release = timed_once(functools.partial(
        load_for_inference, args.release, args.dtype, "cpu", "none" if args.child == "dense" else args.child,
        with_generation=False, choice=choice, pack=not args.no_pack))
    model = release.model
    after_load = meter.peak()
    s_tok, prefill_s, context = decode_seconds(model, args)
    dtype = str(model.dtype).removeprefix("torch.")
    if any(isinstance(m, UpcastLinear) for m in model.modules()):
        dtype += "<-bf16"  # float32 compute, bf16 weights upcast on the fly
    print("RESULT " + json.dumps({"dtype": dtype, "bytes": decode_bytes(model),
                                  "s_tok": s_tok, "prefill_s": prefill_s,
                                  "context": context, "load_s": load_s, "base": base, "after_load": after_load,
                                  "peak": meter.peak()}), flush=True)


def kernel_speeds() -> list[tuple[str, float, float]]:
    """(shape, GB/s plain, GB/s paired) of the int8 kernel at 1 row, weights cycled through ~0.8 GB (DRAM)."""
    import time

    out = []
    for n, k in [(2048, 2048), (5632, 2048), (2048, 5632), (102400, 2048)]:
        weights = [torch.randint(-127, 128, (n, k), dtype=torch.int8) for _ in range(max(2, int(8e8 // (n * k))))]
        x = torch.randn(1, k, dtype=torch.bfloat16)
        wide = torch.zeros(2, 2 * k, dtype=torch.bfloat16)
        wide[0, :k], wide[1, k:] = x[0], x[0]
        speeds = []
        for rows, shape, scale in ((x, (n, k), torch.ones(n, dtype=torch.bfloat16)),
                                   (wide, (n // 2, 2 * k), torch.ones(n // 2, dtype=torch.bfloat16))):
            for w in weights:  # warm-up
                torch.ops.aten._weight_int8pack_mm(rows, w.view(shape), scale)
            t0 = time.perf_counter()
            for _ in range(3):
                for w in weights:
                    torch.ops.aten._weight_int8pack_mm(rows, w.view(shape), scale)
            speeds.append(n * k * 3 * len(weights) / (time.perf_counter() - t0) / 1e9)
        out.append((f"{n} x {k}", *speeds))
    return out


def run_modes(args) -> dict[str, dict]:
    """Figures of each mode of `args.modes` ("dense", "int8", "int4"), each loaded with `args.dtype` in a fresh
    process from `args.release` (or from a random release folder written for the run and removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        release = args.release
        if release is None:
            release = Path(tmp) / "release"
            write_random_release(quick_config() if args.quick else load_config("unix-full"), release)
        rows = {}
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", mode, "--release", str(release), "--threads",
                   str(args.threads), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                   "--prompt-len", str(args.prompt_len), "--dtype", args.dtype] + ["--compile"] * args.compile \
                + ["--upcast"] * args.upcast + ["--no-pack"] * args.no_pack
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[mode] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="decode with the compiled step")
    p.add_argument("--bw-gb", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--release", type=Path, help="a report-only release folder (default: a random one, written "
                                                "to a temporary folder and removed afterwards)")
    p.add_argument("--kernels", action="store_true", help="also the int8 kernel's read speed, plain and paired")
    p.add_argument("--quick", action="store_true", help="a tiny config (checks the script, not the machine)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="weights to measure")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="the dtype every mode loads with")
    p.add_argument("--upcast", action="store_true", help="every mode in float32 with its float weights held in bf16 "
                                                         "and upcast on the fly, whatever the policy picks here")
    p.add_argument("--no-pack", action="store_true", help="keep bf16 weights unpacked (load_for_inference(pack="
                   "False); by default bf16 linear layers are packed for oneDNN where that pays, infer.packed)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s", force=True)
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    print(f"CPU {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    bw = measure_bandwidth(argparse.Namespace(bw_gb=args.bw_gb))
    read_gbs = max(bw["bf16 sum (read)"][0], bw["fp32 sum (read)"][0])
    print(f"streaming read bandwidth {read_gbs:.2f} GB/s ({args.bw_gb:g} GB buffer)")
    rows = run_modes(args)
    context = next(iter(rows.values()))["context"]
    print(f"\nreport-only, batch 1, {context} context tokens, {args.new_tokens} new tokens, median of {args.repeats}; "
          "each mode in a fresh process")
    print(f"{'weights':8} {'dtype':>8} {'GB/token':>9} {'s/token':>8} {'bound s':>8} {'of bound':>9} "
          f"{'prefill s':>10} {'load s':>7} {'peak GB: runtime':>17} {'loaded':>7} {'job':>6}")
    for mode, r in rows.items():
        bound = r["bytes"] / (read_gbs * 1e9)
        print(f"{mode:8} {r['dtype']:>8} {r['bytes'] / 1e9:9.3f} {r['s_tok']:8.3f} {bound:8.3f} "
              f"{100 * bound / r['s_tok']:8.1f}% {r['prefill_s']:10.2f} {r['load_s']:7.2f} "
              f"{r['base'] / 1e9:17.2f} {r['after_load'] / 1e9:7.2f} {r['peak'] / 1e9:6.2f}")
    for mode in [m for m in rows if m != "dense" and "dense" in rows]:
        print(f"{mode} / dense decode speed: {rows['dense']['s_tok'] / rows[mode]['s_tok']:.2f}x; bytes per token "
              f"{rows[mode]['bytes'] / rows['dense']['bytes']:.2f}x")
    if args.kernels:
        print("\nint8 kernel at 1 row, weights read from DRAM: GB/s plain, paired rows")
        for shape, plain, paired in kernel_speeds():
            print(f"  {shape:14} {plain:6.1f} {paired:6.1f}")


if __name__ == "__main__":
    main()
