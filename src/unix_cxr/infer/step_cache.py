"""A step cache for the image loop (`sampling.step_cache: taylor`): fewer model evaluations per image.

TaylorSeer-style forecasting (Liu et al. 2025, "From Reusing to Forecasting"), applied to the model's output:
after `warmup` Euler steps that all evaluate the model, it is evaluated only every `interval`-th step; in between,
the conditional and the unconditional velocities are each forecast to first order in t from their last two
evaluations, v(t) ~ v(t1) + (t - t1) (v(t1) - v(t0)) / (t1 - t0). Guidance is applied outside the cache, to the
(evaluated or forecast) conditional and unconditional velocities, so CFG, its interval and its renorm act on every
step as without the cache. A branch with fewer than two evaluations so far (the unconditional one when the CFG
interval starts) is evaluated instead of forecast.

At 50 time points (49 updates), warm-up 3 and interval 2 evaluate the model at 26 of the 49 steps (1.88x fewer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

STEP_CACHES = ("none", "taylor")


@dataclass
class BranchHistory:
    """The last two evaluated (t, velocity) of one branch (conditional or unconditional)."""

    points: list[tuple[float, torch.Tensor]] = field(default_factory=list)

    def record(self, t: float, v: torch.Tensor) -> None:
        self.points = [*self.points[-1:], (t, v)]

    @property
    def can_forecast(self) -> bool:
        return len(self.points) == 2 and self.points[0][0] != self.points[1][0]

    def forecast(self, t: float) -> torch.Tensor:
        (t0, v0), (t1, v1) = self.points
        return v1 + (t - t1) * (v1 - v0) / (t1 - t0)


@dataclass
class TaylorCache:
    interval: int = 2
    warmup: int = 3
    cond: BranchHistory = field(default_factory=BranchHistory)
    uncond: BranchHistory = field(default_factory=BranchHistory)

    def __post_init__(self) -> None:
        if self.interval < 1 or self.warmup < 2:
            raise ValueError(f"step cache: interval must be >= 1 and warmup >= 2, got {self.interval}, {self.warmup}")

    def evaluates(self, step: int, guided: bool) -> bool:
        """Whether Euler step `step` (0-based) runs the model rather than forecasting."""
        if step < self.warmup or (step - self.warmup) % self.interval == self.interval - 1:
            return True
        return not self.cond.can_forecast or (guided and not self.uncond.can_forecast)


__all__ = ["STEP_CACHES", "BranchHistory", "TaylorCache"]
