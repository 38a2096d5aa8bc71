"""The one dtype policy: what `dtype="auto"` (`--dtype auto`) means on a device, for the weights' storage dtype.

    explicit ("float32", "bfloat16", "float16" or a torch dtype)   that dtype, always
    auto, CUDA with bf16 arithmetic (Ampere and later)              bfloat16
    auto, CUDA without it                                           float32 (float16 overflows in this model)
    auto, a CPU with native bf16 (AVX512-BF16 or AMX on x86, the
          bf16 feature on Arm), weights stored in bfloat16          bfloat16 (the stored bytes, no copy)
    auto, a CPU without it (only AVX2: bf16 GEMMs run at about
          1/7 of fp32 there, docs/benchmarks.md), weights stored
          in bfloat16, and either weight-only quantization asked
          for or the weights in float32 more than half of the
          memory available now                                      float32 compute, the large weights kept in
                                                                    bfloat16 and upcast on the fly
                                                                    (`infer.upcast`): half the memory
    auto, any other case (that CPU with room for float32 weights;
          weights stored in float32; unknown storage; MPS)          float32

Native bf16 is detected from the CPU's feature flags (`/proc/cpuinfo` on Linux), never assumed from the torch
build; the available memory from `/proc/meminfo` (unknown: float32 weights). `choose_dtype` returns the dtype,
the weights' dtype when they differ, and the reason; loaders log it once.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (x86 `flags`, Arm `Features`); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` does bf16 arithmetic in hardware (not emulated through fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        flags = cpu_flags()
        arm = platform.machine().lower() in ("aarch64", "arm64")
        return any(f in flags for f in _X86_BF16_FLAGS) or (arm and "bf16" in flags)
    return False


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (`MemAvailable` of /proc/meminfo); None where unknown."""
    try:
        text = Path("/proc/meminfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable" and value.split()[:1] and value.split()[0].isdigit():
            return int(value.split()[0]) * 1024
    return None


@dataclass(frozen=True)
class DtypeChoice:
    """`dtype`: the compute dtype (activations, norms, biases, the small layers); `weights`: the in-memory dtype of
    the large matmul weights and embeddings when it differs from `dtype` (upcast on the fly), else None."""

    dtype: torch.dtype
    reason: str
    weights: torch.dtype | None = None

    def describe(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        if self.weights is None:
            return f"{name} ({self.reason})"
        return f"{name} compute, {str(self.weights).removeprefix('torch.')} weights upcast on the fly ({self.reason})"


def choose_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", stored: torch.dtype | None = None,
                 fp32_bytes: int | None = None, quantized: bool = False) -> DtypeChoice:
    """The compute dtype (and, where they differ, the weights' in-memory dtype) for `dtype` on `device`, given the
    weights' storage dtype `stored` (None: unknown), their size in float32 `fp32_bytes` (None: unknown) and
    whether weight-only quantization holds the decoding weights (`quantized`). ValueError for a name that is not a
    dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return DtypeChoice(dtype, "asked for")
    if isinstance(dtype, str) and dtype in DTYPES:
        return DtypeChoice(DTYPES[dtype], "asked for")
    if dtype != "auto":
        raise ValueError(f"dtype must be 'auto', {', '.join(repr(d) for d in DTYPES)} or a torch dtype, "
                         f"got {dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda":
        if native_bf16(dev):
            return DtypeChoice(torch.bfloat16, "auto: CUDA with bf16 arithmetic")
        return DtypeChoice(torch.float32, "auto: this CUDA device has no bf16 arithmetic")
    if dev.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: {dev.type}")
    if not native_bf16(dev):
        no_bf16 = "auto: this CPU has no native bf16 arithmetic (AVX512-BF16 / AMX)"
        if stored != torch.bfloat16:
            return DtypeChoice(torch.float32, no_bf16)
        if quantized:
            return DtypeChoice(torch.float32, f"{no_bf16}; quantized decoding", torch.bfloat16)
        room = available_memory()
        if fp32_bytes is not None and room is not None and fp32_bytes > room / 2:
            return DtypeChoice(torch.float32, f"{no_bf16}; {fp32_bytes / 1e9:.1f} GB of float32 weights > half of "
                                              f"the {room / 1e9:.1f} GB available", torch.bfloat16)
        return DtypeChoice(torch.float32, no_bf16)
    if stored == torch.bfloat16:
        return DtypeChoice(torch.bfloat16, "auto: native bf16 CPU, weights stored in bfloat16")
    why = "unknown" if stored is None else str(stored).removeprefix("torch.")
    return DtypeChoice(torch.float32, f"auto: native bf16 CPU, weights stored in {why}")


__all__ = ["DTYPES", "DtypeChoice", "available_memory", "choose_dtype", "cpu_flags", "native_bf16"]
