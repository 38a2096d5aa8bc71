"""The phantom recipe (`phantom-tiny`): its own data, a VAE stage, a BPE tokenizer and stages 1-3, run here with
tiny overrides; the release folder it exports is loaded by UniXPipeline, reports and draws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from unix_cxr.train.recipe import load_recipe, shipped_recipes
from unix_cxr.train.trainer import train
from unix_cxr.train.vae_stage import bf16_autocast

STAGES = ["data", "vae", "vision", "und_sft", "gen_pt", "gen_ft"]
TINY = ["phantom.train=12", "phantom.val=4", "steps=2", "global_batch_size=4", "checkpoint_every=1"]


def tiny_recipe():
    return load_recipe("phantom-tiny", [*TINY, "data.micro_batch_size=4", "model_overrides.decoding.max_new_tokens=8"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "run"
    results = train(tiny_recipe(), out, progress=False)
    assert [r.name for r in results] == STAGES and not any(r.interrupted for r in results)
    return out


def test_the_recipe_is_shipped_and_lists_its_stages_in_order():
    assert shipped_recipes()["phantom-tiny"].startswith("Phantom demo model from nothing")
    recipe = load_recipe("phantom-tiny")
    assert list(recipe.stages) == STAGES
    assert [s.kind for s in recipe.stages.values()] == ["phantom_data", "vae", "vision", "und_sft", "gen_pt", "gen_ft"]
    assert recipe.model == "phantom" and recipe.tokenizer == "${output}/data/tokenizer"
    resolved = recipe.with_output("/runs/a")
    assert resolved.tokenizer == "/runs/a/data/tokenizer" and resolved.vae == "/runs/a/vae/final"
    assert resolved.stages["gen_pt"].data.groups["t2i"].latents == "/runs/a/vae/latents/t2i"
    assert resolved.stages["vae"].vae.cache["t2i"].input == "/runs/a/data/stage2/captions_train.jsonl"
    assert recipe.stages["data"].phantom.train_seed != recipe.stages["data"].phantom.val_seed


@pytest.mark.parametrize(("override", "message"), [
    ("stages.data.phantom.val_seed=0", r"train_seed and val_seed must differ"),
    ("stages.vae.vae.images=null", r"stages.vae.vae.images is not set"),
    ("stages.vae.vae.size=40", r"stages.vae.vae.size must be a positive multiple of 16"),
    ("stages.vae.vae.klw=1", r"unknown recipe key 'stages.vae.vae.klw'"),
    ("stages.vae.vae.precision=fp16", r"stages.vae.vae.precision must be one of"),
])
def test_bad_preparation_settings_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("phantom-tiny", [override])


def test_every_stage_writes_its_folder(run):
    data = run / "data"
    for split, n in (("train", 12), ("val", 4)):
        assert len(list((data / "phantoms" / split / "images").glob("*.png"))) == n
    train_reports = (data / "phantoms" / "train" / "reports.jsonl").read_text()
    assert train_reports != (data / "phantoms" / "val" / "reports.jsonl").read_text()  # other seeds, other cases
    assert len((data / "stage1" / "stage1_train.jsonl").read_text().splitlines()) == 12
    assert len((data / "stage2" / "captions_train.jsonl").read_text().splitlines()) == 12
    assert (data / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "vae" / "final" / "vae.safetensors").is_file() and (run / "vae" / "final" / "config.yaml").is_file()
    assert json.loads((run / "vae" / "latents" / "t2i" / "index.json").read_text())["complete"]
    for stage in STAGES[1:]:
        rows = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert (run / stage / "done.json").is_file() and (run / stage / "checkpoints" / "step-00000002").is_dir()
    assert (run / "vision" / "final" / "model.safetensors").is_file()
    for stage in STAGES[3:]:
        assert {"model.safetensors", "config.json", "unix-cxr.yaml", "tokenizer.json", "vae"} <= {
            p.name for p in (run / stage / "final").iterdir()}
    summary = json.loads((run / "vae" / "summary.json").read_text())
    # the statistics and the check encode in the precision the VAE trained in: bf16 (8 mantissa bits) on a CPU
    # with bf16 arithmetic (vae.precision: auto), fp32 elsewhere
    bf16 = bf16_autocast(tiny_recipe().stages["vae"].vae.precision, torch.device("cpu"))
    assert abs(summary["normalised_latent_mean"]) < (5e-3 if bf16 else 1e-3)
    assert abs(summary["normalised_latent_std"] - 1) < 1e-2


def test_the_release_folder_reports_and_draws(run):
    from unix_cxr.infer.pipeline import UniXPipeline

    folder = run / "gen_ft" / "final"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 30 * 2**20
    pipe = UniXPipeline.from_pretrained(folder)
    image = next((run / "data" / "phantoms" / "val" / "images").glob("*.png"))
    [rep] = pipe.report([str(image)])
    assert isinstance(rep.text, str) and 0 < len(rep.token_ids) <= 8
    [img] = pipe.generate(["FINDINGS: Large right pleural effusion. IMPRESSION: Large right pleural effusion."],
                          seed=0, steps=3)
    assert img.pixels.shape == (64, 64, 3) and img.pixels.dtype == np.uint8


def test_the_exported_vae_round_trips_through_load_vae(run, tmp_path):
    from unix_cxr.checkpoint.vae import load_vae, save_vae
    from unix_cxr.config import load_config, vae_config_from_ldm_yaml
    from unix_cxr.data.transforms import vae_transform

    folder = run / "vae" / "final"
    cfg = load_config("phantom").vae
    assert vae_config_from_ldm_yaml(folder / "config.yaml") == dataclass_without_norm(cfg)
    vae = load_vae(folder, cfg)
    save_vae(vae, tmp_path / "again.safetensors")
    a, b = load_file(str(folder / "vae.safetensors")), load_file(str(tmp_path / "again.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    released = load_file(str(run / "gen_ft" / "final" / "vae" / "vae.safetensors"))
    assert all(torch.equal(a[k], released[k]) for k in a)  # the release carries this VAE
    x = vae_transform(next((run / "data" / "phantoms" / "train" / "images").glob("*.png")), 64)[None]
    with torch.no_grad():
        assert vae.encode(x).shape == (1, 16, 4, 4) and vae.decode(vae.encode(x)).shape == (1, 3, 64, 64)


def dataclass_without_norm(cfg):
    """The VAE config as config.yaml holds it (the latent normalisation lives in the model config)."""
    import dataclasses

    from unix_cxr.config import VAEConfig

    return dataclasses.replace(cfg, scale_factor=VAEConfig().scale_factor, shift_factor=VAEConfig().shift_factor)


def test_the_vae_stage_precision_follows_the_dtype_policy():
    from unix_cxr.train.vae_stage import bf16_autocast
    from unix_cxr.utils.dtype_policy import native_bf16

    cpu = torch.device("cpu")
    assert not bf16_autocast("fp32", cpu) and bf16_autocast("bf16-mixed", cpu)
    assert bf16_autocast("auto", cpu) == native_bf16(cpu)


def test_a_bf16_mixed_vae_stage_trains_close_to_fp32(tmp_path):
    """The same VAE steps under bf16 autocast: other losses (autocast is on), within bf16's rounding of fp32's, and
    fp32 weights exported."""
    first = {}
    for precision in ("fp32", "bf16-mixed"):
        recipe = load_recipe("phantom-tiny", [*TINY, f"stages.vae.vae.precision={precision}"])
        recipe.stages = {k: recipe.stages[k] for k in ("data", "vae")}
        out = tmp_path / precision
        train(recipe, out, progress=False)
        first[precision] = [json.loads(line) for line in (out / "vae" / "metrics.jsonl").read_text().splitlines()]
        weights = load_file(str(out / "vae" / "final" / "vae.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float32}
    for a, b in zip(first["fp32"], first["bf16-mixed"], strict=True):
        assert a["loss"] != b["loss"] and abs(a["loss"] - b["loss"]) < 0.05 * a["loss"]


def test_folding_the_latent_statistics_keeps_the_reconstruction():
    from unix_cxr.config import load_config
    from unix_cxr.model.vae import LatentVAE
    from unix_cxr.train.vae_stage import fold_normalization, latent_statistics

    torch.manual_seed(0)
    vae = LatentVAE(load_config("phantom").vae).eval()
    pixels = torch.randint(0, 256, (6, 64, 64), dtype=torch.uint8)
    x = (pixels.float() / 127.5 - 1)[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        before = vae(x)
        mean, std = latent_statistics(vae, pixels)
        fold_normalization(vae, mean, std)
        z = vae.encode(x)
        after = vae(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    per_channel = z.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(16), atol=1e-4, rtol=0)


def test_the_vae_statistics_read_the_first_statistics_images(tmp_path):
    """With statistics_images=5 of 12 training phantoms the folded statistics are those of the first five: the
    exported VAE whitens exactly them (mean 0, std 1 per channel), and not the rest."""
    from unix_cxr.checkpoint.vae import load_vae
    from unix_cxr.config import load_config
    from unix_cxr.train.vae_stage import _to_model, load_pixels

    recipe = load_recipe("phantom-tiny", [*TINY, "stages.vae.vae.statistics_images=5"])
    recipe.stages = {k: recipe.stages[k] for k in ("data", "vae")}
    out = tmp_path / "run"
    train(recipe, out, progress=False)
    summary = json.loads((out / "vae" / "summary.json").read_text())
    assert (summary["images"], summary["statistics_images"]) == (12, 5)
    cfg = load_config("phantom")
    vae = load_vae(out / "vae" / "final", dtype=torch.float32).eval()
    pixels = load_pixels(str(out / "data" / "phantoms" / "train" / "images"), None, 64, cfg)
    bf16 = bf16_autocast(recipe.stages["vae"].vae.precision, torch.device("cpu"))  # the stage encodes as trained
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        means = vae.moments(_to_model(pixels, cfg.vae.in_channels)).chunk(2, dim=1)[0].float()
    z = vae.scale_factor * (means - vae.shift_factor)
    first, rest = (part.transpose(0, 1).flatten(1) for part in (z[:5], z[5:]))
    tolerance = 1e-2 if bf16 else 1e-3  # bf16 keeps 8 mantissa bits
    torch.testing.assert_close(first.mean(1), torch.zeros(16), atol=tolerance, rtol=0)
    torch.testing.assert_close(first.std(1), torch.ones(16), atol=tolerance, rtol=0)
    assert (rest.mean(1).abs() > 1e-2).any()


def test_the_tokenizer_is_lossless_and_keeps_the_special_ids(run):
    from unix_cxr.checkpoint.release import load_tokenizer
    from unix_cxr.config import load_config

    tok = load_tokenizer(run / "data" / "tokenizer")
    cfg = load_config("phantom")
    assert len(tok) <= cfg.decoder.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id) == (cfg.tokens.bos, cfg.tokens.eos)
    assert tok.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>"]) == [cfg.tokens.start_of_image,
                                                                                 cfg.tokens.end_of_image]
    unseen = [json.loads(line)["report"] for line in
              (run / "data" / "phantoms" / "val" / "reports.jsonl").read_text().splitlines()]
    for text in [*unseen, "Odd text:  two  spaces, über 3.5 cm\tand a tab."]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert min(ids) >= 4  # no text maps to a structural token
        assert tok.decode([cfg.tokens.bos, *ids, cfg.tokens.eos], skip_special_tokens=True) == text


def test_special_tokens_must_come_first():
    from unix_cxr.config import SpecialTokens
    from unix_cxr.data.tokenizer import train_bpe_tokenizer

    with pytest.raises(ValueError, match=r"their ids must be 0 \.\. 3"):
        train_bpe_tokenizer(["a b"], 512, SpecialTokens(300, 301, 302, 303))


def test_the_vae_stage_resumes_exactly(run, tmp_path):
    """data + vae only: 1 step, then --resume to 2, equals the uninterrupted run's VAE."""
    recipe = yaml.safe_load(Path(shipped_path()).read_text())
    recipe["stages"] = {k: recipe["stages"][k] for k in ("data", "vae")}
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = load_recipe(path, TINY)
    out = tmp_path / "run"
    first = train(r, out, max_steps=1, progress=False)
    assert [x.steps for x in first] == [0, 1]
    again = train(r, out, resume=True, progress=False)
    assert [x.steps for x in again] == [0, 2]
    ours = load_file(str(out / "vae" / "final" / "vae.safetensors"))
    ref = load_file(str(run / "vae" / "final" / "vae.safetensors"))
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    rows = [json.loads(line) for line in (out / "vae" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (run / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["loss"]) for x in rows] == [(x["step"], x["loss"]) for x in ref_rows]


def shipped_path() -> str:
    from importlib.resources import files

    return str(files("unix_cxr").joinpath("recipes", "phantom-tiny.yaml"))


def test_stage_1_starts_from_the_vision_stage(run):
    """vision/final = the trainer's random start with a trained SigLIP tower; und_sft starts from it."""
    from unix_cxr.checkpoint.keymap import to_authors
    from unix_cxr.config import load_config
    from unix_cxr.model.unix import UniX

    torch.manual_seed(tiny_recipe().seed)
    fresh = to_authors(UniX(load_config("phantom")).state_dict())
    vision = load_file(str(run / "vision" / "final" / "model.safetensors"))
    und = load_file(str(run / "und_sft" / "final" / "model.safetensors"))
    changed = {k for k in vision if not torch.equal(vision[k], fresh[k])}
    tower = {k for k in vision if k.startswith("vit_model.vision_tower.") and "attn_pool" not in k}
    assert changed and changed <= tower
    gen = [k for k in und if "moe_gen" in k or k.startswith(("time_embedder", "vae2llm", "llm2vae"))]
    assert gen and all(torch.equal(und[k], vision[k]) for k in gen)  # stage 1 froze them: still the vision start


def test_vision_targets_name_findings_and_sides():
    from unix_cxr.train.vision_stage import TARGETS, vision_targets

    spec = {"findings": [{"kind": "pleural_effusion", "side": "bilateral", "severity": "mild", "zone": None,
                          "value": None, "uncertain": True},
                         {"kind": "pacemaker", "side": "left", "severity": "moderate", "zone": None, "value": None,
                          "uncertain": False}]}
    on = {name for name, v in zip(TARGETS, vision_targets(spec), strict=True) if v}
    assert on == {"Pleural Effusion", "Pleural Effusion (right)", "Pleural Effusion (left)", "Support Devices"}
