"""Training throughput of the phantom VAE stage on this CPU: images/s in fp32 and under bf16 autocast (a script that
prints figures, not a test).

One optimizer step of the `vae` stage's inner loop (`train.vae_stage.vae_losses` of a batch of random 64 px
images, backward of L1 + L2 + edge + KL, AdamW) with the phantom model's VAE (`recipes/phantom.yaml`), for
  fp32        fp32 weights and compute (`vae.precision: fp32`);
  bf16-mixed  fp32 weights, bf16 autocast (`vae.precision: bf16-mixed`, what `auto` picks where the CPU has bf16
              in hardware, `utils.dtype_policy.native_bf16`).
The ratio of the two, measured in the same run, is what `auto` gains or would lose on this CPU. Then the same two
for encoding (posterior moments of batches of 64, no gradient): the stage's passes after training (latent
statistics, reconstruction errors, the latent caches) run in the precision it trained in.

Usage: python benchmarks/bench_vae.py [--batch 16] [--size 64] [--steps 6]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import cpu_sample, other_cpu_share

from unix_cxr.config import load_config
from unix_cxr.model.vae import LatentVAE
from unix_cxr.train.vae_stage import vae_losses
from unix_cxr.utils.dtype_policy import cpu_flags, native_bf16

log = logging.getLogger("bench_vae")


def images_per_s(bf16: bool, batch: int, size: int, steps: int) -> tuple[float, float]:
    """Best-of-`steps` images/s after two warm-up steps, and the share of the CPU other processes used."""
    torch.manual_seed(0)
    cfg = load_config("phantom").vae
    vae = LatentVAE(cfg).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    x = torch.rand(batch, cfg.in_channels, size, size) * 2 - 1
    side = size // cfg.downsample
    eps = torch.randn(batch, cfg.z_channels, side, side)
    start, times = cpu_sample(), []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            parts = vae_losses(vae, x, eps)
        loss = sum(t.float() for t in parts.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return batch / min(times[2:]), other_cpu_share(start, cpu_sample())


@torch.no_grad()
def encoded_per_s(bf16: bool, size: int, steps: int, batch: int = 64) -> tuple[float, float]:
    """Best-of-`steps` images/s of the VAE's posterior moments after two warm-up batches, and the other processes'
    CPU share."""
    torch.manual_seed(0)
    cfg = load_config("phantom").vae
    vae = LatentVAE(cfg).eval()
    x = torch.rand(batch, cfg.in_channels, size, size) * 2 - 1
    start, times = cpu_sample(), []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            vae.moments(x)
        times.append(time.perf_counter() - t0)
    return batch / min(times[2:]), other_cpu_share(start, cpu_sample())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info("python benchmarks/bench_vae.py %s", " ".join(argv or sys.argv[1:]))
    bf16_flags = sorted(f for f in cpu_flags() if "bf16" in f)
    log.info("CPU %s, %d threads, bf16 flags %s (native bf16: %s), torch %s", platform.processor() or
             platform.machine(), torch.get_num_threads(), bf16_flags or "none", native_bf16(torch.device("cpu")),
             torch.__version__)
    rates = {}
    for name, bf16 in (("fp32", False), ("bf16-mixed", True)):
        rates[name], busy = images_per_s(bf16, args.batch, args.size, args.steps)
        log.info("%-11s %7.1f images/s (other processes used %.0f%% of the CPU)", name, rates[name], 100 * busy)
    log.info("bf16-mixed / fp32: %.2fx", rates["bf16-mixed"] / rates["fp32"])
    for name, bf16 in (("fp32", False), ("bf16-mixed", True)):
        rates[name], busy = encoded_per_s(bf16, args.size, args.steps)
        log.info("encoding %-11s %7.1f images/s (other processes used %.0f%% of the CPU)", name, rates[name],
                 100 * busy)
    log.info("encoding bf16-mixed / fp32: %.2fx", rates["bf16-mixed"] / rates["fp32"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
