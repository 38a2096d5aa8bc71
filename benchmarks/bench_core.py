"""Core inference benchmarks of unix_cxr on CPU (a script, not a test).

  (i)   report decoding: our ReportGenerator (image + prompt, greedy, KV cache) against transformers'
        `generate` on the understanding path exported as Qwen3ForCausalLM (unix_cxr.checkpoint.hf_export),
        same weights, at a mid-size config; HF gets a text-only prompt of the same total length;
  (ii)  image sampling: our ImageGenerator.sample against a naive loop (in this file) that recomputes the
        text context at every Euler step (no cache) and runs the conditional and unconditional branches as
        two separate forwards; same noise, steps and CFG settings; the latents are compared;
  (iii) the `unix-full` preset with random weights in the dtype the one policy picks for bf16-stored weights on
        this CPU (`--full-dtype auto`: bf16 with native bf16 arithmetic, fp32 on an AVX2 CPU, with the weights
        held in bf16 and upcast on the fly when fp32 ones would take over half the memory): peak RSS,
        seconds per decoded token (report-only and full model), seconds per denoising step (full model), and
        the memory-bandwidth bound of decoding;
  kern  the CPU kernels behind (iii) at full-size shapes: GEMM GFLOP/s in fp32 and bf16, decode attention, the
        weight-read speed of one-row products in fp32, bf16, bf16 upcast by a compiled reduction, int8, and a
        guided step's products through `UpcastLinear` against fp32 weights.

Usage: python benchmarks/bench_core.py [--quick] [--skip-full] [--json out.json]; see --help for sizes.
Every figure is printed in one table at the end, each with what was measured.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import gc
import itertools
import json
import logging
import platform
import resource
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unix_cxr.checkpoint.hf_export import und_to_qwen3
from unix_cxr.config import DecoderConfig, SpecialTokens, UniXConfig, VisionConfig, load_config
from unix_cxr.flow import time_grid
from unix_cxr.infer.image import ImageGenerator, cfg_combine, in_cfg_interval
from unix_cxr.infer.packed import pack, pack_weights, packed_bytes, packed_product, packing
from unix_cxr.infer.quantize import decoding_steps
from unix_cxr.infer.report import ReportGenerator
from unix_cxr.infer.upcast import UpcastLinear, upcast_weights
from unix_cxr.model.attention import cached_attention
from unix_cxr.model.decoder import RMSNorm
from unix_cxr.model.embeddings import latent_position_ids
from unix_cxr.model.masks import PackedLayout, split_position_ids
from unix_cxr.model.unix import UniX
from unix_cxr.utils.dtype_policy import choose_dtype

log = logging.getLogger("bench_core")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- bookkeeping ---------------------------------------------------------------------------------------
@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    what: str
    other_cpu: float | None = None  # share of the machine's CPU used by other processes while measuring


FIGURES: list[Figure] = []


def record(section: str, name: str, value: float, unit: str, what: str, other_cpu: float | None = None) -> None:
    FIGURES.append(Figure(section, name, float(value), unit, what, other_cpu))
    log.info("%-6s %-44s %12s %-8s %5s %s", section, name, fmt(value), unit, busy(other_cpu), what)


def busy(other_cpu: float | None) -> str:
    return "" if other_cpu is None else f"{100 * other_cpu:.0f}%"


def fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}"
    return f"{value:.3e}"


def print_table() -> None:
    width = max(len(f.name) for f in FIGURES)
    print("\n" + "=" * 100)
    print("busy = share of the machine's CPU time taken by OTHER processes while the figure was measured")
    print(f"{'sec':<6} {'figure':<{width}} {'value':>12} {'unit':<8} {'busy':>5} what was measured")
    print("-" * 100)
    for f in FIGURES:
        print(f"{f.section:<6} {f.name:<{width}} {fmt(f.value):>12} {f.unit:<8} {busy(f.other_cpu):>5} {f.what}")
    print("=" * 100)


@dataclass
class CpuSample:
    total: int  # jiffies of all CPUs
    idle: int
    own: int  # user + system jiffies of this process (all threads)


def cpu_sample() -> CpuSample:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[11], fields[12]: utime, stime
    return CpuSample(sum(vals), vals[3] + vals[4], int(fields[11]) + int(fields[12]))


def other_cpu_share(a: CpuSample, b: CpuSample) -> float:
    """Share of the whole machine's CPU time (all cores) that processes other than this one used."""
    total = b.total - a.total
    if total <= 0:
        return 0.0
    busy_all = total - (b.idle - a.idle)
    return max(0.0, busy_all - (b.own - a.own)) / total


QUIET = {"threshold": 0.10, "max_wait": 0.0}


def wait_quiet() -> None:
    """Wait (at most QUIET['max_wait'] s) until other processes use < threshold of the CPU over 1 s."""
    start = time.monotonic()
    deadline, shares = start + QUIET["max_wait"], []
    while True:
        a = cpu_sample()
        time.sleep(1.0)
        shares.append(other_cpu_share(a, cpu_sample()))
        if shares[-1] < QUIET["threshold"] or time.monotonic() >= deadline:
            if len(shares) > 1:
                log.info("waited %.0f s for other processes (mean %.0f%% CPU)%s", time.monotonic() - start,
                         100 * statistics.mean(shares), "" if shares[-1] < QUIET["threshold"] else
                         f"; still busy ({100 * shares[-1]:.0f}%): measuring anyway")
            return


@dataclass
class Timing:
    median: float
    times: list[float]
    other_cpu: float


def timed(fn, repeats: int, warmup: int = 1) -> Timing:
    """Median wall seconds of `repeats` calls of fn() after `warmup` untimed calls (and a wait for quiet)."""
    for _ in range(warmup):
        fn()
    wait_quiet()
    start = cpu_sample()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), times, other_cpu_share(start, cpu_sample()))


def timed_interleaved(fns: dict[str, object], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Like `timed` for several functions, run in turn (A B C A B C ...) so that drifts in machine speed and
    load hit them alike; `other_cpu` is that of the whole group."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wait_quiet()
    start = cpu_sample()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    other = other_cpu_share(start, cpu_sample())
    return {name: Timing(statistics.median(ts), ts, other) for name, ts in times.items()}


def timed_once(fn) -> tuple[float, float, object]:
    """(seconds, other processes' CPU share, result) of one call (for steps that take minutes)."""
    wait_quiet()
    start = cpu_sample()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, other_cpu_share(start, cpu_sample()), out


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square (n x n) matrix products in `dtype`: the matmul peak of this CPU."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times)


def packed_linear_flops(rows_shape, packed_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's packed linear (`infer.packed`): (M, K) rows x an (N, K) weight."""
    return 2 * rows_shape[0] * rows_shape[1] * packed_shape[0]


def matmul_flops(fn) -> tuple[int, object]:
    """(FLOPs of the matrix products fn() runs, its result), counted by torch.utils.flop_counter (mm, addmm, bmm,
    and oneDNN's packed linear of packed bf16 weights; attention kernels on CPU are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.mkldnn._linear_pointwise: packed_linear_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = fn()
    return counter.get_total_flops(), out


def record_peak_share(label: str, what: str, flops: int, seconds: float, peaks: dict[str, float],
                      other: float | None) -> None:
    """Record the matmul TFLOP/s of a timed phase and its share of each measured GEMM peak."""
    record("iii", f"matmul TFLOP/s {label}", flops / seconds / 1e12, "TFLOP/s",
           f"{flops / 1e12:.3f} TFLOP of matrix products ({what}) / {seconds:.3g} s", other)
    for name, peak in peaks.items():
        record("iii", f"share of the {name} GEMM peak, {label}", 100 * flops / seconds / peak, "%",
               f"against {peak / 1e12:.3f} TFLOP/s ({name} 2048^3 mm, best of 5, this run)", other)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident memory of a phase: VmHWM after resetting it (Linux clear_refs 5); else ru_maxrss."""

    def __init__(self):
        self.exact = True
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.exact = False

    def peak(self) -> int:
        if self.exact:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---- models ---------------------------------------------------------------------------------------------
def mid_config(args) -> UniXConfig:
    """The mid-size config of (i) and (ii); the vision tower is small (its cost only enters the prefill)."""
    v = args.vocab
    cfg = UniXConfig(
        decoder=DecoderConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_layers=args.layers,
                              num_heads=args.heads, num_kv_heads=args.kv_heads, vocab_size=v),
        vision=VisionConfig(image_size=args.vision_image_size, patch_size=16, hidden_size=args.vision_hidden,
                            intermediate_size=4 * args.vision_hidden, num_layers=args.vision_layers,
                            num_heads=max(1, args.vision_hidden // 64)),
        tokens=SpecialTokens(bos=v - 4, eos=v - 3, start_of_image=v - 2, end_of_image=v - 1),
    )
    return cfg.validate()


def quick_config() -> UniXConfig:
    cfg = load_config("tiny")
    cfg.decoder = replace(cfg.decoder, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=4,
                          vocab_size=512, num_layers=2)
    return cfg.validate()


def randomize_(model: UniX, seed: int = 0, std: float = 0.02) -> UniX:
    """Random weights without the per-element cost of normal_ on billions of elements: every tensor is tiled
    from one random pool (values do not matter for speed); norm weights 1 + 0.1 N(0, 1); then the fixed tables
    (sin-cos positions, SigLIP position ids) are refilled. Works on a model materialised with to_empty."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 22, generator=g) * std
    pools: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def tile_(t: torch.Tensor, offset: int) -> None:
        src = pools.setdefault((t.dtype, t.device), pool.to(device=t.device, dtype=t.dtype))
        flat = t.view(-1)
        pos, start = 0, offset % src.numel()
        while pos < flat.numel():
            k = min(src.numel() - start, flat.numel() - pos)
            flat[pos:pos + k].copy_(src[start:start + k])
            pos, start = pos + k, 0

    with torch.no_grad():
        norms = set()
        for module in model.modules():
            if isinstance(module, (RMSNorm, nn.LayerNorm)):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))  # any device
                norms.add(id(module.weight))
        for i, p in enumerate(model.parameters()):
            if id(p) not in norms:
                tile_(p, 7919 * i)
        model.reset_fixed_tables()
    return model


def build_random(cfg: UniXConfig, dtype: torch.dtype, with_generation: bool,
                 device: str | torch.device = "cpu", prepare=None) -> UniX:
    """Build on the meta device in `dtype` (no init cost, no float32 copy), `prepare` it there (e.g.
    `infer.upcast.upcast_weights`), then materialise on `device` and fill."""
    with default_dtype(dtype), torch.device("meta"):
        model = UniX(cfg, with_generation=with_generation)
    model.to(dtype)  # the position tables are float32 parameters
    if prepare is not None:
        prepare(model)
    model.to_empty(device=device)
    return randomize_(model).eval()


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + packed_bytes(module)


def packed_for_inference(args, model: UniX) -> UniX:
    """`model` as `load_for_inference` runs it on CPU: its linear layers packed for oneDNN where that pays
    (`infer.packed`; not in the upcast mode), unless `--no-pack`."""
    return model if args.no_pack or args.full_dtype == "upcast" else pack_weights(model)


def random_pixels(cfg: UniXConfig, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = cfg.vision.image_size
    return torch.randn(batch, 3, s, s, generator=g)


def random_ids(n: int, cfg: UniXConfig, batch: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.tokens.bos, (batch, n), generator=g).tolist()  # below the special ids


def no_stop(gen: ReportGenerator) -> ReportGenerator:
    """The same generator with an EOS id that can never be produced: decoding always runs max_new_tokens."""
    out = ReportGenerator(gen.model, gen.decoding, compile=gen.compile)
    out.tokens = replace(gen.tokens, eos=-1)
    return out


# ---- (i) report decoding --------------------------------------------------------------------------------
def run_ours(gen: ReportGenerator, decoder_only: ReportGenerator, pixels, blocks, n_new: int, parts) -> None:
    """What ReportGenerator.generate does (prefill, then decode), with EOS disabled for the decode."""
    t0 = time.perf_counter()
    state = gen.prefill(pixels, blocks, n_new)
    t1 = time.perf_counter()
    out = decoder_only.decode(state, n_new)
    parts["prefill"].append(t1 - t0)
    parts["decode"].append(time.perf_counter() - t1)
    assert all(len(r) == n_new for r in out.token_ids), "our decoding stopped early"


def run_hf(hf, ids: torch.Tensor, new: int) -> None:
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                      eos_token_id=None)
    assert out.shape[1] == ids.shape[1] + new, "HF generate stopped early"


def bench_report(args, base: UniX) -> None:
    n_new = args.new_tokens
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        model = base.to(dtype)  # in place
        hf = und_to_qwen3(model, share_weights=True)
        ours = model if args.no_pack else pack_weights(copy.deepcopy(model))  # as load_for_inference does
        gen = ReportGenerator(ours, compile=args.compile)  # the compile happens in the untimed warm-up
        decoder_only = no_stop(gen)
        for batch in args.batches:
            tag = f"{dtype_name} b{batch}"
            pixels = random_pixels(model.cfg, batch)
            blocks = [gen.prompt_block(p) for p in random_ids(args.prompt_len, model.cfg, batch, seed=1)]
            context = model.cfg.vision.num_patches + 2 + len(blocks[0])  # tokens before the start BOS
            hf_ids = torch.tensor(random_ids(context + 1, model.cfg, batch, seed=2))  # + the start BOS
            parts: dict[str, list[float]] = {"prefill": [], "decode": []}

            ours = functools.partial(run_ours, gen, decoder_only, pixels, blocks, n_new, parts)
            theirs = functools.partial(run_hf, hf, hf_ids)

            runs = timed_interleaved({"ours": ours, "hf": functools.partial(theirs, n_new),
                                      "hf1": functools.partial(theirs, 1)}, args.repeats)
            r_ours, r_hf, r_hf1 = runs["ours"], runs["hf"], runs["hf1"]
            t_ours, t_hf, t_hf1 = r_ours.median, r_hf.median, r_hf1.median
            o_ours, o_hf = r_ours.other_cpu, max(r_hf.other_cpu, r_hf1.other_cpu)
            o_both = max(o_ours, o_hf)
            dec_ours = statistics.median(parts["decode"][1:])  # the warm-up call is not counted
            pre_ours = statistics.median(parts["prefill"][1:])
            what = (f"B={batch}, {n_new} new tokens, context {context} tokens (ours: image {context - len(blocks[0])}"
                    f" + prompt block {len(blocks[0])}; HF: {context + 1} text tokens), median of {args.repeats}, "
                    "runs interleaved with the other engine's")
            record("i", f"ours tokens/s {tag}", batch * n_new / t_ours, "tok/s",
                   "ReportGenerator prefill (ViT + image + prompt) + greedy decode; " + what, o_ours)
            record("i", f"HF generate tokens/s {tag}", batch * n_new / t_hf, "tok/s",
                   "Qwen3ForCausalLM.generate(do_sample=False, eos_token_id=None), same weights; " + what,
                   r_hf.other_cpu)
            record("i", f"ratio ours/HF end-to-end {tag}", t_hf / t_ours, "x", "tokens/s ours / tokens/s HF",
                   o_both)
            hf_step = (t_hf - t_hf1) / max(1, n_new - 1)
            record("i", f"ours ms/decode step {tag}", 1e3 * dec_ours / n_new, "ms",
                   f"ReportGenerator.decode only / {n_new} steps (our prefill: {1e3 * pre_ours:.1f} ms)", o_ours)
            record("i", f"HF ms/decode step {tag}", 1e3 * hf_step, "ms",
                   f"(t generate {n_new} - t generate 1) / {n_new - 1} (HF prefill + 1st token: "
                   f"{1e3 * t_hf1:.1f} ms)", o_hf)
            record("i", f"ratio decode step HF/ours {tag}", hf_step / (dec_ours / n_new), "x",
                   "decode-only speed-up (per-step time HF / ours)", o_both)
        del hf
        gc.collect()


# ---- (ii) image sampling --------------------------------------------------------------------------------
@torch.inference_mode()
def naive_sample(model: UniX, prompt: list[int], noise: torch.Tensor, grid: tuple[int, int], sampling) -> torch.Tensor:
    """The reference loop: every Euler step runs [BOS prompt EOS][BOI latents EOI] from scratch through the
    packed (training) path, and, where CFG applies, [BOI latents EOI] alone as a second forward."""
    tok = model.cfg.tokens
    n = grid[0] * grid[1]
    text = torch.tensor([tok.bos, *prompt, tok.eos])
    lt = text.numel()
    lat_pos = latent_position_ids(*grid, model.cfg.max_latent_size)

    def branch(with_text: bool):
        lens, modes = ([lt, n + 2], ["causal", "noise"]) if with_text else ([n + 2], ["noise"])
        layout = PackedLayout.from_splits([(lens, modes)])
        positions = torch.tensor(split_position_ids(lens, modes))[None]
        offset = lt if with_text else 0
        gen_mask = torch.zeros(1, sum(lens), dtype=torch.bool)
        gen_mask[0, offset + 1: offset + 1 + n] = True

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            markers = model.embed_text(torch.tensor([tok.start_of_image, tok.end_of_image]))
            lat = model.embed_latents(x[0], torch.full((n,), float(t)), lat_pos)
            parts = [markers[:1], lat, markers[1:]]
            if with_text:
                parts.insert(0, model.embed_text(text))
            hidden = model.decoder(torch.cat(parts)[None], positions, gen_mask, layout)[0]
            return model.velocity(hidden[offset + 1: offset + 1 + n]).float()[None]
        return velocity

    cond, uncond = branch(True), branch(False)
    x = noise.clone().float()
    t_grid = time_grid(sampling.num_timesteps, sampling.timestep_shift).tolist()
    for t, t_next in itertools.pairwise(t_grid):
        v = cond(x, t)
        if sampling.cfg_text_scale != 1.0 and in_cfg_interval(t, sampling.cfg_interval):
            v = cfg_combine(v, uncond(x, t), sampling.cfg_text_scale, sampling.cfg_renorm_type,
                            sampling.cfg_renorm_min)
        x = x - v * (t - t_next)
    return x


def run_sampler(sampler: ImageGenerator, prompt, noise, size: int, timesteps: int, results: dict) -> None:
    results["ours"] = sampler.sample(prompt, size, size, init_noise=noise, num_timesteps=timesteps)


def run_naive(model: UniX, prompt, noise, grid, sampling, results: dict) -> None:
    results["naive"] = naive_sample(model, prompt, noise, grid, sampling)


def bench_sampling(args, base: UniX) -> None:
    ds = base.cfg.vae.downsample
    grid = (args.sample_size // ds, args.sample_size // ds)
    n, c = grid[0] * grid[1], base.cfg.vae.z_channels
    with torch.no_grad():  # llm2vae is zero-initialised: give it weights so that the latents move
        g = torch.Generator().manual_seed(3)
        base.llm2vae.weight.copy_(torch.randn(base.llm2vae.weight.shape, generator=g) * 0.02)
        base.llm2vae.bias.copy_(torch.randn(base.llm2vae.bias.shape, generator=g) * 0.02)
    for dtype_name in args.sample_dtypes:
        model = base.to(DTYPES[dtype_name])
        sampler = ImageGenerator(model)
        sampling = replace(model.cfg.sampling, num_timesteps=args.sample_timesteps)
        prompt = random_ids(args.prompt_len, model.cfg, 1, seed=4)
        noise = torch.randn(1, n, c, generator=torch.Generator().manual_seed(5))
        results = {}
        ours = functools.partial(run_sampler, sampler, prompt, noise, args.sample_size, args.sample_timesteps,
                                 results)
        naive = functools.partial(run_naive, model, prompt[0], noise, grid, sampling, results)

        runs = timed_interleaved({"ours": ours, "naive": naive}, args.repeats)
        r_ours, r_naive = runs["ours"], runs["naive"]
        t_ours, t_naive = r_ours.median, r_naive.median
        ours_tokens = results["ours"].permute(0, 2, 3, 1).reshape(1, n, c)
        diff = (ours_tokens - results["naive"]).abs().max().item()
        guided = sum(in_cfg_interval(t, sampling.cfg_interval)
                     for t in time_grid(sampling.num_timesteps, sampling.timestep_shift).tolist()[:-1])
        what = (f"{dtype_name}, {args.sample_size} px = {grid[0]}x{grid[1]} latents, prompt block "
                f"{args.prompt_len + 2} tokens, {sampling.num_timesteps - 1} Euler steps ({guided} with CFG "
                f"{sampling.cfg_text_scale}), batch 1, median of {args.repeats}, runs interleaved")
        record("ii", f"ours s/image {dtype_name}", t_ours, "s", "ImageGenerator.sample (cached text, cond+uncond "
               "batched); " + what, r_ours.other_cpu)
        record("ii", f"naive s/image {dtype_name}", t_naive, "s", "loop recomputing text every step, cond and "
               "uncond as 2 forwards; " + what, r_naive.other_cpu)
        record("ii", f"ratio naive/ours {dtype_name}", t_naive / t_ours, "x", "speed-up of ImageGenerator.sample",
               max(r_ours.other_cpu, r_naive.other_cpu))
        record("ii", f"max |latent diff| {dtype_name}", diff, "abs", "final latents ours vs naive loop, same noise")


# ---- (iii) full-size model ------------------------------------------------------------------------------
def measure_bandwidth(args) -> dict[str, tuple[float, float]]:
    """GB/s of streaming reads (sum) and copies over a buffer much larger than the caches; median of 3."""
    nbytes = int(args.bw_gb * 1e9)
    out = {}
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16)
    x.copy_(torch.randn(1 << 20).to(torch.bfloat16).repeat(x.numel() // (1 << 20) + 1)[: x.numel()])
    r = timed(x.sum, 3)
    out["bf16 sum (read)"] = nbytes / r.median / 1e9, r.other_cpu
    y = torch.empty_like(x)
    r = timed(functools.partial(y.copy_, x), 3)
    out["bf16 copy (read+write)"] = 2 * nbytes / r.median / 1e9, r.other_cpu
    r = timed(x.view(torch.float32).sum, 3)  # the same bytes read as float32
    out["fp32 sum (read)"] = nbytes / r.median / 1e9, r.other_cpu
    del x, y
    gc.collect()
    return out


def matmul_floor(model: UniX, repeats: int) -> Timing:
    """Seconds of the weight products alone of one decoded token (B = 1): one row through every understanding-
    expert projection and lm_head of `model`, each layer's own forward (so the kernel the model runs: `mv` for one
    bf16 row, model/linear.py; under `decoding_steps()`, as in decoding, so upcast layers take their decoding path),
    in decoding order (distinct weights, so nothing stays in cache). What the CPU's matmul kernels need for the
    weights, with no attention, norms or Python around them."""
    dec = model.decoder
    dtype = model.dtype
    x = torch.randn(1, dec.cfg.hidden_size).to(dtype)
    x_mid = torch.randn(1, dec.cfg.intermediate_size).to(dtype)
    products = []
    for layer in dec.layers:
        u = layer.und
        products += [(x, u.q_proj), (x, u.k_proj), (x, u.v_proj), (x, u.o_proj), (x, u.mlp.gate_proj),
                     (x, u.mlp.up_proj), (x_mid, u.mlp.down_proj)]
    products.append((x, model.lm_head))

    @torch.inference_mode()
    def run() -> None:
        with decoding_steps():
            for inp, linear in products:
                linear(inp)

    return timed(run, repeats)


def decode_bytes(model: UniX) -> tuple[int, dict[str, int]]:
    """Weight bytes read to decode one token: understanding expert of every layer, final norm, one embedding
    row and lm_head (vision tower and generation side are not touched)."""
    dec = model.decoder
    parts = {
        "und experts": sum(param_bytes(layer.und) for layer in dec.layers),
        "final norm": param_bytes(dec.norm),
        "embedding row": dec.embed_tokens.weight[0].numel() * dec.embed_tokens.weight.element_size(),
        "lm_head": param_bytes(model.lm_head),
    }
    return sum(parts.values()), parts


def full_decode(args, cfg: UniXConfig, dtype: torch.dtype, with_generation: bool, label: str):
    """Build the full preset (`--full-dtype upcast`: its large weights held in bf16), run the report path once with
    a real image (prefill timed once), then time decoding of `full_new_tokens` tokens from the same prefilled state
    (median of repeats, cache rewound)."""
    meter = PeakRSS()
    t0 = time.perf_counter()
    model = build_random(cfg, dtype, with_generation, prepare=upcast_weights if args.full_dtype == "upcast" else None)
    model = packed_for_inference(args, model)
    build_s = time.perf_counter() - t0
    record("iii", f"build {label}", build_s, "s", f"meta build + to_empty + random fill (+ packing), "
           f"{args.full_dtype}, {param_bytes(model) / 1e9:.2f} GB of weights")
    gen = ReportGenerator(model)
    decoder_only = no_stop(gen)
    pixels = random_pixels(cfg, 1)
    blocks = [gen.prompt_block(random_ids(args.full_prompt_len, cfg, 1, seed=6)[0])]
    n_new = args.full_new_tokens
    prefill_s, other, state = timed_once(functools.partial(gen.prefill, pixels, blocks, n_new + 2))
    lens0 = state.cache.lens.clone()
    context = int(lens0[0])
    record("iii", f"prefill {label}", prefill_s, "s", f"ViT on 3x{cfg.vision.image_size}^2 + {context} context "
           "tokens into the KV cache, single run (first call)", other)
    flops, _ = matmul_flops(functools.partial(gen.prefill, pixels, blocks, n_new + 2))
    warm_s, warm_other, _ = timed_once(functools.partial(gen.prefill, pixels, blocks, n_new + 2))
    record("iii", f"prefill {label}, second call", warm_s, "s", "the same prefill again", warm_other)
    record_peak_share(f"prefill {label}", "ViT + decoder, second call", flops, warm_s, args.peaks, warm_other)

    def decode() -> None:
        state.cache.lens = lens0.clone()
        out = decoder_only.decode(state, n_new)
        assert len(out.token_ids[0]) == n_new

    r = timed(decode, args.full_repeats)
    s_tok = r.median / n_new
    record("iii", f"s/decoded token {label}", s_tok, "s", f"ReportGenerator.decode of {n_new} tokens after "
           f"{context} context tokens, batch 1, median of {args.full_repeats} after 1 warm-up (runs: "
           + ", ".join(f"{x / n_new:.3f}" for x in r.times) + ")", r.other_cpu)
    record("iii", f"peak RSS {label}", meter.peak() / 1e9, "GB", "VmHWM over build + prefill + decoding"
           + ("" if meter.exact else " (ru_maxrss: whole process)"))
    kv = state.cache.k.numel() * state.cache.k.element_size() * 2
    record("iii", f"KV cache size {label}", kv / 1e9, "GB", f"preallocated for {state.cache.capacity} tokens")
    floor = matmul_floor(model, args.full_repeats)
    record("iii", f"matmul-only floor s/token {label}", floor.median, "s", "1 token through every und projection + "
           f"lm_head of this model (their own forward), nothing else, median of {args.full_repeats}", floor.other_cpu)
    record("iii", f"ratio measured/matmul floor {label}", s_tok / floor.median, "x",
           "s/decoded token / matmul-only floor: cost of attention, norms, RoPE, cache and Python on top",
           max(r.other_cpu, floor.other_cpu))
    return model, s_tok, context, floor.median


def full_denoise(args, model: UniX, label: str) -> None:
    sampler = ImageGenerator(model)
    ds = model.cfg.vae.downsample
    grid = (args.full_image_size // ds, args.full_image_size // ds)
    n, c = grid[0] * grid[1], model.cfg.vae.z_channels
    cond = sampler.encode_context(random_ids(args.full_prompt_len, model.cfg, 1, seed=7))
    both = cond.with_empty_rows(1)
    x = torch.randn(1, n, c, generator=torch.Generator().manual_seed(8))
    meter = PeakRSS()
    step = functools.partial(sampler.velocity, torch.cat([x, x]), 0.9, both, grid)
    step_s, other, _ = timed_once(step)
    record("iii", f"s/denoising step {label}", step_s, "s", f"ImageGenerator.velocity with CFG (cond + uncond "
           f"batched = 2 x {n + 2} query tokens, {args.full_image_size} px = {grid[0]}x{grid[1]} latents, "
           f"{int(cond.lens[0])} cached text tokens), single run (first call)", other)
    record_peak_share(f"denoising step {label}", "one guided step", matmul_flops(step)[0], step_s, args.peaks,
                      other)
    record("iii", f"peak RSS denoising step {label}", meter.peak() / 1e9, "GB", "VmHWM during the step")


def bench_kernels(args) -> None:
    """The CPU kernels that bound (iii), at the full preset's shapes: GEMM throughput in fp32 and bf16, and one
    decode-step attention (1 query against the prefilled context) through SDPA in bf16 and fp32."""
    cfg = quick_config().decoder if args.quick else load_config("unix-full").decoder
    tokens = 2 * (args.full_image_size // 16) ** 2 + 4  # a CFG denoising step's query rows
    for name in ("fp32", "bf16"):
        dtype = DTYPES[name]
        w = torch.randn(cfg.intermediate_size, cfg.hidden_size).to(dtype)
        x = torch.randn(tokens, cfg.hidden_size).to(dtype)
        r = timed(functools.partial(F.linear, x, w), 3)
        record("kern", f"GEMM GFLOP/s {name}", 2 * tokens * w.numel() / r.median / 1e9, "GFLOP/s",
               f"F.linear({tokens} x {cfg.hidden_size}, {cfg.intermediate_size} x {cfg.hidden_size}), median of 3",
               r.other_cpu)
    context = 2 + (load_config("unix-full").vision.num_patches if not args.quick else 16) + args.full_prompt_len + 3
    head_dim = cfg.hidden_size // cfg.num_heads
    for name in ("bf16", "fp32"):
        dtype = DTYPES[name]
        q = torch.randn(1, cfg.num_heads, 1, head_dim).to(dtype)
        k = torch.randn(1, cfg.num_kv_heads, context, head_dim).to(dtype)
        v = torch.randn(1, cfg.num_kv_heads, context, head_dim).to(dtype)
        r = timed(functools.partial(F.scaled_dot_product_attention, q, k, v), 20)
        record("kern", f"decode attention per layer {name}", 1e3 * r.median, "ms",
               f"SDPA of 1 query, {cfg.num_heads} heads x {head_dim}, {context} keys (x {cfg.num_layers} layers = "
               f"{1e3 * r.median * cfg.num_layers:.1f} ms per token), median of 20", r.other_cpu)
        if dtype == torch.bfloat16:  # what a decoding step runs on a bf16 cache (model/attention.py)
            mask = torch.ones(1, 1, 1, context, dtype=torch.bool)
            r = timed(functools.partial(cached_attention, q, k, v, mask, True, "sdpa"), 20)
            record("kern", "decode attention per layer bf16 cache, fp32 path", 1e3 * r.median, "ms",
                   f"cached_attention (q, k, v upcast, fp32 softmax), the same shapes (x {cfg.num_layers} layers "
                   f"= {1e3 * r.median * cfg.num_layers:.1f} ms per token), median of 20", r.other_cpu)
    one_row_kernels(args, cfg)
    upcast_products(args, cfg, tokens)


def upcast_products(args, cfg: DecoderConfig, rows: int) -> None:
    """A guided step's products (`rows` rows) through `UpcastLinear` (bf16-held weights upcast 512 output rows at a
    time, then fp32 GEMMs) against `F.linear` on the fp32 weights, at the MLP's shapes: what the upcast mode costs
    outside decoding steps."""
    for n, k in ((cfg.intermediate_size, cfg.hidden_size), (cfg.hidden_size, cfg.intermediate_size)):
        layer = UpcastLinear(nn.Linear(k, n, bias=False))
        w32 = layer.weight.float()
        x = torch.randn(rows, k)
        with torch.inference_mode():
            plain = timed(functools.partial(F.linear, x, w32), 5)
            up = timed(functools.partial(layer, x), 5)
        record("kern", f"upcast product / fp32 product, {rows} x {k} -> {n}", up.median / plain.median, "x",
               f"UpcastLinear (bf16 weights) {1e3 * up.median:.1f} ms, F.linear on fp32 weights "
               f"{1e3 * plain.median:.1f} ms, medians of 5", max(up.other_cpu, plain.other_cpu))


def one_row_kernels(args, cfg: DecoderConfig) -> None:
    """The weight-read speed of one-row products (a decoding step's) at the MLP's shape, weights cycled through
    ~0.8 GB so that they come from DRAM: fp32 and bf16 `mv`, bf16 weights upcast to fp32 inside a compiled
    reduction (inductor fuses the cast into its read), and the int8 kernel with bf16 and fp32 activations. GB/s of
    the weights' own bytes, and the parameters read per second (what sets the time of a token)."""
    n, k = cfg.intermediate_size, cfg.hidden_size
    count = max(2, int((0.05e9 if args.quick else 0.8e9) // (2 * n * k)))
    bf16 = [torch.randn(n, k).to(torch.bfloat16) for _ in range(count)]
    int8 = [w.to(torch.int8) for w in bf16]
    x = torch.randn(k)
    x16 = x.bfloat16()
    pair16 = torch.stack([x16, torch.zeros_like(x16)])
    scale, scale16 = torch.ones(n), torch.ones(n, dtype=torch.bfloat16)
    fused = torch.compile(lambda w, row: (w.float() * row).sum(-1))
    int8_mm = torch.ops.aten._weight_int8pack_mm
    fp32 = [w.float() for w in bf16]
    cases = {
        "fp32 mv": (fp32, lambda w: torch.mv(w, x)),
        "fp32 F.linear": (fp32, lambda w: F.linear(x[None], w)),
        **packed_case(fp32, x),
        "bf16 mv (row rounded to bf16)": (bf16, lambda w: torch.mv(w, x16)),
        "bf16 F.linear of the row and a zero row": (bf16, lambda w: F.linear(pair16, w)),
        **packed_case(bf16, x16),
        "bf16 weights upcast in a compiled reduction": (bf16, lambda w: fused(w, x)),
        "int8 kernel, bf16 row": (int8, lambda w: int8_mm(x16[None], w, scale16)),
        "int8 kernel, fp32 row": (int8, lambda w: int8_mm(x[None], w, scale)),
    }
    for name, (weights, product) in cases.items():
        r = timed(lambda weights=weights, product=product: [product(w) for w in weights], 3)
        params = n * k * len(weights) / r.median
        record("kern", f"one-row product {name}", params * weights[0].element_size() / 1e9, "GB/s",
               f"{n} x {k} weights x {len(weights)}, median of 3: {params / 1e9:.2f} G parameters/s", r.other_cpu)


def packed_case(weights: list[torch.Tensor], row: torch.Tensor) -> dict:
    """The one-row product of `infer.packed` (weights packed for oneDNN, the row padded as `packing()` chose), as a
    `one_row_kernels` case; none where this CPU keeps weights of that dtype unpacked."""
    dtype = weights[0].dtype
    name = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    choice = packing(dtype)
    if not choice.used:
        log.info("no packed %s one-row case: %s", name, choice.reason)
        return {}
    rows = row[None]
    return {f"{name} packed for oneDNN, the row padded to {choice.pad_rows}": (
        [pack(w) for w in weights], lambda w: packed_product(rows, w, None, choice.pad_rows))}


def resolve_full_dtype(args, cfg: UniXConfig) -> torch.dtype:
    """`--full-dtype auto`: the policy's choice for `cfg`'s weights stored in bf16 (as the released ones), named
    ("upcast": float32 compute, bf16 weights upcast on the fly); the compute dtype."""
    if args.full_dtype == "auto":
        with torch.device("meta"):
            fp32_bytes = 4 * sum(p.numel() for p in UniX(cfg).parameters())
        choice = choose_dtype("auto", "cpu", stored=torch.bfloat16, fp32_bytes=fp32_bytes)
        args.full_dtype = "upcast" if choice.weights else next(n for n, d in DTYPES.items() if d == choice.dtype)
        log.info("--full-dtype auto: %s", choice.describe())
    return DTYPES.get(args.full_dtype, torch.float32)


def bench_full(args) -> None:
    cfg = quick_config() if args.quick else load_config("unix-full")
    dtype = resolve_full_dtype(args, cfg)
    compute = next(n for n, d in DTYPES.items() if d == dtype)
    bw = measure_bandwidth(args)
    for k, (v, other) in bw.items():
        record("iii", f"memory bandwidth {k}", v, "GB/s",
               f"{args.bw_gb:g} GB buffer, {torch.get_num_threads()} threads, median of 3", other)
    best = max(bw["bf16 sum (read)"][0], bw["fp32 sum (read)"][0])
    args.peaks = {name: gemm_peak(DTYPES[name]) for name in dict.fromkeys(["fp32", compute])}
    for name, peak in args.peaks.items():
        record("iii", f"GEMM peak {name}", peak / 1e12, "TFLOP/s", "2048 x 2048 x 2048 torch.mm, best of 5")

    model, s_tok, context, floor_s = full_decode(args, cfg, dtype, with_generation=False, label="report-only")
    nbytes, parts = decode_bytes(model)
    dec = model.cfg.decoder
    kv_bytes = 2 * dec.num_layers * dec.num_kv_heads * dec.head_dim * context * dtype.itemsize
    del model
    gc.collect()
    record("iii", "weight bytes per decoded token", nbytes / 1e9, "GB",
           ", ".join(f"{k} {v / 1e9:.3f}" for k, v in parts.items()) + f" ({args.full_dtype}); KV cache read "
           f"at {context} tokens: {kv_bytes / 1e9:.3f} GB more (not in the bound)")
    bound = nbytes / (best * 1e9)
    record("iii", "bandwidth bound s/token", bound, "s", f"weight bytes / {best:.2f} GB/s (best streaming read)")
    record("iii", "ratio measured/bound report-only", s_tok / bound, "x", "s/decoded token / bandwidth bound")
    record("iii", f"matmul-kernel weight bandwidth {args.full_dtype}", nbytes / floor_s / 1e9, "GB/s",
           "weight bytes per token / matmul-only floor (report-only model)")

    model, s_tok, _, _ = full_decode(args, cfg, dtype, with_generation=True, label="full")
    record("iii", "ratio measured/bound full", s_tok / bound, "x", "s/decoded token / bandwidth bound")
    if not args.skip_denoise:
        full_denoise(args, model, "full")
    del model
    gc.collect()


def bench_int8(args) -> None:
    """Full-size report-only decoding with the dense weights (bf16-stored, loaded with `--dtype auto`) and with int8
    weights (`benchmarks/bench_int8.py`: each mode loads a release folder in a fresh process) as shares of the
    bandwidth bound of each, and the int8 job's peak memory."""
    import bench_int8

    bw = measure_bandwidth(args)
    best = max(bw["bf16 sum (read)"][0], bw["fp32 sum (read)"][0])
    record("int8", "memory bandwidth (best streaming read)", best, "GB/s", f"{args.bw_gb:g} GB buffer")
    rows = bench_int8.run_modes(argparse.Namespace(
        release=None, quick=args.quick, threads=args.threads, new_tokens=args.full_new_tokens,
        repeats=args.full_repeats, prompt_len=32, modes=["dense", "int8"], dtype="auto", compile=False,
        upcast=False, no_pack=args.no_pack))
    for mode, r in rows.items():
        bound = r["bytes"] / (best * 1e9)
        record("int8", f"s/decoded token {mode}", r["s_tok"], "s", f"{r['context']} context tokens, "
               f"{r['bytes'] / 1e9:.3f} GB of weights per token, {r['dtype']} (--dtype auto)")
        record("int8", f"share of the bandwidth bound {mode}", bound / r["s_tok"], "",
               f"bound {bound:.4f} s; targets: int8 >= 0.70, the storage dtype >= 0.85")
        record("int8", f"peak RSS {mode} job", r["peak"] / 1e9, "GB",
               f"load + prefill + decoding, runtime {r['base'] / 1e9:.2f} GB included; target (int8) <= 3")


# ---- main -----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 1 min): checks that the script works")
    p.add_argument("--skip-full", action="store_true", help="skip (iii), the unix-full preset, kern and int8")
    p.add_argument("--skip-denoise", action="store_true", help="skip the full-size denoising step in (iii)")
    p.add_argument("--only", choices=["i", "ii", "iii", "kern", "int8"], nargs="+",
                   help="run only these sections")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--no-pack", action="store_true",
                   help="keep bf16 weights unpacked (by default ours runs them as load_for_inference does on CPU: "
                        "packed for oneDNN where that pays, infer.packed)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median) in (i) and (ii)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--max-wait", type=float, default=0.0,
                   help="before each measurement, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--quiet-threshold", type=float, default=0.10,
                   help="'quiet' = other processes use less than this share of the machine's CPU over 1 s")
    g = p.add_argument_group("mid-size config of (i) and (ii)")
    g.add_argument("--hidden", type=int, default=512)
    g.add_argument("--intermediate", type=int, default=1408)
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=8)
    g.add_argument("--vocab", type=int, default=32000)
    g.add_argument("--vision-image-size", type=int, default=64, help="ViT input side (patch 16)")
    g.add_argument("--vision-hidden", type=int, default=256)
    g.add_argument("--vision-layers", type=int, default=2)
    g.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (without special tokens)")
    g.add_argument("--new-tokens", type=int, default=64)
    g.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    g.add_argument("--compile", action="store_true", help="(i): our decoding step through torch.compile")
    g.add_argument("--dtypes", choices=sorted(DTYPES), nargs="+", default=["fp32", "bf16"])
    g.add_argument("--sample-size", type=int, default=256, help="image side in px for (ii) (latent grid /16)")
    g.add_argument("--sample-timesteps", type=int, default=10, help="time-grid points (steps + 1) for (ii)")
    g.add_argument("--sample-dtypes", choices=sorted(DTYPES), nargs="+", default=["fp32"])
    g = p.add_argument_group("(iii) unix-full preset")
    g.add_argument("--full-dtype", choices=["auto", *sorted(DTYPES), "upcast"], default="auto",
                   help="weights and compute of (iii); upcast: fp32 compute, the large weights held in bf16 and "
                        "upcast on the fly; auto: the one policy for bf16-stored weights on this CPU")
    g.add_argument("--full-prompt-len", type=int, default=16)
    g.add_argument("--full-new-tokens", type=int, default=8)
    g.add_argument("--full-repeats", type=int, default=3)
    g.add_argument("--full-image-size", type=int, default=256, help="px of the denoising step (256 = 16x16)")
    g.add_argument("--bw-gb", type=float, default=2.0, help="buffer size of the bandwidth measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads = 64, 128, 2, 4, 2
        args.vocab, args.vision_image_size, args.vision_hidden, args.vision_layers = 512, 32, 32, 1
        args.prompt_len, args.new_tokens, args.sample_size, args.sample_timesteps = 8, 8, 64, 4
        args.full_new_tokens, args.full_prompt_len, args.full_image_size, args.bw_gb = 4, 4, 64, 0.1
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    torch.set_num_threads(args.threads)
    QUIET.update(threshold=args.quiet_threshold, max_wait=args.max_wait)
    cpu = cpu_model()
    log.info("machine: %s, %d threads, torch %s, python %s", cpu, torch.get_num_threads(), torch.__version__,
             platform.python_version())
    sections = set(args.only or ["i", "ii", "iii", "kern", "int8"])
    if args.skip_full:
        sections -= {"iii", "kern", "int8"}
    torch.manual_seed(0)
    if sections & {"i", "ii"}:
        cfg = mid_config(args)
        base = UniX(cfg, with_generation=True).eval()
        log.info("mid-size config: %s", dataclasses.asdict(cfg.decoder))
        if "ii" in sections:  # each section casts the model in place to the dtype it measures
            bench_sampling(args, base)
        if "i" in sections:
            bench_report(args, base)
        del base
        gc.collect()
    if "kern" in sections:
        bench_kernels(args)
    if "iii" in sections:
        bench_full(args)
    if "int8" in sections:
        bench_int8(args)
    print_table()
    if args.json:
        args.json.write_text(json.dumps({"command": shlex.join([sys.executable, *sys.argv]), "cpu": cpu,
                                         "threads": args.threads, "torch": torch.__version__,
                                         "figures": [dataclasses.asdict(f) for f in FIGURES]}, indent=1))


if __name__ == "__main__":
    main()
