"""`nn.Linear` whose one-row products on CPU run as matrix-vector products.

A decoding step multiplies ONE activation row by every weight it streams. On CPU, `F.linear` hands a single bf16
row to a matrix-matrix kernel, while `torch.mv` / `torch.addmv` run a matrix-vector kernel that reads the same
weights faster: 19-24 GB/s against 15-20 GB/s from DRAM at the full model's shapes, up to 2x in cache (an AMX Xeon,
2 threads; `python benchmarks/bench_decode_step.py --kernels`, docs/benchmarks.md), with bit-identical results
(the same float32 accumulation, one rounding). In float32 the two are the same speed and the same numbers. So
`Linear` routes exactly-one-row bf16 inputs on CPU to `mv` / `addmv` (not under autocast, which casts `F.linear`
only) and everything else to `F.linear`; its parameters, state-dict keys and `isinstance(..., nn.Linear)` (peft,
quantization) are those of `nn.Linear`. Under torch.compile (inference) the product is the opaque operator
`compiled_mv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mv(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)


@torch.library.custom_op("unix_cxr::mv", mutates_args=())
def compiled_mv(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`_mv` as one opaque operator for torch.compile, whose inductor would otherwise decompose mv into a
    multiply and a sum (a reduction kernel reading bf16 weights at a quarter of the speed)."""
    return _mv(weight, row, bias)


@compiled_mv.register_fake
def _(weight: torch.Tensor, row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return row.new_empty(weight.shape[0])


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        if (x.dtype is not torch.bfloat16 or x.numel() != self.in_features or x.shape[-1] != self.in_features
                or not x.is_cpu or torch.is_autocast_enabled("cpu")
                or (compiling and torch.is_grad_enabled())):  # `compiled_mv` has no backward (training: many rows)
            return F.linear(x, self.weight, self.bias)
        row = x.reshape(self.in_features)
        out = (compiled_mv if compiling else _mv)(self.weight, row, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)
