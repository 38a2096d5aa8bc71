"""Decode speed of a bf16 model on CPU with a bf16 vs a float32 KV cache (float32 is the CPU default).

Full-width unix-full layers (6 of 24, to keep the prefill short), random bf16 weights, 597 context tokens, batch 1,
median of 3 runs of 8 decoded tokens. Run: python benchmarks/bench_cache_dtype.py
"""

import functools
import logging
import time

import torch

from unix_cxr.config import load_config
from unix_cxr.infer.report import ReportGenerator
from unix_cxr.model.unix import UniX

log = logging.getLogger("bench_cache_dtype")


def build(num_layers: int) -> UniX:
    cfg = load_config("unix-full")
    cfg.decoder.num_layers = num_layers
    with torch.device("meta"):
        model = UniX(cfg, with_generation=False)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.reset_fixed_tables()
    return model.eval()


def ms_per_token(engine: ReportGenerator, steps: int = 8) -> float:
    state = engine.prefill(torch.randn(1, 3, 384, 384), [engine.prompt_block(list(range(16)))], 5 * steps)
    lens = state.cache.lens.clone()
    times = []
    for _ in range(3):
        state.cache.lens = lens.clone()
        start = time.perf_counter()
        engine.decode(state, steps)
        times.append((time.perf_counter() - start) / steps)
    return 1000 * sorted(times)[1]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    model = build(6)
    engine = ReportGenerator(model)
    default = model.decoder.new_cache
    for name, dtype in (("bf16 cache", torch.bfloat16), ("fp32 cache (CPU default)", torch.float32)):
        model.decoder.new_cache = functools.partial(default, dtype=dtype)
        log.info("%s: %.1f ms/token (6 full-width layers, 597 context tokens, bf16 weights)", name,
                 ms_per_token(engine))


if __name__ == "__main__":
    main()
