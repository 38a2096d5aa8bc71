"""Weight-only int4 decoding (`--quantize int4`, `unix_cxr.infer.quantize.Int4Linear`): the 4-bit codes and their
unpacking against the kernel's own products, rows independent of their batch, which layers take int4 and which
stay int8, quantizing while loading, and the demo model's and the parity model's outputs under int4."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unix_cxr.config import load_config
from unix_cxr.infer.pipeline import UniXPipeline
from unix_cxr.infer.quantize import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    decoding_steps,
    int4_available,
    int4_block_rows,
    quantize_decoding,
)
from unix_cxr.model.unix import UniX

pytestmark = pytest.mark.skipif(not int4_available(), reason="this torch build has no CPU int4 kernel layout we read")


@pytest.mark.parametrize("shape", [(128, 256), (384, 128), (64, 96)], ids=["g128", "K=128", "g32"])
def test_int4_codes_are_within_half_a_step_and_the_kernel_multiplies_what_the_layer_unpacks(shape):
    """Every dequantised weight lies within half a quantization step (scale / 2) of the float weight, so the
    codes and `dequantized`'s reading of the kernel's packed layout are right; the kernel's product (decoding
    steps) equals a float32 product with those unpacked weights to bf16 rounding, which a wrong row order in the
    unpacking would break by far."""
    torch.manual_seed(0)
    n, k = shape
    linear = nn.Linear(k, n).requires_grad_(False)
    group = Int4Linear.fits(linear)
    assert group == max(g for g in (32, 64, 128) if k % g == 0)
    q = Int4Linear(linear, group)
    w = q.dequantized(torch.float32)
    scale = q.scales_zeros.view(torch.bfloat16)[..., 0].float().transpose(0, 1).repeat_interleave(group, 1)  # (n, k)
    assert (w - linear.weight).abs().le(scale / 2 + 1e-6).all()
    assert not torch.equal(w, linear.weight)
    x = torch.randn(5, k)
    assert torch.equal(q(x), F.linear(x, w) + linear.bias)  # outside decoding: a dense matmul on the unpacked w
    with decoding_steps():
        kernel = q(x.bfloat16()).float()
    ref = F.linear(x.bfloat16().float(), w) + linear.bias
    torch.testing.assert_close(kernel, ref, rtol=0, atol=0.01 * float(ref.abs().max()))
    shuffled = F.linear(x.bfloat16().float(), w.roll(1, 0)) + linear.bias
    assert (kernel - shuffled).abs().max() > 0.1 * float(ref.abs().max())


def test_int4_layers_survive_a_dtype_cast_and_refuse_a_state_packed_for_another_layout():
    """model.to(dtype) leaves the bf16 scales and zeros as they are (held as int16 bits); a state whose packed
    layout has another block size (another CPU build) is a clear error, not misread weights."""
    torch.manual_seed(2)
    q = Int4Linear(nn.Linear(128, 128), 128)
    x = torch.randn(2, 128).bfloat16()
    with decoding_steps():
        before = q(x)
        q.to(torch.float32)
        assert torch.equal(q(x), before)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    fresh = Int4Linear(nn.Linear(128, 128), 128)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weight_int4, q.weight_int4)
    state["block_rows"] = torch.tensor(96 - int4_block_rows())  # 32 <-> 64
    with pytest.raises(ValueError, match=r"packed for .*-row blocks"):
        fresh.load_state_dict(state)


def test_int4_is_refused_on_another_device_before_anything_loads():
    with pytest.raises(ValueError, match=r"int4.*CPU only"):
        UniXPipeline.from_pretrained("demo", device="cuda", quantize="int4")


def test_an_int4_row_does_not_depend_on_its_batch():
    torch.manual_seed(1)
    q = Int4Linear(nn.Linear(256, 192, bias=False), 128)
    x = torch.randn(64, 256).bfloat16()
    with decoding_steps():
        full = q(x)
        assert torch.equal(q(x[:1]), full[:1]) and torch.equal(q(x[3:4]), q(x[:8])[3:4])
        assert torch.equal(q(x[5:9]), full[5:9])


def test_int4_takes_the_layers_that_fit_and_leaves_the_rest_int8():
    """The tiny config's k/v projections (32 outputs) and lm_head (324) are not whole blocks of the kernel's
    layout: they stay int8, logged; the others are int4; embeddings int8; the generation expert untouched."""
    model = UniX(load_config("tiny")).eval()
    gen_before = {k: v.clone() for k, v in model.state_dict().items() if ".gen." in k}
    quantize_decoding(model, "int4")
    und = model.decoder.layers[0].und
    assert all(isinstance(m, Int4Linear) for m in (und.q_proj, und.o_proj, und.mlp.gate_proj, und.mlp.up_proj,
                                                   und.mlp.down_proj))
    assert isinstance(und.k_proj, Int8Linear) and isinstance(und.v_proj, Int8Linear)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.decoder.embed_tokens, Int8Embedding)
    assert not any(isinstance(m, Int4Linear | Int8Linear) for m in model.decoder.layers[0].gen.modules())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in gen_before.items())


def test_int4_quantizing_while_loading_equals_quantizing_the_loaded_model():
    from unix_cxr.checkpoint.release import load_release
    from unix_cxr.infer.pipeline import demo_model_path
    from unix_cxr.infer.report import ReportGenerator

    folder = demo_model_path()
    after = quantize_decoding(load_release(folder, dtype=torch.float32, with_generation=False).model, "int4")
    while_loading = load_release(folder, dtype=torch.float32, with_generation=False,
                                 prepare=functools.partial(quantize_decoding, mode="int4")).model
    assert isinstance(while_loading.lm_head, Int4Linear)  # the phantom model's shapes all fit
    a, b = after.state_dict(), while_loading.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    pixels = torch.rand(2, 3, after.cfg.vision.image_size, after.cfg.vision.image_size)
    prompt = [[5, 6, 7]] * 2
    assert (ReportGenerator(after).generate(pixels, prompt, max_new_tokens=12).token_ids
            == ReportGenerator(while_loading).generate(pixels, prompt, max_new_tokens=12).token_ids)


def test_int4_greedy_reports_are_batch_invariant_and_name_the_findings():
    from pathlib import Path

    assets = Path(__import__("unix_cxr").__file__).parent / "assets" / "demo"
    one = UniXPipeline.from_pretrained("demo", batch_size=1, quantize="int4")
    eight = UniXPipeline.from_pretrained("demo", batch_size=8, quantize="int4")
    noise = [torch.rand(64, 64, generator=torch.Generator().manual_seed(seed)).numpy() for seed in range(3)]
    images = [assets / "phantom.png"] * 3 + noise
    assert [r.text for r in one.report(images)] == [r.text for r in eight.report(images)]
    assert "cardiomegaly" in one.report([assets / "phantom.png"])[0].text.lower()
    assert isinstance(one.model.decoder.layers[0].und.mlp.down_proj, Int4Linear)
