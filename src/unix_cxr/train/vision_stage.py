"""The `vision` stage of the phantom recipe: the SigLIP tower learns to see phantom findings before stage 1.

UniX starts stage 1 from a pretrained SigLIP (Janus-Pro's); the phantom model has none, and a ViT trained from
scratch through the report loss alone learns to look at the image slowly (most report tokens do not depend on
it). This stage gives the tower its start: `UniX(cfg)` is built exactly as the trainer builds a random model
(`torch.manual_seed(recipe.seed)`), and its SigLIP tower, with a linear head on the mean of its patch features,
is trained with binary cross-entropy on what the phantom specs say was drawn: the 8 finding labels (cardiomegaly,
lung opacity, edema, consolidation, atelectasis, pneumothorax, pleural effusion, support devices) and, for the 5
that have a side, one target per side. The head is dropped; the connector and the decoder stay as initialised.

    OUTPUT/<stage>/
        metrics.jsonl, checkpoints/   as the other stages (`train.small_loop.fit`: exact resume)
        final/                        model.safetensors (authors' keys) + config.json + unix-cxr.yaml: the
                                      next model stage starts from it (the trainer sets it as its init)
        summary.json                  the probe's F1 on `vision.val` (when given), seconds
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import OWN_CONFIG, UniXConfig, load_config
from ..utils.atomic import write_atomic
from .parallel import Dist
from .recipe import StageConfig, TrainRecipe
from .small_loop import PreparationResult, adamw, fit
from .vae_stage import batch_indices

log = logging.getLogger(__name__)

FINDINGS = ("Cardiomegaly", "Lung Opacity", "Edema", "Consolidation", "Atelectasis", "Pneumothorax",
            "Pleural Effusion", "Support Devices")
SIDED = ("Lung Opacity", "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion")
TARGETS = (*FINDINGS, *(f"{name} ({side})" for name in SIDED for side in ("right", "left")))


def vision_targets(spec: dict) -> np.ndarray:
    """(len(TARGETS),) float: the findings drawn in a phantom spec (`specs.jsonl` form), then their sides."""
    from ..data.phantom import Finding

    present: set[str] = set()
    for raw in spec["findings"]:
        f = Finding(**raw)
        present.add(f.label)
        sides = ("right", "left") if f.side == "bilateral" else (f.side,)
        present.update(f"{f.label} ({side})" for side in sides)
    return np.array([name in present for name in TARGETS], dtype=np.float32)


def load_phantoms(folder: str | Path, cfg: UniXConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S, S) uint8 SigLIP-sized grey images and (N, len(TARGETS)) targets of a phantom folder."""
    from ..data.transforms import siglip_image

    folder = Path(folder)
    specs = folder / "specs.jsonl"
    if not specs.is_file():
        raise ValueError(f"vision.phantoms {folder}: no specs.jsonl (a folder written by `unix-cxr data phantom`)")
    rows = [json.loads(line) for line in specs.read_text(encoding="utf-8").splitlines() if line.strip()]
    grey = [np.asarray(siglip_image(folder / "images" / f"{r['id']}.png", cfg.vision, pad="black")) for r in rows]
    return torch.from_numpy(np.stack(grey)), torch.from_numpy(np.stack([vision_targets(r["spec"]) for r in rows]))


class TowerProbe(nn.Module):
    """The SigLIP tower of a UniX model and a linear head on its mean patch feature (one logit per target)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.vision = model.vision
        self.head = nn.Linear(model.cfg.vision.hidden_size, len(TARGETS))
        for p in self.vision.connector.parameters():
            p.requires_grad_(False)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        from ..model.vision import normalize_grey

        pixels = normalize_grey(grey, self.vision.cfg)
        return self.head(self.vision.features(pixels.to(self.head.weight.device)).mean(1))


def train_vision(recipe: TrainRecipe, name: str, stage: StageConfig, out: Path, d: Dist, *, resume: bool,
                 max_steps: int | None, lr_schedule: Callable[[int], float], should_stop: Callable[[], bool],
                 progress: bool = True) -> PreparationResult:
    """Run the stage into `out` (see the module doc); arguments as `vae_stage.train_vae`."""
    import yaml

    from ..checkpoint.io import save_authors_weights
    from ..config import to_authors_config
    from ..model.unix import UniX

    began = time.perf_counter()
    cfg = load_config(recipe.model, recipe.model_overrides)
    target = min(stage.steps, max_steps) if max_steps else stage.steps
    grey, targets = load_phantoms(stage.vision.phantoms, cfg)
    torch.manual_seed(recipe.seed)  # the trainer's random start (build_model), so only the tower differs
    model = UniX(cfg)
    torch.manual_seed(recipe.seed + 1)
    probe = TowerProbe(model).to(d.device).train()
    optimizer, scheduler = adamw(probe, stage, lr_schedule)
    log.info("stage %s: the %s-parameter SigLIP tower on %d phantoms, %d steps of %d", name,
             f"{sum(p.numel() for p in model.vision.tower.parameters()):,}", len(grey), target,
             stage.global_batch_size)

    def step_loss(step: int):
        idx = batch_indices(step, stage.global_batch_size, len(grey), recipe.seed)
        y = targets[idx].to(d.device)
        logits = probe(grey[idx])
        loss = F.binary_cross_entropy_with_logits(logits, y)
        accuracy = float(((logits.detach() > 0) == (y > 0.5)).float().mean())
        return loss, {"bce": float(loss.detach()), "accuracy": accuracy}, len(idx)

    steps, interrupted = fit(name, probe, optimizer, scheduler, step_loss, stage, out, d, target=target,
                             resume=resume, should_stop=should_stop, progress=progress, shown=("accuracy",))
    if interrupted:
        return PreparationResult(steps, None, interrupted=True)
    summary: dict = {"steps": steps, "images": len(grey), "targets": list(TARGETS)}
    if stage.vision.val:
        summary["val"] = _probe_scores(probe.eval(), *load_phantoms(stage.vision.val, cfg))
        log.info("stage %s: probe on %s: micro-F1 %.3f over the 8 findings", name, stage.vision.val,
                 summary["val"]["micro_f1"])
    final = out / "final"
    if d.is_main:
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_authors_weights(model.cpu(), tmp / "model.safetensors")
        write_atomic(tmp / "config.json", json.dumps(to_authors_config(cfg), indent=1))
        write_atomic(tmp / OWN_CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        summary["seconds"] = round(time.perf_counter() - began, 1)
        write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    d.barrier()
    return PreparationResult(steps, final)


@torch.no_grad()
def _probe_scores(probe: TowerProbe, grey: torch.Tensor, targets: torch.Tensor) -> dict:
    pred = torch.cat([probe(grey[s:s + 64]) > 0 for s in range(0, len(grey), 64)])[:, :len(FINDINGS)].cpu()
    truth = targets[:, :len(FINDINGS)] > 0.5
    tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
    f1 = [float(t / (t + 0.5 * (p + n))) if t + p + n else 0.0 for t, p, n in zip(tp, fp, fn, strict=True)]
    micro = float(tp.sum() / (tp.sum() + 0.5 * (fp.sum() + fn.sum())))
    return {"micro_f1": micro, "per_finding": dict(zip(FINDINGS, f1, strict=True))}


__all__ = ["FINDINGS", "TARGETS", "TowerProbe", "load_phantoms", "train_vision", "vision_targets"]
