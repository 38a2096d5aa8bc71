"""Weight-only int8 decoding (`unix_cxr.infer.quantize`): the int8 matmul against float, what is quantized and
what is not, rows independent of their batch, and greedy reports of the demo model batch-invariant under int8."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import PARITY, needs_parity
from torch import nn

from unix_cxr.config import load_config
from unix_cxr.infer.pipeline import UniXPipeline
from unix_cxr.infer.quantize import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    decoding_steps,
    int4_available,
    quantize_decoding,
)
from unix_cxr.model.unix import UniX


@pytest.mark.parametrize("decoding", [True, False], ids=["int8 kernel", "dequantised"])
def test_int8_linear_matches_the_float_layer_within_its_rounding(decoding):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96)
    q = Int8Linear(linear)
    for rows in (1, 5, 40):
        x = torch.randn(rows, 256)
        with decoding_steps() if decoding else contextlib.nullcontext():
            out = q(x)
        ref = linear(x)
        # per-channel int8: |w - w_q| <= scale / 2, so |error| <= sum|x| * scale / 2 (+ bf16 activations)
        bound = (x.abs().sum(1, keepdim=True) * q.scale / 2) + 0.01 * ref.abs() + 1e-3
        assert (out - ref).abs().le(bound).all(), rows
        assert not torch.equal(out, ref)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() <= 127


@pytest.fixture(params=["paired", "unpaired"])
def pairing(request, monkeypatch):
    """Int8Linear with its rows paired for the kernel (weights of at most pair_max_in columns), and without."""
    monkeypatch.setattr(Int8Linear, "pair_max_in", 4096 if request.param == "paired" else 0)
    return request.param


def test_a_row_does_not_depend_on_its_batch(pairing):
    """Decoding steps run the int8 kernel whatever the number of rows (the path follows the phase, not the rows),
    and a row's result is bit-identical alone or in a batch of 64. Outside them the layer is a dense matmul on its
    dequantised weights, exactly as an nn.Linear holding them (whose BLAS kernels differ from 1 to many rows in the
    last float32 bits, as for every unquantized layer)."""
    torch.manual_seed(1)
    q = Int8Linear(nn.Linear(128, 64, bias=False))
    assert q.paired == (pairing == "paired")
    x = torch.randn(64, 128)
    with decoding_steps():
        assert torch.equal(q(x[:1]), q(x)[:1]) and torch.equal(q(x[3:4]), q(x[:8])[3:4])
        kernel = q(x)
    dense = q(x)
    assert torch.equal(dense, F.linear(x, q.dequantized(torch.float32)))
    assert not torch.equal(dense, kernel)  # two paths: bf16 activations in the kernel, float32 here


def test_paired_rows_give_the_unpaired_result_up_to_one_bf16_rounding(monkeypatch):
    torch.manual_seed(2)
    linear = nn.Linear(256, 96)
    paired = Int8Linear(linear)
    monkeypatch.setattr(Int8Linear, "pair_max_in", 0)
    unpaired = Int8Linear(linear)
    assert paired.paired and not unpaired.paired
    assert torch.equal(paired.weight_int8, unpaired.weight_int8) and torch.equal(paired.scale, unpaired.scale)
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    with decoding_steps():
        a, b = paired(x).float(), unpaired(x).float()
    product = x.float() @ unpaired.dequantized(torch.float32).t()  # before the bias, where the kernels round
    ref = product + linear.bias.detach()
    # bf16 roundings: the kernels' (of the product), the paired path's extra one, the bias additions (of the sum)
    assert ((a - b).abs() <= 2.0 ** -7 * (product.abs() + ref.abs()) + 1e-6).all()
    # every even and odd output comes from its own weight row (a swap of the pair would be off by O(1)); the
    # kernel's bf16 scales and activations are within the 1 % of the float-layer test above
    assert ((a - ref).abs() <= 0.01 * ref.abs() + 2.0 ** -7 * product.abs() + 1e-3).all()


def test_quantizing_while_loading_equals_quantizing_the_loaded_model():
    """load_release(prepare=quantize_decoding): every int8 layer quantizes its weight as it is read, and the model is
    the one quantized after a float load, buffer for buffer, report for report."""
    import functools

    from unix_cxr.checkpoint.release import load_release
    from unix_cxr.infer.pipeline import demo_model_path
    from unix_cxr.infer.report import ReportGenerator

    folder = demo_model_path()
    after = quantize_decoding(load_release(folder, dtype=torch.float32, with_generation=False).model, "int8")
    while_loading = load_release(folder, dtype=torch.float32, with_generation=False,
                                 prepare=functools.partial(quantize_decoding, mode="int8")).model
    assert isinstance(while_loading.lm_head, Int8Linear)
    assert isinstance(while_loading.decoder.embed_tokens, Int8Embedding)
    a, b = after.state_dict(), while_loading.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert all(torch.equal(m.kernel_scale, n.kernel_scale) for m, n in zip(
        (m for m in after.modules() if isinstance(m, Int8Linear)),
        (m for m in while_loading.modules() if isinstance(m, Int8Linear)), strict=True))
    pixels = torch.rand(2, 3, after.cfg.vision.image_size, after.cfg.vision.image_size)
    prompt = [[5, 6, 7]] * 2
    assert (ReportGenerator(after).generate(pixels, prompt, max_new_tokens=12).token_ids
            == ReportGenerator(while_loading).generate(pixels, prompt, max_new_tokens=12).token_ids)


def test_int8_embedding_rows_are_the_float_rows_within_half_a_step():
    torch.manual_seed(0)
    table = nn.Embedding(50, 24)
    q = Int8Embedding(table)
    ids = torch.tensor([[0, 7, 49], [7, 7, 3]])
    rows, ref = q(ids), table(ids)
    assert rows.shape == ref.shape and rows.dtype == torch.float32
    assert (rows - ref).abs().le(q.scale[ids, None] / 2 + 1e-7).all() and not torch.equal(rows, ref)
    assert q.weight_int8.dtype == torch.int8
    assert q.to(torch.bfloat16)(ids).dtype == torch.bfloat16  # the rows follow the model's dtype


def test_tied_embeddings_are_quantized_once_as_lm_head():
    from dataclasses import replace

    cfg = load_config("tiny")
    cfg.decoder = replace(cfg.decoder, tie_word_embeddings=True)
    model = quantize_decoding(UniX(cfg.validate()).eval(), "int8")
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.decoder.embed_tokens, nn.Embedding)


def test_only_what_decoding_streams_is_quantized():
    model = UniX(load_config("tiny")).eval()
    gen_before = {k: v.clone() for k, v in model.state_dict().items() if ".gen." in k}
    quantize_decoding(model, "int8")
    quantized = {name for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    layers = len(model.decoder.layers)
    assert "lm_head" in quantized and len(quantized) == 7 * layers + 1
    assert all(name == "lm_head" or ".und." in name for name in quantized)
    assert not any(isinstance(m, Int8Linear) for m in model.vision.modules())
    assert isinstance(model.decoder.embed_tokens, Int8Embedding)
    assert model.dtype == torch.float32  # read off the norms, not the int8 table
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in gen_before.items())  # the generation expert is untouched
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_decoding(model, "int2")


def test_int8_greedy_reports_are_batch_invariant_and_name_the_findings():
    from pathlib import Path

    assets = Path(__import__("unix_cxr").__file__).parent / "assets" / "demo"
    one = UniXPipeline.from_pretrained("demo", batch_size=1, quantize="int8")
    eight = UniXPipeline.from_pretrained("demo", batch_size=8, quantize="int8")
    noise = [torch.rand(64, 64, generator=torch.Generator().manual_seed(seed)).numpy() for seed in range(4)]
    # noise of seed 2 is one the old rule (the kernel for calls of <= 32 rows) got wrong: 5 x 18 image rows
    images = [assets / "phantom.png"] * 3 + [noise[0]] * 2 + noise[1:]
    assert [r.text for r in one.report(images)] == [r.text for r in eight.report(images)]
    assert "cardiomegaly" in one.report([assets / "phantom.png"])[0].text.lower()
    assert isinstance(one.model.lm_head, Int8Linear)
    assert not isinstance(one.model.decoder.layers[0].gen.q_proj, Int8Linear)


@needs_parity
@pytest.mark.parametrize(("mode", "tolerance"), [("int8", 0.015), pytest.param("int4", 0.1, marks=pytest.mark.skipif(
    not int4_available(), reason="no CPU int4 kernel layout we read"))])
def test_quantized_logits_on_the_parity_goldens_model_stay_within_the_stated_tolerance(mode, tolerance):
    """The authors' understanding golden (case 3): with int8 decoding weights every decoding step's logits stay
    within 0.015 of the golden ones (measured 0.0060, about 1 % of the largest logit; fp32 is within 2e-7), with
    int4 (groups of 128 where the widths allow, the rest int8) within 0.1 (measured 0.061, about 11 %), and the
    greedy tokens are the golden ones."""
    from unix_cxr.eval.parity import GoldenDir, _read_case, build_model
    from unix_cxr.infer.report import ReportGenerator

    golden = GoldenDir.open(PARITY)
    t = _read_case(golden.root / "case3_understanding.safetensors")
    model = quantize_decoding(build_model(golden), mode)
    assert any(isinstance(m, Int4Linear) for m in model.modules()) == (mode == "int4")
    engine = ReportGenerator(model)
    steps = t["output/step_logits"].shape[0]
    with torch.inference_mode():
        state = engine.prefill(t["input/pixel_values"], [t["layout/text_block_token_ids"].tolist()], steps)
        out = engine.decode(state, steps, keep_logits=True)
    logits = torch.stack([s[0] for s in out.step_logits])
    assert (logits - t["output/step_logits"][: logits.shape[0]]).abs().max() <= tolerance
    golden_ids = t["output/generated_tokens"].tolist()
    assert [golden.cfg.tokens.bos, *out.token_ids[0]][: len(golden_ids)] == golden_ids
