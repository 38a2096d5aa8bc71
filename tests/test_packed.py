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


def bf16_linear(n: int, k: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).bfloat16()


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_layer_computes_what_f_linear_computes(bias):
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


@needs_onednn_bf16
def test_every_padding_that_packing_accepts_gives_the_batched_row():
    """`packing()` keeps only the paddings whose one-row result equals the batched one; check them on other
    shapes than its own measurement's."""
    linear = bf16_linear(640, 512, True, seed=3)
    rows = torch.randn(8, 512, generator=torch.Generator().manual_seed(4)).bfloat16()
    choice = packed.packing()
    with torch.inference_mode():
        want = F.linear(rows, linear.weight, linear.bias)
        w = packed.pack(linear.weight)
        for i in range(3):
            got = packed.packed_product(rows[i:i + 1], w, linear.bias, choice.pad_rows)
            assert torch.equal(got, want[i:i + 1])


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
    linear = bf16_linear(48, 32, False)
    layer = PackedLinear(linear, pad_rows=1)
    x = torch.randn(2, 32)
    assert torch.equal(layer(x), F.linear(x, linear.weight.float()))
    x16 = torch.randn(2, 32).bfloat16().requires_grad_()
    out = layer(x16)
    out.sum().backward()
    assert x16.grad is not None and torch.equal(out.detach(), F.linear(x16.detach(), linear.weight))


@pytest.fixture(scope="module")
def demo_pair():
    """The demo model loaded in bf16 twice: as `load_for_inference` gives it, and unpacked."""
    from unix_cxr.infer.loading import load_for_inference
    from unix_cxr.infer.pipeline import demo_model_path

    return (load_for_inference(demo_model_path(), "bfloat16", "cpu"),
            load_for_inference(demo_model_path(), "bfloat16", "cpu", pack=False))


@needs_onednn_bf16
def test_a_loaded_bf16_model_computes_what_the_unpacked_one_computes(demo_pair):
    from unix_cxr.infer.image import ImageGenerator
    from unix_cxr.infer.report import ReportGenerator

    pk, plain = demo_pair[0].model, demo_pair[1].model
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

    s = pk.cfg.vision.image_size
    pixels = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(0))
    a, b = ReportGenerator(pk), ReportGenerator(plain)
    blocks = [a.prompt_block([5, 6, 7])] * 4
    with torch.inference_mode():
        got = a.decode(a.prefill(pixels, blocks, 24), 24, keep_logits=True)
        want = b.decode(b.prefill(pixels, blocks, 24), 24, keep_logits=True)
        one = [a.decode(a.prefill(pixels[i:i + 1], blocks[:1], 24), 24).token_ids[0] for i in range(4)]
    assert got.token_ids == want.token_ids == one  # the same numbers, and batch-invariant
    assert all(torch.equal(x, y) for x, y in zip(got.step_logits, want.step_logits, strict=True))
    g = lambda: torch.Generator().manual_seed(3)
    with torch.inference_mode():
        assert torch.equal(ImageGenerator(pk).sample([[5, 6]], 64, 64, generator=g()),
                           ImageGenerator(plain).sample([[5, 6]], 64, 64, generator=g()))


def test_where_packing_does_not_pay_the_model_is_left_as_it_is(monkeypatch, caplog, tiny_model):
    monkeypatch.setattr(packed, "packing", lambda: Packing(False, 1, "not faster here (forced)"))
    model = tiny_model.bfloat16().eval()
    before = {name: type(m) for name, m in model.named_modules()}
    with caplog.at_level(logging.INFO, logger="unix_cxr.infer.packed"):
        pack_weights(model)
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert "not packed for oneDNN: not faster here (forced)" in caplog.text


@needs_onednn_bf16
def test_float32_layers_and_a_tied_lm_head_stay_unpacked(monkeypatch, tiny_model):
    monkeypatch.setattr(packed, "packing", lambda: Packing(True, 2, "forced"))
    model = tiny_model.eval()  # float32: nothing is packed
    pack_weights(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    model = model.bfloat16()
    model.lm_head.weight = model.decoder.embed_tokens.weight
    pack_weights(model)
    assert type(model.lm_head) is not PackedLinear and model.lm_head.weight is model.decoder.embed_tokens.weight
    assert isinstance(model.decoder.layers[0].und.q_proj, PackedLinear)


def test_no_packing_on_a_cpu_without_onednn_bf16(monkeypatch):
    packed.packing.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    try:
        choice = packed.packing()
        assert not choice.used and "no bf16" in choice.reason
    finally:
        packed.packing.cache_clear()


@needs_onednn_bf16
@pytest.mark.slow
def test_the_compiled_decoding_step_runs_packed_weights(demo_pair):
    """The packed product is one opaque operator under torch.compile: the compiled step's tokens are the eager
    ones (about a minute: the compile). Run: pytest -m slow tests/test_packed.py"""
    from unix_cxr.infer.report import ReportGenerator

    pk = demo_pair[0].model
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
