"""Linear weights pre-packed for oneDNN on CPU, applied from outside the model at load: read faster, same answers.

On CPU a bf16 `F.linear` runs oneDNN's matmul, which first reorders the (N, K) weight into its blocked layout, at
every call: a decoding step reads each weight and writes a reordered copy of it before the product reads that
again (float32 `F.linear` runs MKL's GEMM, whose one- and few-row products read the weights at half the memory's
speed or less). PyTorch has the operators that keep the weight in oneDNN's layout instead, the ones inductor's
CPU weight prepacking (freezing) emits: `torch.ops.mkldnn._reorder_linear_weight` once, then `_linear_pointwise`
per call.

* bf16: their results equal `F.linear`'s bit for bit, at every row count measured (1 to 600, with and without a
  bias), so a packed model computes what the unpacked one computes. On an AMD EPYC with AVX512-BF16 (2 threads,
  5,632 x 2,048 weights read from memory) one row, padded with zero rows to 3 or 4, read 14-15 G parameters/s
  against 11 for the padded `F.linear` that `model.linear` picks there (ad hoc and `bench_core.py --only kern`,
  docs/benchmarks.md).
* float32: another kernel than MKL's, so the sums round differently (within 1e-5 of the largest output); on the
  same EPYC 1.5-2.8x MKL's speed at 1 to 64 rows and 1.1-1.2x at 600 for the full model's weights, also with
  oneDNN and MKL held to AVX2. A oneDNN call costs about 20 us, though, where MKL multiplies one row by a small
  weight in a few: float32 weights of fewer than `FLOAT32_MIN_PARAMS` (2^21) parameters stay unpacked.

`pack_weights(model)` replaces every plain linear layer of the model's compute dtype in the decoder layers (both
experts), SigLIP's encoder layers and `lm_head` (unless tied to the embeddings) by `PackedLinear`, holding only
the packed weight. `packing(dtype)` decides once per process and dtype, on first use (about half a second;
`decide_packing` says how): oneDNN must do that dtype on this CPU; a row's packed result must not depend on the
rows beside it, and one row padded must give its result inside a batch (batch invariance; the unpadded one-row
bf16 kernel does not, so bf16 pads to 2-4 rows); the packed product must equal `F.linear` (bf16) or agree with
it to rounding (float32). bf16 packing is kept where it is faster than the unpacked one-row kernel (the numbers
are the same either way); float32 packing is kept without timing it against MKL, so one machine always gives the
same float32 numbers. Anything else keeps the unpacked model, logged once.

For inference only (no gradient reaches a packed weight). `load_for_inference` packs while loading: the layers are
swapped on the meta device and each packs the checkpoint's tensor as it is read, so the dense weights are never
held whole. `state_dict()` gives the dense weight back under the same key, and loading a state dict packs it
again; a packed layer stays on the CPU it was packed on.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.linear import one_row_product
from .layer_slots import PLAIN_LINEARS, linear_slots, lm_head_tied

log = logging.getLogger(__name__)

_PADS = (1, 2, 3, 4)  # rows a one-row product is padded to (with zero rows), measured by `packing()`
PACKED_DTYPES = (torch.bfloat16, torch.float32)
# float32 weights below this size stay with MKL: oneDNN's call costs about 20 us, MKL's one-row product of a
# 512 x 512 weight 4-6 us, and oneDNN's packed product wins from about 2,048 x 1,024 on (docs/benchmarks.md)
FLOAT32_MIN_PARAMS = 1 << 21


def pack(weight: torch.Tensor) -> torch.Tensor:
    """An (N, K) bf16 or float32 weight in oneDNN's packed layout (an opaque tensor of the same shape)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)


def _packed_product(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


def packed_product(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
                   pad_rows: int = 1) -> torch.Tensor:
    """(n, K) bf16 rows x a packed (N, K) weight (+ bias) -> (n, N); one row runs padded to `pad_rows` rows with
    zero rows (`packing()` measures which padding is fastest), under torch.compile as one opaque operator."""
    n = rows.shape[0]
    padded = _padded(rows, pad_rows) if n == 1 else rows.contiguous()
    product = compiled_packed_product if torch.compiler.is_compiling() else _packed_product
    return product(padded, packed, bias)[:n]


@torch.library.custom_op("unix_cxr::packed_linear", mutates_args=())
def compiled_packed_product(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`_packed_product` as one opaque operator for torch.compile (inductor's own lowering of `_linear_pointwise`
    does not take the decoding step's dynamic shapes)."""
    return _packed_product(rows, packed, bias)


@compiled_packed_product.register_fake
def _(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], packed.shape[0])


@dataclass(frozen=True)
class Packing:
    """What `packing()` decided on this CPU."""

    used: bool
    pad_rows: int  # a one-row product runs on that many rows (the row, then zero rows)
    reason: str
    pads: tuple[int, ...] = ()  # the paddings whose one-row result equals the batched row (pad_rows among them)


def _padded(rows: torch.Tensor, pad: int) -> torch.Tensor:
    return rows if pad == 1 else torch.cat([rows, rows.new_zeros(pad - 1, rows.shape[1])])


def _seconds(fn, weights: list) -> float:
    best = float("inf")
    for _ in range(4):  # the first pass warms up
        t0 = time.perf_counter()
        for w in weights:
            fn(w)
        best = min(best, time.perf_counter() - t0)
    return best


def packing(dtype: torch.dtype = torch.bfloat16) -> Packing:
    """Whether linear layers of `dtype` (bfloat16 or float32) are packed on this CPU, and the padding of one-row
    products (module doc); decided once per process and dtype."""
    return _packing(dtype)


def decide_packing(dtype: torch.dtype) -> Packing:
    """What `packing(dtype)` decides, measured afresh (module doc).

    Every check runs on 64 rows of 2,048 columns, with and without a bias, every row compared: a row's packed
    result alone, inside 3 rows and inside 64 must be the same, and so must each padding's one-row result (the
    unpadded one-row kernel of bf16 differs from the batched product in about a third of such rows). bf16 packing
    is then kept if it is faster than the unpacked one-row kernel (the numbers are the same either way); float32
    packing, whose numbers differ from MKL's, is kept without a race against MKL, so that one machine always
    gives the same float32 results. The padding is the fastest of those accepted (they all give the same numbers).
    """
    if dtype not in PACKED_DTYPES:
        return Packing(False, 1, f"only {', '.join(str(d) for d in PACKED_DTYPES)} weights are packed")
    if not torch.backends.mkldnn.is_available():
        return Packing(False, 1, "PyTorch was built without oneDNN")
    if dtype is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return Packing(False, 1, "oneDNN has no bf16 on this CPU")
    gen = torch.Generator().manual_seed(0)
    count = 12 if dtype is torch.bfloat16 else 6  # 96 MB: read from memory, not from the caches
    dense = [torch.randn(2048, 2048, generator=gen).to(dtype) for _ in range(count)]
    rows = torch.randn(64, 2048, generator=gen).to(dtype)
    with torch.inference_mode():
        packed = [pack(w) for w in dense]
        pads = list(_PADS)
        for bias in (None, torch.randn(2048, generator=gen).to(dtype)):
            batched = _packed_product(rows, packed[0], bias)
            if not torch.equal(torch.cat([_packed_product(rows[i:i + 3], packed[0], bias) for i in range(0, 63, 3)]),
                               batched[:63]):
                return Packing(False, 1, "oneDNN's packed product of a row depends on the rows beside it here")
            reference = F.linear(rows, dense[0], bias)
            same = torch.equal(batched, reference) if dtype is torch.bfloat16 else bool(
                (batched - reference).abs().max() <= 1e-5 * reference.abs().max())  # float32: rounding only
            if not same:
                return Packing(False, 1, "oneDNN's packed product differs from F.linear here")
            pads = [p for p in pads if all(torch.equal(_packed_product(_padded(rows[i:i + 1], p), packed[0], bias)[0],
                                                       batched[i]) for i in range(len(rows)))]
        if not pads:
            return Packing(False, 1, "no padding of one row gives its batched result in oneDNN's packed product")
        numel = 2048 * 2048 * count
        speed = {p: numel / _seconds(lambda w, p=p: _packed_product(_padded(rows[:1], p), w, None), packed) / 1e9
                 for p in pads}
        unpacked = numel / _seconds(lambda w: one_row_product(w, rows[0]), dense) / 1e9 \
            if dtype is torch.bfloat16 else None
    pad = max(speed, key=speed.__getitem__)
    figures = ("G parameters/s of one row measured: " + ("" if unpacked is None else f"unpacked {unpacked:.1f}, ")
               + "packed " + ", ".join(f"{s:.1f} padded to {p}" for p, s in speed.items())
               + f"; paddings equal to the batched row: {pads}")
    if unpacked is not None and speed[pad] <= unpacked:
        return Packing(False, 1, f"not faster than the unpacked one-row kernel ({figures})")
    return Packing(True, pad, figures, tuple(pads))


_packing = functools.cache(decide_packing)


class PackedLinear(nn.Module):
    """A linear layer whose (bf16 or float32) weight is held only in oneDNN's packed layout (see the module doc);
    its state-dict keys are those of the `nn.Linear` it replaces. Made from a layer on the meta device (a model
    built for loading, `load_release(prepare=...)`), it packs each weight as the checkpoint's tensor arrives, so
    the dense weight is never copied into memory."""

    def __init__(self, linear: nn.Linear, pad_rows: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.pad_rows = linear.in_features, linear.out_features, pad_rows
        self.dtype = linear.weight.dtype
        # an opaque oneDNN tensor, not a parameter or a buffer; None until loaded when made on the meta device
        self.packed = None if linear.weight.is_meta else pack(linear.weight)
        self.register_parameter("bias", None if linear.bias is None else
                                nn.Parameter(linear.bias.detach(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            raise RuntimeError("PackedLinear: no weight loaded yet (made on the meta device)")
        rows = x.reshape(-1, self.in_features)
        if rows.dtype is not self.dtype or rows.requires_grad or torch.is_autocast_enabled("cpu"):
            # not what packing serves (inference in the layer's dtype): the plain product of the dense weight
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.packed.to_dense().to(x.dtype), bias)
        return packed_product(rows, self.packed, self.bias, self.pad_rows).reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        """`.to()`, `.float()`, `.cuda()` ...: the packed weight is oneDNN's CPU layout in one dtype; a call that
        would change either is refused (load with `pack=False` to move or convert the model)."""
        probe = fn(torch.empty(0, dtype=self.dtype))
        if probe.dtype is not self.dtype or probe.device.type != "cpu":
            raise RuntimeError(f"a PackedLinear holds {self.dtype} weights in oneDNN's CPU layout and cannot become "
                               f"{probe.dtype} on {probe.device}; load the model with pack=False to convert it")
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo):
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        dense.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        if self.bias is not None:
            dense.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        memo[id(self)] = copied = PackedLinear(dense, self.pad_rows)
        return copied

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight (not a parameter, so not in `parameters()`)."""
        return 0 if self.packed is None else self.packed.numel() * self.packed.element_size()

    def checkpoint_layout(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds for this layer (`checkpoint.io` loads them through it)."""
        layout = {"weight": torch.empty(self.out_features, self.in_features, device="meta")}
        return layout if self.bias is None else {**layout, "bias": self.bias}

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = (self.checkpoint_layout()["weight"].to(self.dtype) if self.packed is None
                                          else self.packed.to_dense())  # first, as nn.Linear orders them
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A checkpoint's weight is packed as it arrives (in the layer's dtype)."""
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
        elif weight.shape != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {prefix}weight: {tuple(weight.shape)} in the state dict, "
                              f"{(self.out_features, self.in_features)} in the model")
        else:
            self.packed = pack(weight.to(self.dtype))
        rest = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{str(self.dtype).removeprefix('torch.')} weights packed for oneDNN")


def pack_weights(model: nn.Module) -> nn.Module:
    """Pack the linear layers of a UniX on CPU in place, in its compute dtype (`model.dtype`: bfloat16 or
    float32), where `packing()` says it pays; logs what it did. On the meta device (`load_release(prepare=...)`)
    each layer packs its weight when the checkpoint is loaded. A model with no layer large enough (float32 ones
    below `FLOAT32_MIN_PARAMS`) is left as it is without measuring anything."""
    dtype = model.dtype
    name = str(dtype).removeprefix("torch.")
    smallest = min_params(dtype)
    slots = [(parent, child_name) for parent, child_name in linear_slots(model)
             if _packable(getattr(parent, child_name), dtype, smallest)]
    if _packable(model.lm_head, dtype, smallest) and not lm_head_tied(model):
        slots.append((model, "lm_head"))
    if not slots:
        log.info("%s weights not packed for oneDNN: no linear layer of at least %s parameters", name, f"{smallest:,}")
        return model
    choice = packing(dtype)
    if not choice.used:
        log.info("%s weights not packed for oneDNN: %s", name, choice.reason)
        return model
    with torch.no_grad():
        for parent, child_name in slots:  # one at a time: the dense weight is freed as its packed copy is made
            setattr(parent, child_name, PackedLinear(getattr(parent, child_name), choice.pad_rows))
    smaller = f", those of at least {smallest:,} parameters" if smallest else ""
    log.info("%s weights packed for oneDNN: %d linear layers%s, one-row products padded to %d rows (%s)", name,
             len(slots), smaller, choice.pad_rows, choice.reason)
    return model


def min_params(dtype: torch.dtype) -> int:
    """The smallest weight (in parameters) packed in `dtype`: float32 ones below `FLOAT32_MIN_PARAMS` stay with
    MKL, whose product of a small weight costs less than oneDNN's call."""
    return FLOAT32_MIN_PARAMS if dtype is torch.float32 else 0


def packed_bytes(module: nn.Module) -> int:
    """Bytes of the packed weights inside `module` (what `parameters()` does not count)."""
    return sum(m.weight_bytes for m in module.modules() if isinstance(m, PackedLinear))


def _packable(module: nn.Module, dtype: torch.dtype, min_params: int) -> bool:
    return (type(module) in PLAIN_LINEARS and module.weight.dtype is dtype and module.weight.numel() >= min_params
            and module.weight.device.type in ("cpu", "meta"))


__all__ = ["FLOAT32_MIN_PARAMS", "PACKED_DTYPES", "PackedLinear", "Packing", "decide_packing", "min_params", "pack",
           "pack_weights", "packed_bytes", "packed_product", "packing"]
