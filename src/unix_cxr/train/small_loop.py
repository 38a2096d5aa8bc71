"""The step loop of the preparation stages that train a small module of their own (`vae`, `vision`).

`fit` runs optimizer steps `step .. target` of a module whose step-s loss is a pure function of s (the caller
draws its batch and noise from (seed, s)), so a run resumed from a checkpoint repeats the uninterrupted one
exactly. It writes `OUT/metrics.jsonl` (one line per step) and DCP checkpoints (`train.checkpoint`: model,
optimizer, scheduler, step) every `checkpoint_every` steps, at the end and when `should_stop()` says so (SIGTERM /
SIGINT), and stops on a non-finite loss with the last good checkpoint kept. Every rank runs the same computation
(the modules are small), so the checkpoints stay collective.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.atomic import write_atomic
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .optimizer import build_adamw, set_implementation
from .parallel import Dist
from .recipe import StageConfig

log = logging.getLogger(__name__)

@dataclass
class PreparationResult:
    """What a preparation stage did (the trainer turns it into its StageResult)."""

    steps: int
    final: Path | None  # the exported folder (None when interrupted)
    interrupted: bool = False


StepLoss = Callable[[int], tuple[torch.Tensor, dict[str, float], int]]  # step -> (loss, parts, items in the batch)


def fit(name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, step_loss: StepLoss, stage: StageConfig, out: Path,
        d: Dist, *, target: int, resume: bool, should_stop: Callable[[], bool], progress: bool = True,
        shown: tuple[str, ...] = ()) -> tuple[int, bool]:
    """Train `module` to step `target` (see the module doc); returns (steps done, interrupted)."""
    from tqdm import tqdm

    ckpt_dir, metrics = out / "checkpoints", out / "metrics.jsonl"
    step = 0
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        trainer_state, _ = load_checkpoint(last, module, optimizer, d)
        set_implementation(optimizer, stage.optim)
        step = int(trainer_state["step"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        log.info("stage %s: resuming from %s (step %d)", name, last, step)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        metrics_upto(metrics, step)
    params = [p for p in module.parameters() if p.requires_grad]
    clip = stage.optim.grad_clip if stage.optim.grad_clip > 0 else math.inf
    bar = tqdm(total=target, initial=step, desc=name, unit="step", disable=not (progress and d.is_main))
    interrupted = False
    while step < target:
        started = time.perf_counter()
        loss, parts, items = step_loss(step)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"stage {name}: the loss is {value} at step {step + 1}; stopped, the last good "
                             f"checkpoint is kept in {ckpt_dir}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        scheduler.step()
        step += 1
        row = {"step": step, "loss": value, **parts, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
               "items_per_s": items / (time.perf_counter() - started)}
        if d.is_main:
            with metrics.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", *shown)})
            bar.update(1)
        interrupted = d.any(should_stop())
        if step % stage.checkpoint_every == 0 or step == target or interrupted:
            save_checkpoint(ckpt_dir, step, module, optimizer, {"scheduler": scheduler.state_dict()}, {}, d,
                            stage.keep_checkpoints)
        if interrupted:
            break
    bar.close()
    return step, interrupted


def metrics_upto(path: Path, step: int) -> None:
    """Keep the metric lines of steps <= `step` (a resumed run rewrites what came after its checkpoint)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_atomic(path, "".join(line + "\n" for line in kept))


def adamw(module: torch.nn.Module, stage: StageConfig, lr_schedule: Callable[[int], float]):
    """AdamW over the trainable parameters with the stage's settings, and its LambdaLR schedule."""
    optimizer = build_adamw((p for p in module.parameters() if p.requires_grad), stage.optim)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)


__all__ = ["PreparationResult", "adamw", "fit", "metrics_upto"]
