"""Held-out passes of a model stage: the same micro-batches every time, fixed noise, CE / MSE over all ranks.

`Validation.build` reads the first `validation.batches` micro-batches of the stage's `validation.groups` once (in
file order, no caption dropout) and keeps them; every pass then runs them without gradients, with the noise and
timesteps drawn from each sample's key (`objectives.draw_flow_inputs`), so two passes differ only by the weights.
CE and MSE are averaged over the held-out tokens of all ranks, as the training terms are.

A run may also pass a `Sampler` (`unix-cxr train` passes `eval.training_samples.PipelineSampler`; the training
layer cannot import inference): it writes a few generated reports and images of the held-out records into the
pass's folder and returns them for TensorBoard.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..config import UniXConfig
from ..data.loader import LoaderBatch
from .data import build_loader
from .lora import LoraSettings, apply_lora
from .objectives import draw_flow_inputs, training_forward, window_counts
from .parallel import Dist, full_state
from .recipe import StageConfig

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def __call__(self, model: nn.Module, stage: StageConfig, folder: Path) -> dict[str, Any]:
        """Generate from the held-out records of `stage.validation` with `model` (a plain, unsharded UniX) into
        `folder`; return {"reports": [(image path, text)], "images": [(caption, HxW uint8 array)]}."""


@dataclass
class Validation:
    batches: list[LoaderBatch]
    every: int
    seed: int
    shift: float

    @classmethod
    def build(cls, stage: StageConfig, cfg: UniXConfig, tokenizer, d: Dist, seed: int) -> Validation | None:
        v = stage.validation
        if not v.every:
            return None
        loader = build_loader(stage, cfg, tokenizer, d, seed, groups=v.groups, held_out=True)
        batches = list(itertools.islice(loader, v.batches))
        n = d.min_over_ranks(len(batches))  # FSDP2: every rank runs the same number of forwards
        if n == 0:
            raise ValueError(f"validation.groups {sorted(v.groups)}: no held-out micro-batch on some rank")
        log.info("validation: %d held-out micro-batch(es) per rank, every %d step(s)", n, v.every)
        return cls(batches[:n], v.every, seed, cfg.train_timestep_shift)

    def due(self, step: int, target: int) -> bool:
        return step % self.every == 0 or step == target

    @torch.no_grad()
    def losses(self, model: nn.Module, autocast: Callable[[], AbstractContextManager], d: Dist) -> dict[str, float]:
        """{"val_loss", "val_ce", "val_mse", "val_ce_tokens", "val_mse_tokens"} over the held-out batches of all
        ranks (val_loss = val_ce + val_mse, unweighted)."""
        was_training = model.training
        model.eval()
        ce_sum = mse_sum = 0.0
        try:
            for micro in self.batches:
                keys = [info.key for info in micro.samples]
                noise, timesteps = draw_flow_inputs(micro.batch, keys, self.seed, self.shift)
                with autocast():
                    out = training_forward(model, micro.batch, noise=noise, timesteps=timesteps)
                ce_sum += float(out.ce.sum())
                mse_sum += float(out.mse.mean(-1).sum())
        finally:
            model.train(was_training)
        n_ce, n_mse, _ = window_counts(self.batches)
        ce_total, mse_total, n_ce, n_mse = d.all_reduce_sum([ce_sum, mse_sum, n_ce, n_mse])
        ce, mse = ce_total / max(n_ce, 1), mse_total / max(n_mse, 1)
        return {"val_loss": ce + mse, "val_ce": ce, "val_mse": mse, "val_ce_tokens": int(n_ce),
                "val_mse_tokens": int(n_mse)}


def plain_copy(model: nn.Module, cfg: UniXConfig, d: Dist, lora: LoraSettings | None = None) -> nn.Module | None:
    """The model itself on one process; under FSDP2 a full, unsharded copy on rank 0 (every rank takes part in
    the gather; None on the other ranks), with the same LoRA adapters when the model has them."""
    if d.world_size == 1:
        return model
    from ..model.unix import UniX

    state = full_state(model)
    if not d.is_main:
        return None
    copy = UniX(cfg)
    if lora is not None:
        apply_lora(copy, lora)
    copy.load_state_dict(state)
    return copy.to(d.device).eval()


__all__ = ["Sampler", "Validation", "plain_copy"]
