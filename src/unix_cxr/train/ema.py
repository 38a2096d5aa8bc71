"""Exponential moving average of the trained parameters (the authors: decay 0.9999, updated after every
optimizer step), kept in fp32 whatever the training precision, sharded like the parameters under FSDP2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def _params(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if n in self.shadow)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * parameter."""
        for name, p in self._params(model):
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block (e.g. to export them), its own after it."""
        saved = {}
        with torch.no_grad():
            for name, p in self._params(model):
                saved[name] = p.detach().clone()
                p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self._params(model):
                    p.copy_(saved[name])
