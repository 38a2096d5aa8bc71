"""bf16 weights packed for oneDNN (`infer.packed`): the products of `F.linear` bit for bit, one row as inside a
batch, the state-dict keys and values of the unpacked layer, and a loaded model whose reports, logits and images
are those of the unpacked one; where packing does not pay the model is left as it is.

The tests of the packed product need oneDNN with bf16 on the CPU that runs them (AVX-512 or newer); on an
AVX2-only CPU they are skipped, as `packing()` itself never packs there (tested below with the decision forced).

Run: pytest tests/test_packed.py
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unix_cxr.infer import packed
from unix_cxr.infer.packed import PackedLinear, Packing, pack_weights
from unix_cxr.model.linear import Linear

needs_onednn_bf16 = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="oneDNN has no bf16 on this CPU (packing() keeps such models unpacked)")


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def bf16_linear(n: int, k: int, bias: bool, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).to(dtype)


def assert_float32_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 products of another kernel: equal to rounding (1e-5 of the largest value)."""
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_bf16_layer_computes_what_f_linear_computes(bias):
    linear = bf16_linear(384, 256, bias)
    layer = PackedLinear(linear, pad_rows=packed.packing().pad_rows)
    rows = torch.randn(16, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.inference_mode():
        want = F.linear(rows, linear.weight, linear.bias)
        for n in (2, 3, 16):
            assert torch.equal(layer(rows[:n]), want[:n])
        for i in range(4):  # one row (a decoding step) gives its result inside the batch
            assert torch.equal(layer(rows[i:i + 1]), want[i:i + 1])
        assert torch.equal(layer(rows.view(4, 4, 256)), want.view(4, 4, 384))  # leading dims kept


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_float32_layer_is_f_linear_to_rounding_and_batch_invariant(bias):
    linear = bf16_linear(384, 256, bias, dtype=torch.float32)
    layer = PackedLinear(linear, pad_rows=packed.packing(torch.float32).pad_rows)
    rows = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        batched = layer(rows)
        assert_float32_close(batched, F.linear(rows, linear.weight, linear.bias))
        for n in (2, 3):
            assert torch.equal(layer(rows[:n]), batched[:n])
        for i in range(4):
            assert torch.equal(layer(rows[i:i + 1]), batched[i:i + 1])


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_padding_that_packing_accepts_gives_the_batched_row(dtype):
    """`packing()` keeps only the paddings whose one-row result equals the batched one; check each of them on
    another shape than its own measurement's, every one of 64 rows, with a bias (the unpadded one-row bf16 kernel
    differs on about a third of such rows, so pad 1 must not be among them there)."""
    if dtype is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 on this CPU")
    choice = packed.packing(dtype)
    if not choice.used:
        pytest.skip(f"{dtype} packing does not pay on this CPU: {choice.reason}")
    assert choice.pad_rows in choice.pads
    linear = bf16_linear(1000, 2048, True, seed=3, dtype=dtype)
    rows = torch.randn(64, 2048, generator=torch.Generator().manual_seed(4)).to(dtype)
    with torch.inference_mode():
        w = packed.pack(linear.weight)
        batched = packed.packed_product(rows, w, linear.bias)
        for pad in choice.pads:
            got = torch.cat([packed.packed_product(rows[i:i + 1], w, linear.bias, pad) for i in range(64)])
            assert torch.equal(got, batched), f"padding to {pad} rows"


@needs_onednn_bf16
def test_the_state_dict_is_the_unpacked_layers_and_loads_back_packed():
    linear = bf16_linear(96, 64, True)
    layer = PackedLinear(linear, pad_rows=2)
    state = layer.state_dict()
    assert list(state) == ["weight", "bias"]
    assert torch.equal(state["weight"], linear.weight) and torch.equal(state["bias"], linear.bias)
    other = bf16_linear(96, 64, True, seed=5)
    layer.load_state_dict(other.state_dict())
    x = torch.randn(3, 64).bfloat16()
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, other.weight, other.bias))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        layer.load_state_dict(bf16_linear(32, 64, True).state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict({"bias": other.bias})


@needs_onednn_bf16
def test_float32_rows_and_rows_that_need_a_gradient_take_the_plain_product():
    linear = bf16_linear(48, 32, True)
    layer = PackedLinear(linear, pad_rows=1)
    x = torch.randn(2, 32)
    assert torch.equal(layer(x), F.linear(x, linear.weight.float(), linear.bias.float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's product, as nn.Linear under autocast
        assert torch.equal(layer(x), F.linear(x, linear.weight, linear.bias))
    x16 = torch.randn(2, 32).bfloat16().requires_grad_()
    out = layer(x16)
    out.sum().backward()
    assert x16.grad is not None and torch.equal(out.detach(), F.linear(x16.detach(), linear.weight, linear.bias))


@needs_onednn_bf16
def test_a_packed_layer_refuses_another_dtype_or_device_and_copies_whole():
    import copy

    linear = bf16_linear(48, 32, True)
    layer = PackedLinear(linear, pad_rows=2)
    layer.to("cpu")  # a no-op is fine
    for convert in (lambda m: m.float(), lambda m: m.to(torch.float16), lambda m: m.to("meta")):
        with pytest.raises(RuntimeError, match="cannot become"):
            convert(layer)
    twin = copy.deepcopy(layer)
    x = torch.randn(3, 32).bfloat16()
    with torch.inference_mode():
        assert torch.equal(twin(x), layer(x)) and twin.packed is not layer.packed


def demo_pair(dtype: str):
    """The demo model loaded in `dtype` twice: as `load_for_inference` gives it, and unpacked (float32: its weights
    are all below `FLOAT32_MIN_PARAMS`, so the callers that want them packed lower the bound)."""
    from unix_cxr.infer.loading import load_for_inference
    from unix_cxr.infer.pipeline import demo_model_path

    return (load_for_inference(demo_model_path(), dtype, "cpu").model,
            load_for_inference(demo_model_path(), dtype, "cpu", pack=False).model)


def decode_and_draw(pk, plain):
    """Greedy decoding of 4 random images with a prompt (the packed and the plain model, with step logits; the
    packed one also one image at a time) and one image drawn by each with the same noise."""
    from unix_cxr.infer.image import ImageGenerator
    from unix_cxr.infer.report import ReportGenerator

    s = pk.cfg.vision.image_size
    pixels = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(0))
    a, b = ReportGenerator(pk), ReportGenerator(plain)
    blocks = [a.prompt_block([5, 6, 7])] * 4
    g = lambda: torch.Generator().manual_seed(3)
    with torch.inference_mode():
        got = a.decode(a.prefill(pixels, blocks, 24), 24, keep_logits=True)
        want = b.decode(b.prefill(pixels, blocks, 24), 24, keep_logits=True)
        one = [a.decode(a.prefill(pixels[i:i + 1], blocks[:1], 24), 24).token_ids[0] for i in range(4)]
        images = [ImageGenerator(m).sample([[5, 6]], 64, 64, generator=g()) for m in (pk, plain)]
    return got, want, one, images


@pytest.fixture(scope="module")
def bf16_pair():
    return demo_pair("bfloat16")


@needs_onednn_bf16
def test_a_loaded_bf16_model_computes_what_the_unpacked_one_computes(bf16_pair):
    pk, plain = bf16_pair
    if not packed.packing().used:
        pytest.skip(f"packing does not pay on this CPU: {packed.packing().reason}")
    scopes = [*plain.decoder.layers, *plain.vision.tower.encoder.layers]
    linears = [m for scope in scopes for m in scope.modules() if type(m) in (nn.Linear, Linear)]
    assert len(linears) > 7 * plain.cfg.decoder.num_layers  # both experts' projections and SigLIP's
    assert isinstance(pk.lm_head, PackedLinear)
    assert len([m for m in pk.modules() if isinstance(m, PackedLinear)]) == len(linears) + 1
    assert not any(type(m) in (nn.Linear, Linear) for scope in [*pk.decoder.layers, *pk.vision.tower.encoder.layers]
                   for m in scope.modules())
    got, want = pk.state_dict(), plain.state_dict()
    assert list(got) == list(want)  # the same keys in the same order
    assert all(torch.equal(got[k], want[k]) for k in want)

    got, want, one, images = decode_and_draw(pk, plain)
    assert got.token_ids == want.token_ids == one  # the same numbers, and batch-invariant
    assert all(torch.equal(x, y) for x, y in zip(got.step_logits, want.step_logits, strict=True))
    assert torch.equal(*images)


@needs_onednn
def test_a_loaded_float32_model_reports_what_the_unpacked_one_reports(monkeypatch):
    """float32 packed products round differently from MKL's: the greedy reports agree with the unpacked model's,
    the logits and images to rounding, and decoding stays batch-invariant. The demo model's layers are smaller than
    `FLOAT32_MIN_PARAMS`, so the bound is lowered to pack them all."""
    choice = packed.packing(torch.float32)
    if not choice.used:
        pytest.skip(f"float32 packing does not pay on this CPU: {choice.reason}")
    assert packed.min_params(torch.float32) == packed.FLOAT32_MIN_PARAMS and packed.min_params(torch.bfloat16) == 0
    monkeypatch.setattr(packed, "FLOAT32_MIN_PARAMS", 0)
    pk, plain = demo_pair("float32")
    assert isinstance(pk.lm_head, PackedLinear) and isinstance(pk.decoder.layers[0].und.q_proj, PackedLinear)
    got, want, one, images = decode_and_draw(pk, plain)
    assert got.token_ids == want.token_ids and got.token_ids == one
    for x, y in zip(got.step_logits, want.step_logits, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))
    torch.testing.assert_close(*images, rtol=1e-3, atol=1e-3)


def test_where_packing_does_not_pay_the_model_is_left_as_it_is(monkeypatch, caplog, tiny_model):
    monkeypatch.setattr(packed, "packing", lambda dtype: Packing(False, 1, "not faster here (forced)"))
    model = tiny_model.bfloat16().eval()
    before = {name: type(m) for name, m in model.named_modules()}
    with caplog.at_level(logging.INFO, logger="unix_cxr.infer.packed"):
        pack_weights(model)
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert "bfloat16 weights not packed for oneDNN: not faster here (forced)" in caplog.text


@needs_onednn_bf16
def test_layers_of_another_dtype_and_a_tied_lm_head_stay_unpacked(monkeypatch, tiny_model):
    monkeypatch.setattr(packed, "packing", lambda dtype: Packing(True, 2, "forced"))
    model = tiny_model.bfloat16().eval()
    model.decoder.layers[0].und.q_proj.float()  # not the model's dtype: left as it is
    model.lm_head.weight = model.decoder.embed_tokens.weight
    pack_weights(model)
    assert type(model.lm_head) is not PackedLinear and model.lm_head.weight is model.decoder.embed_tokens.weight
    assert type(model.decoder.layers[0].und.q_proj) is not PackedLinear
    assert isinstance(model.decoder.layers[0].und.k_proj, PackedLinear)


@needs_onednn
def test_small_float32_layers_stay_unpacked(monkeypatch, tiny_model):
    """oneDNN's per-call cost is more than MKL's whole product of a small float32 weight."""
    monkeypatch.setattr(packed, "packing", lambda dtype: Packing(True, 2, "forced"))
    model = tiny_model.eval()
    model.lm_head = nn.Linear(1024, 2048, bias=False)  # 2^21 parameters: packed
    pack_weights(model)
    assert isinstance(model.lm_head, PackedLinear)
    assert not any(isinstance(m, PackedLinear) for m in model.decoder.modules())


def test_a_model_of_small_float32_layers_is_left_without_measuring(monkeypatch, caplog, tiny_model):
    def measured(dtype):
        raise AssertionError("packing() measured for a model with nothing to pack")

    monkeypatch.setattr(packed, "packing", measured)
    model = tiny_model.eval()
    with caplog.at_level(logging.INFO, logger="unix_cxr.infer.packed"):
        pack_weights(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert "float32 weights not packed for oneDNN: no linear layer of at least 2,097,152 parameters" in caplog.text


def test_no_packing_on_a_cpu_without_onednn_bf16_nor_of_other_dtypes(monkeypatch):
    assert not packed.packing(torch.float16).used
    assert packed.packing() is packed.packing(torch.bfloat16)  # one decision per dtype, however it is asked
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    choice = packed.decide_packing(torch.bfloat16)  # measured afresh; the process's cached decision is untouched
    assert not choice.used and "no bf16" in choice.reason


@needs_onednn_bf16
@pytest.mark.slow
def test_the_compiled_decoding_step_runs_packed_weights(bf16_pair):
    """The packed product is one opaque operator under torch.compile: the compiled step's tokens are the eager
    ones (about half a minute: the compile). Run: pytest -m slow tests/test_packed.py"""
    from unix_cxr.infer.report import ReportGenerator

    pk = bf16_pair[0]
    if not packed.packing().used:
        pytest.skip(f"packing does not pay on this CPU: {packed.packing().reason}")
    s = pk.cfg.vision.image_size
    pixels = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    eager, compiled = ReportGenerator(pk), ReportGenerator(pk, compile=True)
    blocks = [eager.prompt_block([5, 6, 7])] * 2
    with torch.inference_mode():
        want = eager.decode(eager.prefill(pixels, blocks, 12), 12).token_ids
        got = compiled.decode(compiled.prefill(pixels, blocks, 12), 12).token_ids
    assert got == want


def test_the_pipeline_and_the_model_commands_pack_unless_told_not_to(monkeypatch):
    """`from_pretrained(pack=False)` keeps the plain layers; the model commands' `--no-pack` reaches it."""
    import argparse

    from unix_cxr.cli.options import add_model_options, load_pipeline
    from unix_cxr.infer.pipeline import UniXPipeline

    def has_packed(pipe) -> bool:
        return any(isinstance(m, PackedLinear) for m in pipe.model.modules())

    plain = UniXPipeline.from_pretrained("demo", dtype="bfloat16", pack=False)
    assert not has_packed(plain)
    if packed.packing(torch.bfloat16).used:
        assert has_packed(UniXPipeline.from_pretrained("demo", dtype="bfloat16"))
    seen = []
    monkeypatch.setattr(UniXPipeline, "from_pretrained", classmethod(lambda cls, path, **kw: seen.append(kw)))
    p = argparse.ArgumentParser()
    add_model_options(p)
    load_pipeline(p.parse_args(["--no-pack"]))
    load_pipeline(p.parse_args([]))
    assert [kw["pack"] for kw in seen] == [False, True]
