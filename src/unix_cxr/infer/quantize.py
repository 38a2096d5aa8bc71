"""Weight-only int8 for report decoding (`--quantize int8`), applied to a loaded model from outside it.

Decoding streams every understanding-expert and `lm_head` weight once per token, so its speed is the weight
bytes over the memory bandwidth: int8 weights halve the bytes of bf16 (a quarter of fp32). `quantize_decoding`
replaces those `nn.Linear` layers by `Int8Linear`: per-output-channel symmetric int8 (scale = max |w| / 127),
multiplied by PyTorch's own weight-only int8 kernel (`aten._weight_int8pack_mm`, the one torchao uses on CPU)
with bf16 activations. That kernel is a matrix-vector product (its time grows with the rows), so calls with more
than `Int8Linear.max_kernel_rows` rows (the prefill of an image and a prompt) run on the weights dequantised to
the activations' dtype instead. Every row is computed alone either way, so a row's result does not depend on the
batch it is in (tested).

Not quantized, because it would break or gain nothing: the generation expert, `llm2vae`, `vae2llm` and the
time embedder (image generation keeps its full-precision weights), SigLIP and the connector (run once per
image), the embeddings (a lookup), norms and biases.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "int8")
_EXPERT_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights and one float32 scale per output channel."""

    max_kernel_rows = 32  # above this many rows, dequantise and run a dense matmul (prefill)

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight_int8.float() * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.max_kernel_rows:
            out = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8,
                                                     self.scale.to(torch.bfloat16)).to(x.dtype)
        else:
            out = F.linear(rows, self.dequantized(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def _swap(parent: nn.Module, dotted: str) -> tuple[int, int]:
    """Replace parent.<dotted> (an nn.Linear) by an Int8Linear; (bytes before, bytes after)."""
    *path, name = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    linear = getattr(parent, name)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{dotted} is a {type(linear).__name__}, not nn.Linear")
    before = linear.weight.numel() * linear.weight.element_size()
    setattr(parent, name, Int8Linear(linear))
    return before, linear.weight.numel() + linear.out_features * 4


def quantize_decoding(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantize what report decoding streams (every layer's understanding expert, and lm_head) in place; `mode`
    is one of QUANTIZE_CHOICES ("none" leaves the model as it is). Logs the bytes saved."""
    if mode not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {mode!r}")
    if mode == "none":
        return model
    before = after = 0
    for layer in model.decoder.layers:
        for name in _EXPERT_LINEARS:
            b, a = _swap(layer.und, name)
            before, after = before + b, after + a
    b, a = _swap(model, "lm_head")
    before, after = before + b, after + a
    log.info("int8 weight-only decoding: understanding expert (%d layers) and lm_head, %.1f MB -> %.1f MB",
             len(model.decoder.layers), before / 1e6, after / 1e6)
    return model


__all__ = ["QUANTIZE_CHOICES", "Int8Linear", "quantize_decoding"]
