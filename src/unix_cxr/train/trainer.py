"""The training loop: chained stages, gradient accumulation, FSDP2 over torchrun, DCP checkpoints, exact resume.

Per optimizer step, a stage reads `accumulation` packed micro-batches per rank (global batch = micro-batch x
accumulation x world size, in samples). CE and MSE are summed per token and divided by the token counts of the
whole accumulation window summed over ranks (spec 5.4, "the better rule"), so N accumulation steps on one rank
give the same update as one step on N ranks. Noise and timesteps are drawn per sample from its loader key
(`objectives.draw_flow_inputs`), and the loader resumes exactly, so a resumed run repeats the interrupted one.

Each stage writes `OUTPUT/<stage>/`: `metrics.jsonl` (one line per optimizer step), `recipe.yaml` (the resolved
recipe), `checkpoints/step-N/` (see `train.checkpoint`) and, when done, `final/`: a release folder (our config
`unix-cxr.yaml`, the authors' `config.json`, `model.safetensors` in their key layout, the tokenizer and, when the
recipe names one, the VAE) that the next stage starts from and that `load_release` reads.

Preparation stages (the phantom recipe) make what the model stages need: `phantom_data` its files
(`train.phantom_data`), `vae` a VAE and latent caches (`train.vae_stage`), `vision` a SigLIP tower trained on the
phantoms' findings, exported as the weights the next model stage starts from (`train.vision_stage`). The recipe
names what they write through `${output}` (`TrainRecipe.with_output`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import OWN_CONFIG, UniXConfig, load_config
from ..model.unix import UniX
from ..utils.atomic import atomic_folder, write_atomic
from ..utils.memory import keep_freed_memory
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import build_loader, load_tokenizer_folder
from .ema import EMA
from .freeze import apply_freeze
from .lora import LoraSettings, apply_lora, merge_lora, save_adapter
from .objectives import draw_flow_inputs, training_forward, window_counts
from .optimizer import build_adamw, set_implementation
from .parallel import Dist, fill_shards, full_state, is_sharded, shard, wrap_layers
from .phantom_data import prepare_phantom_data
from .recipe import StageConfig, TrainRecipe, save_recipe
from .repa import RepaTerm
from .vae_stage import train_vae
from .validation import Sampler, Validation, plain_copy
from .vision_stage import train_vision

log = logging.getLogger(__name__)

DONE = "done.json"


class TrainingStopped(Exception):
    """The run cannot go on (non-finite loss, out of memory); the last good checkpoint is kept."""


@dataclass
class StageResult:
    name: str
    steps: int
    final: Path | None  # the exported release folder (None when interrupted)
    interrupted: bool = False


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint after the current step and returns."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        log.warning("signal %d: finishing this step, saving a checkpoint, then stopping", signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def accumulation_steps(stage: StageConfig, world_size: int) -> int:
    per_step = stage.data.micro_batch_size * world_size
    if stage.global_batch_size % per_step:
        raise ValueError(f"global_batch_size {stage.global_batch_size} is not a multiple of data.micro_batch_size "
                         f"{stage.data.micro_batch_size} x {world_size} rank(s)")
    return stage.global_batch_size // per_step


def lr_lambda(stage: StageConfig):
    o, total = stage.optim, stage.steps

    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
            floor = o.min_lr / o.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def build_model(recipe: TrainRecipe, cfg: UniXConfig, init: Path | None, d: Dist) -> UniX:
    from ..checkpoint.io import load_authors_weights
    from ..checkpoint.janus import is_janus_folder, load_janus_init

    torch.manual_seed(recipe.seed)
    if not d.is_main:  # FSDP2: its shard of rank 0's weights arrives after sharding (parallel.fill_shards)
        with torch.device("meta"):
            model = UniX(cfg)
        return (model.to(torch.bfloat16) if recipe.precision == "bf16" else model).train()
    model = UniX(cfg)
    if init is not None and is_janus_folder(init):  # stage 1: its LLM, SigLIP and aligner; gen expert = a copy
        report = load_janus_init(model, init, copy_to_gen=recipe.copy_init_moe)
        log.info("weights from the Janus-Pro folder %s: %s", init, report.summary())
    elif init is not None:
        weights = init / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"init {init}: no model.safetensors (a release folder or a stage's final/ folder)")
        load_authors_weights(model, weights)
        log.info("weights from %s", init)
    else:
        log.info("random initial weights (seed %d)", recipe.seed)
    model = model.to(d.device)
    if recipe.precision == "bf16":
        model = model.to(torch.bfloat16)
    return model.train()


def _autocast(recipe: TrainRecipe, d: Dist):
    if recipe.precision == "bf16-mixed" and d.world_size == 1:  # with FSDP2 its policy casts instead
        return torch.autocast(d.device.type, dtype=torch.bfloat16)
    return nullcontext()


def _metrics_upto(path: Path, step: int) -> None:
    """Keep the metric lines of steps <= `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_atomic(path, "".join(line + "\n" for line in kept))


def export_release(model: torch.nn.Module | None, cfg: UniXConfig, folder: Path, tokenizer, vae: str | None,
                   d: Dist) -> Path:
    """Write a release folder of the model, whole or not at all: of a sharded model (FSDP2) rank 0 gathers the
    full state dict and writes it; a plain model is written as it is (on rank 0; None on the other ranks)."""
    state = full_state(model) if is_sharded(model) else (model.state_dict() if model is not None else {})
    if d.is_main:
        with atomic_folder(folder, "stage result", "model.safetensors") as tmp:
            _write_release(tmp, state, cfg, tokenizer, vae)
    d.barrier()
    return folder


def _write_release(tmp: Path, state: dict, cfg: UniXConfig, tokenizer, vae: str | None) -> None:
    import yaml

    from ..checkpoint.keymap import to_authors
    from ..checkpoint.safetensors_io import write_safetensors_atomic
    from ..config import to_authors_config

    write_safetensors_atomic(to_authors({k: v.float() for k, v in state.items()}), tmp / "model.safetensors",
                             metadata={"format": "pt"})
    write_atomic(tmp / "config.json", json.dumps(to_authors_config(cfg), indent=1))
    write_atomic(tmp / OWN_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tokenizer.save_pretrained(tmp)
    if vae:
        shutil.copytree(vae, tmp / "vae")


def run_stage(recipe: TrainRecipe, name: str, stage: StageConfig, out: Path, init: Path | None, d: Dist,
              resume: bool, max_steps: int | None, tokenizer, progress: bool = True,
              sampler: Sampler | None = None) -> StageResult:
    from tqdm import tqdm

    target = min(stage.steps, max_steps) if max_steps else stage.steps
    cfg = load_config(recipe.model, recipe.model_overrides)
    accum = accumulation_steps(stage, d.world_size)
    model = build_model(recipe, cfg, init, d)
    apply_freeze(model, stage.trained_experts)
    lora = LoraSettings.from_mapping(stage.lora, f"stages.{name}.lora") if stage.lora else None
    if lora is not None:
        apply_lora(model, lora)  # only the adapters train
    wrap_layers(model, activation_checkpointing=stage.activation_checkpointing, compile=stage.compile)
    if d.world_size > 1:
        full_state = model.state_dict() if d.is_main else None
        model = fill_shards(shard(model, d, recipe.precision), full_state, d)
        del full_state
    torch.manual_seed(recipe.seed)  # the REPA projector's start, the same on every rank
    repa = RepaTerm.build(stage.repa, cfg, d) if stage.repa.weight > 0 else None
    # what the optimizer trains and the checkpoints hold: the model and, with REPA, its projector
    trained = nn.ModuleDict({"model": model, **({"repa_projector": repa.projector} if repa else {})})
    params = [p for p in trained.parameters() if p.requires_grad]
    ema = EMA(model, stage.ema_decay) if stage.ema_decay is not None else None
    extra = {"ema": ema.state_dict()} if ema is not None else None
    o = stage.optim
    optimizer = build_adamw(params, o)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage))
    loader = build_loader(stage, cfg, tokenizer, d, recipe.seed)
    validation = Validation.build(stage, cfg, tokenizer, d, recipe.seed)

    ckpt_dir, metrics, val_metrics = out / "checkpoints", out / "metrics.jsonl", out / "validation.jsonl"
    step = 0
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        trainer_state, rank_state = load_checkpoint(last, trained, optimizer, d, extra)
        set_implementation(optimizer, o)
        step = int(trainer_state["step"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        if rank_state is not None:
            loader.load_state_dict(rank_state["loader"])
        log.info("stage %s: resuming from %s (step %d)", name, last, step)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out / "recipe.yaml")
        _metrics_upto(metrics, step)
        _metrics_upto(val_metrics, step)
    board = _tensorboard(recipe, out, step, d)
    batches = iter(loader)
    bar = tqdm(total=target, initial=step, desc=name, unit="step", disable=not (progress and d.is_main))
    interrupted = False
    with _StopFlag() as stop:
        while step < target:
            started = time.perf_counter()
            window = [next(batches) for _ in range(accum)]
            counts = [*window_counts(window), RepaTerm.count(window) if repa else 0]
            n_ce, n_mse, n_tok, n_repa = d.all_reduce_sum(counts)
            sums = [0.0, 0.0, 0.0]  # CE, MSE and REPA summed over this rank's tokens / images (for the metrics)
            for micro in window:
                keys = [info.key for info in micro.samples]
                noise, timesteps = draw_flow_inputs(micro.batch, keys, recipe.seed, cfg.train_timestep_shift)
                with _autocast(recipe, d):
                    outputs = training_forward(model, micro.batch, noise=noise, timesteps=timesteps,
                                               keep_hidden_states=repa is not None)
                    repa_sum = repa.loss_sum(outputs.hidden_states, micro, loader) if repa else torch.zeros(())
                ce_sum, mse_sum = outputs.ce.sum(), outputs.mse.mean(-1).sum()
                loss = (stage.ce_weight * ce_sum / max(n_ce, 1) + stage.mse_weight * mse_sum / max(n_mse, 1)
                        + stage.repa.weight * repa_sum / max(n_repa, 1))
                (loss * d.world_size).backward()  # FSDP2 averages gradients over ranks
                sums[0] += float(ce_sum.detach())
                sums[1] += float(mse_sum.detach())
                sums[2] += float(repa_sum.detach())
            ce_total, mse_total, repa_total = d.all_reduce_sum(sums)
            ce, mse, repa_value = ce_total / max(n_ce, 1), mse_total / max(n_mse, 1), repa_total / max(n_repa, 1)
            loss_value = stage.ce_weight * ce + stage.mse_weight * mse + stage.repa.weight * repa_value
            if not math.isfinite(loss_value):
                raise TrainingStopped(f"stage {name}: the loss is {loss_value} at step {step + 1} (ce {ce}, mse "
                                      f"{mse}); stopped, the last good checkpoint is kept in {ckpt_dir}")
            grad_norm = _clip(params, o.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            seconds = time.perf_counter() - started
            row = {"step": step, "loss": loss_value, "ce": ce, "mse": mse, "repa": repa_value,
                   "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens_per_s": n_tok / seconds,
                   "ce_tokens": int(n_ce), "mse_tokens": int(n_mse)}
            if d.is_main:
                with metrics.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{loss_value:.4f}", ce=f"{ce:.3f}", mse=f"{mse:.3f}",
                                tok_s=f"{row['tokens_per_s']:.0f}")
                bar.update(1)
                if board is not None:
                    for key, value in row.items():
                        if key != "step":
                            board.add_scalar(f"train/{key}", value, step)
            if validation is not None and validation.due(step, target):
                _validate(validation, model, cfg, stage, lora, step, out, d, recipe, sampler, board)
            interrupted = d.any(stop.requested)
            if step % stage.checkpoint_every == 0 or step == target or interrupted:
                save_checkpoint(ckpt_dir, step, trained, optimizer, {"scheduler": scheduler.state_dict()},
                                {"loader": loader.state_dict()}, d, stage.keep_checkpoints, extra)
            if interrupted:
                break
    bar.close()
    if board is not None:
        board.close()
    if interrupted:
        return StageResult(name, step, None, interrupted=True)
    if lora is not None:  # the adapter as peft files, then the merged weights as the stage's result
        model = plain_copy(model, cfg, d, lora)  # itself on one process, rank 0's full copy under FSDP2 (else None)
        if model is not None:
            save_adapter(model, out / "adapter", base=init)
            merge_lora(model)
    final = export_release(model, cfg, out / "final", tokenizer, recipe.vae, d)
    if ema is not None:
        with ema.swapped_in(model):
            export_release(model, cfg, out / "final-ema", tokenizer, recipe.vae, d)
    if d.is_main:
        write_atomic(out / DONE, json.dumps({"steps": step, "target": stage.steps}))
    return StageResult(name, step, final)


def _tensorboard(recipe: TrainRecipe, out: Path, step: int, d: Dist):
    """Rank 0's TensorBoard writer in OUTPUT/<stage>/tensorboard/; events after `step` (a resumed run's
    checkpoint) are purged. None when turned off, on other ranks, or without the tensorboard package (logged)."""
    if not (recipe.tensorboard and d.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("TensorBoard scalars are off: the tensorboard package is not installed (pip install "
                    "tensorboard, or tensorboard=false)")
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)


def _validate(validation: Validation, model: nn.Module, cfg: UniXConfig, stage: StageConfig,
              lora: LoraSettings | None, step: int, out: Path, d: Dist, recipe: TrainRecipe, sampler: Sampler | None,
              board) -> None:
    """One held-out pass: its losses into validation.jsonl (and TensorBoard), then the sampler's outputs."""
    row = {"step": step, **validation.losses(model, lambda: _autocast(recipe, d), d)}
    samples = {}
    if sampler is not None and stage.validation.samples:
        plain = plain_copy(model, cfg, d, lora)
        if plain is not None:
            try:
                with torch.no_grad(), _autocast(recipe, d):
                    samples = sampler(plain, stage, out / "samples" / f"step-{step:08d}")
            except (ValueError, OSError, RuntimeError) as err:  # samples are for watching: training goes on
                log.warning("step %d: no validation samples: %s", step, err)
            if plain is model:
                model.train()
        d.barrier()
    if not d.is_main:
        return
    log.info("step %d: held-out loss %.4f (ce %.4f, mse %.4f)", step, row["val_loss"], row["val_ce"], row["val_mse"])
    with (out / "validation.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    if board is None:
        return
    for key in ("val_loss", "val_ce", "val_mse"):
        board.add_scalar(f"val/{key[4:]}", row[key], step)
    for i, (image, text) in enumerate(samples.get("reports", [])):
        board.add_text(f"val/report_{i}", f"{image}: {text}", step)
    for i, (caption, pixels) in enumerate(samples.get("images", [])):
        board.add_image(f"val/image_{i}", pixels, step, dataformats="HW")
        board.add_text(f"val/caption_{i}", caption, step)
    board.flush()


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _stage_done(out: Path, target: int, stage: StageConfig) -> bool:
    done = out / DONE
    if stage.kind == "phantom_data":  # no steps: its files are written whole, then DONE
        return done.is_file()
    return done.is_file() and json.loads(done.read_text())["steps"] >= target and (out / "final").is_dir()


def run_preparation(recipe: TrainRecipe, name: str, stage: StageConfig, out: Path, d: Dist, resume: bool,
                    max_steps: int | None, progress: bool = True) -> StageResult:
    """A `phantom_data` (no steps; its files in `out`), `vae` or `vision` stage (module doc); writes `DONE`."""
    if stage.kind == "phantom_data":
        prepare_phantom_data(recipe, stage, out, d, progress)
        result = StageResult(name, 0, out)
    else:
        run = train_vae if stage.kind == "vae" else train_vision
        with _StopFlag() as stop:
            done = run(recipe, name, stage, out, d, resume=resume, max_steps=max_steps, lr_schedule=lr_lambda(stage),
                       should_stop=lambda: stop.requested, progress=progress)
        result = StageResult(name, done.steps, done.final, done.interrupted)
    if d.is_main and not result.interrupted:
        write_atomic(out / DONE, json.dumps({"steps": result.steps, "target": stage.steps}))
    return result


def train(recipe: TrainRecipe, output: Path, *, resume: bool = False, max_steps: int | None = None,
          device: str | None = None, progress: bool = True, sampler: Sampler | None = None) -> list[StageResult]:
    """Run every stage of `recipe` into `output` (see the module doc); returns what each stage did. `sampler`
    writes generated samples at the validation passes (`train.validation`)."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be positive, got {max_steps}")
    d = Dist.from_env(device)
    if recipe.keep_freed_memory and (block := keep_freed_memory()) and d.is_main:
        log.info("heap: blocks up to %d MiB reused from the heap, not mapped afresh each step (keep_freed_memory)",
                 block >> 20)
    try:
        return _train(recipe, output, resume, max_steps, d, progress, sampler)
    finally:
        d.close()


def _train(recipe: TrainRecipe, output: Path, resume: bool, max_steps: int | None, d: Dist,
           progress: bool, sampler: Sampler | None) -> list[StageResult]:
    if not resume and output.exists() and any(output.iterdir()):
        raise ValueError(f"--output {output} is not empty: give --resume to continue that run, or a new folder")
    recipe = recipe.with_output(output)
    tokenizer = None  # loaded for the first model stage (a preparation stage may write it)
    init = Path(recipe.init) if recipe.init else None
    results: list[StageResult] = []
    restarted = False
    for name, stage in recipe.stages.items():
        out = output / name
        target = min(stage.steps, max_steps) if max_steps else stage.steps
        if resume and not restarted and _stage_done(out, target, stage):
            log.info("stage %s: already done (%s), skipped", name, out)
            if stage.kind == "phantom_data":
                results.append(StageResult(name, 0, out))
                continue
            results.append(StageResult(name, target, out / "final"))
            if stage.exports_weights:
                init = out / "final"
            continue
        if restarted and out.exists() and d.is_main:
            log.warning("stage %s: its starting point changed, so it starts over (removing %s)", name, out)
            shutil.rmtree(out)
        d.barrier()
        if stage.prepares:
            result = run_preparation(recipe, name, stage, out, d, resume and not restarted, max_steps, progress)
        else:
            if tokenizer is None:
                tokenizer = load_tokenizer_folder(recipe.tokenizer)
            result = run_stage(recipe, name, stage, out, init, d, resume and not restarted, max_steps, tokenizer,
                               progress, sampler)
        results.append(result)
        if result.interrupted:
            log.warning("stopped in stage %s at step %d; continue with --resume", name, result.steps)
            break
        restarted = True
        if stage.exports_weights:
            init = result.final
    return results
