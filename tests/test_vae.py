"""Tests of the kl-f16 VAE: golden parity (case 1), the ldm <-> diffusers key map, safe loading and input checks."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import PARITY, needs_parity
from safetensors.torch import load_file, save_file

from unix_cxr.checkpoint.vae import convert_pickled_vae, load_vae, save_vae, vae_from_state_dict
from unix_cxr.checkpoint.vae_keys import detect_layout, diffusers_to_ldm, ldm_to_diffusers
from unix_cxr.config import VAEConfig, vae_config_from_ldm_yaml
from unix_cxr.model.vae import LatentVAE, build_autoencoder

# small, downsample 16 like kl-f16; attention at level 1 only (resolution 128 -> diffusers up_blocks.3) and
# channel changes 32 -> 64 -> 32 (nin_shortcut / conv_shortcut)
TINY = VAEConfig(ch=32, ch_mult=(1, 1, 2, 1, 1), num_res_blocks=1, attn_resolutions=(128,), resolution=256,
                 z_channels=4, embed_dim=4)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def golden_vae() -> LatentVAE:
    return load_vae(PARITY / "vae.safetensors", cfg=vae_config_from_ldm_yaml(PARITY / "vae" / "config.yaml"))


@pytest.fixture(scope="module")
def case1() -> dict[str, torch.Tensor]:
    return load_file(str(PARITY / "case1_vae.safetensors"))


@pytest.fixture(scope="module")
def tiny_vae() -> LatentVAE:
    torch.manual_seed(0)
    return LatentVAE(TINY).eval()


# ---- (a) golden parity -----------------------------------------------------------------------------------------
@needs_parity
def test_case1_encode(golden_vae: LatentVAE, case1: dict[str, torch.Tensor]) -> None:
    image = case1["input/image"]
    with torch.no_grad():
        moments = golden_vae.moments(image)
        mean = golden_vae.encode(image)
        sampled = golden_vae.encode(image, sample=True, eps=case1["input/posterior_eps"])
    for name, got in (("moments", moments), ("latent_mean", mean), ("latent_sampled", sampled)):
        want = case1[f"output/{name}"]
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@needs_parity
def test_case1_decode(golden_vae: LatentVAE, case1: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        decoded = golden_vae.decode(case1["input/decode_latent"])
        decoded_01 = golden_vae.decode_to_01(case1["input/decode_latent"])
        roundtrip = golden_vae.decode(golden_vae.encode(case1["input/image"]))
    for name, got in (("decoded", decoded), ("decoded_01", decoded_01), ("decoded_roundtrip", roundtrip)):
        want = case1[f"output/{name}"]
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@needs_parity
def test_sampling_draws_from_generator(golden_vae: LatentVAE, case1: dict[str, torch.Tensor]) -> None:
    image = case1["input/image"]
    with torch.no_grad():
        a = golden_vae.encode(image, sample=True, generator=torch.Generator().manual_seed(1))
        b = golden_vae.encode(image, sample=True, generator=torch.Generator().manual_seed(1))
        c = golden_vae.encode(image, sample=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@needs_parity
def test_folder_loading_reads_config_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.yaml").write_text((PARITY / "vae" / "config.yaml").read_text())
    (folder / "kl-f16d16.safetensors").write_bytes((PARITY / "vae.safetensors").read_bytes())
    vae = load_vae(folder)
    assert vae.cfg.ch == 32 and vae.cfg.ch_mult == (1, 1, 1, 1, 2)


# ---- (b) key map ----------------------------------------------------------------------------------------------
@needs_parity
def test_key_map_round_trip_on_golden_file() -> None:
    cfg = vae_config_from_ldm_yaml(PARITY / "vae" / "config.yaml")
    ldm = load_file(str(PARITY / "vae.safetensors"))
    assert detect_layout(ldm) == "ldm"
    diff = ldm_to_diffusers(ldm, cfg)
    assert detect_layout(diff) == "diffusers"
    assert diff["decoder.up_blocks.0.attentions.1.to_out.0.weight"].shape == (64, 64)  # ldm up.4.attn.1.proj_out
    assert torch.equal(diff["decoder.up_blocks.4.resnets.0.conv1.weight"], ldm["decoder.up.0.block.0.conv1.weight"])
    assert torch.equal(diff["encoder.down_blocks.4.resnets.0.conv_shortcut.weight"],
                       ldm["encoder.down.4.block.0.nin_shortcut.weight"])
    back = diffusers_to_ldm(diff, cfg)
    assert set(back) == set(ldm)
    for key, value in ldm.items():
        assert back[key].shape == value.shape and torch.equal(back[key], value), key


def test_key_map_round_trip_on_random_diffusers_model(tiny_vae: LatentVAE) -> None:
    sd = tiny_vae.autoencoder.state_dict()
    assert any(".attentions." in k for k in sd if k.startswith("encoder.down_blocks"))
    assert any(".attentions." in k for k in sd if k.startswith("decoder.up_blocks"))
    ldm = diffusers_to_ldm(sd, TINY)
    assert ldm["encoder.down.1.attn.0.q.weight"].shape == (32, 32, 1, 1)
    assert torch.equal(ldm["decoder.up.1.attn.1.proj_out.weight"][:, :, 0, 0],
                       sd["decoder.up_blocks.3.attentions.1.to_out.0.weight"])
    assert torch.equal(ldm["decoder.up.1.block.0.nin_shortcut.weight"],
                       sd["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"])
    back = ldm_to_diffusers(ldm, TINY)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert back[key].shape == value.shape and torch.equal(back[key], value), key


def test_unmapped_keys_raise() -> None:
    sd = {"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3), "loss.logvar": torch.zeros(()),
          "encoder.down.9.block.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"loss\.logvar") as err:
        ldm_to_diffusers(sd, TINY)
    assert "encoder.down.9.block.0.conv1.weight" in str(err.value)  # level 9 does not exist with 2 levels


def _compvis_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of latent-diffusion's Encoder/Decoder/AutoencoderKL, following its constructors."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in), conv(f"{name}.conv1", c_out, c_in, 3)
        norm(f"{name}.norm2", c_out), conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_out, c_in, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{proj}", c, c, 1)

    levels = len(cfg.ch_mult)
    conv("encoder.conv_in", cfg.ch, cfg.in_channels, 3)
    res, in_mult = cfg.resolution, (1, *cfg.ch_mult)
    for i in range(levels):
        block_in, block_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in cfg.attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    for side in ("encoder", "decoder"):
        c = cfg.ch * cfg.ch_mult[-1]
        resnet(f"{side}.mid.block_1", c, c), attn(f"{side}.mid.attn_1", c), resnet(f"{side}.mid.block_2", c, c)
    norm("encoder.norm_out", block_in), conv("encoder.conv_out", 2 * cfg.z_channels, block_in, 3)
    block_in, res = cfg.ch * cfg.ch_mult[-1], cfg.resolution // 2 ** (levels - 1)
    conv("decoder.conv_in", block_in, cfg.z_channels, 3)
    for i in reversed(range(levels)):
        block_out = cfg.ch * cfg.ch_mult[i]
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in cfg.attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in), conv("decoder.conv_out", cfg.out_channels, block_in, 3)
    conv("quant_conv", 2 * cfg.embed_dim, 2 * cfg.z_channels, 1)
    conv("post_quant_conv", cfg.z_channels, cfg.embed_dim, 1)
    return shapes


@pytest.mark.parametrize("cfg", [VAEConfig(), TINY], ids=["kl-f16", "tiny"])
def test_layout_matches_compvis(cfg: VAEConfig) -> None:
    with torch.device("meta"):
        autoencoder = build_autoencoder(cfg)
    sd = autoencoder.state_dict()
    ldm = diffusers_to_ldm(sd, cfg)
    assert len(ldm) == len(sd)  # a bijection: no two diffusers keys collapse onto one ldm key
    assert {k: tuple(v.shape) for k, v in ldm.items()} == _compvis_shapes(cfg)
    n = sum(p.numel() for p in autoencoder.parameters())
    assert n == sum(v.numel() for v in ldm.values())
    if cfg == VAEConfig():
        assert n == 69_610_963
        assert 69e6 < n < 70.5e6


def test_embed_dim_must_equal_z_channels() -> None:
    with pytest.raises(ValueError, match="embed_dim"):
        build_autoencoder(dataclasses.replace(TINY, embed_dim=8))


# ---- (c) pickled checkpoints ---------------------------------------------------------------------------------
@needs_parity
def test_pickled_checkpoint_conversion(tmp_path: Path) -> None:
    ckpt = PARITY / "vae" / "kl-f16d16.ckpt"
    out = tmp_path / "kl-f16d16.safetensors"
    with pytest.raises(ValueError, match="trust"):
        convert_pickled_vae(ckpt, out, trust_pickle=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="convert-vae"):
        load_vae(ckpt)
    assert convert_pickled_vae(ckpt, out, trust_pickle=True) == out
    got, want = load_file(str(out)), load_file(str(PARITY / "vae.safetensors"))
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_pickle_conversion_drops_extras(tmp_path: Path, tiny_vae: LatentVAE) -> None:
    ldm = diffusers_to_ldm(tiny_vae.autoencoder.state_dict(), TINY)
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {**ldm, "loss.logvar": torch.zeros(())}, "epoch": 3, "lr": [1e-4]}, ckpt)
    out = tmp_path / "out.safetensors"
    convert_pickled_vae(ckpt, out, trust_pickle=True)
    got = load_file(str(out))
    assert set(got) == set(ldm)
    with pytest.raises(ValueError, match="convert-vae"):
        load_vae(ckpt, cfg=TINY)


def test_pickle_needing_a_full_unpickle_is_refused(tmp_path: Path, tiny_vae: LatentVAE) -> None:
    """--trust-pickle never falls back to torch.load(weights_only=False): an object outside the weights-only
    allow-list (here argparse.Namespace, as Lightning's hparams) is refused, naming the file and the object."""
    ldm = diffusers_to_ldm(tiny_vae.autoencoder.state_dict(), TINY)
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": ldm, "hparams": argparse.Namespace(lr=1.0)}, ckpt)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"weights_only=True.*argparse\.Namespace") as err:
        convert_pickled_vae(ckpt, out, trust_pickle=True)
    assert str(ckpt) in str(err.value) and "never unpickles" in str(err.value)
    assert out.read_bytes() == b"previous"


@needs_parity
def test_authors_ckpt_loads_weights_only() -> None:
    """The claim behind removing the fallback: the genuine kl-f16d16.ckpt loads with weights_only=True."""
    obj = torch.load(PARITY / "vae" / "kl-f16d16.ckpt", map_location="cpu", weights_only=True)
    assert set(obj) == {"state_dict"} and len(obj["state_dict"]) == 238


def test_non_finite_weights_are_refused_by_name(tmp_path: Path, tiny_vae: LatentVAE) -> None:
    ldm = diffusers_to_ldm(tiny_vae.autoencoder.state_dict(), TINY)
    key = "decoder.conv_out.weight"
    ldm[key] = ldm[key].clone()
    ldm[key].view(-1)[:3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    with pytest.raises(ValueError, match=rf"{path}: tensor {key} has 3 non-finite values"):
        load_vae(path, cfg=TINY)
    assert not torch.isfinite(load_vae(path, cfg=TINY, allow_non_finite=True).autoencoder.state_dict()[
        "decoder.conv_out.weight"]).all()
    with pytest.raises(ValueError, match=rf"VAE state dict: tensor {key} has 3 non-finite"):
        vae_from_state_dict(ldm, TINY)
    ckpt = tmp_path / "nan.ckpt"
    torch.save({"state_dict": ldm}, ckpt)
    with pytest.raises(ValueError, match=rf"{ckpt}: tensor {key} has 3 non-finite"):
        convert_pickled_vae(ckpt, tmp_path / "out.safetensors", trust_pickle=True)
    assert not (tmp_path / "out.safetensors").exists()
    convert_pickled_vae(ckpt, tmp_path / "out.safetensors", trust_pickle=True, allow_non_finite=True)


@pytest.mark.parametrize("content", ["random", "half", "lying_header"])
def test_unreadable_safetensors_names_the_file(tmp_path: Path, tiny_vae: LatentVAE, content: str) -> None:
    good = save_vae(tiny_vae, tmp_path / "good.safetensors")
    data = good.read_bytes()
    path = tmp_path / "bad.safetensors"
    if content == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif content == "half":
        path.write_bytes(data[: len(data) // 2])
    else:  # header intact, tensor data cut: the header claims more bytes than the file has
        header_len = int.from_bytes(data[:8], "little")
        path.write_bytes(data[: 8 + header_len + 16])
    with pytest.raises(ValueError, match=rf"{path}: not a readable \.safetensors file"):
        load_vae(path)


def test_save_and_load_both_layouts(tmp_path: Path, tiny_vae: LatentVAE) -> None:
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = tiny_vae(x)
    for layout in ("ldm", "diffusers"):
        path = save_vae(tiny_vae, tmp_path / f"{layout}.safetensors", layout=layout)
        assert detect_layout(load_file(str(path))) == layout
        loaded = load_vae(path)  # the config travels in the file's metadata
        assert loaded.cfg == TINY
        with torch.no_grad():
            assert torch.equal(loaded(x), want)


# ---- (d) bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, words", [
    ((1, 1, 32, 32), "channels"),
    ((1, 3, 40, 32), "not a multiple of the downsampling factor 16"),
    ((3, 32, 32), "4-D"),
])
def test_bad_images(tiny_vae: LatentVAE, shape: tuple[int, ...], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        tiny_vae.encode(torch.zeros(shape))


def test_bad_latents_and_dtype(tiny_vae: LatentVAE) -> None:
    with pytest.raises(ValueError, match="channels"):
        tiny_vae.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="4-D"):
        tiny_vae.decode(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="floating-point"):
        tiny_vae.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="eps has shape"):
        tiny_vae.encode(torch.zeros(1, 3, 32, 32), sample=True, eps=torch.zeros(1, 4, 1, 1))


# ---- (e) strict loading ----------------------------------------------------------------------------------------
def test_wrong_shape_names_key(tiny_vae: LatentVAE) -> None:
    ldm = diffusers_to_ldm(tiny_vae.autoencoder.state_dict(), TINY)
    ldm["encoder.down.2.block.0.nin_shortcut.weight"] = torch.zeros(64, 16, 1, 1)
    with pytest.raises(ValueError, match=r"encoder\.down\.2\.block\.0\.nin_shortcut\.weight: file \(64, 16, 1, 1\)"):
        vae_from_state_dict(ldm, TINY)


def test_missing_and_unexpected_keys(tmp_path: Path, tiny_vae: LatentVAE) -> None:
    sd = dict(tiny_vae.autoencoder.state_dict())
    del sd["decoder.conv_out.bias"]
    sd["encoder.down_blocks.0.resnets.1.conv1.weight"] = torch.zeros(32, 32, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError, match=r"1 missing key\(s\): decoder\.conv_out\.bias") as err:
        load_vae(path, cfg=TINY)
    assert "encoder.down_blocks.0.resnets.1.conv1.weight" in str(err.value)
