"""The speed issue's GPU figures in one short run, for the few minutes a GPU is lent (a script that prints figures,
not a test; prepared and checked on CPU with `--quick`, so that a GPU session only runs it).

  1. the card: name, memory, torch and CUDA versions;
  2. parity in bf16 on the card (`run_parity(GOLDENS, bfloat16, device)`, case by case), unless `--parity ''`.
     GOLDENS: `shared/parity` in the checkout (a device machine receives the checkout's `shared/`, not the folder
     beside it: `cp -r ../shared/parity shared/` first), else `../shared/parity`. Missing goldens on a GPU are an
     error (exit status 1 at the end, after the other figures);
  3. a 512 px image with the full model: 50 time points, CFG 2.0 within the interval [0.4, 1] (the released
     sampling settings), seconds per image, the step cache off and on. Target: <= 3 s;
  4. a full-size report: the random `unix-full` report-only model in bf16, built on the card, one 384 px image
     and a 32-token prompt, 100 decoded tokens (EOS disabled): seconds end to end (prefill + decode), eager and
     with the compiled step (`ReportGenerator(compile=True)`; compiled in an untimed warm-up; a failing compile
     is logged, not fatal). Target: <= 1 s.

Every figure is the median of `--repeats` runs after a warm-up, timed with `torch.cuda.synchronize()`.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--parity ../shared/parity] [--repeats 3] [--no-compile]
       python benchmarks/bench_gpu.py --quick --device cpu      # tiny configs: checks that the script works
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import build_random, no_stop, quick_config, random_ids, random_pixels

from unix_cxr.config import load_config
from unix_cxr.infer.image import ImageGenerator
from unix_cxr.infer.report import ReportGenerator
from unix_cxr.utils.devices import resolve_device

log = logging.getLogger("bench_gpu")
ROOT = Path(__file__).resolve().parents[1]
# the goldens: shared/parity inside the checkout (a device machine receives the checkout's shared/: copy
# ../shared/parity there; .gitignore keeps it out of commits), else ../shared/parity beside the checkout
PARITY = next((p for p in (ROOT / "shared" / "parity", ROOT.parent / "shared" / "parity")
               if (p / "harness.json").is_file()), ROOT / "shared" / "parity")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of fn() over `repeats` runs after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def card(device: torch.device) -> None:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        log.info("device %s: %s, %.1f GiB, compute capability %d.%d; torch %s, CUDA %s", device, props.name,
                 props.total_memory / 2**30, props.major, props.minor, torch.__version__, torch.version.cuda)
    else:
        log.info("device %s; torch %s", device, torch.__version__)


def parity(root: Path, device: torch.device) -> None:
    from unix_cxr.eval.parity import run_parity

    results = run_parity(root, torch.bfloat16, device)
    for result in results:
        log.info("parity bf16: %s", result.line())
    log.info("parity bf16 on %s: %d of %d cases pass", device, sum(r.passed for r in results), len(results))


def one_report(engine: ReportGenerator, endless: ReportGenerator, pixels: torch.Tensor, blocks: list[list[int]],
               new_tokens: int) -> None:
    out = endless.decode(engine.prefill(pixels, blocks, new_tokens), new_tokens)
    assert len(out.token_ids[0]) == new_tokens, "decoding stopped early"


def report(cfg, device: torch.device, args) -> None:
    model = build_random(cfg, torch.bfloat16, with_generation=False, device=device)
    pixels = random_pixels(cfg, 1).to(device)
    for compiled in (False, True) if args.compile else (False,):
        engine = ReportGenerator(model, compile=compiled)
        blocks = [engine.prompt_block(random_ids(32, cfg, 1, seed=6)[0])]  # with the real EOS; decoding without
        run = functools.partial(one_report, engine, no_stop(engine), pixels, blocks, args.new_tokens)
        try:
            seconds, times = median_seconds(run, device, args.repeats)
        except Exception as err:  # an inductor / triton failure on this card must not cost the other figures
            log.error("report, compiled step: FAILED: %s: %s", type(err).__name__, " ".join(str(err).split())[:300])
            continue
        log.info("report, %s step: %.3f s for %d tokens end to end (%.1f ms per token; runs %s; target <= 1 s)",
                 "compiled" if compiled else "eager", seconds, args.new_tokens, 1e3 * seconds / args.new_tokens,
                 ", ".join(f"{t:.3f}" for t in times))
    del model
    gc.collect()


def image(cfg, device: torch.device, args) -> None:
    model = build_random(cfg, torch.bfloat16, with_generation=True, device=device)
    sampler = ImageGenerator(model)
    prompt = random_ids(48, cfg, 1, seed=7)
    size = args.image_size
    for cache in ("none", "taylor"):
        run = functools.partial(sampler.sample, prompt, size, size, generator=torch.Generator().manual_seed(0),
                                num_timesteps=50, cfg_text_scale=2.0, cfg_interval=(0.4, 1.0), step_cache=cache)
        seconds, times = median_seconds(run, device, args.repeats)
        log.info("image %d px, 50 time points, CFG 2.0 in [0.4, 1], step cache %s: %.3f s (runs %s; target <= 3 s)",
                 size, cache, seconds, ", ".join(f"{t:.3f}" for t in times))
    del model, sampler
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--parity", default=str(PARITY), help="golden folder ('' to skip)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled report step")
    p.add_argument("--quick", action="store_true", help="tiny configs (any device): checks that the script works")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info("python benchmarks/bench_gpu.py %s", " ".join(argv if argv is not None else sys.argv[1:]))
    device = resolve_device(args.device)
    card(device)
    missing = bool(args.parity) and not (Path(args.parity) / "harness.json").is_file()
    if args.parity and not missing:
        parity(Path(args.parity), device)
    elif missing:
        (log.error if device.type == "cuda" else log.info)("parity skipped: %s has no harness.json", args.parity)
    cfg = quick_config() if args.quick else load_config("unix-full")
    if args.quick:
        args.new_tokens, args.image_size = min(args.new_tokens, 8), 64
    image(cfg, device, args)
    report(cfg, device, args)
    return 1 if missing and device.type == "cuda" else 0


if __name__ == "__main__":
    raise SystemExit(main())
