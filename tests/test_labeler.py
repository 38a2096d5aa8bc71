"""The rule-based CheXpert labeler (unix_cxr.eval.labeler) and `unix-cxr label`.

Sentences here were written for these tests. The last tests read the real IU X-Ray reports from the installed
torchxrayvision wheel and NegBio's gold labels from ../shared/data when present (skipped otherwise) and check
only aggregate properties; no report text is stored here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from unix_cxr.chexpert import CHEXPERT_LABELS, check_labels
from unix_cxr.cli import main
from unix_cxr.eval.labeler import Labeler, label_report

ROOT = Path(__file__).resolve().parents[1]

# (sentence, {observation: expected label}); observations not listed are not checked.
CASES: list[tuple[str, dict[str, int | None]]] = [
    # Enlarged Cardiomediastinum
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
    ("Widening of the superior mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("Normal cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": 0, "Cardiomegaly": 0}),
    ("Mediastinal and hilar contours are unremarkable.", {"Enlarged Cardiomediastinum": 0}),
    ("No mediastinal widening.", {"Enlarged Cardiomediastinum": 0}),
    ("Possible mediastinal widening, likely due to rotation.", {"Enlarged Cardiomediastinum": -1}),
    ("The cardiomediastinal silhouette is stable.", {"Enlarged Cardiomediastinum": -1}),
    # Cardiomegaly
    ("Moderate cardiomegaly.", {"Cardiomegaly": 1}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": 1}),
    ("Heart size is normal.", {"Cardiomegaly": 0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": 0}),
    ("No cardiomegaly.", {"Cardiomegaly": 0}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": -1}),
    ("Heart size is stable.", {"Cardiomegaly": -1}),
    ("Stable mild cardiomegaly.", {"Cardiomegaly": 1}),
    ("Heart size is normal and stable.", {"Cardiomegaly": 0}),
    ("The heart may be mildly enlarged.", {"Cardiomegaly": -1}),
    ("Findings consistent with congestive heart failure.", {"Edema": 1, "Cardiomegaly": None}),
    ("Cardiac and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    # Lung Opacity
    ("Patchy opacity at the left base.", {"Lung Opacity": 1}),
    ("Bibasilar airspace disease.", {"Lung Opacity": 1}),
    ("No focal airspace opacity.", {"Lung Opacity": 0}),
    ("Lungs are clear of infiltrates.", {"Lung Opacity": 0}),
    ("Increased interstitial markings.", {"Lung Opacity": 1}),
    ("Interstitial markings are normal.", {"Lung Opacity": 0}),
    ("Hazy opacity which could be artifact.", {"Lung Opacity": 1}),
    # Lung Lesion
    ("There is a 1.2 cm nodule in the right upper lobe.", {"Lung Lesion": 1}),
    ("Right hilar mass.", {"Lung Lesion": 1}),
    ("Nodular opacity in the left midlung.", {"Lung Lesion": 1, "Lung Opacity": 1}),
    ("No suspicious pulmonary nodules or masses.", {"Lung Lesion": 0}),
    ("Cannot exclude a small pulmonary nodule.", {"Lung Lesion": -1}),
    ("Calcified granuloma in the right lower lobe.", {"Lung Lesion": None}),
    ("Lytic lesion in the humeral head.", {"Lung Lesion": None}),
    # Edema
    ("Moderate pulmonary edema.", {"Edema": 1}),
    ("No pulmonary edema.", {"Edema": 0}),
    ("Cardiomegaly without edema.", {"Cardiomegaly": 1, "Edema": 0}),
    ("Interstitial opacities may represent mild edema.", {"Edema": -1, "Lung Opacity": 1}),
    ("Pulmonary edema has resolved.", {"Edema": 0}),
    ("Pulmonary edema has improved.", {"Edema": 1}),
    ("Mild pulmonary vascular congestion.", {"Edema": -1}),
    ("No vascular congestion.", {"Edema": 0}),
    # Consolidation
    ("Right lower lobe consolidation.", {"Consolidation": 1}),
    ("No focal consolidation.", {"Consolidation": 0}),
    ("Consolidation is not excluded.", {"Consolidation": -1}),
    # Pneumonia
    ("Right lower lobe pneumonia.", {"Pneumonia": 1}),
    ("Cannot exclude pneumonia.", {"Pneumonia": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Findings may represent pneumonia.", {"Pneumonia": -1}),
    ("No evidence of pneumonia.", {"Pneumonia": 0}),
    ("Opacity concerning for infection.", {"Pneumonia": -1, "Lung Opacity": 1}),
    ("Sequelae of prior granulomatous infection.", {"Pneumonia": None}),
    # Atelectasis
    ("Bibasilar atelectasis.", {"Atelectasis": 1}),
    ("Likely bibasilar atelectasis.", {"Atelectasis": -1}),
    ("Left basilar atelectasis or scarring.", {"Atelectasis": -1}),
    ("Collapse of the left lower lobe.", {"Atelectasis": 1}),
    ("No atelectasis.", {"Atelectasis": 0}),
    # Pneumothorax
    ("Small right apical pneumothorax.", {"Pneumothorax": 1}),
    ("No pneumothorax.", {"Pneumothorax": 0}),
    ("No visualized pneumothorax.", {"Pneumothorax": 0}),
    ("Pneumothorax is not seen.", {"Pneumothorax": 0}),
    ("Questionable tiny left apical pneumothorax.", {"Pneumothorax": -1}),
    ("Left pneumothorax has decreased in size.", {"Pneumothorax": 1}),
    # Pleural Effusion
    ("Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("No pleural effusion.", {"Pleural Effusion": 0}),
    ("Possible small right effusion.", {"Pleural Effusion": -1}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Interval resolution of the right effusion.", {"Pleural Effusion": 0}),
    ("Near complete resolution of the right effusion.", {"Pleural Effusion": 1}),
    ("Blunting of the right costophrenic angle.", {"Pleural Effusion": None, "Pleural Other": 1}),
    ("Small pericardial effusion.", {"Pleural Effusion": None}),
    ("Large left hydropneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 1}),
    # Pleural Other
    ("Left apical pleural thickening.", {"Pleural Other": 1}),
    ("Calcified pleural plaques.", {"Pleural Other": 1}),
    ("No pleural thickening.", {"Pleural Other": 0}),
    # Fracture
    ("Old healed right rib fracture.", {"Fracture": 1}),
    ("Acute displaced fracture of the left clavicle.", {"Fracture": 1}),
    ("No acute fracture.", {"Fracture": 0}),
    ("Age-indeterminate rib fractures.", {"Fracture": 1}),
    ("Possible nondisplaced rib fracture.", {"Fracture": -1}),
    # Support Devices
    ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": 1}),
    ("Lines and tubes unchanged.", {"Support Devices": 1}),
    ("Right IJ central venous catheter tip in the SVC.", {"Support Devices": 1}),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.", {"Support Devices": 1}),
    ("Intact median sternotomy wires.", {"Support Devices": 1}),
    ("The nasogastric tube has been removed.", {"Support Devices": 0}),
    ("Interval removal of the chest tube.", {"Support Devices": 0}),
    ("NG tube courses below the diaphragm, tip not visualized.", {"Support Devices": 1}),
    ("Cholecystectomy clips.", {"Support Devices": 1}),
]

SCOPE_CASES: list[tuple[str, dict[str, int | None]]] = [
    ("No pneumothorax, but there is a small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No evidence of pneumonia, although atelectasis is possible.", {"Pneumonia": 0, "Atelectasis": -1}),
    ("No pleural effusion, pneumothorax, or focal consolidation.",
     {"Pleural Effusion": 0, "Pneumothorax": 0, "Consolidation": 0}),
    ("No effusion or pneumothorax is seen.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("No pneumothorax is seen, small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("Small effusion is present and the pneumothorax has resolved.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    ("Left lower lobe opacity may represent atelectasis or pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Atelectasis versus pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Cannot exclude effusion.", {"Pleural Effusion": -1}),
    ("Mild cardiomegaly. No pleural effusion.", {"Cardiomegaly": 1, "Pleural Effusion": 0}),
    ("Heart size is normal, mediastinum is widened.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 1}),
    ("There is no focal consolidation; there is mild bibasilar atelectasis.", {"Consolidation": 0, "Atelectasis": 1}),
    ("Effusion unchanged. Pneumothorax not seen.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    ("Opacity which is likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("Small effusion, possibly loculated.", {"Pleural Effusion": 1}),
    # one positive mention wins over a negative one of the same observation
    ("Small left effusion. No right effusion.", {"Pleural Effusion": 1}),
    ("Possible left effusion. No right effusion.", {"Pleural Effusion": -1}),
    # sections: INDICATION / HISTORY / COMPARISON are not read
    ("INDICATION: Rule out pneumonia. FINDINGS: Lungs are clear. IMPRESSION: No acute process.",
     {"Pneumonia": None, "No Finding": 1}),
    ("HISTORY: CHF.\nFINDINGS: Heart size normal.", {"Edema": None, "Cardiomegaly": 0}),
]


@pytest.mark.parametrize(("text", "expected"), CASES + SCOPE_CASES, ids=[c[0][:60] for c in CASES + SCOPE_CASES])
def test_sentences(text: str, expected: dict[str, int | None]) -> None:
    labels = label_report(text)
    got = {k: labels[k] for k in expected}
    assert got == expected, Labeler().explain(text)


@pytest.mark.parametrize("text", [c[0] for c in CASES + SCOPE_CASES][:40])
def test_labels_are_complete(text: str) -> None:
    labels = label_report(text)
    assert tuple(labels) == CHEXPERT_LABELS
    check_labels(labels)


def test_no_finding() -> None:
    """No Finding is 1 iff none of the 12 pathologies is 1 or -1 (Support Devices do not count); else null."""
    assert label_report("No acute cardiopulmonary process.")["No Finding"] == 1
    assert label_report("Heart size is normal. Lungs are clear. No effusion.")["No Finding"] == 1
    assert label_report("Lungs are clear.")["No Finding"] == 1  # nothing mentioned: CheXpert's rule
    assert label_report("ET tube in good position. Lungs are clear.")["No Finding"] == 1  # devices do not count
    assert label_report("Mild cardiomegaly.")["No Finding"] is None
    assert label_report("Possible right lower lobe pneumonia.")["No Finding"] is None  # uncertain counts
    assert label_report("Old healed rib fracture.")["No Finding"] is None
    assert label_report("Stable emphysema.")["No Finding"] == 1  # not one of the 12 pathologies
    assert all(v != 0 for v in (label_report(t)["No Finding"] for t, _ in CASES))  # never 0


@pytest.mark.parametrize("text", ["", "   \n\t", "INDICATION: cough.", "COMPARISON: None."])
def test_empty_report_is_all_null(text: str) -> None:
    assert label_report(text) == dict.fromkeys(CHEXPERT_LABELS)


def test_type_error() -> None:
    with pytest.raises(TypeError):
        label_report(None)  # type: ignore[arg-type]


def test_label_many_and_explain() -> None:
    labeler = Labeler()
    texts = [c[0] for c in CASES]
    assert labeler.label_many(texts) == [label_report(t) for t in texts]
    why = labeler.explain("Cannot exclude pneumonia.")  # more conventions: tests/test_labeler_conventions.py
    assert why == [("Pneumonia", "pneumonia", -1, "pre-negation uncertainty")]


def test_prefilter_does_not_change_labels() -> None:
    texts = [c[0] for c in CASES + SCOPE_CASES]
    assert Labeler().label_many(texts) == Labeler(prefilter=False).label_many(texts)


# --- CLI --------------------------------------------------------------------------------------------------------

def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "report": "FINDINGS: Mild cardiomegaly. No effusion. IMPRESSION: Cardiomegaly."}),
        "{not json",
        json.dumps({"id": 2, "report": "No acute cardiopulmonary process."}),
        json.dumps({"id": 3}),
        json.dumps({"id": 4, "report": 17}),
        json.dumps({"id": "e", "report": ""}),
        "",
        json.dumps({"id": "a", "report": "duplicate id"}),
    ]
    source.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": 9, "report": "caf\xe9"}\n')
    output = tmp_path / "out" / "labels.jsonl"
    assert main(["label", str(source), "-o", str(output)]) == 1
    err = capsys.readouterr().err
    for what in ("in.jsonl:2: not valid JSON", "in.jsonl:4: missing 'report'", "in.jsonl:5: 'report' must be",
                 "in.jsonl:8: duplicate id 'a'", "in.jsonl:9: not valid UTF-8"):
        assert what in err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", 2, "e"]
    for record in records:
        assert list(record) == ["id", "labels"]
        assert list(record["labels"]) == list(CHEXPERT_LABELS)
        check_labels(record["labels"])
    assert records[0]["labels"]["Cardiomegaly"] == 1 and records[0]["labels"]["Pleural Effusion"] == 0
    assert records[1]["labels"]["No Finding"] == 1
    assert records[2]["labels"] == dict.fromkeys(CHEXPERT_LABELS)
    assert not [p for p in output.parent.iterdir() if p.name != output.name]  # no temporary file left


def test_cli_all_good_is_0_and_missing_input_is_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "report": "Small left pleural effusion."}) + "\n")
    output = tmp_path / "out.jsonl"
    assert main(["label", str(source), "-o", str(output), "--no-progress"]) == 0
    assert json.loads(output.read_text())["labels"]["Pleural Effusion"] == 1
    assert main(["label", str(tmp_path / "missing.jsonl"), "-o", str(output)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def _interrupting_labeler(monkeypatch: pytest.MonkeyPatch, k: int | None) -> list[str]:
    """`unix-cxr label` gets a labeler that raises KeyboardInterrupt at its (k+1)-th report; returns the reports
    labelled."""
    import unix_cxr.eval.label_batch as label_batch

    calls: list[str] = []

    class Flaky(Labeler):
        def label(self, text: str) -> dict:
            if k is not None and len(calls) >= k:
                raise KeyboardInterrupt
            calls.append(text)
            return super().label(text)

    monkeypatch.setattr(label_batch, "Labeler", Flaky)
    return calls


def _report_lines(path: Path) -> Path:
    lines = [json.dumps({"id": i, "report": f"Small left pleural effusion number {i}. Mild cardiomegaly."})
             for i in range(10)]
    lines[2] = "[" * 50_000  # nested too deeply
    lines[5] = json.dumps({"id": "d", "report": None, "dropped": "no FINDINGS or IMPRESSION section"})
    lines[7] = json.dumps({"id": 1, "report": "duplicate"})
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("k", [0, 2, 5])
def test_cli_resume_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], k: int) -> None:
    source = _report_lines(tmp_path / "in.jsonl")
    want, output = tmp_path / "want.jsonl", tmp_path / "out.jsonl"
    assert main(["label", str(source), "-o", str(want), "--no-progress"]) == 1
    output.write_bytes(b"old\n")
    calls = _interrupting_labeler(monkeypatch, k)
    assert main(["label", str(source), "-o", str(output), "--no-progress"]) == 130
    assert output.read_bytes() == b"old\n"
    done = len(calls)
    calls = _interrupting_labeler(monkeypatch, None)
    capsys.readouterr()
    assert main(["label", str(source), "-o", str(output), "--no-progress"]) == 1
    assert output.read_bytes() == want.read_bytes() and len(calls) == 7 - done  # 7 good lines: none twice
    err = capsys.readouterr().err
    assert "in.jsonl:3: not valid JSON (nested too deeply)" in err and "in.jsonl:8: duplicate id 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "want.jsonl"]


def test_cli_resume_starts_over_for_another_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _report_lines(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    _interrupting_labeler(monkeypatch, 3)
    assert main(["label", str(source), "-o", str(output), "--no-progress"]) == 130
    source.write_text(source.read_text().replace("number 0.", "number zero."))
    calls = _interrupting_labeler(monkeypatch, None)
    assert main(["label", str(source), "-o", str(output), "--no-progress"]) == 1
    assert len(calls) == 7


def test_cli_resume_starts_over_for_another_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _report_lines(tmp_path / "in.jsonl")
    output = tmp_path / "out.jsonl"
    _interrupting_labeler(monkeypatch, 3)
    assert main(["label", str(source), "-o", str(output), "--no-progress"]) == 130
    calls = _interrupting_labeler(monkeypatch, None)
    assert main(["label", str(source), "-o", str(output), "--no-progress", "--reading", "negbio"]) == 1
    assert len(calls) == 7  # the conventions run's 3 lines are not reused by a NegBio-reading run


def test_cli_every_line_fails_keeps_the_old_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": ' + "9" * 5000 + ', "report": "x"}\n{"id": "\\ud800", "report": "x"}\n{bad\n')
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"previous labels\n")
    assert main(["label", str(source), "-o", str(output)]) == 1
    assert output.read_bytes() == b"previous labels\n"
    err = capsys.readouterr().err
    assert "in.jsonl:1: not valid JSON (an integer of more than 4300 digits)" in err
    assert "in.jsonl:2: not valid Unicode (a lone surrogate \\ud800" in err and "every line failed" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


# --- real reports (aggregate properties only) -------------------------------------------------------------------

def _eval_module():
    return load_benchmark("eval_labeler")


@pytest.fixture(scope="module")
def iu():
    module = _eval_module()
    heldout = module.read_heldout() if module.HELDOUT_LIST.is_file() else frozenset()
    try:
        reports = module.load_iu_reports(exclude=heldout)  # the held-out gold reports are never read
    except FileNotFoundError as err:
        pytest.skip(f"IU X-Ray reports not available: {err}")
    return module, reports


def test_iu_reports_aggregate(iu) -> None:
    """All 3,955 IU reports label cleanly; the prefilter changes nothing; agreement with MeSH is sane."""
    module, reports = iu
    uids = sorted(reports)
    texts = [reports[u].text for u in uids]
    labels = Labeler().label_many(texts)
    for lab in labels:
        check_labels(lab)
    assert labels[::8] == Labeler(prefilter=False).label_many(texts[::8])
    pred = dict(zip(uids, labels, strict=True))
    normal = sum(p["No Finding"] == 1 for p in labels) / len(labels)
    assert 0.4 < normal < 0.8
    for obs in ("Cardiomegaly", "Pleural Effusion", "Support Devices", "Fracture"):
        tagged = [u for u in uids if obs in module.mesh_present(reports[u].mesh)]
        called = [u for u in uids if pred[u][obs] == 1]
        recall = sum(pred[u][obs] == 1 for u in tagged) / len(tagged)
        precision = sum(obs in module.mesh_present(reports[u].mesh) for u in called) / len(called)
        # MeSH codes no surgical clips, sutures or masked sternotomy wires as devices, the conventions do
        floor = 0.6 if obs == "Support Devices" else 0.75
        assert recall > 0.75 and precision > floor, (obs, recall, precision)


def test_negbio_gold_dev_split(iu) -> None:
    """Micro F1 over the strict classes on NegBio's non-test ids stays in the range measured in docs/labeler.md
    (below the labeler's earlier 0.86: NegBio's gold counts calcified nodules, borderline hearts and masked hedges
    positive, the project's conventions do not)."""
    module, reports = iu
    if not (module.NEGBIO_DIR / "openi_gold_std14.csv").is_file():
        pytest.skip(f"{module.NEGBIO_DIR} is not present")
    gold, test_ids = module.load_gold()
    dev = sorted(set(gold) - test_ids)
    pred = {u: label_report(reports[u].text) for u in dev}
    counts = module.score(dev, gold, pred, uncertain_positive=False)
    strict = [o for o in module.GOLD_MAP if o not in module.APPROXIMATE and o != "No Finding"]
    micro, _ = module.micro_macro(counts, strict)
    assert micro > 0.75


# F1 (uncertain as negative) of the labeler as it was before issue 10, on NegBio's gold (docs/labeler.md): the
# NegBio reading must not fall below any of them, in any split.
NEGBIO_BEFORE = {
    "test": {"Atelectasis": 0.842, "Cardiomegaly": 0.986, "Pleural Effusion": 0.926, "Lung Lesion": 0.792,
             "Pneumonia": 0.333, "Pneumothorax": 0.500, "Consolidation": 0.833, "Edema": 0.857, "Pleural Other": 0.400,
             "No Finding": 0.695},
    "dev": {"Atelectasis": 0.820, "Cardiomegaly": 0.940, "Pleural Effusion": 0.878, "Lung Lesion": 0.773,
            "Pneumonia": 0.829, "Pneumothorax": 0.957, "Consolidation": 0.933, "Edema": 0.807, "Pleural Other": 0.704,
            "No Finding": 0.674},
}


def test_negbio_reading_no_class_below_before(iu) -> None:
    """Issue 10's NegBio criterion, held by the NegBio reading: no strict class below the earlier labeler."""
    module, reports = iu
    if not (module.NEGBIO_DIR / "openi_gold_std14.csv").is_file():
        pytest.skip(f"{module.NEGBIO_DIR} is not present")
    gold, test_ids = module.load_gold()
    negbio = Labeler(reading="negbio")
    splits = {"test": sorted(set(gold) & test_ids), "dev": sorted(set(gold) - test_ids)}
    for split, ids in splits.items():
        pred = {u: negbio.label(reports[u].text) for u in ids}
        counts = module.score(ids, gold, pred, uncertain_positive=False)
        below = {obs: (round(counts[obs].f1, 3), before) for obs, before in NEGBIO_BEFORE[split].items()
                 if round(counts[obs].f1, 3) < before}
        assert not below, (split, below)


def test_development_labels_targets(iu) -> None:
    """On our own development labels (benchmarks/labeler_dev, when present) the labeler meets issue 10's targets."""
    module, reports = iu
    if not module.HELDOUT_LIST.is_file():
        pytest.skip(f"{module.HELDOUT_LIST} is not present")
    gold = module.load_dev_labels(module.DEV_LABELS_DIR, module.read_heldout())
    if not gold:
        pytest.skip(f"no development labels in {module.DEV_LABELS_DIR}")
    by_file = {r.file: r for r in reports.values()}
    pred = {name: label_report(by_file[name].text) for name in gold}
    summary = module.dev_summary(*module.dev_scores(gold, pred), len(gold))
    assert summary.micro >= 0.93 and summary.macro >= 0.90 and summary.agreement >= 0.93, summary
    assert summary.f1["Support Devices"] >= 0.90, summary
