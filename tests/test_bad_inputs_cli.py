"""The bad-input battery, part three: argument errors of every command family (one line, exit 2, no usage block),
`eval reports`, `train` and `config`. Parts one and two: tests/test_bad_inputs_data.py, test_bad_inputs_weights.py."""

from __future__ import annotations

import json

import pytest
from bad_inputs import assert_untouched, assert_usage_error, run


@pytest.mark.parametrize(("argv", "needle"), [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["config", "unix-fll"], "invalid choice: 'unix-fll'"),
    (["parity"], "the following arguments are required: golden_dir"),
    (["parity", "x", "--dtype", "float8"], "argument --dtype"),
    (["parity", "x", "--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["data", "preview"], "required: file, -o/--output"),
    (["data", "preview", "a.png", "-o", "b.png", "--kind", "mri"], "argument --kind"),
    (["data", "phantom", "--n", "many", "--out", "x"], "argument --n: invalid int value"),
    (["data", "cache-latents", "x", "--vae", "v", "--out", "o", "--size", "300"], "argument --size"),
    (["data", "build", "--source", "nope", "r", "--out", "o"], "argument --source"),
    (["label", "in.jsonl"], "required: -o/--output"),
    (["eval", "reports", "--pred", "p.jsonl"], "required: -o/--output"),
    (["eval", "images", "--real", "r", "-o", "o"], "required: --fake"),
    (["train", "--output", "o"], "required: --config"),
    (["train", "--config", "c", "--output", "o", "--max-steps", "x"], "argument --max-steps"),
    (["convert-vae", "a.ckpt"], "required: output"),
    (["label", "a", "-o", "b", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_argument_errors_are_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as stop:
        run(argv, capsys)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "usage:" not in err, err
    assert err.startswith("unix-cxr") and needle in err, err


def _reports(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["missing_pred", "ids_differ", "bad_json_line", "pred_is_folder", "empty_pred",
                                  "output_is_a_file"])
def test_eval_reports_bad_inputs(case, tmp_path, capsys):
    ref = _reports(tmp_path / "ref.jsonl", [{"id": "a", "report": "No effusion."}, {"id": "b", "report": "Normal."}])
    pred = _reports(tmp_path / "pred.jsonl", [{"id": "a", "report": "No effusion."}, {"id": "b", "report": "Ok."}])
    out = tmp_path / "out"
    needle = str(pred)
    if case == "missing_pred":
        pred = tmp_path / "nope.jsonl"
        needle = str(pred)
    elif case == "ids_differ":
        _reports(pred, [{"id": "a", "report": "x"}, {"id": "c", "report": "y"}])
        needle = "'c'"
    elif case == "bad_json_line":
        pred.write_text('{"id": "a", "report": "x"}\n{"id": \n')
        needle = f"{pred}:2"
    elif case == "pred_is_folder":
        pred = tmp_path / "folder"
        pred.mkdir()
        needle = str(pred)
    elif case == "empty_pred":
        pred.write_text("")
        needle = str(pred)
    elif case == "output_is_a_file":
        out.write_bytes(b"keep me")
        needle = str(out)
    outcome = run(["eval", "reports", "--pred", pred, "--ref", ref, "-o", out, "--no-progress", "--no-meteor"],
                  capsys)
    assert_usage_error(outcome, needle)
    if case == "output_is_a_file":
        assert_untouched(out, b"keep me")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--config", "no-such-recipe"], "no such file or shipped recipe"),
    (["--config", "stage1-und-sft"], "stages.und_sft.data.groups.vlm_sft.path is not set"),
    (["--config", "stage1-und-sft", "optim.lr=fast"], "stages.und_sft.optim.lr must be float, got 'fast'"),
    (["--config", "stage1-und-sft", "warmup"], "override 'warmup' is not of the form key=value"),
    (["--config", "stage1-und-sft", "stages.nope.steps=3"], "unknown recipe key 'stages.nope.steps'"),
    (["--config", "stage1-und-sft", "--max-steps", "0", "stages.und_sft.data.groups.vlm_sft.path=x"],
     "--max-steps must be positive"),
])
def test_train_bad_inputs(extra, needle, tmp_path, capsys):
    outcome = run(["train", *extra, "--output", tmp_path / "run"], capsys)
    assert_usage_error(outcome, needle)
    assert not (tmp_path / "run").exists()


def test_train_recipe_file_errors(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("kind: train\nstages: [1, 2\n")
    assert_usage_error(run(["train", "--config", bad, "--output", tmp_path / "o"], capsys), str(bad),
                       "not valid YAML")
    bad.write_text("- a list\n")
    assert_usage_error(run(["train", "--config", bad, "--output", tmp_path / "o"], capsys), str(bad),
                       "a recipe must be a mapping")
    bad.write_text("kind: model\nstages: {}\n")
    assert_usage_error(run(["train", "--config", bad, "--output", tmp_path / "o"], capsys), "not a training recipe")
