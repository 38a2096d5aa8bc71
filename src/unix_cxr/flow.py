"""Flow matching of UniX (spec 3.1, 4.2), in the manner of a diffusers scheduler; depends on torch only.

Convention: t = 0 is data, t = 1 is noise. The path is x_t = (1 - t) x0 + t eps and the model predicts the
velocity eps - x0 (pointing from data to noise), so an Euler step towards data is x <- x - v (t_i - t_{i+1}).
Timesteps are shifted by t' = shift t / (1 + (shift - 1) t): at inference on the time grid (released: 3.0),
in training on logit-normal draws (released: 1.0, the identity).
"""

from __future__ import annotations

import torch


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = shift*t / (1 + (shift - 1)*t); shift 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(num_images: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps, one per image: logit-normal, sigmoid(N(0, 1)), then the training shift."""
    return shift_timesteps(torch.sigmoid(torch.randn(num_images, generator=generator)), shift)


def time_grid(num_timesteps: int, shift: float) -> torch.Tensor:
    """The shifted inference grid from 1 (noise) to 0 (data): `num_timesteps` points, num_timesteps - 1 steps."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    return shift_timesteps(torch.linspace(1, 0, num_timesteps), shift)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps; `t` broadcasts against the trailing dimensions (e.g. (N, 1) for (N, C))."""
    return (1 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The regression target of the velocity head: eps - x0."""
    return eps - x0


class EulerScheduler:
    """Euler integration from noise to data over the shifted grid: `set_timesteps`, then `step` per interval.

    `timesteps` holds the grid points t_0 = 1 > ... > t_{K-1} = 0; step i moves x from t_i to t_{i+1}.
    """

    def __init__(self, shift: float = 1.0) -> None:
        self.shift = shift
        self.timesteps: list[float] = []

    def set_timesteps(self, num_timesteps: int) -> None:
        self.timesteps = time_grid(num_timesteps, self.shift).tolist()

    @property
    def num_steps(self) -> int:
        return max(len(self.timesteps) - 1, 0)

    def step(self, velocity: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        """x at t_{index+1} from x at t_index and the velocity there."""
        if not 0 <= index < self.num_steps:
            raise ValueError(f"step index {index} outside 0..{self.num_steps - 1} (call set_timesteps first)")
        return x - velocity * (self.timesteps[index] - self.timesteps[index + 1])
