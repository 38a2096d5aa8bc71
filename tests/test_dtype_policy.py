"""The one dtype policy (`unix_cxr.utils.dtype_policy`): explicit dtypes win; "auto" follows the device's native
bf16 arithmetic (CPU feature flags, CUDA capability) and the weights' storage dtype; the pipeline logs its choice."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unix_cxr.checkpoint.safetensors_io import stored_float_dtype, stored_floats
from unix_cxr.utils import dtype_policy as policy
from unix_cxr.utils.dtype_policy import choose_dtype


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has these feature flags on this architecture."""
    def pretend(flags: set[str], machine: str = "x86_64") -> None:
        monkeypatch.setattr(policy, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(policy.platform, "machine", lambda: machine)
    return pretend


@pytest.mark.parametrize("flags, machine, stored, expected", [
    ({"avx2", "fma"}, "x86_64", torch.bfloat16, torch.float32),  # AVX2 only: bf16 GEMMs are emulated, slow
    ({"avx512f", "avx512_bf16"}, "x86_64", torch.bfloat16, torch.bfloat16),
    ({"amx_bf16", "amx_tile"}, "x86_64", torch.bfloat16, torch.bfloat16),
    ({"amx_bf16"}, "x86_64", torch.float32, torch.float32),  # fp32 weights stay fp32
    ({"amx_bf16"}, "x86_64", None, torch.float32),  # unknown storage: fp32
    ({"asimd", "bf16"}, "aarch64", torch.bfloat16, torch.bfloat16),
    ({"bf16"}, "x86_64", torch.bfloat16, torch.float32),  # "bf16" is an Arm feature name only
])
def test_auto_on_a_cpu(cpu_with, flags, machine, stored, expected):
    cpu_with(flags, machine)
    choice = choose_dtype("auto", "cpu", stored)
    assert choice.dtype == expected and choice.reason.startswith("auto")


@pytest.mark.parametrize("stored, fp32_gb, available_gb, quantized, weights", [
    (torch.bfloat16, 14.0, 24.0, False, torch.bfloat16),  # the full model on 24 GB: more than half -> upcast
    (torch.bfloat16, 14.0, 32.0, False, None),  # room for float32 weights: kept float32 (no per-call upcast)
    (torch.bfloat16, None, 8.0, False, None),  # size unknown
    (torch.bfloat16, 14.0, None, False, None),  # memory unknown
    (torch.bfloat16, 1.0, 64.0, True, torch.bfloat16),  # quantized decoding: the rest in bf16 whatever the room
    (torch.float32, 14.0, 8.0, True, None),  # float32 storage: nothing to keep in bf16
])
def test_auto_on_an_avx2_cpu_upcasts_bf16_weights_when_memory_asks(cpu_with, monkeypatch, stored, fp32_gb,
                                                                    available_gb, quantized, weights):
    cpu_with({"avx2", "fma"})
    monkeypatch.setattr(policy, "available_memory", lambda: None if available_gb is None else int(available_gb * 1e9))
    choice = choose_dtype("auto", "cpu", stored, fp32_bytes=None if fp32_gb is None else int(fp32_gb * 1e9),
                          quantized=quantized)
    assert choice.dtype == torch.float32 and choice.weights == weights
    assert ("bfloat16 weights upcast on the fly" in choice.describe()) == (weights is not None)
    cpu_with({"amx_bf16"})  # a native-bf16 CPU computes in the stored bf16 itself
    assert choose_dtype("auto", "cpu", stored, int(14e9), quantized).weights is None
    assert choose_dtype("float32", "cpu", stored, int(14e9), quantized).weights is None  # asked for: all float32


def test_available_memory_is_read_from_this_machine(monkeypatch, tmp_path):
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():  # Linux: a part of the total
        total = next(int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                     if line.startswith("MemTotal:"))
        assert 0 < policy.available_memory() <= total
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       1000 kB\nMemAvailable:    250 kB\n")
    monkeypatch.setattr(policy, "Path", lambda _: fake)
    assert policy.available_memory() == 250 * 1024
    fake.write_text("MemTotal: 1000 kB\n")  # an old kernel without MemAvailable
    assert policy.available_memory() is None


def test_explicit_dtypes_win_and_bad_ones_are_refused(cpu_with):
    cpu_with({"avx2"})
    assert choose_dtype("bfloat16", "cpu", torch.float32).dtype == torch.bfloat16
    assert choose_dtype(torch.float16, "cpu").dtype == torch.float16
    assert choose_dtype("float32", "cuda").describe() == "float32 (asked for)"
    with pytest.raises(ValueError, match="floating-point"):
        choose_dtype(torch.int64)
    with pytest.raises(ValueError, match="dtype must be 'auto'"):
        choose_dtype("fp8")


def test_auto_on_cuda_follows_its_bf16_arithmetic(monkeypatch):
    monkeypatch.setattr(policy.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(policy.torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_dtype("auto", "cuda", torch.float32).dtype == torch.bfloat16
    monkeypatch.setattr(policy.torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert choose_dtype("auto", "cuda:0", torch.bfloat16).dtype == torch.float32


def test_cpu_flags_are_read_from_this_machine():
    flags = policy.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux: x86 names its SIMD, Arm its features
        assert flags & {"sse2", "avx2", "asimd", "fp"}


def test_stored_float_dtype_reads_the_header(tmp_path):
    save_file({"big": torch.zeros(100, dtype=torch.bfloat16), "small": torch.zeros(3),
               "ids": torch.zeros(500, dtype=torch.int64)}, str(tmp_path / "w.safetensors"))
    assert stored_float_dtype(tmp_path / "w.safetensors") == torch.bfloat16
    assert stored_floats(tmp_path / "w.safetensors") == (torch.bfloat16, 103)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert stored_float_dtype(tmp_path / "bad.safetensors") is None
    assert stored_float_dtype(tmp_path / "missing.safetensors") is None
    assert stored_floats(tmp_path / "missing.safetensors") == (None, None)


def test_the_pipeline_logs_its_choice_once(cpu_with, caplog):
    from unix_cxr.infer.pipeline import UniXPipeline

    cpu_with({"amx_bf16"})
    with caplog.at_level(logging.INFO, logger="unix_cxr"):
        pipe = UniXPipeline.from_pretrained("demo")
    lines = [r.getMessage() for r in caplog.records if "runs in" in r.getMessage()]
    assert len(lines) == 1 and "float32 (auto: native bf16 CPU, weights stored in float32)" in lines[0]
    assert next(pipe.model.parameters()).dtype == torch.float32
