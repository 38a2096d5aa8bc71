"""The stages' AdamW (`unix_cxr.train.optimizer`): fused by default, the three implementations give one update to
float rounding and share one state format (a checkpoint of one resumes under another, with the recipe's
implementation put back after the load), and a recipe naming another implementation fails naming the key."""

from __future__ import annotations

import pytest
import torch

from unix_cxr.train.optimizer import build_adamw, set_implementation
from unix_cxr.train.recipe import ADAMW_IMPLEMENTATIONS, OptimConfig, load_recipe


def _run(implementation: str, steps: int = 5, state: dict | None = None):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(33, 17)), torch.nn.Parameter(torch.randn(17))]
    opt = build_adamw(params, OptimConfig(lr=1e-2, weight_decay=0.1, implementation=implementation))
    if state is not None:
        opt.load_state_dict(state)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params], opt


def test_fused_is_the_default_and_each_implementation_is_the_one_asked_for():
    assert OptimConfig().implementation == "fused"
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert build_adamw(p, OptimConfig()).defaults["fused"] is True
    assert build_adamw(p, OptimConfig(implementation="foreach")).defaults["foreach"] is True
    loop = build_adamw(p, OptimConfig(implementation="for-loop")).defaults
    assert loop["foreach"] is False and not loop["fused"]


def test_the_implementations_give_one_update_and_share_one_state_format():
    ref, ref_opt = _run("for-loop")
    start = [torch.randn(33, 17, generator=torch.Generator().manual_seed(0))]
    assert not torch.allclose(ref[0], start[0])  # the steps moved the weights
    for implementation in ("fused", "foreach"):
        out, opt = _run(implementation)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
        assert state.keys() == ref_state.keys()
        assert all(state[k].keys() == ref_state[k].keys() for k in state)
    # 5 loop steps, then a fused optimizer resumes from their state: the 10-step loop run to rounding
    _, five = _run("for-loop", steps=5)
    ten, _ = _run("for-loop", steps=10)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(p) for p in _run("for-loop", steps=5)[0]]
    opt = build_adamw(params, OptimConfig(lr=1e-2, weight_decay=0.1))
    opt.load_state_dict(five.state_dict())
    assert not opt.param_groups[0]["fused"]  # load_state_dict brought the checkpoint's flags along
    set_implementation(opt, OptimConfig(lr=1e-2, weight_decay=0.1))
    assert opt.param_groups[0]["fused"] is True  # the recipe's implementation again
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):  # the grads of steps 1-5 again; skip them to reach those of steps 6-10
        for p in params:
            torch.randn(p.shape, generator=gen)
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    for a, b in zip(params, ten, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-6)


def test_a_recipe_with_another_implementation_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"optim\.implementation must be one of"):
        load_recipe("phantom-tiny", ["stages.und_sft.optim.implementation=adam"])
    assert set(ADAMW_IMPLEMENTATIONS) == {"fused", "foreach", "for-loop"}
