"""The trainer on the tiny model and a phantom training set made here: recipes, chained stages, frozen sets,
FSDP2 over two gloo processes against one process with accumulation, exact resume after kill -9, a kill during a
checkpoint write, SIGTERM, and a non-finite loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_data import make_training_set, write_recipe

from unix_cxr.cli import main
from unix_cxr.train import checkpoint as ckpt_module
from unix_cxr.train import trainer as trainer_module
from unix_cxr.train.checkpoint import latest_checkpoint
from unix_cxr.train.recipe import load_recipe, shipped_recipes
from unix_cxr.train.trainer import train


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_training_set(tmp_path_factory.mktemp("trainset"))


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory) -> Path:
    """One uninterrupted two-stage run (4 steps each, checkpoints every 2), in this process."""
    root = tmp_path_factory.mktemp("reference")
    recipe = load_recipe(write_recipe(root / "recipe.yaml", files))
    train(recipe, root / "run", progress=False)
    return root


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---- recipes ------------------------------------------------------------------------------------------------
def test_shipped_recipes_hold_the_papers_values():
    assert set(shipped_recipes()) >= {"stage1-und-sft", "stage2-gen-pt", "stage3-gen-ft"}
    fill = {"stage1-und-sft": ["stages.und_sft.data.groups.vlm_sft.path=x.jsonl"],
            "stage2-gen-pt": ["stages.gen_pt.data.groups.t2i_pretrain.path=x", "data.groups.t2i_pretrain.latents=d"],
            "stage3-gen-ft": ["stages.gen_ft.data.groups.t2i_finetune.path=x", "data.groups.t2i_finetune.latents=d"]}
    table = {}
    for name, overrides in fill.items():
        (stage,) = load_recipe(name, overrides).stages.values()
        table[name] = (stage.optim.lr, stage.optim.warmup_steps, stage.steps, stage.global_batch_size,
                       stage.trained_experts, stage.optim.betas, stage.optim.eps, stage.optim.grad_clip)
    assert table == {"stage1-und-sft": (1e-4, 80, 3840, 256, "und", (0.9, 0.95), 1e-15, 1.0),
                     "stage2-gen-pt": (2e-4, 2000, 75000, 256, "gen", (0.9, 0.95), 1e-15, 1.0),
                     "stage3-gen-ft": (1e-4, 0, 5000, 256, "gen", (0.9, 0.95), 1e-15, 1.0)}
    # the released stage-2 warm-up (0, spec 5.4) is one override away
    assert load_recipe("stage2-gen-pt", fill["stage2-gen-pt"] + ["optim.warmup_steps=0"]).stages[
        "gen_pt"].optim.warmup_steps == 0


def test_overrides_reach_every_stage_or_one(files, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", files)
    r = load_recipe(path, ["optim.lr=2e-4", "stages.gen_pt.steps=9", "data.micro_batch_size=1",
                           "model_overrides.decoder.num_layers=3", "precision=bf16-mixed"])
    assert [s.optim.lr for s in r.stages.values()] == [2e-4, 2e-4]
    assert [s.steps for s in r.stages.values()] == [4, 9]
    assert [s.data.micro_batch_size for s in r.stages.values()] == [1, 1]
    assert r.model_overrides == {"decoder.num_layers": 3} and r.precision == "bf16-mixed"


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", r"unknown recipe key 'stages.und_sft.optim.lrr'"),
    ("colour=red", r"unknown recipe key 'colour'"),
    ("precision=fp8", r"precision must be one of"),
    ("stages.und_sft.kind=rl", r"stages.und_sft.kind must be one of"),
    ("global_batch_size=0", r"must be positive"),
])
def test_bad_recipes_name_the_key(files, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(write_recipe(tmp_path / "r.yaml", files), [override])


def test_unknown_key_in_the_file_and_cli_exit_status(files, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", files)
    path.write_text(path.read_text().replace("seed: 7", "seed: 7\nsead: 8"))
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe keys ['sead']" in err and "Traceback" not in err
    assert main(["train", "--config", "no-such-recipe", "--output", str(tmp_path / "run")]) == 2
    assert "no such file or shipped recipe (shipped: " in capsys.readouterr().err


def test_global_batch_must_split_over_ranks(files, tmp_path):
    r = load_recipe(write_recipe(tmp_path / "r.yaml", files, global_batch=3))
    with pytest.raises(ValueError, match=r"global_batch_size 3 is not a multiple of data\.micro_batch_size 2"):
        train(r, tmp_path / "run", progress=False)


# ---- one process --------------------------------------------------------------------------------------------
def test_stages_chain_log_and_export_loadable_release_folders(reference):
    from unix_cxr.checkpoint.release import load_release

    run = reference / "run"
    for stage in ("und_sft", "gen_pt"):
        rows = metrics(run / stage / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert {"step", "loss", "ce", "mse", "repa", "lr", "grad_norm", "tokens_per_s"} <= set(rows[0])
        assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in rows)
        assert sorted(p.name for p in (run / stage / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    und, gen = metrics(run / "und_sft" / "metrics.jsonl"), metrics(run / "gen_pt" / "metrics.jsonl")
    assert all(r["ce_tokens"] > 0 and r["mse_tokens"] == 0 for r in und)  # stage 1: CE only
    assert all(r["mse_tokens"] > 0 and r["ce_tokens"] == 0 for r in gen)  # stage 2: MSE only
    assert und[-1]["ce"] < und[0]["ce"]  # it learns
    assert [r["lr"] for r in und] == [1e-3] * 4  # warm-up of 1 step, then constant
    release = load_release(run / "gen_pt" / "final", dtype=torch.float32)
    assert release.vae is not None and release.tokenizer is not None
    assert release.cfg.tokens.bos == 300  # our own config travels with the folder


def test_frozen_parameters_are_bit_identical_and_understanding_is_unchanged(reference, files):
    from unix_cxr.checkpoint.release import load_release
    from unix_cxr.data.imageio import read_image
    from unix_cxr.data.transforms import siglip_transform
    from unix_cxr.infer.report import ReportGenerator
    from unix_cxr.train.freeze import is_generation_parameter

    run = reference / "run"
    before, after = weights(run / "und_sft" / "final"), weights(run / "gen_pt" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("moe_gen" in k or k.startswith(("time_embedder", "vae2llm", "llm2vae")) for k in changed)
    a, b = (load_release(run / s / "final", dtype=torch.float32) for s in ("und_sft", "gen_pt"))
    for name, p in a.model.named_parameters():
        if not is_generation_parameter(name):
            assert torch.equal(p, dict(b.model.named_parameters())[name]), name
    pixels = siglip_transform(read_image(next((files["images"] / "images").glob("*.png"))), a.cfg.vision)[None]
    outs = []
    for release in (a, b):
        engine = ReportGenerator(release.model)
        state = engine.prefill(pixels, [engine.prompt_block([5, 6])], 6)
        outs.append(engine.decode(state, 6, keep_logits=True))
    out_a, out_b = outs
    assert out_a.token_ids == out_b.token_ids
    for la, lb in zip(out_a.step_logits, out_b.step_logits, strict=True):
        assert torch.equal(la, lb)


def test_output_folder_in_use_needs_resume(reference, tmp_path, capsys):
    rc = main(["train", "--config", str(reference / "recipe.yaml"), "--output", str(reference / "run")])
    assert rc == 2 and "is not empty: give --resume" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [True, False])
def test_the_recipe_chooses_whether_the_heap_keeps_freed_memory(files, tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or 1 << 30)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("in use")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", files), [f"keep_freed_memory={str(keep).lower()}"])
    with pytest.raises(ValueError, match="is not empty"):  # set before the run starts, so before this check
        train(recipe, tmp_path / "run", progress=False)
    assert calls == ([1] if keep else [])


def test_max_steps_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    recipe = load_recipe(reference / "recipe.yaml")
    out = tmp_path / "run"
    first = train(recipe, out, max_steps=3, progress=False)
    assert [r.steps for r in first] == [3, 3]
    assert latest_checkpoint(out / "und_sft" / "checkpoints").name == "step-00000003"
    again = train(recipe, out, resume=True, progress=False)
    assert [r.steps for r in again] == [4, 4]
    for stage in ("und_sft", "gen_pt"):
        assert_same_weights(out / stage / "final", reference / "run" / stage / "final")
        ours = [(r["step"], r["loss"], r["grad_norm"]) for r in metrics(out / stage / "metrics.jsonl")]
        ref = [(r["step"], r["loss"], r["grad_norm"]) for r in metrics(reference / "run" / stage / "metrics.jsonl")]
        assert ours == ref


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path, monkeypatch):
    recipe = load_recipe(reference / "recipe.yaml", ["stages.gen_pt.steps=1"])
    out = tmp_path / "run"
    real_save = ckpt_module.dcp.save

    def dying_save(state, checkpoint_id):
        if checkpoint_id.endswith(".step-00000004.tmp"):
            real_save(state, checkpoint_id=checkpoint_id)  # the shards are written, the rename never happens
            raise KeyboardInterrupt("killed while writing")
        return real_save(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(ckpt_module.dcp, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, progress=False)
    folder = out / "und_sft" / "checkpoints"
    assert latest_checkpoint(folder).name == "step-00000002"
    assert (folder / ".step-00000004.tmp").is_dir()  # the half-written one is not taken for a checkpoint
    monkeypatch.setattr(ckpt_module.dcp, "save", real_save)
    train(recipe, out, resume=True, progress=False)
    assert not (folder / ".step-00000004.tmp").exists()
    assert_same_weights(out / "und_sft" / "final", reference / "run" / "und_sft" / "final")


def test_a_non_finite_loss_stops_with_the_last_checkpoint_intact(reference, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = trainer_module.training_forward

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] > 5:  # 2 micro-batches per step: step 3 is the first bad one
            out.ce = out.ce * float("nan")
        return out

    monkeypatch.setattr(trainer_module, "training_forward", poisoned)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(reference / "recipe.yaml"), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "the loss is nan at step 3" in err and "Traceback" not in err
    assert latest_checkpoint(out / "und_sft" / "checkpoints").name == "step-00000002"
    assert len(metrics(out / "und_sft" / "metrics.jsonl")) == 2 and not (out / "und_sft" / "final").exists()


def test_ema_bounds_and_resume(reference, tmp_path):
    recipe_path = reference / "recipe.yaml"
    run = reference / "run"
    none = tmp_path / "decay0"
    train(load_recipe(recipe_path, ["ema_decay=0.0"]), none, progress=False)  # EMA = the last weights
    for stage in ("und_sft", "gen_pt"):
        assert_same_weights(none / stage / "final-ema", none / stage / "final")
    frozen = tmp_path / "decay1"
    train(load_recipe(recipe_path, ["ema_decay=1.0", "stages.und_sft.steps=1"]), frozen, progress=False)
    assert_same_weights(frozen / "gen_pt" / "final-ema", frozen / "und_sft" / "final")  # EMA = the start
    half = load_recipe(recipe_path, ["ema_decay=0.5"])
    train(half, tmp_path / "a", progress=False)
    train(half, tmp_path / "b", max_steps=3, progress=False)
    train(half, tmp_path / "b", resume=True, progress=False)
    for stage in ("und_sft", "gen_pt"):
        assert_same_weights(tmp_path / "b" / stage / "final-ema", tmp_path / "a" / stage / "final-ema")
        assert_same_weights(tmp_path / "a" / stage / "final", run / stage / "final")  # EMA does not touch training
        assert not torch.equal(weights(tmp_path / "a" / stage / "final-ema")[_trained_key(stage)],
                               weights(tmp_path / "a" / stage / "final")[_trained_key(stage)])


def _trained_key(stage: str) -> str:
    return "llm2vae.weight" if stage == "gen_pt" else "language_model.lm_head.weight"


REPA = ["stages.gen_pt.repa.weight=0.5", "stages.gen_pt.repa.encoder=patch", "stages.gen_pt.repa.image_size=32",
        "stages.gen_pt.repa.layer=1", "stages.gen_pt.repa.projector_dim=16"]


def test_repa_trains_its_projector_not_its_encoder(reference, files):
    from unix_cxr.config import load_config
    from unix_cxr.train.data import build_loader, load_tokenizer_folder
    from unix_cxr.train.objectives import draw_flow_inputs, training_forward
    from unix_cxr.train.parallel import Dist
    from unix_cxr.train.repa import RepaTerm

    recipe = load_recipe(reference / "recipe.yaml", REPA)
    stage = recipe.stages["gen_pt"]
    cfg = load_config("tiny")
    model = trainer_module.build_model(recipe, cfg, reference / "run" / "und_sft" / "final", Dist())
    repa = RepaTerm.build(stage.repa, cfg, Dist())
    loader = build_loader(stage, cfg, load_tokenizer_folder(recipe.tokenizer), Dist(), recipe.seed)
    micro = next(iter(loader))
    noise, t = draw_flow_inputs(micro.batch, [i.key for i in micro.samples], 7, 1.0)
    out = training_forward(model, micro.batch, noise=noise, timesteps=t, keep_hidden_states=True)
    loss = repa.loss_sum(out.hidden_states, micro, loader)
    n_images = RepaTerm.count([micro])
    assert n_images > 0 and -n_images <= float(loss.detach()) <= n_images  # a sum of per-image mean -cosines
    assert float(loss.detach()) != 0.0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in repa.projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in repa.encoder.parameters())
    assert model.decoder.layers[0].gen.q_proj.weight.grad.abs().sum() > 0  # through the aligned layer
    with pytest.raises(ValueError, match=r"repa.layer 3 outside 1..2"):
        RepaTerm(load_recipe(reference / "recipe.yaml", [*REPA, "stages.gen_pt.repa.layer=3"]).stages[
            "gen_pt"].repa, cfg, repa.encoder, repa.projector)


def test_repa_stage_logs_its_term_and_resumes_exactly(reference, tmp_path):
    recipe = load_recipe(reference / "recipe.yaml", REPA)
    train(recipe, tmp_path / "a", progress=False)
    rows = metrics(tmp_path / "a" / "gen_pt" / "metrics.jsonl")
    assert all(-1.0 <= r["repa"] <= 1.0 and r["repa"] != 0.0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["mse"] + 0.5 * r["repa"]) for r in rows)
    train(recipe, tmp_path / "b", max_steps=3, progress=False)
    train(recipe, tmp_path / "b", resume=True, progress=False)
    assert_same_weights(tmp_path / "b" / "gen_pt" / "final", tmp_path / "a" / "gen_pt" / "final")
    assert [r["repa"] for r in metrics(tmp_path / "b" / "gen_pt" / "metrics.jsonl")] == [r["repa"] for r in rows]


def test_a_lora_stage_trains_adapters_and_exports_them_and_the_merged_model(reference, tmp_path):
    # (a generation adapter on a model whose llm2vae is still zero would get no gradient: LoRA tunes trained models)
    recipe = load_recipe(reference / "recipe.yaml", ["stages.und_sft.lora={experts: und, r: 4, alpha: 8}",
                                                     "stages.gen_pt.steps=1"])
    out = tmp_path / "run"
    train(recipe, out, max_steps=2, progress=False)
    train(recipe, out, resume=True, progress=False)  # resumes the adapters too
    rows = metrics(out / "und_sft" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["grad_norm"] > 0 for r in rows)
    adapter = out / "und_sft" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and (adapter / "adapter_model.safetensors").is_file()
    torch.manual_seed(7)  # the recipe's seed: the random start of the und_sft stage
    from unix_cxr.checkpoint.keymap import to_authors
    from unix_cxr.config import load_config
    from unix_cxr.model.unix import UniX

    start = to_authors(UniX(load_config("tiny")).state_dict())
    merged = weights(out / "und_sft" / "final")
    changed = {k for k in merged if not torch.equal(start[k], merged[k])}
    assert changed and all(".layers." in k and "moe_gen" not in k and k.endswith("proj.weight") for k in changed)
    with pytest.raises(ValueError, match="lora and ema_decay together"):
        load_recipe(reference / "recipe.yaml", ["stages.gen_pt.lora={r: 4}", "ema_decay=0.9"])


# ---- other processes ----------------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unix_cxr", "train", *args, "--no-progress"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_9_at_a_step_then_resume_gives_the_same_weights(reference, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", make_paths(reference), steps=8, checkpoint_every=1,
                          stages=("und_sft",))
    train(load_recipe(recipe), tmp_path / "uninterrupted", progress=False)
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli("--config", str(recipe), "--output", str(out)), stderr=subprocess.PIPE, text=True)
    _wait_for(out / "und_sft" / "checkpoints" / "step-00000003" / "trainer.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "und_sft" / "final").exists()
    done = subprocess.run(_cli("--config", str(recipe), "--output", str(out), "--resume"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert_same_weights(out / "und_sft" / "final", tmp_path / "uninterrupted" / "und_sft" / "final")
    assert [r["step"] for r in metrics(out / "und_sft" / "metrics.jsonl")] == list(range(1, 9))


def test_sigterm_saves_a_checkpoint_and_exits_130(reference, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", make_paths(reference), steps=40, checkpoint_every=100,
                          stages=("und_sft",))
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli("--config", str(recipe), "--output", str(out)), stderr=subprocess.PIPE, text=True)
    metrics_file = out / "und_sft" / "metrics.jsonl"
    _wait_for(metrics_file, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "checkpoint saved, continue with --resume" in err
    last = latest_checkpoint(out / "und_sft" / "checkpoints")
    steps = len(metrics(metrics_file))
    assert last is not None and last.name == f"step-{steps:08d}" and steps < 40


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_gloo_processes_equal_one_process_with_two_accumulation_steps(reference, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "unix_cxr", "train",
                           "--config", str(reference / "recipe.yaml"), "--output", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP2 over 2 ranks" in proc.stderr
    for stage in ("und_sft", "gen_pt"):
        two = metrics(out / stage / "metrics.jsonl")
        one = metrics(reference / "run" / stage / "metrics.jsonl")
        assert [r["step"] for r in two] == [1, 2, 3, 4]
        for a, b in zip(two, one, strict=True):
            assert a["ce_tokens"] == b["ce_tokens"] and a["mse_tokens"] == b["mse_tokens"]
            assert abs(a["loss"] - b["loss"]) <= 1e-5, (stage, a, b)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (stage, a, b)
        # The weights are not compared at 1e-5: AdamW with eps 1e-15 turns the float-order noise of near-zero
        # gradients (summed over ranks vs over micro-batches) into steps of +-lr (docs/training.md).


def make_paths(reference: Path) -> dict[str, Path]:
    """The training-set paths written into the reference recipe."""
    import yaml

    r = yaml.safe_load((reference / "recipe.yaml").read_text())
    chat = r["stages"]["und_sft"]["data"]["groups"]["vlm_sft"]
    cap = r["stages"]["gen_pt"]["data"]["groups"]["t2i"]
    return {"chat": Path(chat["path"]), "images": Path(chat["image_root"]), "captions": Path(cap["path"]),
            "latents": Path(cap["latents"]), "tokenizer": Path(r["tokenizer"]), "vae": Path(r["vae"])}


def test_only_rank_0_reads_the_initial_weights(reference, tmp_path):
    """Under torchrun the other ranks build the model on the meta device and get their shard from rank 0
    (parallel.fill_shards; the two-process test above checks the values): they never open the weight file."""
    from unix_cxr.config import load_config
    from unix_cxr.train.parallel import Dist
    from unix_cxr.train.trainer import build_model

    recipe = load_recipe(reference / "recipe.yaml")
    cfg = load_config(recipe.model)
    missing = tmp_path / "no-such-release"
    other = build_model(recipe, cfg, missing, Dist(rank=1, world_size=2))
    assert all(p.is_meta for p in other.parameters())
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        build_model(recipe, cfg, missing, Dist(rank=0, world_size=2))


def test_lora_under_two_gloo_processes_equals_one_process(reference, tmp_path):
    """LoRA under FSDP2: the adapters are sharded and trained like any parameter; at the end rank 0 gathers a full
    copy, writes the peft adapter and the merged release."""
    overrides = ["stages.und_sft.lora={experts: und, r: 4, alpha: 8}", "stages.gen_pt.steps=1", "tensorboard=false"]
    train(load_recipe(reference / "recipe.yaml", overrides), tmp_path / "one", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "unix_cxr", "train",
                           "--config", str(reference / "recipe.yaml"), "--output", str(tmp_path / "two"),
                           "--no-progress", *overrides], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = (metrics(tmp_path / r / "und_sft" / "metrics.jsonl") for r in ("two", "one"))
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(two, one, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    adapters = [load_file(str(tmp_path / r / "und_sft" / "adapter" / "adapter_model.safetensors"))
                for r in ("two", "one")]
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    # within 4 steps of +-lr (1e-3) per element: AdamW's eps 1e-15 can flip the sign of a near-zero update
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=8e-3) for k in adapters[0])
    merged = [weights(tmp_path / r / "und_sft" / "final") for r in ("two", "one")]
    assert merged[0].keys() == merged[1].keys()
    assert all(torch.allclose(merged[0][k], merged[1][k], atol=2e-2) for k in merged[0])
