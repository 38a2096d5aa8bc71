"""benchmarks/eval_labeler.py: the development label set (reading, refusal of held-out files, scores) and the IU
archive reader's exclusion. Everything here is synthetic: file names, labels and a two-report archive written by
the tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from conftest import load_benchmark

from unix_cxr.chexpert import CHEXPERT_LABELS

ROOT = Path(__file__).resolve().parents[1]
HEADER = "file," + ",".join(CHEXPERT_LABELS)


@pytest.fixture(scope="module")
def ev():
    return load_benchmark("eval_labeler")


def _row(name: str, **cells: str) -> str:
    return ",".join([name] + [cells.get(obs.replace(" ", "_"), "") for obs in CHEXPERT_LABELS])


def _csv(folder: Path, name: str, rows: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_dev_labels_are_read(ev, tmp_path: Path) -> None:
    _csv(tmp_path, "a.csv", [_row("1.xml", Cardiomegaly="1", No_Finding=""), _row("2.xml", Edema="-1")])
    _csv(tmp_path, "b.csv", [_row("3.xml", Support_Devices="0", No_Finding="1"), _row("1.xml", Cardiomegaly="1")])
    labels = ev.load_dev_labels(tmp_path, frozenset({"9.xml"}))
    assert sorted(labels) == ["1.xml", "2.xml", "3.xml"]
    assert labels["1.xml"]["Cardiomegaly"] == 1 and labels["1.xml"]["Edema"] is None
    assert labels["2.xml"]["Edema"] == -1
    assert labels["3.xml"]["Support Devices"] == 0 and labels["3.xml"]["No Finding"] == 1
    assert list(labels["3.xml"]) == list(CHEXPERT_LABELS)


def test_no_dev_labels_is_empty(ev, tmp_path: Path) -> None:
    assert ev.load_dev_labels(tmp_path / "missing", frozenset()) == {}


@pytest.mark.parametrize(("rows", "message"), [
    ([_row("9.xml")], "held-out"),
    ([_row("1.xml", Edema="2")], "expected 1, 0, -1 or empty"),
    ([_row("1.xml", Edema="1"), _row("1.xml", Edema="0")], "labelled differently"),
])
def test_bad_dev_labels_are_refused(ev, tmp_path: Path, rows: list[str], message: str) -> None:
    _csv(tmp_path, "a.csv", rows)
    with pytest.raises(SystemExit, match=message):
        ev.load_dev_labels(tmp_path, frozenset({"9.xml"}))


def test_missing_column_is_refused(ev, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("file,Cardiomegaly\n1.xml,1\n")
    with pytest.raises(SystemExit, match="missing column"):
        ev.load_dev_labels(tmp_path, frozenset())


def test_main_refuses_a_heldout_file_before_reading_reports(ev, tmp_path: Path, monkeypatch) -> None:
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("9.xml\n")
    _csv(tmp_path / "dev", "a.csv", [_row("9.xml")])

    def no_reading(*args, **kwargs):
        raise AssertionError("reports were read")

    monkeypatch.setattr(ev, "load_iu_reports", no_reading)
    with pytest.raises(SystemExit, match="held-out"):
        ev.main(["--dev-labels", str(tmp_path / "dev"), "--heldout-list", str(heldout), "--speed-reports", "0"])


def test_scores(ev) -> None:
    """Positive-class counts, micro / macro F1 (observations with >= 5 gold positives) and four-way agreement."""
    empty = dict.fromkeys(CHEXPERT_LABELS)
    gold, pred = {}, {}
    for i in range(10):
        name = f"{i}.xml"
        gold[name] = {**empty, "Cardiomegaly": 1 if i < 6 else 0, "Edema": 1 if i < 2 else None}
        pred[name] = {**empty, "Cardiomegaly": 1 if i < 5 else -1, "Edema": 1 if i < 2 else 0}
    counts, agree = ev.dev_scores(gold, pred)
    assert (counts["Cardiomegaly"].tp, counts["Cardiomegaly"].fp, counts["Cardiomegaly"].fn) == (5, 0, 1)
    summary = ev.dev_summary(counts, agree, len(gold))
    assert summary.macro_classes == ["Cardiomegaly"]  # Edema has 2 gold positives
    assert summary.macro == pytest.approx(5 / 5.5)
    assert summary.micro == pytest.approx(7 / 7.5)
    # Cardiomegaly: 5 cells agree (1 = 1), 4 disagree (0 vs -1), 1 disagrees (1 vs -1); Edema: 8 disagree
    assert agree["Cardiomegaly"] == 5 and agree["Edema"] == 2
    assert summary.agreement == pytest.approx((10 * 14 - 5 - 8) / (10 * 14))
    assert "four-way agreement" in ev.dev_table(gold, pred)


def _xml(uid: str, findings: str) -> bytes:
    return (f'<eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">No acute disease.</AbstractText>'
            f"</Abstract></Article></MedlineCitation></eCitation>").encode()


def test_iu_reader_skips_excluded_files(ev, tmp_path: Path) -> None:
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, uid, text in (("1.xml", "CXR1", "Small left effusion."), ("2.xml", "CXR2", "Clear lungs.")):
            data = _xml(uid, text)
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    reports = ev.load_iu_reports(archive, exclude=frozenset({"2.xml"}))
    assert list(reports) == ["CXR1"]
    assert reports["CXR1"].file == "1.xml"
    assert reports["CXR1"].text == "FINDINGS: Small left effusion. IMPRESSION: No acute disease."
