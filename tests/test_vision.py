"""Tests of the vision tower + connector (unix_cxr.model.vision) and its key maps (unix_cxr.checkpoint.vision_keys).

Parity case 2 of ../shared/parity (the authors' Janus timm SigLIP + connector at a tiny random config),
key-map round trips, input validation, full-size parameter counts (meta device) and the connector activation.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PARITY, needs_parity

from unix_cxr.checkpoint.vision_keys import (
    connector_from_authors,
    connector_to_authors,
    tower_from_authors,
    tower_to_authors,
)
from unix_cxr.config import VisionConfig
from unix_cxr.model.vision import VisionEncoder, normalize_grey, normalize_pixels

log = logging.getLogger(__name__)

TOWER_PREFIX = "vit_model.vision_tower."
CONNECTOR_PREFIX = "connector."
ATOL, RTOL = 1e-5, 1e-4

def golden_config(connector_act: str = "gelu_pytorch_tanh") -> VisionConfig:
    """Case 2 of the goldens: image 32, patch 8, width 32, 2 layers, 2 heads, MLP 128 (LLM hidden 64)."""
    return VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=128, num_layers=2,
                        num_heads=2, connector_act=connector_act)


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def authors_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    sd = load_file(str(PARITY / "model.safetensors"))
    return _strip(sd, TOWER_PREFIX), _strip(sd, CONNECTOR_PREFIX)


@pytest.fixture(scope="module")
def case2() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(PARITY / "case2_vit.safetensors"))


def _load_golden_encoder(authors_tensors, connector_act: str = "gelu_pytorch_tanh") -> VisionEncoder:
    tower_sd, connector_sd = authors_tensors
    model = VisionEncoder(golden_config(connector_act), llm_hidden_size=64).eval()
    res = model.tower.load_state_dict(tower_from_authors(tower_sd), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    res = model.connector.load_state_dict(connector_from_authors(connector_sd), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    return model


def _close(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item()
    log.info("%s: max |diff| %.3e", name, err)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


# ---- (a) parity case 2 -------------------------------------------------------------------------------------
@needs_parity
def test_case2_parity(authors_tensors, case2) -> None:
    model = _load_golden_encoder(authors_tensors)
    tower = model.tower
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output) -> None:
            seen[name] = output[0] if isinstance(output, tuple) else output
        return hook

    hooks = [
        tower.embeddings.patch_embedding.register_forward_hook(keep("patch_conv")),
        tower.embeddings.register_forward_hook(keep("pos_embed_added")),
        tower.encoder.layers[0].register_forward_hook(keep("block0_out")),
        tower.encoder.layers[1].register_forward_hook(keep("block1_out")),
    ]
    try:
        with torch.no_grad():
            feats = model.features(case2["input/pixel_values"])
            tokens = model(case2["input/pixel_values"])
    finally:
        for h in hooks:
            h.remove()

    _close("debug/patch_embed", seen["patch_conv"].flatten(2).transpose(1, 2), case2["debug/patch_embed"])
    _close("debug/pos_embed_added", seen["pos_embed_added"], case2["debug/pos_embed_added"])
    _close("debug/block0_out", seen["block0_out"], case2["debug/block0_out"])
    _close("debug/block1_out", seen["block1_out"], case2["debug/block1_out"])
    _close("output/vit_features", feats, case2["output/vit_features"])
    _close("output/vision_tokens", tokens, case2["output/vision_tokens"])


@needs_parity
def test_case2_normalize_pixels(case2) -> None:
    image = case2["input/image_uint8_hwc"]
    ours = normalize_pixels(image)
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, 32, 32)
    _close("input/pixel_values", ours, case2["input/pixel_values"])
    # same result from numpy, channels-first uint8 and float [0, 1] input
    _close("numpy hwc", normalize_pixels(image.numpy()), ours)
    _close("uint8 chw", normalize_pixels(image.permute(2, 0, 1)[None]), ours)
    _close("float01 hwc", normalize_pixels(image.float() / 255), ours)


def test_normalize_grey_equals_three_channel_normalisation() -> None:
    """normalize_grey computes one channel and copies it; the result is normalize_pixels' to the bit."""
    grey = torch.randint(0, 256, (5, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = VisionConfig(pixel_mean=0.4, pixel_std=0.3)
    ours = normalize_grey(grey, cfg)
    assert ours.shape == (5, 3, 17, 23) and ours.is_contiguous()
    assert torch.equal(ours, normalize_pixels(grey[:, None].expand(-1, 3, -1, -1), cfg))
    assert torch.equal(normalize_grey(grey[0].numpy(), cfg), normalize_pixels(grey[0].numpy()[None].repeat(3, 0), cfg))
    read_only = grey[1].numpy().copy()
    read_only.flags.writeable = False  # as np.asarray of a PIL image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a tensor that shares a read-only array
        assert torch.equal(normalize_grey(read_only, cfg), ours[1:2])
    with pytest.raises(ValueError, match="uint8"):
        normalize_grey(grey.float(), cfg)


@needs_parity
def test_head_matches_timm_attention_pool(authors_tensors) -> None:
    """The mapped HF head computes timm AttentionPoolLatent (the forward never calls it; this checks the map)."""
    model = _load_golden_encoder(authors_tensors)
    a = authors_tensors[0]
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    b, n, d = x.shape
    heads, hd = 2, d // 2
    q = F.linear(a["attn_pool.latent"].expand(b, -1, -1), a["attn_pool.q.weight"], a["attn_pool.q.bias"])
    q = q.reshape(b, 1, heads, hd).transpose(1, 2)
    kv = F.linear(x, a["attn_pool.kv.weight"], a["attn_pool.kv.bias"]).reshape(b, n, 2, heads, hd)
    k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, d)
    y = F.linear(y, a["attn_pool.proj.weight"], a["attn_pool.proj.bias"])
    z = F.layer_norm(y, (d,), a["attn_pool.norm.weight"], a["attn_pool.norm.bias"], eps=1e-6)
    z = F.linear(F.gelu(F.linear(z, a["attn_pool.mlp.fc1.weight"], a["attn_pool.mlp.fc1.bias"])),
                 a["attn_pool.mlp.fc2.weight"], a["attn_pool.mlp.fc2.bias"])
    timm_out = (y + z)[:, 0]
    with torch.no_grad():
        _close("attn_pool vs head", model.tower.head(x), timm_out)


# ---- (b) key maps ------------------------------------------------------------------------------------------
@needs_parity
def test_key_round_trip_golden(authors_tensors) -> None:
    tower_sd, connector_sd = authors_tensors
    ours = tower_from_authors(tower_sd)
    assert "embeddings.position_embedding.weight" in ours and ours["embeddings.position_embedding.weight"].shape == (
        16, 32)
    assert "encoder.layers.1.self_attn.v_proj.bias" in ours and "head.attention.in_proj_weight" in ours
    back = tower_to_authors(ours)
    assert back.keys() == tower_sd.keys()
    for k, v in tower_sd.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    cback = connector_to_authors(connector_from_authors(connector_sd))
    assert cback.keys() == connector_sd.keys()
    assert all(torch.equal(cback[k], v) for k, v in connector_sd.items())


def test_key_round_trip_ours() -> None:
    """ours -> authors -> ours is exact too, and covers every tensor of a freshly built module."""
    model = VisionEncoder(golden_config(), llm_hidden_size=64)
    for module, to_a, from_a in ((model.tower, tower_to_authors, tower_from_authors),
                                 (model.connector, connector_to_authors, connector_from_authors)):
        sd = module.state_dict()
        back = from_a(to_a(sd))
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], v) for k, v in sd.items())
    # the non-persistent position_ids buffer is not a checkpoint key
    assert "embeddings.position_ids" not in tower_to_authors({**model.tower.state_dict(),
                                                              "embeddings.position_ids": torch.arange(16)[None]})


def test_key_map_errors() -> None:
    w = torch.zeros(96, 32)
    with pytest.raises(ValueError, match=r"unknown keys.*blocks\.0\.attn\.qkv\.wieght"):
        tower_from_authors({"blocks.0.attn.qkv.wieght": w, "cls_token": torch.zeros(1, 1, 32)})
    with pytest.raises(ValueError, match=r"missing.*attn_pool\.kv\.weight"):
        tower_from_authors({"attn_pool.q.weight": torch.zeros(32, 32)})
    with pytest.raises(ValueError, match=r"unknown keys.*layers\.1\.weight"):
        connector_from_authors({"layers.1.weight": w})
    with pytest.raises(ValueError, match="leading dim of size 1"):
        tower_from_authors({"pos_embed": torch.zeros(16, 32)})


# ---- (c) input validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 1, 32, 32), torch.float32, "expects 3x32x32 images, got 1x32x32"),
        ((2, 3, 64, 64), torch.float32, "expects 3x32x32 images, got 3x64x64"),
        ((1, 3, 32, 24), torch.float32, "expects 3x32x32 images, got 3x32x24"),
        ((3, 32, 32), torch.float32, r"4-D .* got shape \(3, 32, 32\)"),
        ((1, 3, 32, 32), torch.uint8, "float pixel values"),
    ],
)
def test_bad_input(shape: tuple[int, ...], dtype: torch.dtype, message: str) -> None:
    model = VisionEncoder(golden_config(), llm_hidden_size=64)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape, dtype=dtype))


def test_normalize_pixels_errors() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        normalize_pixels(torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="3 channels"):
        normalize_pixels(np.zeros((1, 4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="ambiguous"):
        normalize_pixels(np.zeros((1, 3, 4, 3), dtype=np.uint8))


def test_shapes_and_batch() -> None:
    torch.manual_seed(0)
    model = VisionEncoder(golden_config(), llm_hidden_size=64).eval()
    x = normalize_pixels(torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8))
    with torch.no_grad():
        tokens, feats = model(x), model.features(x)
        single = model(x[1:2])
    assert tokens.shape == (3, model.num_patches, 64) and feats.shape == (3, 16, 32)
    torch.testing.assert_close(single, tokens[1:2], atol=1e-6, rtol=1e-5)


# ---- (d) full-size parameter counts ------------------------------------------------------------------------
def test_full_size_parameter_counts() -> None:
    with torch.device("meta"):
        model = VisionEncoder(VisionConfig(), llm_hidden_size=2048)
    params = dict(model.tower.named_parameters())
    used = sum(p.numel() for n, p in params.items() if not n.startswith("head."))
    head = sum(p.numel() for n, p in params.items() if n.startswith("head."))
    assert used == 303_688_704
    assert head == 12_595_200  # == timm AttentionPoolLatent in the checkpoint
    assert sum(p.numel() for p in model.connector.parameters()) == 6_295_552
    assert model.num_patches == 576
    assert model.tower.config._attn_implementation == "sdpa"


# ---- (e) connector activation ------------------------------------------------------------------------------
def test_connector_activation_variants() -> None:
    torch.manual_seed(0)
    tanh = VisionEncoder(golden_config("gelu_pytorch_tanh"), llm_hidden_size=64).eval()
    erf = VisionEncoder(golden_config("gelu"), llm_hidden_size=64).eval()
    erf.load_state_dict(tanh.state_dict(), strict=True)
    feats = torch.randn(2, 16, 32) * 3
    with torch.no_grad():
        a, b = tanh.connector(feats), erf.connector(feats)
    diff = (a - b).abs().max().item()
    log.info("connector gelu vs gelu_pytorch_tanh: max |diff| %.3e", diff)
    assert 0 < diff < 1e-2 * a.abs().max().item()
    with pytest.raises(ValueError, match="connector_act"):
        VisionEncoder(golden_config("relu"), llm_hidden_size=64)
