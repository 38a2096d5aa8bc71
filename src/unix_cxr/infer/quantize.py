"""Weight-only int8 for report decoding (`--quantize int8`), applied from outside the model: to a loaded model, or
before its weights are read (`load_release(prepare=quantize_decoding)`: each weight is quantized as it arrives).

Decoding streams every understanding-expert and `lm_head` weight once per token, so its speed is the weight
bytes over the memory bandwidth: int8 weights halve the bytes of bf16 (a quarter of fp32). `quantize_decoding`
replaces those `nn.Linear` layers by `Int8Linear`: per-output-channel symmetric int8 (scale = max |w| / 127),
multiplied by PyTorch's own weight-only int8 kernel (`aten._weight_int8pack_mm`, the one torchao uses on CPU)
with bf16 activations. That kernel is a matrix-vector product (its time grows with the rows), so it runs only
inside `decoding_steps()`, which `ReportGenerator.decode` enters (one row per report and step); everywhere else
(the prefill of an image and a prompt, an image's prompt) the layer runs on its weights dequantised to the
activations' dtype. The choice follows the phase, never the number of rows a call has: the kernel computes each
row alone (bit-identical in any batch, tested), and the dense path is an ordinary float matmul, as batch-invariant
as the unquantized model's layers. (A choice by row count made a batch of five 64 px images switch paths and
change its greedy reports.)

Paired rows: the kernel streams its weight rows faster the longer they are (measured on an AMX Xeon with 2
threads, weights read from DRAM: 12.6 GB/s at 2,048 columns, 17.6 at 5,632), and a second activation row costs
it almost nothing. So a weight with at most `Int8Linear.pair_max_in` columns is handed to it as
(N / 2, 2K), each pair of output rows laid end to end (a view, no copy), against two activation rows per input
row, [x | 0] and [0 | x]: the kernel then computes the even and the odd outputs in one pass over the same bytes
(16.4 GB/s at 2048 x 2048; `benchmarks/bench_int8.py --kernels`, docs/benchmarks.md). The zeros add exactly
nothing; the per-channel scales are applied to the kernel's output afterwards, so the result is the unpaired one
up to one more bf16 rounding.

The token embeddings are held in int8 too (`Int8Embedding`, one scale per row), for memory only: a step reads one
row of them. Like the understanding expert they serve the text rows of image prompts as well.

`--quantize int4` goes one step further for the expert's and lm_head's products: `Int4Linear` holds 4-bit
weights in groups of 128 (64 or 32 where the input width asks for it) along the input, asymmetric, with a bf16
scale and zero per group (w = (q - 8) x scale + zero), in the layout of PyTorch's own CPU int4 kernel
(`aten._convert_weight_to_int4pack_for_cpu`, multiplied by `aten._weight_int4pack_mm_for_cpu`: the kernels
torchao's int4 CPU layout calls). A quarter of the bf16 bytes per decoded token; outside decoding steps the layer
unpacks that layout (its full blocks keep rows 0..B/2-1 in the low nibbles and B/2..B-1 in the high ones, B = 64
on AVX-512 builds, 32 on AVX2: `int4_block_rows` reads which from the kernel itself) and runs a dense matmul. A
layer whose shape the kernel or that layout cannot take (outputs not a multiple of 64, on every build) stays int8
(logged). The token embeddings stay int8.
The packed layout belongs to the CPU build that made it (a state packed elsewhere is refused by its recorded
block size), so int4 weights are quantized at load from the float checkpoint; the kernel runs on CPU only.

Not quantized, because it would break or gain nothing: the generation expert, `llm2vae`, `vae2llm` and the
time embedder (image generation keeps their full-precision weights), SigLIP and the connector (run once per
image), norms and biases.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "int8", "int4")
_DECODING = contextvars.ContextVar("unix_cxr_int8_decoding", default=False)


@contextlib.contextmanager
def decoding_steps() -> Iterator[None]:
    """Within this block Int8Linear layers run the int8 kernel (decoding steps: a row or a few per call);
    outside it, a dense matmul on their dequantised weights (prefill). No effect on a model without int8 layers."""
    token = _DECODING.set(True)
    try:
        yield
    finally:
        _DECODING.reset(token)


def in_decoding_steps() -> bool:
    """Whether this code runs inside `decoding_steps()` (eager; compiled regions cannot read it)."""
    return _DECODING.get()


def dense_in_blocks(rows: torch.Tensor, weight_rows, n: int, block: int) -> torch.Tensor:
    """`F.linear(rows, W)` for an (n, K) weight made `block` output channels at a time by `weight_rows(start, end)`
    (dequantised or upcast to the rows' dtype): the float temporaries of one block, not of the whole weight
    (lm_head's are 0.84 GB in float32)."""
    if n <= block:
        return F.linear(rows, weight_rows(0, n))
    return torch.cat([F.linear(rows, weight_rows(a, min(a + block, n))) for a in range(0, n, block)], 1)


_EXPERT_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights and one float32 scale per output channel."""

    pair_max_in = 4096  # weights with at most this many columns (and an even row count) go to the kernel paired
    dense_block = 512  # output channels dequantised at a time outside decoding steps

    def __init__(self, linear: nn.Linear) -> None:
        """From a float layer; on the meta device (a model built for loading), only the shapes are made."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight_int8, scale = _quantize(linear.weight.detach())
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.paired = self.in_features <= self.pair_max_in and self.out_features % 2 == 0
        # what the kernel is given as scales, in its dtype bf16: all ones when paired (applied afterwards)
        self.register_buffer("kernel_scale", torch.empty(self.out_features // 2 if self.paired else self.out_features,
                                                         dtype=torch.bfloat16, device=scale.device), persistent=False)
        self._refresh_kernel_scale()

    def _refresh_kernel_scale(self) -> None:
        if not self.kernel_scale.is_meta:
            self.kernel_scale.copy_(torch.ones_like(self.kernel_scale) if self.paired else self.scale)

    def checkpoint_layout(self) -> dict[str, torch.Tensor]:
        """The float tensors a checkpoint holds for this layer (`checkpoint.io` loads them through it)."""
        layout = {"weight": torch.empty(self.out_features, self.in_features, device="meta")}
        return layout if self.bias is None else {**layout, "bias": self.bias}

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """A checkpoint's float weight is quantized as it arrives; a saved int8 state loads as it is."""
        state_dict = _quantized_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if prefix + "scale" in state_dict:
            self._refresh_kernel_scale()

    def dequantized(self, dtype: torch.dtype, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Rows start:end of the float weight (int8 x scale in float32, then one rounding to `dtype`), made 256 rows
        at a time so that the float32 temporary stays small (a 2,048-row block of down_proj is 46 MB in float32)."""
        weight, scale = self.weight_int8[start:end], self.scale[start:end, None]
        if dtype == torch.float32:
            return weight.float().mul_(scale)
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
        for a in range(0, weight.shape[0], 256):
            out[a:a + 256] = weight[a:a + 256].float().mul_(scale[a:a + 256])
        return out

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        """(T, K) rows -> (T, N) in float32 (paired) or bf16, through the int8 kernel."""
        x = rows.to(torch.bfloat16)
        if not self.paired:
            return torch.ops.aten._weight_int8pack_mm(x, self.weight_int8, self.kernel_scale)
        t, k, n = x.shape[0], self.in_features, self.out_features
        wide = x.new_zeros(t, 2, 2, k)  # row (t, j) holds x[t] in column block j: [x | 0], [0 | x]
        wide.diagonal(dim1=1, dim2=2).copy_(x[:, :, None])
        out = torch.ops.aten._weight_int8pack_mm(wide.view(2 * t, 2 * k), self.weight_int8.view(n // 2, 2 * k),
                                                 self.kernel_scale)  # out[2t + j, m] = weight row 2m + j . x[t]
        return (out.view(t, 2, n // 2).transpose(1, 2).float() * self.scale.view(n // 2, 2)).reshape(t, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        # torch.compile cannot read the context variable: every compiled region takes the kernel, and the only
        # region this project compiles around int8 layers is the decoding step (report.compiled_decode_step)
        decoding = torch.compiler.is_compiling() or in_decoding_steps()
        out = self._kernel(rows).to(x.dtype) if decoding else dense_in_blocks(
            rows, lambda a, b: self.dequantized(rows.dtype, a, b), self.out_features, self.dense_block)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        paired = ", rows paired" if self.paired else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel{paired}"


@torch.library.custom_op("unix_cxr::int4_mm", mutates_args=())
def int4_mm(rows: torch.Tensor, packed: torch.Tensor, group_size: int, scales_zeros: torch.Tensor) -> torch.Tensor:
    """PyTorch's CPU int4 kernel as one opaque operator, for torch.compile where ATen packs 32-row blocks (AVX2):
    inductor's own lowering of the aten op misread that packing (with ATen forced to AVX2 on an AVX-512 CPU the
    compiled step gave zeros); with 64-row blocks the aten op is left to inductor, which is faster there (0.077
    against 0.085 s per full-size token opaque on this AMX CPU, docs/benchmarks.md)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group_size, scales_zeros)


@int4_mm.register_fake
def _(rows: torch.Tensor, packed: torch.Tensor, group_size: int, scales_zeros: torch.Tensor) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], packed.shape[0])


class Int4Linear(nn.Module):
    """`nn.Linear` with 4-bit weights in groups along the input (a bf16 scale and zero per group), in the layout
    of PyTorch's CPU int4 kernel (see the module doc)."""

    dense_block = 512  # output channels unpacked at a time outside decoding steps (a multiple of every block)

    def __init__(self, linear: nn.Linear, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        packed, scales_zeros = _quantize_int4(linear.weight.detach(), group_size)
        self.register_buffer("weight_int4", packed)
        # the bf16 scales and zeros held as their int16 bits, so that model.to(dtype) leaves them bf16
        self.register_buffer("scales_zeros", scales_zeros.view(torch.int16))
        # the packed layout's rows per block (CPU build specific): a state made elsewhere is refused, not misread
        self.register_buffer("block_rows", torch.tensor(int4_block_rows(), device=packed.device))
        self._mm = torch.ops.aten._weight_int4pack_mm_for_cpu if int4_block_rows() == 64 else int4_mm
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @staticmethod
    def fits(linear: nn.Linear) -> int | None:
        """The group size `linear` takes (128, 64 or 32 dividing its input width), or None when the kernel or the
        unpacking cannot take its shape: outputs in whole blocks of 64 rows, the larger of the two layouts' blocks,
        so that which layers are int4 does not depend on the CPU build."""
        if linear.out_features % 64:
            return None
        return next((g for g in (128, 64, 32) if linear.in_features % g == 0), None)

    def checkpoint_layout(self) -> dict[str, torch.Tensor]:
        """The float tensors a checkpoint holds for this layer (`checkpoint.io` loads them through it)."""
        layout = {"weight": torch.empty(self.out_features, self.in_features, device="meta")}
        return layout if self.bias is None else {**layout, "bias": self.bias}

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """A checkpoint's float weight is quantized as it arrives (a state of this layer loads as it is)."""
        weight = state_dict.get(prefix + "weight")
        if weight is not None:
            packed, scales_zeros = _quantize_int4(weight, self.group_size)
            state_dict = {prefix + "weight_int4": packed, prefix + "scales_zeros": scales_zeros.view(torch.int16),
                          prefix + "block_rows": torch.tensor(int4_block_rows()),
                          **({prefix + "bias": state_dict[prefix + "bias"]} if prefix + "bias" in state_dict else {})}
        elif prefix + "block_rows" in state_dict and int(state_dict[prefix + "block_rows"]) != int4_block_rows():
            raise ValueError(f"{prefix}: int4 weights packed for {int(state_dict[prefix + 'block_rows'])}-row blocks "
                             f"(another CPU build); this one packs {int4_block_rows()}: quantize from the float "
                             "weights here")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def dequantized(self, dtype: torch.dtype, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Rows start:end (whole blocks) of the float weight: (q - 8) x scale + zero, computed in float32 as
        q x scale + (zero - 8 x scale) in place, then `dtype`."""
        end = self.out_features if end is None else end
        k = self.in_features
        q = _unpack_codes(self.weight_int4.view(-1)[start * k // 2:end * k // 2], k, int4_block_rows())
        q = q.reshape(end - start, k // self.group_size, self.group_size)
        sz = self.scales_zeros[:, start:end].view(torch.bfloat16).float().transpose(0, 1)  # (rows, groups, 2)
        scale = sz[..., :1]
        w = q.float().mul_(scale).add_(sz[..., 1:] - 8 * scale)
        return w.reshape(end - start, k).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling() or in_decoding_steps():  # as Int8Linear.forward
            if rows.device.type != "cpu":
                raise RuntimeError("int4 decoding runs on CPU only (PyTorch's CPU int4 kernel); use --quantize int8")
            out = self._mm(rows.to(torch.bfloat16), self.weight_int4, self.group_size,
                           self.scales_zeros.view(torch.bfloat16)).to(x.dtype)
        else:
            out = dense_in_blocks(rows, lambda a, b: self.dequantized(rows.dtype, a, b), self.out_features,
                                  self.dense_block)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group_size}"


def int4_available() -> bool:
    """Whether --quantize int4 runs here (the CPU int4 kernel exists and its layout is one this module reads)."""
    try:
        int4_block_rows()
    except RuntimeError:
        return False
    return True


@functools.cache
def int4_block_rows() -> int:
    """The rows per block of the CPU int4 kernel's packed layout on this build (64 with AVX-512, 32 otherwise),
    read off the kernel: a probe packed by it must unpack to itself, else int4 is refused here."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        raise RuntimeError(f"--quantize int4 needs PyTorch's CPU int4 kernel (torch >= 2.6; this is "
                           f"{torch.__version__}); use --quantize int8")
    probe = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1).view(-1)
    for b in (64, 32):
        if torch.equal(_unpack_codes(packed, 64, b).int(), probe):
            return b
    raise RuntimeError("--quantize int4: this PyTorch build's int4 CPU layout is not one unix-cxr can unpack; "
                       "use --quantize int8")


def _unpack_codes(packed: torch.Tensor, k: int, block_rows: int) -> torch.Tensor:
    """Flat packed bytes of whole blocks of `block_rows` weight rows -> their (rows, k) uint8 codes: each block
    is (k, block_rows / 2) bytes, rows 0..block_rows/2-1 in the low nibbles and the rest in the high ones."""
    blocks = packed.view(-1, k, block_rows // 2)
    return torch.cat([blocks & 15, blocks >> 4], 2).transpose(1, 2).reshape(-1, k)


def _quantize_int4(weight: torch.Tensor, group_size: int, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (packed uint8 (out, in / 2), bf16 scales and zeros (in / group, out, 2)): per
    group, scale = (max - min) / 15 and zero = min + 8 x scale, q = round((w - min) / scale) in [0, 15]; in
    blocks of `chunk_rows` rows (the int32 codes the packing takes are 4 bytes per weight)."""
    n, k = weight.shape
    packed = torch.empty(n, k // 2, dtype=torch.uint8, device=weight.device)
    scales_zeros = torch.empty(k // group_size, n, 2, dtype=torch.bfloat16, device=weight.device)
    for a in range(0, n, chunk_rows):
        block = weight[a:a + chunk_rows].float().reshape(-1, k // group_size, group_size)
        lo, hi = block.amin(-1, keepdim=True), block.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-6).to(torch.bfloat16).float()  # the kernel reads them as bf16
        zero = (lo + 8 * scale).to(torch.bfloat16).float()
        q = torch.round((block - (zero - 8 * scale)) / scale).clamp_(0, 15).to(torch.int32)
        packed[a:a + chunk_rows] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.reshape(-1, k).contiguous(), 1)
        scales_zeros[:, a:a + chunk_rows] = torch.stack([scale[..., 0], zero[..., 0]], -1).transpose(0, 1)
    return packed, scales_zeros


class Int8Embedding(nn.Module):
    """`nn.Embedding` with int8 rows and one float32 scale per row (per token): a lookup dequantises the rows it
    takes, in the dtype of the empty buffer `rows_dtype` (the embedding's own; `model.to(dtype)` moves it along).
    Not faster (a decoding step reads one row), but half the memory of bf16: 0.21 GB at full size."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        weight_int8, scale = _quantize(embedding.weight.detach())
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.register_buffer("rows_dtype", torch.empty(0, dtype=embedding.weight.dtype, device=scale.device),
                             persistent=False)

    def checkpoint_layout(self) -> dict[str, torch.Tensor]:
        """The float tensor a checkpoint holds for this layer (`checkpoint.io` loads it through it)."""
        return {"weight": torch.empty(self.num_embeddings, self.embedding_dim, device="meta")}

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        super()._load_from_state_dict(_quantized_state(state_dict, prefix), prefix, *args)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8[ids].float().mul_(self.scale[ids].unsqueeze(-1))
        return rows.to(self.rows_dtype.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row"


def _quantized_state(state_dict: dict, prefix: str) -> dict:
    """A checkpoint's float `weight` (and `bias`) of one layer -> its int8 weight, scales (and bias); a state that
    is int8 already is returned as it is."""
    weight = state_dict.get(prefix + "weight")
    if weight is None:
        return state_dict
    weight_int8, scale = _quantize(weight)
    mine = {prefix + "weight_int8": weight_int8, prefix + "scale": scale}
    if prefix + "bias" in state_dict:
        mine[prefix + "bias"] = state_dict[prefix + "bias"]
    return mine


def _quantize(weight: torch.Tensor, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 weight, float32 scale per output channel), symmetric: max |w| / 127.

    In blocks of `chunk_rows` rows, so that the float32 temporaries stay small (lm_head in float32 is 0.84 GB)."""
    weight_int8 = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], chunk_rows):
        block = weight[start:start + chunk_rows].float()
        s = block.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        weight_int8[start:start + chunk_rows] = torch.round(block / s[:, None]).clamp(-127, 127)
        scale[start:start + chunk_rows] = s
    return weight_int8, scale


def _swap(parent: nn.Module, dotted: str, mode: str = "int8") -> tuple[int, int]:
    """Replace parent.<dotted> (an nn.Linear or nn.Embedding) by its quantized form: int4 for a Linear when `mode`
    is "int4" and its shape fits, int8 otherwise; (bytes before, bytes after)."""
    *path, name = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    layer = getattr(parent, name)
    if not isinstance(layer, nn.Linear | nn.Embedding):
        raise TypeError(f"{dotted} is a {type(layer).__name__}, not nn.Linear or nn.Embedding")
    weight = layer.weight
    group = Int4Linear.fits(layer) if mode == "int4" and isinstance(layer, nn.Linear) else None
    if group is not None:
        setattr(parent, name, Int4Linear(layer, group))
        return weight.numel() * weight.element_size(), weight.numel() // 2 + weight.numel() // group * 4
    if mode == "int4" and isinstance(layer, nn.Linear):
        log.info("int4: %s (%d x %d) does not fit the int4 kernel's layout and stays int8", dotted,
                 layer.out_features, layer.in_features)
    setattr(parent, name, (Int8Linear if isinstance(layer, nn.Linear) else Int8Embedding)(layer))
    return weight.numel() * weight.element_size(), weight.numel() + weight.shape[0] * 4


def quantize_decoding(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantize what report decoding streams (every layer's understanding expert, and lm_head) in place; `mode`
    is one of QUANTIZE_CHOICES ("none" leaves the model as it is; "int4" keeps the token embeddings int8). Logs
    the bytes saved."""
    if mode not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {mode!r}")
    if mode == "none":
        return model
    before = after = 0
    for layer in model.decoder.layers:
        for name in _EXPERT_LINEARS:
            b, a = _swap(layer.und, name, mode)
            before, after = before + b, after + a
    b, a = _swap(model, "lm_head", mode)
    before, after = before + b, after + a
    tied = model.cfg.decoder.tie_word_embeddings  # lm_head's weight is the table: the table stays float (the
    # quantized lm_head is then a copy of it), and it is not quantized a second time
    if not tied:
        b, a = _swap(model, "decoder.embed_tokens")
        before, after = before + b, after + a
    log.info("%s weight-only decoding: understanding expert (%d layers), lm_head%s, %.1f MB -> %.1f MB", mode,
             len(model.decoder.layers), "" if tied else " and the token embeddings (int8)", before / 1e6,
             after / 1e6)
    return model


__all__ = ["QUANTIZE_CHOICES", "Int4Linear", "Int8Embedding", "Int8Linear", "decoding_steps", "dense_in_blocks",
           "in_decoding_steps", "int4_available", "int4_block_rows", "quantize_decoding"]
