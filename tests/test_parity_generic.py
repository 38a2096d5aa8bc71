"""`unix-cxr parity DIR` on golden directories other than ../shared/parity: other widths, layer counts, head counts
(MHA and GQA), step counts, VAE depths, latent widths and non-square generation sizes.

The directories are written by tests/golden_writer.py from our own implementation (the authors' code is not
available here), so these tests check the runner's generality (everything read from the files), not the model's
parity with the reference; tests/test_*.py against ../shared/parity do that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from golden_writer import write_golden_dir
from safetensors.torch import load_file, save_file

from unix_cxr.cli import main
from unix_cxr.eval.parity import GoldenDir

CASES = ["case1_vae", "case2_vit", "case3_understanding", "case4_velocity", "case5_sampling", "case6_training"]
LLM_CASES = {"case3_understanding", "case4_velocity", "case5_sampling", "case6_training"}
GEN_CASES = {"case4_velocity", "case5_sampling", "case6_training"}


def run_cli(golden: Path, capsys) -> tuple[int, dict[str, str], str, str]:
    """rc, {case name: its result line}, stdout, stderr of `unix-cxr parity golden`."""
    capsys.readouterr()
    rc = main(["parity", str(golden)])
    out, err = capsys.readouterr()
    lines = {}
    for line in out.splitlines():
        name = line.split(" ", 1)[0]
        if name.startswith("case"):
            assert name not in lines, f"two lines for {name}:\n{out}"
            lines[name] = line
    return rc, lines, out, err


def status(line: str) -> str:
    return "PASS" if "  PASS  " in line else "FAIL" if "  FAIL  " in line else "?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the goldens' harness: the tiny matmuls are ~5x faster than with 2 threads (far more
    on a busy machine, where the threads wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mha_dir(tmp_path_factory) -> Path:
    """Hidden 96, 3 layers, 6 heads = 6 kv heads (MHA), 4 timesteps, 32x48 images (2x3 latent grid)."""
    return write_golden_dir(tmp_path_factory.mktemp("golden") / "mha")


def test_mha_non_square_golden_dir_passes(mha_dir: Path, capsys) -> None:
    cfg = GoldenDir.open(mha_dir).cfg
    assert (cfg.decoder.hidden_size, cfg.decoder.num_layers, cfg.decoder.num_heads, cfg.decoder.num_kv_heads) == (
        96, 3, 6, 6)
    assert cfg.sampling.num_timesteps == 4 and cfg.vision.num_patches == 9
    meta = json.loads((mha_dir / "case5_sampling.json").read_text())
    assert meta["tensors"]["output/decoded"]["shape"] == [1, 3, 32, 48]
    assert meta["tensors"]["output/step_velocity"]["shape"] == [3, 6, 16]
    assert meta["cfg_text_scale_per_step"] == [3.0, 3.0, 1.0]  # t = 1, 0.8 guided; t = 0.5 outside (0.55, 1]
    weights = load_file(str(mha_dir / "model.safetensors"))
    assert 0.015 < float(weights["llm2vae.weight"].std()) < 0.025  # random like the goldens, not zero-initialised
    assert abs(float(weights["language_model.model.norm_moe_gen.weight"].mean()) - 1) < 0.02

    rc, lines, out, _ = run_cli(mha_dir, capsys)
    assert rc == 0, out
    assert sorted(lines) == CASES, out
    assert all(status(line) == "PASS" for line in lines.values()), out
    assert out.splitlines()[-1] == "6 passed, 0 failed"


def test_gqa_golden_dir_with_other_sizes_passes(tmp_path: Path, capsys) -> None:
    """GQA (4 heads, 2 kv heads), 2 layers, 6 timesteps; also a 4-level VAE (factor 8) with 8 latent channels,
    a tall 40x24 image (5x3 latent grid), another ViT, channel renorm with a floor and other shifts."""
    golden = write_golden_dir(
        tmp_path / "gqa", hidden=80, layers=2, heads=4, kv_heads=2, inter=112, vocab=300, vit_image=32, vit_patch=8,
        vit_width=32, vit_layers=2, vit_heads=2, vit_inter=64, vae_ch_mult=(1, 1, 1, 1), vae_resolution=128,
        z_channels=8, max_latent=5, gen_hw=(40, 24), num_timesteps=6, prompt_len=7, n_new_tokens=4,
        cfg_text_scale=2.5, cfg_interval=(0.4, 0.95), cfg_renorm_type="channel", cfg_renorm_min=0.5,
        infer_timestep_shift=3.0, train_timestep_shift=1.0, seed=7)
    cfg = GoldenDir.open(golden).cfg
    assert (cfg.decoder.num_layers, cfg.decoder.num_heads, cfg.decoder.num_kv_heads) == (2, 4, 2)
    assert (cfg.sampling.num_timesteps, cfg.vae.downsample, cfg.vae.z_channels) == (6, 8, 8)
    meta = json.loads((golden / "case3_understanding.json").read_text())
    assert meta["tensors"]["output/kv_cache_keys"]["shape"] == [2, 18 + 9, 2, 20]  # image block + prompt block
    meta = json.loads((golden / "case5_sampling.json").read_text())
    assert meta["tensors"]["output/final_latent_nchw"]["shape"] == [1, 8, 5, 3]
    assert meta["cfg_text_scale_per_step"] == [1.0, 2.5, 2.5, 2.5, 2.5]  # t = 1 is outside (0.4, 0.95]

    rc, lines, out, _ = run_cli(golden, capsys)
    assert rc == 0, out
    assert sorted(lines) == CASES, out
    assert all(status(line) == "PASS" for line in lines.values()), out


def test_a_perturbed_weight_fails_exactly_the_cases_that_use_it(mha_dir: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(mha_dir, broken)
    for key, affected in [("language_model.model.layers.0.self_attn.k_proj.weight", LLM_CASES),  # understanding
                          ("language_model.model.layers.2.mlp_moe_gen.down_proj.weight", GEN_CASES)]:  # generation
        weights = load_file(str(mha_dir / "model.safetensors"))
        weights[key] = weights[key] + 1e-3
        save_file(weights, str(broken / "model.safetensors"))
        rc, lines, out, _ = run_cli(broken, capsys)
        assert rc == 1, out
        assert sorted(lines) == CASES, out
        assert {name for name, line in lines.items() if status(line) == "FAIL"} == affected, (key, out)
        assert {name for name, line in lines.items() if status(line) == "PASS"} == set(CASES) - affected, (key, out)
        assert out.splitlines()[-1] == f"{6 - len(affected)} passed, {len(affected)} failed"


def test_a_directory_without_harness_json_is_a_usage_error(mha_dir: Path, tmp_path: Path, capsys) -> None:
    incomplete = tmp_path / "incomplete"
    shutil.copytree(mha_dir, incomplete, ignore=shutil.ignore_patterns("harness.json"))
    rc, lines, out, err = run_cli(incomplete, capsys)
    assert rc == 2
    assert not lines and out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("unix-cxr parity: error:") and "harness.json" in err


def test_non_finite_weights_or_goldens_fail_by_name(mha_dir: Path, tmp_path: Path, capsys) -> None:
    """NaN exceeds no tolerance, so a comparison alone would pass it: parity refuses non-finite tensors."""
    nan_weight = tmp_path / "nan_weight"
    shutil.copytree(mha_dir, nan_weight)
    weights = load_file(str(mha_dir / "model.safetensors"))
    vision = [k for k in weights if k.startswith("vit_model.") and k.endswith("weight")]
    for key in vision:
        weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(nan_weight / "model.safetensors"))
    rc, lines, out, _ = run_cli(nan_weight, capsys)
    assert rc == 1, out
    assert status(lines["case2_vit"]) == "FAIL" and "(ours has" in lines["case2_vit"], out
    assert "non-finite values" in lines["case2_vit"]

    nan_golden = tmp_path / "nan_golden"
    shutil.copytree(mha_dir, nan_golden)
    case = load_file(str(mha_dir / "case4_velocity.safetensors"))
    name = next(k for k in case if k.startswith("output/"))
    case[name] = case[name].clone().view(-1).index_fill(0, torch.tensor([0]), float("inf")).view_as(case[name])
    save_file(case, str(nan_golden / "case4_velocity.safetensors"))
    rc, lines, out, _ = run_cli(nan_golden, capsys)
    assert rc == 1, out
    assert status(lines["case4_velocity"]) == "FAIL" and "golden has 1 non-finite values" in lines["case4_velocity"]
    assert {n for n, line in lines.items() if status(line) == "FAIL"} == {"case4_velocity"}, out


def test_all_weights_non_finite_fail_every_case_without_a_traceback(mha_dir: Path, tmp_path: Path, capsys,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """All UniX and VAE weights NaN: every case FAILs by name (this ended in an AssertionError traceback)."""
    broken = tmp_path / "all_nan"
    shutil.copytree(mha_dir, broken)
    for name in ("model.safetensors", "vae.safetensors"):
        weights = load_file(str(mha_dir / name))
        save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, str(broken / name))
    rc, lines, out, err = run_cli(broken, capsys)
    assert rc == 1, out
    assert "Traceback" not in err and "error:" not in err, err
    assert sorted(lines) == CASES, out
    assert all(status(line) == "FAIL" and "(ours has" in line and "non-finite values" in line
               for line in lines.values()), out
    warned = [r.getMessage() for r in caplog.records if "loading them anyway" in r.getMessage()]
    assert len(warned) == 2 and "model.safetensors: tensor" in warned[0], warned  # once per file, naming a tensor
    assert out.splitlines()[-1] == "0 passed, 6 failed"
