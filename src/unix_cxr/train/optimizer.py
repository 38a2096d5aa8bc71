"""The AdamW every training stage builds: by default PyTorch's fused implementation, one kernel per step over all
parameters instead of a dozen elementwise passes per parameter.

`optim.implementation` chooses: `fused` (the default; `torch.optim.AdamW(fused=True)`, on CPU and CUDA, float32
and bf16 parameters, FSDP2's DTensor shards included: the two-process gloo test runs it), `foreach` (multi-tensor)
or `for-loop` (the single-tensor loop, PyTorch's default on CPU, which trained the shipped demo model). The update
is the same AdamW; they differ only in float rounding order, and the optimizer state has one format, so a
checkpoint resumes under any of them (exactly under the one it was written with). Loading an optimizer's state
also loads the implementation flags it was saved with, so `set_implementation` puts the recipe's back after a
resume. On the mid-size config of
`benchmarks/bench_train.py` the fused step saves most of the optimizer's time (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .recipe import ADAMW_IMPLEMENTATIONS, OptimConfig

# each implementation's (fused, foreach) arguments of torch.optim.AdamW, also the flags its param groups carry
_FLAGS = {"fused": (True, None), "foreach": (None, True), "for-loop": (None, False)}


def build_adamw(params: Iterable[torch.nn.Parameter], o: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `params` with the settings of `o` (lr, betas, eps, weight decay, implementation)."""
    if o.implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"optim.implementation must be one of {ADAMW_IMPLEMENTATIONS}, got {o.implementation!r}")
    fused, foreach = _FLAGS[o.implementation]
    return torch.optim.AdamW(list(params), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             fused=fused, foreach=foreach)


def set_implementation(optimizer: torch.optim.Optimizer, o: OptimConfig) -> None:
    """After `load_state_dict` (a resume): the recipe's implementation again, not the checkpoint's. Fused keeps
    each parameter's step count on the parameter's device (the loop keeps it on the CPU)."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = _FLAGS[o.implementation]
        if o.implementation == "fused":
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(p.device)


__all__ = ["build_adamw", "set_implementation"]
