"""Bad-input battery, weights part (issue 12 items 1, 4, 5, 6 and the DICOM / config / eval-image messages of 8).

Every case runs one command in this process (`tests/bad_inputs.py`: a time limit per case) on inputs generated here:
tiny tensors written with safetensors / torch.save, a tiny golden folder (tests/golden_writer.py), a tiny release
folder (`write_release` of tests/conftest.py), small PNGs and DICOMs. A usage error must end with exit status 2 and
one stderr line naming the file or flag, no traceback, and any existing output left byte for byte; a batch job
(`data cache-latents`, `parity`) exits 1 with the failure recorded per item and the good items written.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import assert_untouched, assert_usage_error, run
from conftest import write_release
from golden_writer import write_golden_dir
from PIL import Image
from safetensors.torch import load_file, save_file

from unix_cxr.checkpoint.vae import CONFIG_METADATA_KEY, save_vae
from unix_cxr.checkpoint.vae_keys import diffusers_to_ldm
from unix_cxr.config import load_config
from unix_cxr.data.latent_cache import INDEX_NAME
from unix_cxr.eval import image_metrics as im
from unix_cxr.eval import runner
from unix_cxr.model.vae import LatentVAE

TIMEOUT = 30  # seconds per case; each takes well under 2 s
TINY = load_config("tiny")
GOLDEN_BASE = ("config.json", "harness.json", "model.safetensors", "vae.safetensors", "vae")


# ---- generated inputs (built once per module) --------------------------------------------------------------------
def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _lying_header(data: bytes) -> bytes:
    """A real safetensors file with its header intact and the tensor data cut: the header claims more than is there."""
    header_len = struct.unpack("<Q", data[:8])[0]
    return data[: 8 + header_len + 32]


def _png(path: Path, value: int | None = None, size: int = 40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    else:
        pixels = np.full((size, size), value, dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _dicom(path: Path, **elements: object) -> Path:
    import warnings

    from test_imageio import ramp, write_dicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about a DS of 'nan', and writes it
        return write_dicom(path, ramp(), **elements)


@dataclass
class Assets:
    root: Path
    golden: Path  # a complete tiny golden folder
    vae_file: Path  # a good tiny VAE (config in its metadata)
    ldm: dict[str, torch.Tensor]  # its ldm-layout state dict
    release: Path  # a good tiny release folder
    images: Path  # three good PNGs
    cache: Path  # a finished cache of `images`, an existing output to keep
    reports: Path  # a report JSONL for `eval cycle`


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from unix_cxr.cli import main

    root = tmp_path_factory.mktemp("assets")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        golden = write_golden_dir(root / "golden", layers=1, n_new_tokens=2, num_timesteps=3)
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = LatentVAE(TINY.vae).eval()
    vae_file = save_vae(vae, root / "vae.safetensors")
    ldm = diffusers_to_ldm(vae.autoencoder.state_dict(), TINY.vae)
    vocab = {f"w{i}": i for i in range(TINY.decoder.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    release = write_release(root / "release", TINY, PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0"))
    images = root / "images"
    for i in range(3):
        _png(images / f"good{i}.png", seed=i)
    cache = root / "cache"
    assert main(["data", "cache-latents", str(images), "--vae", str(vae_file), "--out", str(cache), "--no-progress"]
                ) == 0
    reports = root / "reports.jsonl"
    reports.write_text(json.dumps({"id": "r1", "report": "No acute cardiopulmonary process."}) + "\n")
    return Assets(root, golden, vae_file, ldm, release, images, cache, reports)


def golden_copy(a: Assets, tmp: Path, cases: tuple[str, ...] = ("case2_vit",)) -> Path:
    """A golden folder with only some cases (fast), copied so that a case may break it."""
    out = tmp / "golden"
    out.mkdir()
    for name in GOLDEN_BASE:
        src = a.golden / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, out / name)
    for case in cases:
        for suffix in (".safetensors", ".json"):
            shutil.copy(a.golden / f"{case}{suffix}", out / f"{case}{suffix}")
    return out


def release_copy(a: Assets, tmp: Path) -> Path:
    out = tmp / "release"
    shutil.copytree(a.release, out)
    return out


def cache_copy(a: Assets, tmp: Path) -> Path:
    out = tmp / "cache"
    shutil.copytree(a.cache, out)
    return out


def _nan_all(path: Path) -> None:
    tensors = load_file(str(path))
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(path))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- the cases ---------------------------------------------------------------------------------------------------
@dataclass
class Case:
    argv: list[str]
    needles: list[str] = field(default_factory=list)  # what the one error line must name
    keep: list[Path] = field(default_factory=list)  # existing outputs that must survive byte for byte
    batch: Callable[[object], None] | None = None  # for batch jobs: checks of the status-1 outcome


CASES: dict[str, Callable[[Assets, Path, pytest.MonkeyPatch], Case]] = {}


def case(name: str):
    def register(build):
        assert name not in CASES
        CASES[name] = build
        return build

    return register


def _cache_case(a: Assets, tmp: Path, vae: Path | str, *extra: str, needles: list[str] | None = None) -> Case:
    out = cache_copy(a, tmp)
    return Case(["data", "cache-latents", a.images, "--vae", vae, "--out", out, "--no-progress", *extra],
                needles if needles is not None else [str(vae)], [out / INDEX_NAME, out / "shard_00000.safetensors"])


def _convert_case(tmp: Path, ckpt: Path, *needles: str, extra: tuple[str, ...] = ("--trust-pickle",)) -> Case:
    out = tmp / "out.safetensors"
    out.write_bytes(b"an existing conversion")
    return Case(["convert-vae", ckpt, out, *extra], [*needles] or [str(ckpt)], [out])


def _cycle_case(a: Assets, tmp: Path, release: Path, needle: Path | str) -> Case:
    out = tmp / "cycle_out"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}\n')
    tokens = [str(t) for t in (TINY.tokens.bos, TINY.tokens.eos, TINY.tokens.start_of_image, TINY.tokens.end_of_image)]
    return Case(["eval", "cycle", "--release", release, "--reports", a.reports, "-o", out, "--no-progress",
                 "--special-tokens", *tokens], [str(needle)], [out / "results.json"])


# -- parity --
@case("parity-config-json-not-json")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    (g / "config.json").write_text('{"llm_config": {')
    return Case(["parity", g], [str(g / "config.json"), "not valid JSON"])


@case("parity-config-json-llm-config-is-a-number")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    _edit_json(g / "config.json", lambda c: c.update(llm_config=3))
    return Case(["parity", g], [str(g / "config.json"), "wrong type"])


@case("parity-config-json-missing-key")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    _edit_json(g / "config.json", lambda c: c["llm_config"].pop("num_hidden_layers"))
    return Case(["parity", g], [str(g / "config.json"), "missing key 'num_hidden_layers'"])


@case("parity-harness-json-not-json")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    (g / "harness.json").write_bytes(b"\xff\xfe garbage")
    return Case(["parity", g], [str(g / "harness.json")])


@case("parity-model-random-bytes")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    (g / "model.safetensors").write_bytes(_random_bytes(5000))
    return Case(["parity", g], [str(g / "model.safetensors"), "not a readable .safetensors file"])


@case("parity-model-cut-in-half")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    data = (g / "model.safetensors").read_bytes()
    (g / "model.safetensors").write_bytes(data[: len(data) // 2])
    return Case(["parity", g], [str(g / "model.safetensors"), "not a readable .safetensors file"])


@case("parity-vae-header-claims-more-data")
def _(a, tmp, mp):
    g = golden_copy(a, tmp, ("case1_vae",))
    (g / "vae.safetensors").write_bytes(_lying_header((g / "vae.safetensors").read_bytes()))
    return Case(["parity", g], [str(g / "vae.safetensors"), "not a readable .safetensors file"])


def _check_parity(fail: str, words: str, passed: tuple[str, ...] = ()) -> Callable[[object], None]:
    def check(outcome) -> None:
        lines = {line.split()[0]: line for line in outcome.out.splitlines() if line.startswith("case")}
        assert "  FAIL  " in lines[fail] and words in lines[fail], outcome.out
        for name in passed:
            assert "  PASS  " in lines[name], outcome.out

    return check


@case("parity-all-weights-nan")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    _nan_all(g / "model.safetensors")
    return Case(["parity", g], batch=_check_parity("case2_vit", "(ours has"))


@case("parity-golden-output-inf")
def _(a, tmp, mp):
    g = golden_copy(a, tmp)
    t = load_file(str(g / "case2_vit.safetensors"))
    t["output/vit_features"] = t["output/vit_features"].clone()
    t["output/vit_features"].view(-1)[0] = float("inf")
    save_file(t, str(g / "case2_vit.safetensors"))
    return Case(["parity", g], batch=_check_parity("case2_vit", "golden has 1 non-finite values"))


@case("parity-one-case-file-garbage")
def _(a, tmp, mp):
    g = golden_copy(a, tmp, ("case1_vae", "case2_vit"))
    (g / "case1_vae.safetensors").write_bytes(_random_bytes(300))
    return Case(["parity", g], batch=_check_parity("case1_vae", str(g / "case1_vae.safetensors"), ("case2_vit",)))


# -- convert-vae --
@case("convert-vae-nan-checkpoint")
def _(a, tmp, mp):
    ckpt = tmp / "nan.ckpt"
    key = "decoder.conv_out.bias"
    torch.save({"state_dict": {**a.ldm, key: torch.full_like(a.ldm[key], float("nan"))}}, ckpt)
    return _convert_case(tmp, ckpt, str(ckpt), f"tensor {key} has", "non-finite values", "--allow-non-finite")


@case("convert-vae-needs-a-full-unpickle")
def _(a, tmp, mp):
    import argparse

    ckpt = tmp / "lightning.ckpt"
    torch.save({"state_dict": a.ldm, "hparams": argparse.Namespace(lr=1.0)}, ckpt)
    return _convert_case(tmp, ckpt, str(ckpt), "weights_only=True", "argparse.Namespace")


@case("convert-vae-random-bytes")
def _(a, tmp, mp):
    ckpt = tmp / "random.ckpt"
    ckpt.write_bytes(_random_bytes(2000))
    return _convert_case(tmp, ckpt, str(ckpt), "not a readable PyTorch checkpoint")


@case("convert-vae-cut-in-half")
def _(a, tmp, mp):
    ckpt = tmp / "half.ckpt"
    torch.save({"state_dict": a.ldm}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return _convert_case(tmp, ckpt, str(ckpt), "not a readable PyTorch checkpoint")


@case("convert-vae-without-trust-pickle")
def _(a, tmp, mp):
    ckpt = tmp / "vae.ckpt"
    torch.save({"state_dict": a.ldm}, ckpt)
    return _convert_case(tmp, ckpt, str(ckpt), "--trust-pickle", extra=())


@case("convert-vae-not-a-state-dict")
def _(a, tmp, mp):
    ckpt = tmp / "list.ckpt"
    torch.save([torch.zeros(2)], ckpt)
    return _convert_case(tmp, ckpt, str(ckpt), "expected a state dict")


@case("convert-vae-no-autoencoder-keys")
def _(a, tmp, mp):
    ckpt = tmp / "other.ckpt"
    torch.save({"state_dict": {"model.layer.weight": torch.zeros(2)}}, ckpt)
    return _convert_case(tmp, ckpt, str(ckpt), "no autoencoder tensors")


@case("convert-vae-output-is-a-folder")
def _(a, tmp, mp):
    ckpt = tmp / "vae.ckpt"
    torch.save({"state_dict": a.ldm}, ckpt)
    out = tmp / "dir.safetensors"
    out.mkdir()
    return Case(["convert-vae", ckpt, out, "--trust-pickle"], [str(out), "is a folder"])


# -- data cache-latents --
@case("cache-latents-vae-random-bytes")
def _(a, tmp, mp):
    vae = tmp / "vae.safetensors"
    vae.write_bytes(_random_bytes(4000))
    return _cache_case(a, tmp, vae)


@case("cache-latents-vae-cut-in-half")
def _(a, tmp, mp):
    vae = tmp / "vae.safetensors"
    data = a.vae_file.read_bytes()
    vae.write_bytes(data[: len(data) // 2])
    return _cache_case(a, tmp, vae)


@case("cache-latents-vae-header-claims-more-data")
def _(a, tmp, mp):
    vae = tmp / "vae.safetensors"
    vae.write_bytes(_lying_header(a.vae_file.read_bytes()))
    return _cache_case(a, tmp, vae)


@case("cache-latents-vae-nan")
def _(a, tmp, mp):
    vae = tmp / "vae.safetensors"
    shutil.copy(a.vae_file, vae)
    tensors = load_file(str(vae))
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(vae), metadata={CONFIG_METADATA_KEY: json.dumps(_vae_config())})
    return _cache_case(a, tmp, vae, needles=[str(vae), f"tensor {key} has", "--allow-non-finite"])


def _vae_config() -> dict:
    import dataclasses

    return dataclasses.asdict(TINY.vae)


@case("cache-latents-vae-metadata-config-broken")
def _(a, tmp, mp):
    vae = tmp / "vae.safetensors"
    save_file(load_file(str(a.vae_file)), str(vae), metadata={CONFIG_METADATA_KEY: '{"ch": '})
    return _cache_case(a, tmp, vae, needles=[str(vae), CONFIG_METADATA_KEY])


@case("cache-latents-vae-config-yaml-missing-key")
def _(a, tmp, mp):
    folder = tmp / "vae_folder"
    folder.mkdir()
    shutil.copy(a.vae_file, folder / "vae.safetensors")
    (folder / "config.yaml").write_text("model:\n  params:\n    ddconfig:\n      ch: 32\n")
    return _cache_case(a, tmp, folder, needles=[str(folder / "config.yaml"), "ch_mult"])


@case("cache-latents-device-unknown")
def _(a, tmp, mp):
    return _cache_case(a, tmp, a.vae_file, "--device", "gpu0", needles=["--device gpu0", "not a torch device"])


@case("cache-latents-device-meta")
def _(a, tmp, mp):
    return _cache_case(a, tmp, a.vae_file, "--device", "meta", needles=["--device meta"])


@case("cache-latents-device-cuda-without-cuda")
def _(a, tmp, mp):
    if torch.cuda.is_available():
        return _cache_case(a, tmp, a.vae_file, "--device", "cuda:99", needles=["--device cuda:99", "CUDA device"])
    return _cache_case(a, tmp, a.vae_file, "--device", "cuda",
                       needles=["--device cuda: CUDA is not available on this machine"])


def _check_cache(out: Path, failed: dict[str, str], cached: set[str]) -> Callable[[object], None]:
    def check(outcome) -> None:
        index = json.loads((out / INDEX_NAME).read_text())
        got = {f["id"]: f["error"] for f in index["failed"]}
        assert set(got) == set(failed), got
        for rid, words in failed.items():
            assert words in got[rid], got[rid]
        assert set(index["ids"]) == cached
        assert not [p for p in out.iterdir() if p.name.endswith(".unix-cxr-tmp")]

    return check


@case("cache-latents-nan-allowed-vae-caches-nothing")
def _(a, tmp, mp):
    vae = tmp / "vae.safetensors"
    tensors = load_file(str(a.vae_file))
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(vae),
              metadata={CONFIG_METADATA_KEY: json.dumps(_vae_config())})
    out = tmp / "out"
    return Case(["data", "cache-latents", a.images, "--vae", vae, "--out", out, "--no-progress",
                 "--allow-non-finite"],
                batch=_check_cache(out, {f"good{i}": "non-finite values" for i in range(3)}, set()))


@case("cache-latents-one-latent-non-finite")
def _(a, tmp, mp):
    images = tmp / "images"
    shutil.copytree(a.images, images)
    _png(images / "black.png", value=0)
    moments = LatentVAE.moments

    def nan_for_black(self, x, *args, **kwargs):  # the VAE "fails" on the all-black image only
        out = moments(self, x, *args, **kwargs).clone()
        out[x.flatten(1).amax(1) <= -1.0 + 1e-6] = float("nan")
        return out

    mp.setattr(LatentVAE, "moments", nan_for_black)
    out = tmp / "out"
    return Case(["data", "cache-latents", images, "--vae", a.vae_file, "--out", out, "--no-progress"],
                batch=_check_cache(out, {"black": "non-finite values"}, {"good0", "good1", "good2"}))


@case("cache-latents-dicom-window-width-0")
def _(a, tmp, mp):
    images = tmp / "images"
    shutil.copytree(a.images, images)
    bad = _dicom(images / "window0.dcm", WindowCenter=100.0, WindowWidth=0.0)
    out = tmp / "out"
    return Case(["data", "cache-latents", images, "--vae", a.vae_file, "--out", out, "--no-progress"],
                batch=_check_cache(out, {"window0": str(bad)}, {"good0", "good1", "good2"}))


# -- DICOM through `data preview` --
def _preview_case(tmp: Path, dicom: Path, *needles: str) -> Case:
    out = tmp / "preview.png"
    out.write_bytes(b"an existing preview")
    return Case(["data", "preview", dicom, "-o", out], [str(dicom), *needles], [out])


@case("preview-dicom-window-width-0")
def _(a, tmp, mp):
    return _preview_case(tmp, _dicom(tmp / "w0.dcm", WindowCenter=100.0, WindowWidth=0.0), "WindowWidth=0")


@case("preview-dicom-window-width-nan")
def _(a, tmp, mp):
    return _preview_case(tmp, _dicom(tmp / "wnan.dcm", WindowCenter=100.0, WindowWidth="nan"), "non-finite")


@case("preview-dicom-sigmoid-window-width-0")
def _(a, tmp, mp):
    return _preview_case(tmp, _dicom(tmp / "sig.dcm", WindowCenter=100.0, WindowWidth=0.0,
                                     VOILUTFunction="SIGMOID"), "SIGMOID")


# -- eval images --
def _images_case(a: Assets, tmp: Path, mp: pytest.MonkeyPatch, broken: Callable[[Path], Path]) -> Case:
    def small_encoder(spec, **kwargs):
        module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        return im.TorchModuleEncoder(module, "avgpool-2x2 (test)", input_size=im.METRIC_IMAGE_SIZE), {"kind": "t"}

    mp.setattr(runner, "make_encoder", small_encoder)
    real, fake = tmp / "real", tmp / "fake"
    for i in range(7):
        _png(real / f"r{i}.png", seed=10 + i, size=24)
        _png(fake / f"f{i}.png", seed=20 + i, size=24)
    bad = broken(fake)
    out = tmp / "eval_out"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}\n')
    return Case(["eval", "images", "--real", real, "--fake", fake, "-o", out, "--no-progress"], [str(bad)],
                [out / "results.json"])


@case("eval-images-truncated-png")
def _(a, tmp, mp):
    def cut(folder: Path) -> Path:
        path = _png(folder / "zz_cut.png", seed=99, size=64)
        path.write_bytes(path.read_bytes()[:200])
        return path

    return _images_case(a, tmp, mp, cut)


@case("eval-images-truncated-jpeg")
def _(a, tmp, mp):
    def cut(folder: Path) -> Path:
        path = folder / "zz_cut.jpg"
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
        return path

    return _images_case(a, tmp, mp, cut)


# -- release folders (through `eval cycle --release`) --
@case("release-config-json-llm-config-is-a-number")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    _edit_json(rel / "config.json", lambda c: c.update(llm_config=3))
    return _cycle_case(a, tmp, rel, rel / "config.json")


@case("release-config-json-not-json")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    (rel / "config.json").write_text("{'single': 'quotes'}")
    return _cycle_case(a, tmp, rel, rel / "config.json")


@case("release-config-json-string-for-a-number")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    _edit_json(rel / "config.json", lambda c: c["llm_config"].update(num_hidden_layers="2"))
    return _cycle_case(a, tmp, rel, rel / "config.json")


@case("release-model-random-bytes")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    (rel / "model.safetensors").write_bytes(_random_bytes(3000, seed=3))
    return _cycle_case(a, tmp, rel, rel / "model.safetensors")


@case("release-model-nan")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    _nan_all(rel / "model.safetensors")
    return _cycle_case(a, tmp, rel, rel / "model.safetensors")


@case("release-vae-cut-in-half")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    vae = rel / "vae" / "kl-f16d16.safetensors"
    vae.write_bytes(vae.read_bytes()[: vae.stat().st_size // 2])
    return _cycle_case(a, tmp, rel, vae)


@case("release-vae-config-yaml-not-yaml")
def _(a, tmp, mp):
    rel = release_copy(a, tmp)
    (rel / "vae" / "config.yaml").write_text("model: [unclosed\n")
    return _cycle_case(a, tmp, rel, rel / "vae" / "config.yaml")


# ---- the test ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_bad_weights_input(name: str, assets: Assets, tmp_path: Path, capsys, monkeypatch) -> None:
    spec = CASES[name](assets, tmp_path, monkeypatch)
    kept = {path: path.read_bytes() for path in spec.keep}
    outcome = run(spec.argv, capsys, timeout=TIMEOUT)
    assert "Traceback" not in outcome.err, outcome.err
    if spec.batch is not None:
        assert outcome.rc == 1, (outcome.rc, outcome.err)
        assert not [line for line in outcome.err.splitlines() if line.startswith("unix-cxr ")], outcome.err
        spec.batch(outcome)
    else:
        assert_usage_error(outcome, *spec.needles)
    for path, content in kept.items():
        assert_untouched(path, content)


def test_the_battery_is_big_enough() -> None:
    families = {name.split("-")[0] for name in CASES}
    assert len(CASES) >= 25 and families == {"parity", "convert", "cache", "preview", "eval", "release"}


def test_allow_non_finite_converts_and_good_inputs_still_work(assets: Assets, tmp_path: Path, capsys) -> None:
    """The controls: the same inputs without the fault (or with the opt-out) succeed."""
    ckpt = tmp_path / "inf.ckpt"
    key = "decoder.conv_out.bias"
    torch.save({"state_dict": {**assets.ldm, key: torch.full_like(assets.ldm[key], float("inf"))}}, ckpt)
    out = tmp_path / "out.safetensors"
    assert run(["convert-vae", ckpt, out, "--trust-pickle", "--allow-non-finite"], capsys, TIMEOUT).rc == 0
    assert torch.isinf(load_file(str(out))[key]).all()
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": assets.ldm, "epoch": 1}, good)
    assert run(["convert-vae", good, tmp_path / "good.safetensors", "--trust-pickle"], capsys, TIMEOUT).rc == 0
    g = golden_copy(assets, tmp_path, ("case1_vae", "case2_vit"))
    outcome = run(["parity", g], capsys, TIMEOUT)
    assert outcome.rc == 0 and outcome.out.splitlines()[-1] == "2 passed, 0 failed", outcome.out
