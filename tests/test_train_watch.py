"""What a person watching a run sees, and the per-layer wrappers: validation passes (held-out losses, repeatable,
resumed exactly, without changing training), generated samples through `unix-cxr train`, TensorBoard scalars,
activation checkpointing and torch.compile (same losses as the plain run). Tiny model, the phantom set of
tests/train_data.py (its training files stand in for held-out ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from train_data import make_training_set, write_recipe

from unix_cxr.cli import main
from unix_cxr.infer.marking import MARK_PREFIX, read_marking
from unix_cxr.train.recipe import load_recipe
from unix_cxr.train.trainer import train


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_training_set(tmp_path_factory.mktemp("trainset"))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def untimed(path: Path) -> list[dict]:
    """The metric rows without their wall-clock figure."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows(path)]


def held_out(recipe_path: Path, every: int = 2, samples: int = 0) -> list[str]:
    """Overrides that give each stage a validation set: its own training group, read as held-out data."""
    r = yaml.safe_load(recipe_path.read_text())
    out = []
    for name, stage in r["stages"].items():
        out += [f"stages.{name}.validation.every={every}", f"stages.{name}.validation.samples={samples}",
                f"stages.{name}.validation.batches=2",
                f"stages.{name}.validation.groups={json.dumps(stage['data']['groups'])}"]
    return out


@pytest.fixture(scope="module")
def plain(files, tmp_path_factory) -> Path:
    """One run without validation and without TensorBoard."""
    root = tmp_path_factory.mktemp("plain")
    recipe = write_recipe(root / "recipe.yaml", files)
    train(load_recipe(recipe, ["tensorboard=false"]), root / "run", progress=False)
    return root


@pytest.fixture(scope="module")
def watched(plain, tmp_path_factory) -> Path:
    """The same run with validation every 2 steps and TensorBoard."""
    root = tmp_path_factory.mktemp("watched")
    recipe = plain / "recipe.yaml"
    train(load_recipe(recipe, held_out(recipe)), root / "run", progress=False)
    return root


def test_validation_passes_log_held_out_losses_and_leave_training_unchanged(plain, watched):
    for stage in ("und_sft", "gen_pt"):
        assert untimed(watched / "run" / stage / "metrics.jsonl") == untimed(plain / "run" / stage / "metrics.jsonl")
        val = rows(watched / "run" / stage / "validation.jsonl")
        assert [r["step"] for r in val] == [2, 4]
        key = "val_ce" if stage == "und_sft" else "val_mse"
        assert all(r[key] > 0 and r[f"{key}_tokens"] > 0 for r in val)
        assert val[0][key] != val[1][key]  # the weights changed between the passes, the held-out batches did not
    assert rows(watched / "run" / "gen_pt" / "validation.jsonl")[0]["val_ce_tokens"] == 0  # captions carry no CE


def test_validation_resumes_exactly(plain, watched, tmp_path):
    recipe = load_recipe(plain / "recipe.yaml", held_out(plain / "recipe.yaml"))
    train(recipe, tmp_path / "run", max_steps=3, progress=False)
    train(recipe, tmp_path / "run", resume=True, progress=False)
    resumed = rows(tmp_path / "run" / "und_sft" / "validation.jsonl")
    assert [r["step"] for r in resumed] == [2, 3, 4]  # the capped run ended with a pass at its last step
    assert [r for r in resumed if r["step"] != 3] == rows(watched / "run" / "und_sft" / "validation.jsonl")
    # gen_pt started over from the resumed und_sft result, which equals the uninterrupted one
    assert rows(tmp_path / "run" / "gen_pt" / "validation.jsonl") == rows(watched / "run" / "gen_pt" /
                                                                          "validation.jsonl")


def test_tensorboard_holds_the_metrics_of_every_step(watched):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(watched / "run" / "und_sft" / "tensorboard"))
    board.Reload()
    metric_rows = rows(watched / "run" / "und_sft" / "metrics.jsonl")
    loss = board.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in metric_rows], rel=1e-6)
    assert {"train/ce", "train/mse", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/ce"} <= \
        set(board.Tags()["scalars"])
    assert [e.step for e in board.Scalars("val/ce")] == [2, 4]


def test_the_train_command_writes_generated_samples_at_validation(plain, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", str(plain / "recipe.yaml"), "--output", str(out), "--no-progress",
            *held_out(plain / "recipe.yaml", every=4, samples=2)]
    assert main(args) == 0, capsys.readouterr().err
    reports = rows(out / "und_sft" / "samples" / "step-00000004" / "reports.jsonl")
    assert len(reports) == 2 and all(Path(r["image"]).is_file() for r in reports)
    assert all(isinstance(r["report"], str) for r in reports)
    drawn = out / "gen_pt" / "samples" / "step-00000004"
    captions = rows(drawn / "captions.jsonl")
    assert [c["file"] for c in captions] == ["image_0.png", "image_1.png"]
    for c in captions:
        marking = read_marking(drawn / c["file"])
        assert marking[f"{MARK_PREFIX}synthetic"] == "true" and marking[f"{MARK_PREFIX}prompt"] == c["caption"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "gen_pt" / "tensorboard"), size_guidance={"images": 0})
    board.Reload()
    assert {"val/image_0", "val/image_1"} <= set(board.Tags()["images"])


def test_activation_checkpointing_gives_the_same_steps(plain, tmp_path):
    recipe = load_recipe(plain / "recipe.yaml", ["activation_checkpointing=true", "tensorboard=false"])
    train(recipe, tmp_path / "run", progress=False)
    for stage in ("und_sft", "gen_pt"):
        ours, ref = rows(tmp_path / "run" / stage / "metrics.jsonl"), rows(plain / "run" / stage / "metrics.jsonl")
        assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
        assert [r["grad_norm"] for r in ours] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4)


@pytest.mark.slow  # inductor compiles every layer on the CPU: about a minute
def test_compiled_layers_give_the_same_steps(plain, tmp_path):
    recipe = load_recipe(plain / "recipe.yaml", ["compile=true", "tensorboard=false", "stages.und_sft.steps=2",
                                                 "stages.gen_pt.steps=2"])
    train(recipe, tmp_path / "run", progress=False)
    for stage in ("und_sft", "gen_pt"):
        ours, ref = rows(tmp_path / "run" / stage / "metrics.jsonl"), rows(plain / "run" / stage / "metrics.jsonl")
        assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref[:2]], rel=1e-4)


def test_bad_validation_settings_name_the_key(plain):
    with pytest.raises(ValueError, match=r"stages.und_sft.validation.groups: no held-out data groups"):
        load_recipe(plain / "recipe.yaml", ["stages.und_sft.validation.every=2"])
    with pytest.raises(ValueError, match=r"stages.und_sft.validation.groups.v.path is not set"):
        load_recipe(plain / "recipe.yaml", ["stages.und_sft.validation.every=2",
                                            'stages.und_sft.validation.groups={"v": {"kind": "chat"}}'])
