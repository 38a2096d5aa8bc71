"""The upcast mode (`infer.upcast`): bf16-held weights computed in float32, the same numbers as a float32 model
whose weights are those bf16 values; decoding batch-invariant; loaded through the one policy
(`infer.loading.load_for_inference`) on a CPU without native bf16.

Run: pytest tests/test_upcast.py
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize
from safetensors.torch import load_file, save_file
from torch import nn

from unix_cxr.config import load_config
from unix_cxr.data.packing import Latent, Text, VitImage, pack
from unix_cxr.infer.image import ImageGenerator
from unix_cxr.infer.quantize import Int8Linear, decoding_steps
from unix_cxr.infer.report import ReportGenerator
from unix_cxr.infer.upcast import UpcastEmbedding, UpcastLinear, upcast_weights
from unix_cxr.model.unix import UniX
from unix_cxr.train.objectives import training_forward
from unix_cxr.utils import dtype_policy as policy


def bf16_rounded(model: UniX, like: UniX) -> UniX:
    """`model` with each weight that `like` holds in bf16 rounded to bf16 (kept in float32)."""
    held = {name for name, p in like.named_parameters(remove_duplicate=False) if p.dtype == torch.bfloat16}
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            if name in held:
                p.copy_(p.bfloat16().float())
    return model


def test_an_upcast_layer_computes_the_bf16_weight_in_float32():
    torch.manual_seed(0)
    layer = nn.Linear(48, 1100)  # more outputs than one dense block of 512
    up = UpcastLinear(layer)
    assert isinstance(up, nn.Linear) and up.weight.dtype == torch.bfloat16 and up.bias.dtype == torch.float32
    x = torch.randn(3, 5, 48)
    ref = F.linear(x, layer.weight.bfloat16().float(), layer.bias)
    out = up(x)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 1100)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, layer(x), rtol=0, atol=1e-7)  # the weight is the bf16 one, not the original
    with decoding_steps():  # rows rounded to bf16, bf16 products, float32 out: the bf16 model's decoding numbers
        step = up(x[0, :1])
    torch.testing.assert_close(step, (F.linear(x[0, :1].bfloat16(), up.weight).float() + layer.bias), rtol=0,
                               atol=0)


def test_a_decoding_row_does_not_depend_on_its_batch():
    torch.manual_seed(1)
    up = UpcastLinear(nn.Linear(64, 96))
    rows = torch.randn(8, 64)
    with decoding_steps():
        batch = up(rows)
        alone = torch.cat([up(rows[i:i + 1]) for i in range(8)])
    assert torch.equal(batch, alone)


def test_an_upcast_embedding_returns_float32_rows_of_the_bf16_table():
    table = nn.Embedding(30, 12)
    up = UpcastEmbedding(table)
    ids = torch.tensor([[0, 29], [3, 3]])
    assert up.weight.dtype == torch.bfloat16
    assert torch.equal(up(ids), table.weight.detach().bfloat16().float()[ids])


def test_upcast_weights_swaps_the_large_weights_and_keeps_the_model_float32(caplog):
    model = randomize(UniX(load_config("tiny"))).eval()
    with caplog.at_level(logging.INFO, logger="unix_cxr"):
        upcast_weights(model)
    up = {name for name, m in model.named_modules() if isinstance(m, UpcastLinear)}
    layers, vit_layers = len(model.decoder.layers), len(model.vision.tower.encoder.layers)
    assert len(up) == 2 * 7 * layers + 6 * vit_layers + 1 and "lm_head" in up
    assert {n.split(".")[3] for n in up if n.startswith("decoder.layers.")} == {"und", "gen"}
    assert isinstance(model.decoder.embed_tokens, UpcastEmbedding)
    small = [model.vision.connector.fc1, model.vae2llm, model.llm2vae, model.time_embedder.mlp[0]]
    assert all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in small)
    assert model.dtype == torch.float32 and model.decoder.norm.weight.dtype == torch.float32
    assert any("upcast on the fly" in r.getMessage() for r in caplog.records)


def test_a_tied_lm_head_keeps_sharing_the_table():
    from dataclasses import replace

    cfg = load_config("tiny")
    cfg.decoder = replace(cfg.decoder, tie_word_embeddings=True)
    model = upcast_weights(UniX(cfg.validate()).eval())
    assert model.lm_head.weight is model.decoder.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.bfloat16


def mixed_batch(cfg):
    gen = torch.Generator().manual_seed(0)
    s = cfg.vision.image_size
    und = [VitImage(torch.randn(3, s, s, generator=gen)), Text([5, 6, 7]), Text([8, 9, 10, 11], loss=True)]
    t2i = [Text([12, 13]), Latent(torch.randn(16, 4, 4, generator=gen))]
    return pack([und, t2i], cfg)


def test_the_upcast_model_is_the_float32_model_of_its_bf16_weights():
    """Losses, images and decoding of the upcast model against a float32 model holding the same bf16 values:
    equal to float32 rounding outside decoding steps; decoding steps round the rows to bf16, so their logits
    agree to that rounding and the greedy tokens are the same."""
    cfg = load_config("tiny")
    up = upcast_weights(randomize(UniX(cfg)).eval())
    ref = bf16_rounded(randomize(UniX(cfg)).eval(), up)
    batch = mixed_batch(cfg)
    noise, t = torch.randn(16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.4])
    with torch.no_grad():
        a, b = (training_forward(m, batch, noise=noise, timesteps=t) for m in (up, ref))
    torch.testing.assert_close(a.ce, b.ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.mse, b.mse, rtol=1e-5, atol=1e-6)
    g = lambda: torch.Generator().manual_seed(3)
    torch.testing.assert_close(ImageGenerator(up).sample([[5, 6]], 64, 64, generator=g()),
                               ImageGenerator(ref).sample([[5, 6]], 64, 64, generator=g()), rtol=1e-4, atol=1e-5)
    s = cfg.vision.image_size
    pixels = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(2))
    eng_up, eng_ref = ReportGenerator(up), ReportGenerator(ref)
    blocks = [eng_up.prompt_block([5, 6, 7]), eng_up.prompt_block([9])]
    out = eng_up.decode(eng_up.prefill(pixels, blocks, 8), 8, keep_logits=True)
    want = eng_ref.decode(eng_ref.prefill(pixels, blocks, 8), 8, keep_logits=True)
    assert out.token_ids == want.token_ids
    scale = max(float(s.abs().max()) for s in want.step_logits)
    for x, y in zip(out.step_logits, want.step_logits, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0.02 * scale)


@pytest.fixture
def avx2_cpu(monkeypatch):
    monkeypatch.setattr(policy, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(policy.platform, "machine", lambda: "x86_64")


@pytest.fixture(scope="module")
def bf16_demo(tmp_path_factory):
    """The demo release with its model.safetensors stored in bf16 (as the released weights are)."""
    import shutil

    from unix_cxr.infer.pipeline import demo_model_path

    folder = tmp_path_factory.mktemp("bf16") / "demo"
    shutil.copytree(demo_model_path(), folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in weights.items()},
              folder / "model.safetensors")
    return folder


def test_an_avx2_cpu_runs_quantized_bf16_weights_upcast_and_batch_invariant(avx2_cpu, bf16_demo, caplog):
    from pathlib import Path

    from unix_cxr.infer.pipeline import UniXPipeline

    with caplog.at_level(logging.INFO, logger="unix_cxr"):
        one = UniXPipeline.from_pretrained(bf16_demo, batch_size=1, quantize="int8")
    assert any("float32 compute, bfloat16 weights upcast on the fly" in r.getMessage() for r in caplog.records)
    model = one.model
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.decoder.layers[0].gen.q_proj, UpcastLinear)
    assert model.dtype == torch.float32
    eight = UniXPipeline.from_pretrained(bf16_demo, batch_size=8, quantize="int8")
    assets = Path(__import__("unix_cxr").__file__).parent / "assets" / "demo"
    noise = [torch.rand(64, 64, generator=torch.Generator().manual_seed(seed)).numpy() for seed in range(3)]
    images = [assets / "phantom.png"] * 2 + noise
    texts = [r.text for r in one.report(images)]
    assert texts == [r.text for r in eight.report(images)]
    assert "cardiomegaly" in texts[0].lower()


def test_float32_weights_stay_float32_while_they_fit_in_half_the_memory(avx2_cpu, bf16_demo, monkeypatch):
    from unix_cxr.infer.loading import load_for_inference

    numel = sum(v.numel() for v in load_file(bf16_demo / "model.safetensors").values() if v.is_floating_point())
    monkeypatch.setattr(policy, "available_memory", lambda: 8 * numel + 8)
    roomy = load_for_inference(bf16_demo, with_generation=False).model
    assert {p.dtype for p in roomy.parameters()} == {torch.float32}
    monkeypatch.setattr(policy, "available_memory", lambda: 8 * numel - 8)
    tight = load_for_inference(bf16_demo, with_generation=False).model
    assert isinstance(tight.lm_head, UpcastLinear) and tight.dtype == torch.float32
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(tight.embed_text(ids), roomy.embed_text(ids))  # the same bf16 values, held differently
    held = roomy.state_dict()
    assert all(torch.equal(v.float(), held[k].float()) for k, v in tight.state_dict().items())
