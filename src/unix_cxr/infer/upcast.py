"""bf16 weights computed in float32, applied from outside the model: the dtype policy's upcast mode for CPUs
without native bf16 (`utils.dtype_policy`: a `DtypeChoice` whose `weights` is bfloat16).

On such a CPU (AVX2 only) bf16 GEMMs are emulated and run at a fraction of fp32, so the model computes in
float32; holding every weight in float32 doubles the memory of the bf16 release (14.2 GB for the full model,
docs/benchmarks.md). `upcast_weights` keeps the large weights in bf16 instead, as the checkpoint stores them, and
each product upcasts what it needs when it runs:

    outside decoding steps (prefill, image steps)  the weight upcast to the activations' dtype `dense_block`
                                                   output channels at a time, then `F.linear` on each block: the
                                                   float32 temporary is one block, the GEMM runs at the fp32 peak
    decoding steps, eager                          the rows rounded to bf16 and the bf16 model's one-row
                                                   product (`model.linear.one_row_product`) or `F.linear`
                                                   (several rows), then float32: the bf16 model's numbers
    decoding steps, torch.compile                  the upcast inside one fused reduction over the bf16 weights
                                                   (float32 rows, float32 accumulation)

As for int8 (`infer.quantize`), the path follows the phase (`decoding_steps()`), never the number of rows, so that
each row's result is that of a batch of one (tested). What is upcast: every `nn.Linear` of the decoder layers
(both experts) and of SigLIP's encoder layers, `lm_head` and the token embeddings (`UpcastEmbedding`: a lookup
casts the rows it takes), whichever of them are not quantized already. What stays in float32, because it is small
or read as a dtype by its callers: norms, biases, the patch convolution, the position tables, the connector,
`vae2llm`, `llm2vae` and the time embedder.

For inference only: the bf16 weights are what the checkpoint holds, and nothing trains them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..model.linear import one_row_product
from .layer_slots import PLAIN_LINEARS, linear_slots, lm_head_tied
from .quantize import dense_in_blocks, in_decoding_steps

log = logging.getLogger(__name__)


class UpcastLinear(nn.Linear):
    """`nn.Linear` whose weight is held in bf16 and computed in the activations' dtype (see the module doc); the
    bias stays in the compute dtype. An `nn.Linear` still (peft wraps it; its state-dict keys are the same)."""

    dense_block = 512  # output channels upcast at a time outside decoding steps

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        """From a float layer; on the meta device (a model built for loading), only the shapes are made."""
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.register_parameter("bias", linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():  # as Int8Linear.forward: the only compiled region is the decoding step
            out = (self.weight[None].to(rows.dtype) * rows[:, None]).sum(-1)
        elif in_decoding_steps():
            low = rows.to(self.weight.dtype)
            one = rows.shape[0] == 1 and rows.is_cpu  # model.linear's one-row kernel: the batched numbers
            out = (one_row_product(self.weight, low[0])[None] if one else F.linear(low, self.weight)).to(rows.dtype)
        else:
            out = dense_in_blocks(rows, lambda a, b: self.weight[a:b].to(rows.dtype), self.out_features,
                                  self.dense_block)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {str(self.weight.dtype).removeprefix('torch.')} weights upcast on the fly"


class UpcastEmbedding(nn.Embedding):
    """`nn.Embedding` whose table is held in bf16: a lookup returns its rows in the dtype of the empty buffer
    `rows_dtype` (the embedding's own before the swap)."""

    def __init__(self, embedding: nn.Embedding, dtype: torch.dtype = torch.bfloat16) -> None:
        nn.Module.__init__(self)
        for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                     "sparse"):
            setattr(self, name, getattr(embedding, name))
        self.weight = nn.Parameter(embedding.weight.detach().to(dtype), requires_grad=False)
        self.register_buffer("rows_dtype", torch.empty(0, dtype=embedding.weight.dtype,
                                                       device=embedding.weight.device), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.rows_dtype.dtype)


def upcast_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Hold the large float weights of a UniX in `dtype` (see the module doc), in place, on any device (the meta
    device included: `load_release(prepare=...)` then reads the checkpoint straight into them). A tied `lm_head`
    keeps sharing the table. Logs the bytes saved."""
    before = after = count = 0

    def swap(parent: nn.Module, name: str, make) -> nn.Module:
        nonlocal before, after, count
        old = getattr(parent, name)
        new = make(old, dtype)
        setattr(parent, name, new)
        before, after, count = before + old.weight.nbytes, after + new.weight.nbytes, count + 1
        return new

    tied = lm_head_tied(model)  # before the table is swapped
    for parent, name in linear_slots(model):
        swap(parent, name, UpcastLinear)
    table = model.decoder.embed_tokens
    if type(table) is nn.Embedding:
        table = swap(model.decoder, "embed_tokens", UpcastEmbedding)
    if type(model.lm_head) in PLAIN_LINEARS:
        shared = model.lm_head.weight.nbytes if tied else 0
        head = swap(model, "lm_head", UpcastLinear)
        if tied:  # one table, counted once
            head.weight = table.weight
            before, after = before - shared, after - head.weight.nbytes
    log.info("upcast on the fly: %d layers hold %s weights, %.1f MB instead of %.1f MB", count,
             str(dtype).removeprefix("torch."), after / 1e6, before / 1e6)
    return model


__all__ = ["UpcastEmbedding", "UpcastLinear", "upcast_weights"]
