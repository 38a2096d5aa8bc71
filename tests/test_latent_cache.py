"""Latent cache (issue 3 item 4) and `unix-cxr data cache-latents`: equality with direct encoding, resume after an
interruption, failures recorded, and the loader's caption source reading the cache.

Run: pytest tests/test_latent_cache.py

Uses the tiny random VAE of `unix_cxr.config.tiny()` (saved and reloaded through safetensors) and small images the
tests write, encoded at 64 px (4 x 4 latents) except in the CLI test (256 px, the CLI's smallest size).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from unix_cxr.checkpoint.vae import load_vae, save_vae
from unix_cxr.cli import main
from unix_cxr.config import UniXConfig, load_config
from unix_cxr.data.latent_cache import (
    INDEX_NAME,
    LOGVAR_SUFFIX,
    LatentCache,
    cache_latents,
    items_from_folder,
    read_items,
)
from unix_cxr.data.loader import Group, PackedLoader, PackingConfig
from unix_cxr.data.sources import CaptionSource, SampleRandom, read_caption_jsonl
from unix_cxr.data.transforms import vae_transform
from unix_cxr.model.vae import LatentVAE

SIZE = 64
N_IMAGES = 7
CFG = load_config("tiny")


def tokenize(text: str) -> list[int]:
    return [zlib.crc32(w.encode()) % 290 for w in text.split()]


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_vae(LatentVAE(CFG.vae).eval(), tmp_path_factory.mktemp("vae") / "vae.safetensors")


@pytest.fixture(scope="module")
def vae(vae_path: Path) -> LatentVAE:
    return load_vae(vae_path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/0.png ... (grey, non-square, some 16-bit) and captions.jsonl with relative paths and no ids."""
    root = tmp_path_factory.mktemp("data")
    (root / "images" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(N_IMAGES):
        rel = f"images/{'sub/' if i % 3 == 0 else ''}{i}.png"
        if i % 2:
            Image.fromarray(rng.integers(0, 65536, (50, 70), dtype=np.uint16)).save(root / rel)
        else:
            Image.fromarray(rng.integers(0, 256, (80, 60), dtype=np.uint8)).save(root / rel)
        lines.append({"image": rel, "caption": f"finding number {i} is here"})
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def read_cache(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, keyed by shard/key."""
    tensors = {}
    for shard in sorted(out.glob("shard_*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                tensors[f"{shard.name}/{key}"] = f.get_tensor(key)
    return tensors


def assert_same_cache(a: Path, b: Path) -> None:
    ta, tb = read_cache(a), read_cache(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    ia, ib = (json.loads((p / INDEX_NAME).read_text()) for p in (a, b))
    assert ia == ib


def run(dataset: Path, vae: LatentVAE, out: Path, **kw) -> object:
    kw = {"size": SIZE, "shard_size": 3, "batch_size": 2, "progress": False} | kw
    return cache_latents(read_items(dataset / "captions.jsonl"), vae, out, **kw)


# ---- contents ----------------------------------------------------------------------------------------------------
def test_cache_equals_direct_encoding(dataset: Path, vae: LatentVAE, tmp_path: Path) -> None:
    summary = run(dataset, vae, tmp_path / "c")
    assert summary.cached == N_IMAGES and not summary.failed and summary.shards_done == 3
    cache = LatentCache(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").glob("shard_*")) == [f"shard_0000{k}.safetensors" for k in range(3)]
    assert cache.latent_shape == (CFG.vae.z_channels, SIZE // 16, SIZE // 16) and cache.has_logvar
    assert cache.index["complete"] and cache.index["ids"]["images/4"] == "shard_00001.safetensors"
    records, _ = read_caption_jsonl(dataset / "captions.jsonl")
    cfg = UniXConfig(vae=vae.cfg)
    for record in records:
        pixels = vae_transform(record.image, SIZE, cfg)[None]
        with torch.no_grad():
            mean = vae.encode(pixels)[0]
            logvar = vae.moments(pixels)[0, CFG.vae.z_channels:]
            eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
            sampled = vae.encode(pixels, sample=True, eps=eps[None])[0]
        cached = cache.get(record.id)
        torch.testing.assert_close(cached.mean, mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached.logvar, logvar, atol=1e-5, rtol=1e-5)
        # sampling at load time from the stored moments = the VAE's posterior sample with the same noise
        torch.testing.assert_close(cached.sample(eps=eps), sampled, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not in the latent cache"):
        cache.get("images/none")


def test_bfloat16_mean_and_sample_stores(dataset: Path, vae: LatentVAE, tmp_path: Path) -> None:
    run(dataset, vae, tmp_path / "f32")
    run(dataset, vae, tmp_path / "bf16", dtype="bfloat16", store="mean")
    full, half = LatentCache(tmp_path / "f32"), LatentCache(tmp_path / "bf16")
    assert not half.has_logvar and half.get("images/sub/0").logvar is None
    with safe_open(str(tmp_path / "bf16" / "shard_00000.safetensors"), framework="pt") as f:
        assert f.get_tensor("images/sub/0").dtype == torch.bfloat16
        assert not any(k.endswith(LOGVAR_SUFFIX) for k in f.keys())  # noqa: SIM118
    torch.testing.assert_close(half.get("images/sub/0").mean, full.get("images/sub/0").mean, atol=0.05, rtol=0.01)
    # a stored posterior sample depends on (seed, id) only: other batching, same result
    run(dataset, vae, tmp_path / "s1", store="sample", seed=3)
    run(dataset, vae, tmp_path / "s2", store="sample", seed=3, batch_size=3, shard_size=5)
    a, b = LatentCache(tmp_path / "s1"), LatentCache(tmp_path / "s2")
    for rid in a.ids:
        torch.testing.assert_close(a.get(rid).mean, b.get(rid).mean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.get("images/sub/0").mean, full.get("images/sub/0").mean)


# ---- resume ------------------------------------------------------------------------------------------------------
def test_resume_after_interruption(dataset: Path, vae: LatentVAE, tmp_path: Path) -> None:
    run(dataset, vae, tmp_path / "ref")

    def stop_after_five(n: int) -> None:
        if n == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(dataset, vae, tmp_path / "cut", on_image=stop_after_five)
    index = json.loads((tmp_path / "cut" / INDEX_NAME).read_text())
    assert list(index["shards"]) == ["shard_00000.safetensors"] and not index["complete"]
    assert not list((tmp_path / "cut").glob("shard_00001*")) and not list((tmp_path / "cut").glob(".*tmp"))
    partial = LatentCache(tmp_path / "cut")  # an incomplete cache is readable: its finished shards
    assert len(partial) == 3

    summary = run(dataset, vae, tmp_path / "cut")
    assert summary.shards_skipped == 1 and summary.encoded == N_IMAGES - 3
    assert_same_cache(tmp_path / "cut", tmp_path / "ref")

    # a lost shard file is encoded again, the others are kept
    (tmp_path / "cut" / "shard_00002.safetensors").unlink()
    summary = run(dataset, vae, tmp_path / "cut")
    assert summary.shards_skipped == 2 and summary.encoded == 1
    assert_same_cache(tmp_path / "cut", tmp_path / "ref")


def test_other_settings_refused_unless_overwrite(dataset: Path, vae: LatentVAE, tmp_path: Path) -> None:
    run(dataset, vae, tmp_path / "c")
    with pytest.raises(ValueError, match="dtype: 'float32' -> 'bfloat16'"):
        run(dataset, vae, tmp_path / "c", dtype="bfloat16")
    other = LatentVAE(CFG.vae).eval()
    with pytest.raises(ValueError, match="vae:"):
        run(dataset, other, tmp_path / "c")
    summary = run(dataset, vae, tmp_path / "c", dtype="bfloat16", overwrite=True)
    assert summary.shards_done == 3 and LatentCache(tmp_path / "c").settings["dtype"] == "bfloat16"


# ---- failures and input ------------------------------------------------------------------------------------------
def test_bad_images_recorded_and_run_goes_on(dataset: Path, vae: LatentVAE, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(dataset, root)
    (root / "images" / "junk.png").write_bytes(b"this is not an image")
    lines = (root / "captions.jsonl").read_text().splitlines()
    lines[1:1] = [json.dumps({"image": "images/junk.png", "caption": "x"}), "{not json",
                  json.dumps({"image": "images/missing.png", "caption": "y"}),
                  json.dumps({"image": "images/sub/0.png", "caption": "a second caption"}),  # repeat: cached once
                  json.dumps({"id": "images/1", "image": "images/2.png", "caption": "z"})]  # id clash
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    summary = run(root, vae, tmp_path / "c")
    failed = {f["id"]: f["error"] for f in summary.failed}
    assert summary.cached == N_IMAGES
    assert set(failed) == {"images/junk", f"{root / 'captions.jsonl'}:3", "images/missing", "images/1"}
    assert "no such file" in failed["images/missing"] and "not valid JSON" in failed[f"{root / 'captions.jsonl'}:3"]
    assert "already names another image" in failed["images/1"]
    assert LatentCache(tmp_path / "c").failed == summary.failed


@pytest.mark.parametrize("where", ["mean", "logvar"])
def test_non_finite_latents_are_not_cached(dataset: Path, vae: LatentVAE, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A latent with NaN / inf is never stored: that record fails with the reason, the others are cached."""
    moments, calls = vae.moments, []

    def first_row_broken(x: torch.Tensor) -> torch.Tensor:
        out = moments(x).clone()
        if not calls:  # the first image of the first batch: images/sub/0
            half = out.shape[1] // 2
            out[0, :half] = float("nan") if where == "mean" else out[0, :half]
            out[0, half:] = float("inf") if where == "logvar" else out[0, half:]
        calls.append(1)
        return out

    monkeypatch.setattr(vae, "moments", first_row_broken)
    summary = run(dataset, vae, tmp_path / "c")
    assert [f["id"] for f in summary.failed] == ["images/sub/0"]
    assert "non-finite values" in summary.failed[0]["error"] and "not cached" in summary.failed[0]["error"]
    assert ("log-variance" in summary.failed[0]["error"]) == (where == "logvar")
    cache = LatentCache(tmp_path / "c")
    assert summary.cached == N_IMAGES - 1 and "images/sub/0" not in cache and "images/1" in cache
    assert all(torch.isfinite(t).all() for t in read_cache(tmp_path / "c").values())


def test_resolve_device() -> None:
    from unix_cxr.utils.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    for spec, words in (("gpu0", "not a torch device"), ("meta", "the meta device"), ("", "not a torch device")):
        with pytest.raises(ValueError, match=f"--device {spec}: {words}"):
            resolve_device(spec)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:99: this machine has"):
            resolve_device("cuda:99")
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match=r"^--device cuda: CUDA is not available on this machine$"):
            resolve_device("cuda")


def test_folder_input_ids(dataset: Path) -> None:
    items = items_from_folder(dataset / "images")
    assert [it.id for it in items] == ["1", "2", "4", "5", "sub/0", "sub/3", "sub/6"]
    assert all(Path(it.image).is_file() and it.error is None for it in items)


def test_cli(dataset: Path, vae_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    for name in ("a", "b", "c"):
        shutil.copy(dataset / "images" / "1.png", root / "img" / f"{name}.png")
    argv = ["data", "cache-latents", str(root / "img"), "--vae", str(vae_path), "--out", str(tmp_path / "out"),
            "--size", "256", "--shard-size", "2", "--dtype", "bfloat16", "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    cache = LatentCache(tmp_path / "out")
    assert sorted(cache.ids) == ["a", "b", "c"] and cache.latent_shape == (CFG.vae.z_channels, 16, 16)
    (root / "img" / "d.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    caplog.clear()
    assert main([*argv, "--overwrite"]) == 1
    assert "1 record(s) failed" in caplog.text and "img/d.png" in caplog.text
    assert main(["data", "cache-latents", str(tmp_path / "nothing"), "--vae", str(vae_path), "--out",
                 str(tmp_path / "o2")]) == 2


# ---- the loader reads the cache ----------------------------------------------------------------------------------
def test_caption_source_reads_the_cache(dataset: Path, vae: LatentVAE, tmp_path: Path) -> None:
    run(dataset, vae, tmp_path / "c")
    cache = LatentCache(tmp_path / "c")
    records, _ = read_caption_jsonl(dataset / "captions.jsonl")
    from_cache = CaptionSource(records, CFG, tokenize, latents=cache, caption_dropout=0.0)
    mean = CaptionSource(records, CFG, tokenize, latents=cache, caption_dropout=0.0, posterior="mean")
    on_the_fly = CaptionSource(records, CFG, tokenize, vae=vae, image_size=SIZE, caption_dropout=0.0)
    for i, record in enumerate(records):
        rand = SampleRandom(0, i)
        a, b, m = (s.build(i, rand).segments[1].latent for s in (from_cache, on_the_fly, mean))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # same posterior noise, cached or encoded now
        torch.testing.assert_close(m, cache.get(record.id).mean)
        assert not torch.allclose(a, m)

    loader = PackedLoader([Group(mean)], CFG, PackingConfig(micro_batch_size=3), num_epochs=1)
    batches = list(loader)
    assert sum(len(b.samples) for b in batches) == N_IMAGES
    lb = batches[0]
    expected = torch.cat([cache.get(s.record_id).mean.permute(1, 2, 0).reshape(-1, CFG.vae.z_channels)
                          for s in lb.samples])
    torch.testing.assert_close(lb.batch.latent_tokens, expected)
