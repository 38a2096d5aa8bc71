"""`nn.Linear` whose one-row bf16 products on CPU take this machine's fastest batch-invariant kernel.

A decoding step multiplies ONE activation row by every weight it streams. For a bf16 row on CPU, PyTorch has two
kernels whose results equal, bit for bit, that row's result inside a batched `F.linear` (what the prefill and a
batch of reports compute): `torch.mv` / `torch.addmv` (a matrix-vector kernel), and `F.linear` on the row padded
with a zero row (the matrix-matrix kernel of two rows; `F.linear` of exactly one row takes yet another kernel,
whose sums differ). Which one reads the weights faster depends on the CPU: on an AMX Xeon mv read 19-24 GB/s
against 15-20 for `F.linear` (docs/benchmarks.md); on an AMD EPYC with AVX512-BF16 and no AMX the padded product
reads about twice as fast as mv (8.7-10.7 against 4.7-4.9 G parameters/s in two runs of
`python benchmarks/bench_core.py --only kern`). So `one_row_kernel()`
measures both once per process, on first use (about 0.2 s: bf16 weights of 2,048 x 2,048 cycled through 96 MB,
best of 3), keeps those that equal the batched product there, picks the faster and logs it.

`Linear` routes exactly-one-row bf16 inputs on CPU to that kernel (not under autocast, which casts `F.linear`
only) and everything else to `F.linear`; in float32, one row stays `F.linear` (the same speed as mv). Its
parameters, state-dict keys and `isinstance(..., nn.Linear)` (peft, quantization) are those of `nn.Linear`. Under
torch.compile (inference) the product is the opaque operator `compiled_one_row` (inductor would decompose mv into
a multiply and a sum).
"""

from __future__ import annotations

import functools
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _mv(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)


def _padded(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(torch.stack([row, torch.zeros_like(row)]), weight, bias)[0]


ONE_ROW_KERNELS = {"mv": _mv, "padded": _padded}


@functools.cache
def one_row_kernel() -> str:
    """The name (in `ONE_ROW_KERNELS`) of the faster one-row bf16 kernel on this CPU among those whose results
    equal the batched `F.linear`'s, measured once per process (see the module doc)."""
    weights = [torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0)).bfloat16()]
    weights += [weights[0].clone() for _ in range(11)]  # 96 MB: read from memory, not from the caches
    rows = torch.randn(3, 2048, generator=torch.Generator().manual_seed(1)).bfloat16()
    bias = torch.randn(2048, generator=torch.Generator().manual_seed(2)).bfloat16()
    batched, batched_bias = F.linear(rows, weights[0]), F.linear(rows, weights[0], bias)
    same = [name for name, kernel in ONE_ROW_KERNELS.items()
            if all(torch.equal(kernel(weights[0], rows[i], None), batched[i])
                   and torch.equal(kernel(weights[0], rows[i], bias), batched_bias[i]) for i in range(3))]
    if len(same) < 2:  # the padded product is a batched F.linear: it differs only where F.linear itself does
        choice = same[0] if same else "padded"
        log.info("one-row bf16 products: %s (the only kernel equal to the batched product here)", choice)
        return choice
    speed = {}
    with torch.inference_mode():
        for name in same:
            kernel = ONE_ROW_KERNELS[name]
            best = float("inf")
            for _ in range(4):  # the first pass warms up
                t0 = time.perf_counter()
                for w in weights:
                    kernel(w, rows[0], None)
                best = min(best, time.perf_counter() - t0)
            speed[name] = sum(w.numel() for w in weights) / best / 1e9
    choice = max(speed, key=speed.__getitem__)
    log.info("one-row bf16 products: %s (G parameters/s measured: %s)", choice,
             ", ".join(f"{name} {s:.1f}" for name, s in speed.items()))
    return choice


def one_row_product(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) bf16 weight x one (K,) bf16 row (+ bias) -> (N,), through `one_row_kernel()`."""
    return ONE_ROW_KERNELS[one_row_kernel()](weight, row, bias)


@torch.library.custom_op("unix_cxr::one_row", mutates_args=())
def compiled_one_row(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`one_row_product` as one opaque operator for torch.compile, whose inductor would otherwise decompose mv into
    a multiply and a sum (a reduction kernel reading bf16 weights at a quarter of mv's speed on an AMX Xeon)."""
    return one_row_product(weight, row, bias)


@compiled_one_row.register_fake
def _(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return row.new_empty(weight.shape[0])


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        if (x.dtype is not torch.bfloat16 or x.numel() != self.in_features or x.shape[-1] != self.in_features
                or not x.is_cpu or torch.is_autocast_enabled("cpu")
                or (compiling and torch.is_grad_enabled())):  # the opaque op has no backward (training: many rows)
            return F.linear(x, self.weight, self.bias)
        row = x.reshape(self.in_features)
        out = (compiled_one_row if compiling else one_row_product)(self.weight, row, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)
