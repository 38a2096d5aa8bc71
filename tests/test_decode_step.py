"""The decoding step: one-row bf16 products through this machine's batch-invariant kernel, a cache read of
caller-given columns, and the compiled step (`ReportGenerator(compile=True)`) against the eager one.

Run: pytest tests/test_decode_step.py
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

from unix_cxr.config import load_config
from unix_cxr.infer.quantize import int4_available, quantize_decoding
from unix_cxr.infer.report import ReportGenerator, decode_step
from unix_cxr.infer.upcast import upcast_weights
from unix_cxr.model import linear as linear_module
from unix_cxr.model.decoder import CacheAttention
from unix_cxr.model.linear import Linear
from unix_cxr.model.unix import UniX


def images(n: int, seed: int = 0) -> torch.Tensor:
    s = load_config("tiny").vision.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(linear_module.ONE_ROW_KERNELS))
def one_row_calls(request, monkeypatch) -> list:
    """Each one-row kernel in turn as this machine's choice, its calls recorded."""
    calls = []
    original = linear_module.ONE_ROW_KERNELS[request.param]

    def spy(weight, row, bias):
        calls.append(row.shape)
        return original(weight, row, bias)

    monkeypatch.setitem(linear_module.ONE_ROW_KERNELS, request.param, spy)
    monkeypatch.setattr(linear_module, "one_row_kernel", lambda: request.param)
    return calls


@pytest.mark.parametrize("bias", [False, True])
def test_one_bf16_row_takes_the_chosen_kernel_and_the_batched_numbers(bias, one_row_calls):
    """A row alone gives what it gives inside a batch (batch invariance of decoding), through either kernel;
    the model's shapes, where MKL's one-row F.linear sums differently."""
    torch.manual_seed(0)
    layer = Linear(2048, 5632, bias=bias).to(torch.bfloat16)
    batch = torch.randn(4, 2048, dtype=torch.bfloat16)
    batched = F.linear(batch, layer.weight, layer.bias)
    for shape in [(2048,), (1, 2048), (1, 1, 2048)]:
        x = batch[2].reshape(shape)
        out = layer(x)
        assert out.shape == (*shape[:-1], 5632)
        assert torch.equal(out.reshape(-1), batched[2])
    assert len(one_row_calls) == 3


def test_the_kernel_is_measured_once_and_gives_the_batched_numbers(caplog):
    import logging

    linear_module.one_row_kernel.cache_clear()
    with caplog.at_level(logging.INFO, logger="unix_cxr"):
        name = linear_module.one_row_kernel()
        assert linear_module.one_row_kernel() == name
    assert name in linear_module.ONE_ROW_KERNELS
    assert len([r for r in caplog.records if "one-row bf16 products" in r.getMessage()]) == 1
    w = torch.randn(300, 200).bfloat16()
    rows = torch.randn(5, 200).bfloat16()
    assert torch.equal(torch.stack([linear_module.one_row_product(w, r) for r in rows]), F.linear(rows, w))


def test_other_inputs_keep_f_linear(one_row_calls):
    torch.manual_seed(0)
    layer = Linear(32, 16).to(torch.bfloat16)
    rows = torch.randn(3, 32, dtype=torch.bfloat16)
    assert torch.equal(layer(rows), F.linear(rows, layer.weight, layer.bias))  # several rows
    fp32 = Linear(32, 16)
    row = torch.randn(1, 32)
    assert torch.equal(fp32(row), F.linear(row, fp32.weight, fp32.bias))  # float32: the same speed either way
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts F.linear's operands, not the kernels'
        assert fp32(row).dtype == torch.bfloat16
    assert one_row_calls == []


def test_a_malformed_row_fails_as_f_linear_does():
    layer = Linear(32, 16).to(torch.bfloat16)
    with pytest.raises(RuntimeError):
        layer(torch.randn(2, 16, dtype=torch.bfloat16))  # 32 values, not one row of 32


def test_compiled_one_row_products_keep_their_gradients():
    """Under torch.compile with gradients (training) one row takes F.linear: the opaque op has no backward."""
    torch.manual_seed(0)
    layer = Linear(8, 4).to(torch.bfloat16)
    x = torch.randn(1, 8, dtype=torch.bfloat16, requires_grad=True)
    torch.compile(layer, fullgraph=True)(x).float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_one_row_products_have_gradients():
    torch.manual_seed(0)
    layer = Linear(8, 4).to(torch.bfloat16)
    x = torch.randn(1, 8, dtype=torch.bfloat16, requires_grad=True)
    layer(x).float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None


def prefilled(model: UniX, prompts: list[list[int]], new: int):
    engine = ReportGenerator(model)
    return engine, engine.prefill(images(len(prompts)), [engine.prompt_block(p) for p in prompts], new)


@pytest.mark.parametrize("prompts", [[[5, 6, 7], [8, 9, 10]], [[5, 6, 7, 8, 9], [11]]], ids=["uniform", "ragged"])
def test_reading_given_columns_equals_the_cache_read_by_lengths(tiny_model, prompts):
    """Rows of equal length (written at one column) and of different lengths (scattered): every step's logits
    and the cache contents are the same when the caller gives the columns to read (a compiled step does)."""
    _, a = prefilled(tiny_model, prompts, 6)
    _, b = prefilled(tiny_model, prompts, 6)
    ids, position = torch.tensor([3, 4]), a.next_position.clone()
    with torch.inference_mode():
        for _ in range(5):
            read = int(b.cache.lens.max()) + 1 + 2  # two columns more than needed: masked
            by_lens = decode_step(tiny_model, ids, position, a.cache)
            given = decode_step(tiny_model, ids, position, b.cache, read)
            torch.testing.assert_close(given, by_lens, rtol=0, atol=1e-6)
            ids, position = by_lens.argmax(-1), position + 1
    assert torch.equal(a.cache.lens, b.cache.lens)
    for row, length in enumerate(a.cache.lens.tolist()):
        torch.testing.assert_close(b.cache.k[:, row, :, :length], a.cache.k[:, row, :, :length], rtol=0, atol=1e-6)


def test_given_columns_must_fit_the_cache_and_a_written_block(tiny_model):
    _, state = prefilled(tiny_model, [[5, 6]], 2)
    x = torch.zeros(1, 1, tiny_model.cfg.decoder.hidden_size)
    with pytest.raises(ValueError, match="read="):
        CacheAttention(state.cache, causal=True, write=True, read=state.cache.capacity + 1).prepare(1, "sdpa")
    with pytest.raises(ValueError, match="written block"):
        tiny_model.decoder(x, torch.zeros(1, 1, dtype=torch.long), None,
                           CacheAttention(state.cache, causal=True, write=False, read=4))


def test_compiled_decoding_needs_the_sdpa_backend(tiny_model):
    tiny_model.decoder.set_attention_backend("flex")
    engine = ReportGenerator(tiny_model, compile=True)
    with pytest.raises(ValueError, match="needs the sdpa attention backend"):
        engine.generate(images(1), [[5, 6]], max_new_tokens=2)


needs_stance = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="set_stance needs torch >= 2.6")


def test_compiled_bf16_decoding_agrees_with_eager_to_bf16_rounding():
    """bf16 weights: one-row products through the opaque `unix_cxr::mv`; the fused kernels round differently, so
    the logits agree to bf16 rounding, and greedy tokens of one report are the eager ones here."""
    torch._dynamo.reset()
    model = randomize(UniX(load_config("tiny"), with_generation=False)).eval().to(torch.bfloat16)
    eager, compiled = ReportGenerator(model), ReportGenerator(model, compile=True)
    blocks = [eager.prompt_block([5, 6, 7, 8])]
    ref = eager.decode(eager.prefill(images(1), blocks, 6), 6, keep_logits=True)
    out = compiled.decode(compiled.prefill(images(1), blocks, 6), 6, keep_logits=True)
    assert out.token_ids == ref.token_ids
    scale = max(float(s.abs().max()) for s in ref.step_logits)
    for a, b in zip(out.step_logits, ref.step_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0.02 * scale)


@needs_stance
@pytest.mark.parametrize("mode", ["none", "int8", pytest.param("int4", marks=pytest.mark.skipif(
    not int4_available(), reason="no CPU int4 kernel layout we read")), "upcast"])
def test_compiled_decoding_gives_the_eager_reports_without_recompiling(mode):
    """One compile for a ragged batch of two; a batch of three with another capacity runs on the same graph
    (`fail_on_recompile`), each report that of its prompt in a batch of two; the tokens are the eager ones and the
    logits equal to rounding. (A batch of one is a graph of its own: torch.compile specialises sizes of 1.) With
    bf16-held weights (`infer.upcast`) the compiled step upcasts them inside one fused float32 reduction while the
    eager step rounds its rows to bf16, so there the logits agree to bf16 rounding."""
    torch._dynamo.reset()
    model = randomize(UniX(load_config("tiny"), with_generation=False)).eval()
    model = upcast_weights(model) if mode == "upcast" else quantize_decoding(model, mode)
    eager, compiled = ReportGenerator(model), ReportGenerator(model, compile=True)
    prompts = [[5, 6, 7, 8, 9], [11]]
    blocks = [eager.prompt_block(p) for p in prompts]
    ref = eager.decode(eager.prefill(images(2), blocks, 8), 8, keep_logits=True)
    out = compiled.decode(compiled.prefill(images(2), blocks, 8), 8, keep_logits=True)
    assert out.token_ids == ref.token_ids
    scale = max(float(s.abs().max()) for s in ref.step_logits)
    for a, b in zip(out.step_logits, ref.step_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0.02 * scale if mode == "upcast" else 1e-4)
    more = [[7, 8, 9, 10], [12, 13], [14, 15, 16, 17, 18, 19, 20]]
    pixels = images(3, seed=1)
    with torch.compiler.set_stance("fail_on_recompile"):
        again = compiled.generate(pixels, more, max_new_tokens=5).token_ids
        pairs = [compiled.generate(pixels[[i, (i + 1) % 3]], [more[i], more[(i + 1) % 3]],
                                   max_new_tokens=5).token_ids[0] for i in range(3)]
    assert again == pairs
    assert again == eager.generate(pixels, more, max_new_tokens=5).token_ids
