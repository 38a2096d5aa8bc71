"""`unix-cxr eval reports` / `unix-cxr eval images` (unix_cxr.cli.eval over unix_cxr.eval.runner and
unix_cxr.eval.cards): end to end, the results card, and bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_inception

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.cli import main
from unix_cxr.eval import cards, runner
from unix_cxr.eval import image_metrics as im
from unix_cxr.eval import report_metrics as rm
from unix_cxr.eval.labeler import label_report
from unix_cxr.utils import provenance
from unix_cxr.utils.atomic import TEMP_SUFFIX

PRED = {
    "r1": "FINDINGS: Small left pleural effusion. No pneumothorax. IMPRESSION: Small left pleural effusion.",
    "r2": "The heart is enlarged. Mild pulmonary edema.",
    "r3": "No acute cardiopulmonary process.",
    "r4": "",  # an empty generated report: documented result, not an error
    "r5": "Right lower lobe consolidation, possibly pneumonia. Endotracheal tube in place.",
    "r6": "Cannot exclude a small right pneumothorax.",
}
REF = {
    "r1": "FINDINGS: Moderate left pleural effusion with adjacent atelectasis. IMPRESSION: Left effusion.",
    "r2": "Cardiomegaly with mild interstitial edema.",
    "r3": "Lungs are clear. No pleural effusion or pneumothorax.",
    "r4": "Stable small right pleural effusion.",
    "r5": "Right lower lobe consolidation concerning for pneumonia. ET tube terminates 4 cm above the carina.",
    "r6": "Small right apical pneumothorax.",
}


def _jsonl(path: Path, reports: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "report": v}) + "\n" for k, v in reports.items()), encoding="utf-8")
    return path


def _run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["eval", *argv])
    return rc, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("unix-cxr eval: error:")]


def _check_plot(out: Path, card: dict, name: str) -> None:
    """The plot is a PNG file when matplotlib is installed; otherwise the card says why it is missing."""
    entry = card["outputs"]["plots"][name]
    if importlib.util.find_spec("matplotlib") is not None:
        assert entry == {"written": True, "file": name}
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert entry == {"written": False, "reason": "matplotlib is not installed"}
        assert not (out / name).exists()


@pytest.fixture
def report_files(tmp_path: Path) -> tuple[Path, Path]:
    return _jsonl(tmp_path / "pred.jsonl", PRED), _jsonl(tmp_path / "ref.jsonl", REF)


# ------------------------------------------------------------------------------------------------------- reports


def test_reports_end_to_end_card(tmp_path, capsys, report_files):
    pred, ref = report_files
    out = tmp_path / "out"
    rc, err = _run(capsys, "reports", "--pred", str(pred), "--ref", str(ref), "--bootstrap", "200", "--seed", "3",
                   "--no-meteor", "--no-progress", "-o", str(out))
    assert rc == 0, err
    card = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert card["kind"] == "reports" and card["card_version"] == cards.CARD_VERSION
    assert card["command"].startswith("unix-cxr eval reports --pred ") and "--seed 3" in card["command"]
    assert card["created_utc"].endswith("Z")
    packages = card["environment"]["packages"]
    for name in ("unix-cxr", "torch", "transformers", "numpy", "nltk", "rouge-score"):
        assert packages[name], name
    assert card["inputs"]["pred"]["sha256"] == hashlib.sha256(pred.read_bytes()).hexdigest()
    assert card["inputs"]["ref"]["sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert card["inputs"]["pred"]["n_empty"] == 1 and card["empty_reports"] == {"pred": 1, "ref": 0}
    assert card["seeds"] == {"bootstrap": 3, "rouge_bootstrap": 3}
    assert card["labeler"]["metric_name"] == runner.RULE_F1_NAME == "CheXpert-rule F1 (unix-cxr labeler)"
    assert card["n_reports"] == 6

    # The F1 in the card is chexpert_f1 called directly on the rule labeler's labels.
    pred_labels = {k: label_report(v) for k, v in PRED.items()}
    ref_labels = {k: label_report(v) for k, v in REF.items()}
    f1 = card["chexpert_f1"]
    assert f1["metric_name"] == runner.RULE_F1_NAME
    for mode in rm.MODES:
        direct = rm.chexpert_f1(pred_labels, ref_labels, runner.RULE_F1_NAME, mode)
        ci = rm.bootstrap_f1_ci(pred_labels, ref_labels, runner.RULE_F1_NAME, mode, n_resamples=200, seed=3)
        for key, value in direct.summary().items():
            entry = f1[mode][key]
            assert entry["value"] == value
            assert entry["name"].startswith(runner.RULE_F1_NAME)
            assert (entry["ci_low"], entry["ci_high"]) == (ci[key].low, ci[key].high)
            assert entry["ci_low"] <= value <= entry["ci_high"]
        assert [c["f1"] for c in f1[mode]["per_class"]] == [c.f1 for c in direct.per_class]
        assert [c["label"] for c in f1[mode]["per_class"]] == list(CHEXPERT_LABELS)

    text = card["text_metrics"]
    bleu = rm.bleu_scores(list(PRED.values()), list(REF.values()))
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"):
        assert text[name]["value"] == bleu[name].value and text[name]["ci"]["n_resamples"] == 200
    assert text["ROUGE-L"]["value"] == rm.rouge_l(list(PRED.values()), list(REF.values()), seed=3).value
    assert text["METEOR"]["computed"] is False and "disabled" in text["METEOR"]["reason"]
    assert "RadGraph-partial F1" in text
    if importlib.util.find_spec("pycocoevalcap") is not None:  # CIDEr is computed whenever it can be
        assert text["CIDEr"]["computed"] is True
        assert text["CIDEr"]["value"] == rm.cider(list(PRED.values()), list(REF.values())).value
    else:
        assert text["CIDEr"]["computed"] is False and "pycocoevalcap is not installed" in text["CIDEr"]["reason"]
    if not text["RadGraph-partial F1"]["computed"]:
        assert text["RadGraph-partial F1"]["reason"].startswith("not computed")

    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| CheXpert-rule F1 (unix-cxr labeler) Micro-14 |" in md and "BLEU-4" in md
    assert "CheXbert" not in md  # a rule-labeler run never says CheXbert
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in labels] == list(REF) and labels[3]["pred"] == dict.fromkeys(CHEXPERT_LABELS)
    _check_plot(out, card, "per_class_f1.png")
    assert not [p for p in out.iterdir() if p.name.endswith(TEMP_SUFFIX)]  # atomic writes leave no temporaries
    json.loads((out / "results.json").read_text(encoding="utf-8"),
               parse_constant=lambda c: pytest.fail(f"non-finite number {c} in the card"))


def test_reports_authors_csv(tmp_path, capsys):
    import csv

    path = tmp_path / "generated.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Report Impression", "Ground Truth"])
        for k in PRED:
            writer.writerow([PRED[k], REF[k]])
    rc, err = _run(capsys, "reports", "--pred", str(path), "--bootstrap", "0", "--no-meteor", "--no-progress", "-o",
                   str(tmp_path / "out"))
    assert rc == 0, err
    card = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert card["inputs"]["pred"]["column"] == "Report Impression"
    assert card["inputs"]["ref"]["column"] == "Ground Truth"
    direct = rm.chexpert_f1([{"id": i, "labels": label_report(v)} for i, v in enumerate(PRED.values())],
                            [{"id": i, "labels": label_report(v)} for i, v in enumerate(REF.values())],
                            runner.RULE_F1_NAME, "uncertain_as_positive")
    assert card["chexpert_f1"]["uncertain_as_positive"]["micro_14"]["value"] == direct.micro_14
    assert card["chexpert_f1"]["bootstrap"] is None
    assert card["chexpert_f1"]["uncertain_as_positive"]["micro_14"]["ci_low"] is None


def test_reports_mismatched_ids_exit_2_one_line(tmp_path, capsys, report_files):
    pred, _ = report_files
    ref = _jsonl(tmp_path / "ref2.jsonl", {**{k: v for k, v in REF.items() if k != "r6"}, "x9": "Normal chest."})
    rc, err = _run(capsys, "reports", "--pred", str(pred), "--ref", str(ref), "--no-progress", "-o",
                   str(tmp_path / "out"))
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and "'r6'" in lines[0] and "'x9'" in lines[0] and "--pred" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("case", ["non_utf8", "empty_file", "duplicate_id", "bad_json", "csv_without_column"])
def test_reports_bad_input_exit_2_one_line(tmp_path, capsys, report_files, case):
    pred, ref = report_files
    bad = tmp_path / ("bad.csv" if case == "csv_without_column" else "bad.jsonl")
    if case == "non_utf8":
        bad.write_bytes(pred.read_bytes() + b'{"id": "r7", "report": "caf\xe9"}\n')
        expected = ":7: not valid UTF-8"
    elif case == "empty_file":
        bad.write_bytes(b"\n")
        expected = "no reports"
    elif case == "duplicate_id":
        bad.write_bytes(pred.read_bytes() + json.dumps({"id": "r1", "report": "x"}).encode() + b"\n")
        expected = "duplicate id 'r1'"
    elif case == "bad_json":
        bad.write_bytes(b'{"id": "r1", "report": \n')
        expected = "not valid JSON"
    else:
        bad.write_text("text,other\na,b\n", encoding="utf-8")
        expected = "'Report Impression'"
    rc, err = _run(capsys, "reports", "--pred", str(bad), "--ref", str(ref), "--no-progress", "-o",
                   str(tmp_path / "out"))
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err


def test_reports_missing_file_and_bad_labeler(tmp_path, capsys, report_files):
    pred, ref = report_files
    rc, err = _run(capsys, "reports", "--pred", str(tmp_path / "nope.jsonl"), "--ref", str(ref), "-o",
                   str(tmp_path / "o"))
    assert rc == 2 and "does not exist" in _error_lines(err)[0]
    rc, err = _run(capsys, "reports", "--pred", str(pred), "--ref", str(ref), "--labeler", "chexbert", "-o",
                   str(tmp_path / "o"))
    assert rc == 2 and "'rules' or 'chexbert PATH'" in _error_lines(err)[0]


def test_reports_with_chexbert_labeler(tmp_path, capsys, report_files):
    """A tiny random CheXbert saved in the public layout, used through the command: "CheXbert F1" everywhere."""
    from transformers import BertConfig

    from unix_cxr.eval import chexbert as cb

    words = sorted({w.strip(".,:").lower() for t in (*PRED.values(), *REF.values()) for w in t.split()} - {""})
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", ":", *words])
                                   + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=8 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=40, max_position_embeddings=128, initializer_range=0.5)
    (tok / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    torch.manual_seed(0)
    model = cb.CheXbert(config).eval()
    ckpt = tmp_path / "chexbert.pth"
    torch.save({"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    pred, ref = report_files
    out = tmp_path / "out"
    rc, err = _run(capsys, "reports", "--pred", str(pred), "--ref", str(ref), "--labeler", "chexbert", str(ckpt),
                   "--chexbert-tokenizer", str(tok), "--bootstrap", "50", "--no-meteor", "--no-progress", "-o",
                   str(out))
    assert rc == 0, err
    card = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert card["labeler"]["metric_name"] == "CheXbert F1" and card["chexpert_f1"]["metric_name"] == "CheXbert F1"
    assert card["labeler"]["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    labeler = cb.CheXbertLabeler(ckpt, tok)
    pl = dict(zip(PRED, labeler.label_many(list(PRED.values())), strict=True))
    rl = dict(zip(REF, labeler.label_many(list(REF.values())), strict=True))
    direct = rm.chexpert_f1(pl, rl, "CheXbert F1", "uncertain_as_negative")
    assert card["chexpert_f1"]["uncertain_as_negative"]["macro_14"]["value"] == direct.macro_14
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| CheXbert F1 Micro-14 |" in md and "CheXpert-rule" not in md


def test_evaluate_reports_library_call():
    result = runner.evaluate_reports(PRED, REF, n_bootstrap=0, with_meteor=False, with_cider=False,
                                 with_radgraph=False)
    assert result.metric_name == runner.RULE_F1_NAME and result.f1_ci is None
    assert result.n_empty_pred == 1 and result.notes
    assert result.text["BLEU-4"].per_report[3] == 0.0  # the empty prediction scores 0
    with pytest.raises(ValueError, match="only in"):
        runner.evaluate_reports({"a": "x"}, {"b": "y"})


# -------------------------------------------------------------------------------------------------------- images


def _write_images(folder: Path, n: int, seed: int, *, size: int = 32, bright: float = 0.0,
                  sizes: tuple[int, ...] = ()) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        side = sizes[i % len(sizes)] if sizes else size
        yy, xx = np.mgrid[0:side, 0:side] / side
        img = 120 + 60 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) + rng.normal(0, 20, (side, side))
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(np.clip(img + bright, 0, 255).astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths


def _small_encoder() -> im.TorchModuleEncoder:
    """A weight-free 'encoder': 3 x 2 x 2 average-pooled pixels (12-d features)."""
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    return im.TorchModuleEncoder(module, "avgpool-2x2 (test)", input_size=im.METRIC_IMAGE_SIZE)


def _labels_file(path: Path, paths: list[Path], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for p in paths:
        labels = dict.fromkeys(CHEXPERT_LABELS)
        labels["Pleural Effusion"] = int(rng.integers(0, 2))
        labels["No Finding"] = 1 if labels["Pleural Effusion"] == 0 else None
        rows.append(json.dumps({"id": p.stem, "labels": labels}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_evaluate_images_with_torch_module_encoder(tmp_path):
    real = _write_images(tmp_path / "real", 16, 0)
    fake = _write_images(tmp_path / "fake", 16, 1, bright=40.0, sizes=(24, 40))  # mixed sizes: squashed to 299
    enc = _small_encoder()
    result = runner.evaluate_images(real, fake, enc, seed=5)
    x = im.extract_features(enc, real, progress=False)
    y = im.extract_features(enc, fake, progress=False)
    direct = im.image_metrics(x, y, seed=5)
    assert result.metrics.fd == direct.fd and result.metrics.kd_mean == direct.kd_mean
    assert (result.metrics.precision, result.metrics.coverage) == (direct.precision, direct.coverage)
    assert result.feature_dim == 12 and result.encoder == "avgpool-2x2 (test)"
    other_real = _write_images(tmp_path / "real2", 16, 2)
    assert runner.evaluate_images(real, other_real, enc).metrics.fd < result.metrics.fd  # brighter set: farther

    sharded = runner.evaluate_images(real, fake, enc, n_shards=2, seed=5)
    assert sharded.metrics.n_shards == 2 and len(sharded.metrics.shards) == 2
    with pytest.raises(im.InsufficientSamplesError, match="at least 24"):
        runner.evaluate_images(real, fake, enc, n_shards=4)


def test_evaluate_images_per_pathology(tmp_path):
    real = _write_images(tmp_path / "real", 20, 0)
    fake = _write_images(tmp_path / "fake", 20, 1, bright=30.0)
    table = runner.read_image_labels(_labels_file(tmp_path / "labels.jsonl", real, 0))
    rl = runner.labels_for_images(real, table, "real")
    result = runner.evaluate_images(real, fake, _small_encoder(), real_labels=rl, fake_labels=rl)
    per = result.to_dict()["per_pathology_fd"]
    assert list(per) == list(CHEXPERT_LABELS)
    assert per["Pleural Effusion"]["fd"] is not None and per["Edema"]["fd"] is None
    assert per["Edema"]["reason"].startswith("not computed")
    x = im.extract_features(_small_encoder(), real, progress=False)
    y = im.extract_features(_small_encoder(), fake, progress=False)
    mask = rl[:, CHEXPERT_LABELS.index("Pleural Effusion")] == 1
    assert per["Pleural Effusion"]["fd"] == im.frechet_distance(x[mask], y[mask])
    with pytest.raises(ValueError, match="no labels for 1 image"):
        runner.labels_for_images([*real, tmp_path / "real" / "unknown.png"], table, "real")


def test_images_command_end_to_end(tmp_path, capsys, monkeypatch):
    real = _write_images(tmp_path / "real", 14, 0)
    fake = _write_images(tmp_path / "fake", 14, 1, bright=40.0, sizes=(24, 40))
    labels = _labels_file(tmp_path / "labels.jsonl", real, 0)
    monkeypatch.setattr(runner, "make_encoder", lambda spec, **kw: (_small_encoder(), {"kind": "test", "name":
                                                                                   "avgpool-2x2 (test)"}))
    out = tmp_path / "out"
    rc, err = _run(capsys, "images", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--labels",
                   str(labels), "--seed", "2", "--no-progress", "-o", str(out))
    assert rc == 0, err
    card = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert card["kind"] == "images" and card["encoder"]["name"] == "avgpool-2x2 (test)"
    assert card["command"].startswith("unix-cxr eval images --real ")
    assert card["seeds"] == {"kd_subsets": 2}
    assert card["inputs"]["real"]["file_list_sha256"] == provenance.sha256_file_list(real)
    assert card["inputs"]["real"]["n_images"] == 14 and not card["inputs"]["real"]["mixed_sizes"]
    assert card["inputs"]["fake"]["mixed_sizes"] and set(card["inputs"]["fake"]["original_sizes"]) == {"24x24",
                                                                                                       "40x40"}
    assert card["inputs"]["labels"]["sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    enc = _small_encoder()
    direct = im.image_metrics(im.extract_features(enc, real, progress=False),
                              im.extract_features(enc, fake, progress=False), seed=2)
    m = card["image_metrics"]
    assert m["fd"] == direct.fd and m["kd_mean"] == direct.kd_mean and m["density"] == direct.density
    assert m["k"] == 5 and m["feature_dim"] == 12
    assert card["per_pathology_fd"]["Pleural Effusion"]["encoder"] == "avgpool-2x2 (test)"
    assert card["environment"]["packages"]["torch"]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| FD (avgpool-2x2 (test)) |" in md and "FD per pathology" in md
    _check_plot(out, card, "image_grid.png")
    assert not [p for p in out.iterdir() if p.name.endswith(TEMP_SUFFIX)]


@pytest.mark.parametrize("case", ["too_few", "unreadable", "no_images", "missing_labels"])
def test_images_command_bad_input_exit_2(tmp_path, capsys, case):
    _write_images(tmp_path / "real", 8, 0)
    _write_images(tmp_path / "fake", 8 if case != "too_few" else 3, 1)
    extra: list[str] = []
    if case == "too_few":
        expected = "need at least 6"
    elif case == "unreadable":
        (tmp_path / "fake" / "zz_broken.png").write_bytes(b"not an image")
        expected = "cannot read"
    elif case == "no_images":
        (tmp_path / "empty").mkdir()
        expected = "has no image files"
    else:
        extra = ["--labels", str(tmp_path / "labels.jsonl")]
        (tmp_path / "labels.jsonl").write_text(json.dumps({"id": "img_000", "labels": dict.fromkeys(
            CHEXPERT_LABELS)}) + "\n", encoding="utf-8")
        expected = "no labels for 7 image(s)"
    fake = tmp_path / ("empty" if case == "no_images" else "fake")
    rc, err = _run(capsys, "images", "--real", str(tmp_path / "real"), "--fake", str(fake), *extra,
                   "--no-progress", "-o", str(tmp_path / "out"))
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "out" / "results.json").exists()


@needs_inception
def test_images_command_with_inception(tmp_path, capsys):
    _write_images(tmp_path / "real", 10, 0, size=48)
    _write_images(tmp_path / "fake", 10, 1, size=48, bright=60.0)
    out = tmp_path / "out"
    rc, err = _run(capsys, "images", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                   "--encoder", "inception", "--no-progress", "-o", str(out))
    assert rc == 0, err
    card = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert card["encoder"]["name"] == "Inception (fid-helper weights)" and card["image_metrics"]["feature_dim"] == 2048
    assert card["encoder"]["sha256"] == provenance.sha256_file(im.fid_helper_inception_path())
    assert card["image_metrics"]["fd"] > 0 and any("N <= D" in w for w in card["warnings"])
