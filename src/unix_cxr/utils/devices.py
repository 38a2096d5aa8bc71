"""The one check of a `--device` argument, made before any work."""

from __future__ import annotations

import torch


def resolve_device(spec: str | None) -> torch.device:
    """The torch device named by `spec` (None: cuda when available, else cpu), checked before any work: an unknown
    name or a device this machine lacks is a ValueError naming `--device` (e.g. `--device cuda: CUDA is not
    available on this machine`)."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {spec}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "meta":
        raise ValueError(f"--device {spec}: the meta device holds no data; use cpu or an accelerator")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
        return device
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {spec}: MPS is not available on this machine")
    if device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ValueError(f"--device {spec}: not usable on this machine ({' '.join(str(err).split())})") from None
    return device
