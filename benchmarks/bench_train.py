"""Training throughput of unix_cxr on this CPU: tokens/s and model FLOPs utilisation (a script, not a test).

One optimizer step of the trainer's inner loop (`train.objectives.training_forward`, backward of the token-averaged
CE + MSE, gradient clipping, AdamW) on a synthetic packed micro-batch that mixes understanding samples (text with
CE) and generation samples (caption + a noised 16x16 latent grid with MSE), at a small config, for
  fp32        fp32 weights and compute;
  bf16-mixed  fp32 master weights, bf16 compute (autocast), as the trainer's `precision: bf16-mixed`.
MFU = model FLOPs per second / the GEMM peak of the compute dtype measured in the same run (a large square
matmul, best of 5). Model FLOPs per step = 6 x the matmul parameters each row runs through (one expert per
layer; lm_head at CE rows only, llm2vae / vae2llm at latent rows) + 12 x layers x hidden x sum over samples of
L_s^2 (attention, forward + backward).

The heap is set as the trainer sets it (`keep_freed_memory`, utils/memory.py); `--system-heap` leaves glibc's
default, to compare (run the script once with and once without: the setting cannot be undone in a process).

Usage: python benchmarks/bench_train.py [--precisions fp32 bf16-mixed] [--adamw fused for-loop] [--steps 5]
                                        [--compile eager compiled] [--hidden 512 ...] [--system-heap]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import cpu_sample, gemm_peak, other_cpu_share

from unix_cxr.config import load_config
from unix_cxr.data.packing import Latent, Text, pack
from unix_cxr.flow import sample_timesteps
from unix_cxr.model.unix import UniX
from unix_cxr.train.objectives import training_forward
from unix_cxr.train.optimizer import build_adamw
from unix_cxr.train.parallel import wrap_layers
from unix_cxr.train.recipe import ADAMW_IMPLEMENTATIONS, OptimConfig
from unix_cxr.utils.memory import keep_freed_memory

log = logging.getLogger("bench_train")


def config(args):
    return load_config("tiny", {
        "decoder.hidden_size": args.hidden, "decoder.intermediate_size": args.intermediate,
        "decoder.num_layers": args.layers, "decoder.num_heads": args.heads, "decoder.num_kv_heads": args.heads,
        "decoder.vocab_size": args.vocab, "tokens.bos": args.vocab - 4, "tokens.eos": args.vocab - 3,
        "tokens.start_of_image": args.vocab - 2, "tokens.end_of_image": args.vocab - 1, "max_latent_size": 16})


def batch(cfg, args, gen: torch.Generator):
    samples = []
    for i in range(args.samples):
        ids = torch.randint(0, cfg.tokens.bos, (args.text_len,), generator=gen).tolist()
        if i % 2 == 0:  # understanding: prompt + answer with CE
            samples.append([Text(ids[: args.text_len // 4]), Text(ids[args.text_len // 4:], loss=True)])
        else:  # generation: caption + noised latent (MSE)
            samples.append([Text(ids[: args.text_len // 2]), Latent(torch.randn(cfg.vae.z_channels, 16, 16,
                                                                                generator=gen))])
    return pack(samples, cfg), samples


def model_flops(model: UniX, packed, samples, cfg) -> float:
    """6 x (matmul parameters each row runs through) per row, + attention: see the module doc. The decoder rows run
    through one expert per layer; lm_head only at CE rows, llm2vae at the supervised latent rows, vae2llm at the
    latent rows (the embedding lookup is no matmul)."""
    numel = lambda module: sum(p.numel() for p in module.parameters())
    per_row = numel(model.decoder.layers[0].und) * len(model.decoder.layers)
    rows = int(packed.position_ids.numel())
    n_latent, n_ce = int(packed.latent_indexes.numel()), int(packed.ce_indexes.numel())
    matmul = per_row * rows + numel(model.lm_head) * n_ce + (numel(model.llm2vae) + numel(model.vae2llm)) * n_latent
    lens = [sum(len(s.ids) + 2 if isinstance(s, Text) else s.latent.shape[1] * s.latent.shape[2] + 2 for s in smp)
            for smp in samples]
    attention = 12 * cfg.decoder.num_layers * cfg.decoder.hidden_size * sum(n * n for n in lens)
    return 6 * matmul + attention


def bench(precision: str, adamw: str, compiled: bool, args) -> dict:
    cfg = config(args)
    torch.manual_seed(0)
    model = wrap_layers(UniX(cfg).train(), activation_checkpointing=False, compile=compiled)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adamw(params, OptimConfig(lr=1e-4, betas=(0.9, 0.95), eps=1e-15, implementation=adamw))
    gen = torch.Generator().manual_seed(0)
    packed, samples = batch(cfg, args, gen)
    noise = torch.randn(packed.latent_tokens.shape, generator=gen)
    timesteps = sample_timesteps(packed.num_latent_images, 1.0, gen)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()

    def step() -> None:
        with autocast:
            out = training_forward(model, packed, noise=noise, timesteps=timesteps)
        loss = out.ce.sum() / max(out.ce.numel(), 1) + out.mse.mean(-1).sum() / max(out.mse.shape[0], 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # warm-up (allocations, AdamW state; the compilation where it applies)
    if compiled:
        step()  # the backward graphs are compiled at the first backward, the steps after it run them
    warmup = time.perf_counter() - t0
    start, times = cpu_sample(), []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    busy = other_cpu_share(start, cpu_sample())
    seconds = statistics.median(times)
    flops = model_flops(model, packed, samples, cfg)
    peak = gemm_peak(torch.bfloat16 if precision == "bf16-mixed" else torch.float32, args.gemm)
    tokens = int(packed.position_ids.numel())
    return {"precision": precision, "adamw": adamw, "compiled": compiled, "warmup_s": warmup, "tokens": tokens,
            "s_per_step": seconds,
            "tokens_per_s": tokens / seconds, "model_tflops": flops / seconds / 1e12, "peak_tflops": peak / 1e12,
            "mfu": flops / seconds / peak, "busy": busy}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16-mixed"], choices=["fp32", "bf16-mixed"])
    p.add_argument("--adamw", nargs="+", default=["fused"], choices=ADAMW_IMPLEMENTATIONS,
                   help="optimizer implementations (train/optimizer.py; default: the trainer's, fused)")
    p.add_argument("--compile", nargs="+", default=["eager"], choices=["eager", "compiled"],
                   help="compiled: torch.compile of every decoder layer, as the recipe key `compile: true` does "
                        "(train/parallel.py: wrap_layers); the warm-up steps, compilation included, are left out")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per precision (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--samples", type=int, default=8, help="samples per packed micro-batch (half und, half gen)")
    p.add_argument("--text-len", type=int, default=128)
    p.add_argument("--gemm", type=int, default=2048, help="side of the square GEMM that measures the peak")
    p.add_argument("--system-heap", action="store_true",
                   help="leave glibc's heap as it is (the trainer's default keeps freed memory: keep_freed_memory)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    heap = "glibc default" if args.system_heap else f"freed blocks kept, up to {keep_freed_memory() >> 20} MiB"
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text()]
    log.info("python benchmarks/bench_train.py %s", " ".join(argv or sys.argv[1:]))
    log.info("CPU %s, %d threads, flags %s, torch %s, heap: %s", platform.processor() or platform.machine(),
             args.threads, " ".join(flags), torch.__version__, heap)
    rows = [bench(name, adamw, mode == "compiled", args)
            for name in args.precisions for adamw in args.adamw for mode in args.compile]
    log.info("%-11s %-8s %-8s %7s %9s %11s %12s %11s %7s %6s %9s", "precision", "adamw", "layers", "tokens", "s/step",
             "tokens/s", "model TFLOP/s", "peak TFLOP/s", "MFU", "busy", "warm-up s")
    for r in rows:
        log.info("%-11s %-8s %-8s %7d %9.3f %11.0f %12.4f %11.4f %6.1f%% %5.0f%% %9.1f", r["precision"], r["adamw"],
                 "compiled" if r["compiled"] else "eager", r["tokens"], r["s_per_step"], r["tokens_per_s"],
                 r["model_tflops"], r["peak_tflops"], 100 * r["mfu"], 100 * r["busy"], r["warmup_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
