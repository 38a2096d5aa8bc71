"""Report cleaning (unix_cxr.data.cleaning) and `unix-cxr data clean` (data.clean_batch, cli.data_clean).

Every report and sentence here was written for these tests in the style of MIMIC-CXR `FINAL REPORT` files; none
is MIMIC text. `RULE_CASES` (at least three phrasings per rule) and `REPORTS` are also what
benchmarks/bench_cleaning.py builds its synthetic reports from.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from unix_cxr import cli
from unix_cxr.data.cleaning import (
    CLEAN_PROMPT,
    DROP_EMPTY,
    DROP_NO_SECTION,
    DROP_NOTHING_LEFT,
    LLM_ERROR,
    LLM_REWRITE,
    LLM_SELF_CHECK_REJECTED,
    RULE_NAMES,
    RULES,
    SCOPE_ORDER,
    SELF_CHECK_PROMPT,
    CleanResult,
    LLMRewriter,
    LLMUnavailable,
    clean_report,
    split_sentences,
)

CLEAR = "The lungs are clear."  # the carrier sentence: no rule fires on "FINDINGS: The lungs are clear."


def F(sentence: str) -> str:
    return f"FINDINGS: {CLEAR} {sentence}"


def KEPT(sentence: str | None) -> str:
    return f"FINDINGS: {CLEAR} {sentence}" if sentence else f"FINDINGS: {CLEAR}"


# rule name -> [(raw report, expected cleaned report)]; every rule listed fires on each of its cases
RULE_CASES: dict[str, list[tuple[str, str]]] = {
    "report_banner": [
        ("WET READ: ___ ___ 9:12 PM\n  No pneumothorax.\n\n          FINAL REPORT\n FINDINGS:  Lungs are clear.\n",
         "FINDINGS: Lungs are clear."),
        ("                                 FINAL REPORT\n PA AND LATERAL CHEST RADIOGRAPH\n\n Mild cardiomegaly.\n",
         "FINDINGS: Mild cardiomegaly."),
        ("WET READ VERSION #1\n\n FINAL REPORT\n IMPRESSION:  No acute cardiopulmonary process.\n",
         "IMPRESSION: No acute cardiopulmonary process."),
    ],
    "sections": [
        ("INDICATION: ___ with cough.\n\nCOMPARISON: ___\n\nFINDINGS: Lungs are clear.", "FINDINGS: Lungs are clear."),
        ("EXAMINATION:  CHEST (PORTABLE AP)\n\nTECHNIQUE:  Single frontal view.\n\nIMPRESSION:  Low lung volumes.",
         "IMPRESSION: Low lung volumes."),
        ("HISTORY:  Fever.\n\nPA AND LATERAL CHEST RADIOGRAPH\n\nThe heart is normal in size.\n\n"
         "IMPRESSION:  Normal chest.", "FINDINGS: The heart is normal in size. IMPRESSION: Normal chest."),
        ("CLINICAL QUESTION:  eval for pneumonia\n\nFINDINGS:  No focal consolidation.",
         "FINDINGS: No focal consolidation."),
    ],
    "list_numbering": [
        ("IMPRESSION:\n 1. Mild pulmonary edema.\n 2. Small bilateral pleural effusions.",
         "IMPRESSION: Mild pulmonary edema. Small bilateral pleural effusions."),
        ("IMPRESSION: 1. Right lower lobe pneumonia. 2. No pneumothorax.",
         "IMPRESSION: Right lower lobe pneumonia. No pneumothorax."),
        ("FINDINGS:\n 1) Enteric tube ends in the stomach.\n 2) Heart size is normal.",
         "FINDINGS: Enteric tube ends in the stomach. Heart size is normal."),
    ],
    "whitespace": [
        ("FINDINGS:  The cardiomediastinal silhouette is within normal\n limits.  No pleural effusion.",
         "FINDINGS: The cardiomediastinal silhouette is within normal limits. No pleural effusion."),
        ("FINDINGS:\n\tHeart size is normal.\n\n\tLungs are clear.",
         "FINDINGS: Heart size is normal. Lungs are clear."),
        ("FINDINGS: Mild   bibasilar   atelectasis.  ", "FINDINGS: Mild bibasilar atelectasis."),
    ],
    "communication": [
        (F("These findings were discussed with Dr. ___ by telephone at 8:45 on ___."), KEPT(None)),
        (F("The findings were communicated to the referring physician, Dr. ___, at 14:20."), KEPT(None)),
        (F("This information has been conveyed to the covering resident by phone at the time of dictation."),
         KEPT(None)),
        (F("Results were posted to the critical results dashboard at 10:05."), KEPT(None)),
        (F("Small right apical pneumothorax, which was relayed to the ICU team at 3:10 p.m."),
         KEPT("Small right apical pneumothorax.")),
        (F("The referring clinician was notified of the new opacity via pager."), KEPT(None)),
        (F("Dr. ___ was informed of the findings by phone."), KEPT(None)),
        (F("Critical finding of pneumothorax was called to Dr. ___ at 5 pm."), KEPT(None)),
    ],
    "recommendation": [
        (F("Recommend follow-up CT in 3 months."), KEPT(None)),
        (F("Follow-up chest radiograph is recommended after treatment to document resolution."), KEPT(None)),
        (F("Right basilar opacity; clinical correlation is recommended."), KEPT("Right basilar opacity.")),
        (F("If clinically indicated, CT of the chest could be obtained for further characterization."), KEPT(None)),
        (F("Consider repeat radiograph with improved inspiration."), KEPT(None)),
        (F("A dedicated PA and lateral study would be helpful to assess the left base."), KEPT(None)),
        (F("Nodular opacity in the left mid lung, for which a chest CT is suggested."),
         KEPT("Nodular opacity in the left mid lung.")),
        (F("Findings could be further evaluated with CT."), KEPT(None)),
        (F("Please see the CT report of the same day for details."), KEPT(None)),
        (F("An 8 mm nodule in the right upper lobe; non-emergent CT is recommended for further evaluation."),
         KEPT("An 8 mm nodule in the right upper lobe.")),
    ],
    "technique": [
        (F("PA and lateral views of the chest were obtained."), KEPT(None)),
        (F("AP portable upright view of the chest provided."), KEPT(None)),
        (F("Single frontal view of the chest was obtained at ___."), KEPT(None)),
        (F("AP single view of the chest has been obtained with patient in sitting semi-upright position."),
         KEPT(None)),
        (F("Chest PA and lateral radiographs redemonstrate mild cardiomegaly."), KEPT("Mild cardiomegaly.")),
        (F("Frontal and lateral radiographs of the chest demonstrate a small left pleural effusion."),
         KEPT("A small left pleural effusion.")),
        (F("Portable semi-upright AP radiograph of the chest shows low lung volumes."), KEPT("Low lung volumes.")),
        (F("Chest radiograph, frontal and lateral views."), KEPT(None)),
        (F("PA and lateral views of the chest at ___ demonstrate no focal opacity."), KEPT("No focal opacity.")),
    ],
    "comparison": [
        (F("In comparison with the study of ___, there is little change in the moderate cardiomegaly."),
         KEPT("Moderate cardiomegaly.")),
        (F("Compared to prior, there is increased opacity at the left base."),
         KEPT("There is increased opacity at the left base.")),
        (F("No change from prior CXR."), KEPT(None)),
        (F("As compared to the previous radiograph dated ___, the small right effusion has decreased."),
         KEPT("The small right effusion has decreased.")),
        (F("Compared with chest radiographs ___ through ___, there is no significant change in the appearance of "
           "the bilateral perihilar opacities."), KEPT("Bilateral perihilar opacities.")),
        (F("Compared to the prior study there is increased opacity in the right lower lobe."),
         KEPT("There is increased opacity in the right lower lobe.")),
        (F("No previous images."), KEPT(None)),
        (F("There are no prior studies available for comparison."), KEPT(None)),
        (F("No significant interval change."), KEPT(None)),
        (F("Overall, the appearance of the chest is unchanged compared to ___."), KEPT(None)),
        (F("Mild pulmonary edema has improved since ___."), KEPT("Mild pulmonary edema has improved.")),
        (F("The moderate hiatal hernia is unchanged from the prior study."),
         KEPT("The moderate hiatal hernia is unchanged.")),
        (F("Redemonstration of a small left apical pneumothorax."), KEPT("A small left apical pneumothorax.")),
        (F("The previously seen right ___ catheter has been removed."), KEPT("The right catheter has been removed.")),
        (F("Again seen is the calcified granuloma in the left upper lobe."),
         KEPT("Calcified granuloma in the left upper lobe.")),
        (F("Since the prior study, there has been interval increase in the left effusion."),
         KEPT("There has been interval increase in the left effusion.")),
        (F("Heart size is top normal, similar to prior."), KEPT("Heart size is top normal.")),
        (F("Bibasilar opacities have improved compared with ___ at 08:15."),
         KEPT("Bibasilar opacities have improved.")),
        (F("The right PICC line ends in the mid SVC, as before."), KEPT("The right PICC line ends in the mid SVC.")),
        (F("Comparison is made with prior studies including ___."), KEPT(None)),
        (F("Cardiomegaly is again noted."), KEPT("Cardiomegaly is noted.")),
    ],
    "filler_phrases": [
        (F("Note is made of a small hiatal hernia."), KEPT("A small hiatal hernia.")),
        (F("Of note, there is a calcified granuloma in the right upper lobe."),
         KEPT("There is a calcified granuloma in the right upper lobe.")),
        (F("Incidentally, degenerative changes of the thoracic spine are seen."),
         KEPT("Degenerative changes of the thoracic spine are seen.")),
    ],
    "deidentification": [
        (F("A right ___ catheter terminates in the low SVC."), KEPT("A right catheter terminates in the low SVC.")),
        (F("Status post median sternotomy on ___."), KEPT("Status post median sternotomy.")),
        (F("Endotracheal tube tip lies 4 cm above the carina (___)."),
         KEPT("Endotracheal tube tip lies 4 cm above the carina.")),
        (F("Clips from the ___ procedure project over the right upper quadrant."),
         KEPT("Clips from the procedure project over the right upper quadrant.")),
    ],
    "punctuation": [
        (F("Heart size is normal , no effusion"), KEPT("Heart size is normal, no effusion.")),
        (F("No pneumothorax.."), KEPT("No pneumothorax.")),
        (F("Mild bibasilar atelectasis ;"), KEPT("Mild bibasilar atelectasis.")),
    ],
    "sentence_case": [
        ("FINDINGS: THE LUNGS ARE CLEAR. NO PTX.", "FINDINGS: The lungs are clear. No PTX."),
        ("FINDINGS: ET TUBE TIP IS 5 CM ABOVE THE CARINA. MILD DEGENERATIVE CHANGE AT T12.",
         "FINDINGS: ET tube tip is 5 cm above the carina. Mild degenerative change at T12."),
        (F("the heart is normal in size."), KEPT("The heart is normal in size.")),
    ],
}

# full reports: (name, raw text, expected report or None, expected dropped reason or None)
REPORTS: list[tuple[str, str, str | None, str | None]] = [
    ("modern", """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough and fever  // eval for
 pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 PA and lateral views of the chest were obtained.  In comparison with the study of ___, there is little
 change in the moderate cardiomegaly.  No change from prior CXR.  There is a small left pleural effusion,
 unchanged from prior.  The previously seen right ___ catheter has been removed.

 IMPRESSION:

 1. Moderate cardiomegaly.
 2. Small left effusion; recommend follow-up radiograph after diuresis.
 These findings were discussed with Dr. ___ by telephone at 8:45 on ___.
""", "FINDINGS: Moderate cardiomegaly. There is a small left pleural effusion, unchanged. The right catheter has "
     "been removed. IMPRESSION: Moderate cardiomegaly. Small left effusion.", None),
    ("old_title_no_findings_header", """                                 FINAL REPORT
 HISTORY:  Shortness of breath.

 PA AND LATERAL CHEST RADIOGRAPH

 Chest PA and lateral radiographs redemonstrate mild cardiomegaly.  Compared to prior, the
 mediastinal contours are stable.  Note is made of a small hiatal hernia.

 IMPRESSION :  No acute cardiopulmonary process.  Clinical correlation is recommended.
""", "FINDINGS: Mild cardiomegaly. The mediastinal contours are stable. A small hiatal hernia. IMPRESSION: No acute "
     "cardiopulmonary process.", None),
    ("findings_and_impression", """                                 FINAL REPORT
 CHEST RADIOGRAPH PERFORMED ON ___

 COMPARISON:  Prior exam from ___.

 CLINICAL HISTORY:  Intubated patient, assess tube position.

 FINDINGS AND IMPRESSION:  Endotracheal tube terminates 3.5 cm above the carina.  Nasogastric tube
 courses below the diaphragm and out of view.  Bibasilar atelectasis is slightly worse compared to ___.
 No pneumothorax.
""", "FINDINGS: Endotracheal tube terminates 3.5 cm above the carina. Nasogastric tube courses below the diaphragm "
     "and out of view. Bibasilar atelectasis is slightly worse. No pneumothorax.", None),
    ("lower_case_headers_conclusion", """Exam: chest, two views.
Indication: chest pain.

Findings: the heart size is normal.  the lungs are clear without focal consolidation.
no pleural effusion or pneumothorax.

Conclusion: no acute cardiopulmonary abnormality.
""", "FINDINGS: The heart size is normal. The lungs are clear without focal consolidation. No pleural effusion or "
     "pneumothorax. IMPRESSION: No acute cardiopulmonary abnormality.", None),
    ("bare_header_lines", """ FINAL REPORT
 REASON FOR EXAMINATION:  Evaluation of the patient with dyspnea.

 FINDINGS
 Portable AP chest radiograph demonstrates mild interstitial edema.  Small bilateral
 pleural effusions are present.

 IMPRESSION
 Mild interstitial edema and small effusions.
""", "FINDINGS: Mild interstitial edema. Small bilateral pleural effusions are present. IMPRESSION: Mild "
     "interstitial edema and small effusions.", None),
    ("wet_read_and_pfi", """WET READ: ___ ___ 11:40 PM
  No acute process.
______________________________________________________________________________
                                 FINAL REPORT
 INDICATION:  ___ with fall.

 PROVISIONAL FINDINGS IMPRESSION (PFI):  ___ ___ 11:40 PM
  No acute process.

 FINDINGS:  Frontal and lateral views of the chest.  Lungs are well expanded and clear.  Cardiac
 silhouette is normal.  No displaced rib fracture is seen.

 IMPRESSION:  No acute cardiopulmonary process.

 NOTIFICATION:  The findings were discussed with ___, M.D. by ___, M.D. on the telephone on ___ at 9:10 AM.
""", "FINDINGS: Lungs are well expanded and clear. Cardiac silhouette is normal. No displaced rib fracture is seen. "
     "IMPRESSION: No acute cardiopulmonary process.", None),
    ("all_caps", """                                 FINAL REPORT
 HISTORY:  CHF.

 FINDINGS:  COMPARED TO ___, THE HEART REMAINS ENLARGED.  THERE IS PULMONARY VASCULAR CONGESTION.
 LEFT PICC LINE TIP IS IN THE SVC.

 IMPRESSION:  CARDIOMEGALY WITH MILD CONGESTIVE FAILURE.
""", "FINDINGS: The heart remains enlarged. There is pulmonary vascular congestion. Left PICC line tip is in the SVC. "
     "IMPRESSION: Cardiomegaly with mild congestive failure.", None),
    ("impression_only", """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ M with hypoxia

 COMPARISON:  ___

 IMPRESSION:

 Compared to the prior study there is increased opacity in the right lower lobe, concerning for
 pneumonia.  Recommend repeat radiograph after treatment.
""", "IMPRESSION: There is increased opacity in the right lower lobe, concerning for pneumonia.", None),
    ("no_headers_plain_text", "Heart size is normal. Lungs are clear. No effusion.",
     "FINDINGS: Heart size is normal. Lungs are clear. No effusion.", None),
    ("sections_after_impression", """ FINAL REPORT
 FINDINGS:  Right internal jugular catheter ends in the mid SVC.  No pneumothorax.

 IMPRESSION:  Line in standard position.

 RECOMMENDATION(S):  None.
""", "FINDINGS: Right internal jugular catheter ends in the mid SVC. No pneumothorax. IMPRESSION: Line in standard "
     "position.", None),
    ("crlf_and_tabs", "FINDINGS:\r\n\tLungs are clear.\r\n\tNo effusion.\r\nIMPRESSION:\r\n\tNormal.\r\n",
     "FINDINGS: Lungs are clear. No effusion. IMPRESSION: Normal.", None),
    ("indication_only", """                                 FINAL REPORT
 INDICATION:  ___ year old man with chest pain, evaluate for pneumonia.
""", None, DROP_NO_SECTION),
    ("only_metadata", "EXAMINATION: CHEST (PA AND LAT)\n\nINDICATION: cough\n\nTECHNIQUE: PA and lateral\n",
     None, DROP_NO_SECTION),
    ("nothing_left", """ FINAL REPORT
 FINDINGS:  PA and lateral views of the chest were obtained.  No change from prior CXR.
 These findings were communicated to Dr. ___ at 10:15.
""", None, DROP_NOTHING_LEFT),
    ("empty", "  \n\n ", None, DROP_EMPTY),
]

ALL_RAW = [raw for cases in RULE_CASES.values() for raw, _ in cases] + [raw for _, raw, _, _ in REPORTS]


# --------------------------------------------------------------------------------------------------------------
# the rule table
def test_rule_table_is_ordered_and_named() -> None:
    assert len(set(RULE_NAMES)) == len(RULES)
    scopes = [SCOPE_ORDER.index(rule.scope) for rule in RULES]
    assert scopes == sorted(scopes)
    assert all(rule.description and rule.example for rule in RULES)


def test_every_rule_has_three_phrasings() -> None:
    assert set(RULE_CASES) == set(RULE_NAMES)
    assert all(len(cases) >= 3 for cases in RULE_CASES.values())


@pytest.mark.parametrize("rule", [r for r in RULES if r.scope in ("section", "sentence")], ids=lambda r: r.name)
def test_rule_example(rule) -> None:
    before, after = rule.example
    if rule.name == "sentence_case":  # a section-level example; the rule itself runs per sentence
        assert " ".join(rule.apply(s)[0] for s in split_sentences(before)) == after
    else:
        text, count = rule.apply(before)
        assert text == after and count > 0


def test_carrier_is_clean() -> None:
    assert clean_report(f"FINDINGS: {CLEAR}") == CleanResult(f"FINDINGS: {CLEAR}", {}, None)


@pytest.mark.parametrize(("rule", "raw", "expected"),
                         [(rule, raw, exp) for rule, cases in RULE_CASES.items() for raw, exp in cases],
                         ids=[f"{rule}-{i}" for rule, cases in RULE_CASES.items() for i in range(len(cases))])
def test_rule_phrasings(rule: str, raw: str, expected: str) -> None:
    result = clean_report(raw)
    assert result.report == expected
    assert result.changes.get(rule, 0) > 0, result.changes
    assert list(result.changes) == [name for name in RULE_NAMES if name in result.changes]


@pytest.mark.parametrize("sentence", [
    "Heart size is stable.", "Moderate left effusion is unchanged.", "Opacity at the right base suggests pneumonia.",
    "The patient is rotated.", "Study is limited by low lung volumes.", "Lungs are clear on the lateral view.",
    "There is no evidence of pneumothorax on the current exam.", "Pneumonia is a consideration in the right base.",
    "The ET tube has been withdrawn and now terminates 4 cm above the carina.",
    "Interval removal of the right internal jugular catheter.", "Left ventricular assist device is in place.",
])
def test_findings_kept_verbatim(sentence: str) -> None:
    """Findings, temporal adjectives ("unchanged", "stable", as the authors' data keeps them) and limitations stay."""
    raw = F(sentence)
    assert clean_report(raw) == CleanResult(raw, {}, None)


@pytest.mark.parametrize(("name", "raw", "expected", "reason"), REPORTS, ids=[r[0] for r in REPORTS])
def test_reports(name: str, raw: str, expected: str | None, reason: str | None) -> None:
    result = clean_report(raw)
    assert (result.report, result.dropped_reason) == (expected, reason)
    if expected is not None:
        assert "___" not in result.report and "  " not in result.report
        assert result.report.startswith(("FINDINGS: ", "IMPRESSION: "))


def test_indication_only_is_dropped_with_reason() -> None:
    result = clean_report(" FINAL REPORT\n INDICATION:  Cough for two weeks.\n")
    assert result.report is None
    assert result.dropped_reason == DROP_NO_SECTION
    assert result.changes == {"report_banner": 1, "sections": 1}


@pytest.mark.parametrize("raw", ALL_RAW, ids=range(len(ALL_RAW)))
def test_idempotent(raw: str) -> None:
    first = clean_report(raw)
    if first.report is None:  # dropped: there is no output to clean again; dropping it again gives the same verdict
        assert first.dropped_reason in (DROP_EMPTY, DROP_NO_SECTION, DROP_NOTHING_LEFT)
        assert clean_report(raw) == first
    else:
        assert first.dropped_reason is None
        again = clean_report(first.report)
        assert again == CleanResult(first.report, {}, None)


def test_split_sentences_keeps_abbreviations() -> None:
    text = "Discussed with Dr. ___ at 9 a.m. on the ward. Opacities, e.g. in the lingula, persist. No effusion."
    assert split_sentences(text) == ["Discussed with Dr. ___ at 9 a.m. on the ward.",
                                     "Opacities, e.g. in the lingula, persist.", "No effusion."]


# --------------------------------------------------------------------------------------------------------------
# the CLI
GOOD = {
    "s50000001": " FINAL REPORT\n FINDINGS:  Lungs are clear.\n IMPRESSION:  Normal chest.\n",
    "s50000002": " FINAL REPORT\n INDICATION:  Cough.\n",
    "s50000003": " FINAL REPORT\n FINDINGS:  Compared to prior, mild cardiomegaly.\n",
}


def _run(argv: list[str]) -> int:
    return cli.main(["data", "clean", *argv])


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _item_errors(caplog) -> list[str]:
    """Per-item error lines (the final listing repeats them indented)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and r.name.endswith("clean_batch") and not r.getMessage().startswith(" ")
            and "item(s) failed" not in r.getMessage()]


def test_cli_folder_tree(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "files"
    for i, (sid, text) in enumerate(GOOD.items()):
        study = root / f"p1{i}" / f"p1{i}00000{i}"
        study.mkdir(parents=True)
        (study / f"{sid}.txt").write_text(text, encoding="utf-8")
    bad = root / "p19" / "p19000009" / "s50000009.txt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b" FINAL REPORT\n FINDINGS:  Lungs are clear \xe9\xff.\n")
    (root / "p19" / "notes.csv").write_text("not a report\n")
    out = tmp_path / "out" / "clean.jsonl"
    assert _run([str(root), "-o", str(out)]) == 1
    assert _read_jsonl(out) == [
        {"id": "s50000001", "report": "FINDINGS: Lungs are clear. IMPRESSION: Normal chest.",
         "changes": ["report_banner"]},
        {"id": "s50000002", "report": None, "dropped": DROP_NO_SECTION, "changes": ["report_banner", "sections"]},
        {"id": "s50000003", "report": "FINDINGS: Mild cardiomegaly.",
         "changes": ["report_banner", "comparison", "sentence_case"]},
    ]
    assert _item_errors(caplog) == [f"{bad}: not valid UTF-8 (byte 0xe9 at offset 42)"]
    text = caplog.text
    assert "1 item(s) failed" in text and "2 cleaned, 1 dropped, 1 failed" in text
    assert f"dropped ({DROP_NO_SECTION}): 1" in text and "comparison=1" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.jsonl"]  # no temporary file left


def test_cli_jsonl(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    src = tmp_path / "reports.jsonl"
    lines = [json.dumps({"id": "a", "text": GOOD["s50000001"]}),
             '{"id": "b", "text": "FINDINGS: unterminated',
             "",
             json.dumps({"id": 7, "text": "FINDINGS: No change from prior CXR. No effusion."})]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "clean.jsonl"
    out.write_text("old content\n")
    assert _run([str(src), "-o", str(out), "--no-progress"]) == 1
    assert _read_jsonl(out) == [
        {"id": "a", "report": "FINDINGS: Lungs are clear. IMPRESSION: Normal chest.", "changes": ["report_banner"]},
        {"id": 7, "report": "FINDINGS: No effusion.", "changes": ["comparison"]},
    ]
    errors = _item_errors(caplog)
    assert len(errors) == 1 and errors[0].startswith(f"{src}:2: not valid JSON")


def test_cli_jsonl_bad_items(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    src = tmp_path / "reports.jsonl"
    src.write_bytes(b'{"id": "x", "text": "FINDINGS: Clear \xff lungs."}\n'
                    b'{"text": "FINDINGS: Lungs are clear."}\n'
                    b'{"id": "y"}\n'
                    b'["not", "an", "object"]\n'
                    b'{"id": "z", "text": "FINDINGS: Lungs are clear."}\n'
                    b'{"id": "z", "text": "FINDINGS: Heart is normal."}\n')
    out = tmp_path / "clean.jsonl"
    assert _run([str(src), "-o", str(out)]) == 1
    assert [r["id"] for r in _read_jsonl(out)] == ["z"]
    assert _item_errors(caplog) == [f"{src}:1: not valid UTF-8 (byte 0xff at offset 37)",
                                    f"{src}:2: missing 'id'",
                                    f"{src}:3: missing 'text'",
                                    f"{src}:4: expected a JSON object, got list",
                                    f"{src}:6: duplicate id 'z' (first at {src}:5)"]


def test_cli_unreadable_file(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s1.txt").write_text("FINDINGS: Lungs are clear.\n")
    (tmp_path / "in" / "s2.txt").symlink_to(tmp_path / "gone.txt")  # a link to nothing: cannot be read
    out = tmp_path / "o.jsonl"
    assert _run([str(tmp_path / "in"), "-o", str(out)]) == 1
    assert [r["id"] for r in _read_jsonl(out)] == ["s1"]
    errors = _item_errors(caplog)
    assert len(errors) == 1 and errors[0].startswith(f"{tmp_path / 'in' / 's2.txt'}: cannot read")


def test_cli_success_and_missing_input(tmp_path, capsys) -> None:
    src = tmp_path / "ok.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "FINDINGS: Lungs are clear."}) + "\n")
    assert _run([str(src), "-o", str(tmp_path / "o.jsonl")]) == 0
    assert _run([str(tmp_path / "missing"), "-o", str(tmp_path / "o2.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o2.jsonl").exists()
    assert _run([str(src), "-o", str(tmp_path)]) == 2  # OUTPUT is a folder
    (tmp_path / "one.txt").write_text("FINDINGS: Lungs are clear.\n")
    assert _run([str(tmp_path / "one.txt"), "-o", str(tmp_path / "x.jsonl")]) == 2  # one .txt: give its folder
    assert "single .txt file" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# the LLM backend, against a loopback server with canned answers
REWRITE = "FINDINGS: Moderate cardiomegaly. Small left pleural effusion. IMPRESSION: Cardiomegaly and effusion."
RAW = (" FINAL REPORT\n FINDINGS:  In comparison with the study of ___, there is little change in the moderate\n"
       " cardiomegaly.  Small left pleural effusion.\n IMPRESSION:  Cardiomegaly and effusion.\n")


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((self.path, dict(self.headers), body))
        if server.status in (301, 302, 307, 308):
            self.send_response(server.status)
            self.send_header("Location", server.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if server.fail_after is not None and len(server.requests) > server.fail_after:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"down")
            return
        if server.status != 200:
            self.send_response(server.status)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        is_check = body["messages"][0]["content"] == SELF_CHECK_PROMPT
        content = server.verdict if is_check else server.rewrite
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def llm_server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback only
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests, server.rewrite, server.verdict, server.status = [], REWRITE, "yes", 200
    server.location, server.fail_after = "", None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _rewriter(server, **kw) -> LLMRewriter:
    return LLMRewriter(f"http://127.0.0.1:{server.server_address[1]}/v1", "tiny-cleaner", timeout=5, **kw)


def test_llm_accept(llm_server, monkeypatch) -> None:
    monkeypatch.setenv("TEST_CLEANER_KEY", "secret-1")
    result = _rewriter(llm_server, api_key_env="TEST_CLEANER_KEY").clean(RAW)
    assert result == CleanResult(REWRITE, {LLM_REWRITE: 1}, None)
    (path1, headers1, body1), (_, _, body2) = llm_server.requests
    assert path1 == "/v1/chat/completions" and headers1["Authorization"] == "Bearer secret-1"
    assert body1["model"] == "tiny-cleaner" and body1["temperature"] == 0
    assert body1["messages"] == [{"role": "system", "content": CLEAN_PROMPT}, {"role": "user", "content": RAW}]
    assert body2["messages"][0]["content"] == SELF_CHECK_PROMPT
    assert RAW in body2["messages"][1]["content"] and REWRITE in body2["messages"][1]["content"]


def test_llm_self_check_reject_falls_back(llm_server) -> None:
    llm_server.verdict = "<think>yes, the heart is kept</think>\nNo. The rewrite drops the pleural effusion."
    result = _rewriter(llm_server, api_key_env=None).clean(RAW)
    rules = clean_report(RAW)
    assert result.report == rules.report == ("FINDINGS: Moderate cardiomegaly. Small left pleural effusion. "
                                             "IMPRESSION: Cardiomegaly and effusion.")
    assert result.changes == {**rules.changes, LLM_SELF_CHECK_REJECTED: 1}
    assert "Authorization" not in llm_server.requests[0][1]


def test_llm_malformed_rewrite_falls_back(llm_server, caplog) -> None:
    llm_server.rewrite = "Sure! Here is the cleaned report you asked for."
    result = _rewriter(llm_server).clean(RAW)  # the endpoint works: this report gets the rules, without fallback
    assert result.report == clean_report(RAW).report and result.changes[LLM_ERROR] == 1
    assert "Sure!" not in caplog.text  # the model's answer is not echoed into the log


def _closed_port() -> int:
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_llm_endpoint_failure_stops_unless_fallback(llm_server) -> None:
    llm_server.status = 500
    with pytest.raises(LLMUnavailable, match="HTTP 500"):
        _rewriter(llm_server).clean(RAW)
    fallback = _rewriter(llm_server, fallback=True)
    result = fallback.clean(RAW)
    assert result.report == clean_report(RAW).report and result.changes[LLM_ERROR] == 1
    assert fallback.endpoint_failures == 1
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(LLMUnavailable, match="cannot reach"):
        LLMRewriter(url, "m", timeout=2).clean(RAW)
    result = LLMRewriter(url, "m", timeout=2, fallback=True).clean(RAW)
    assert result.changes[LLM_ERROR] == 1 and result.report == clean_report(RAW).report


def test_llm_dropped_report_is_never_sent(llm_server) -> None:
    dropped = _rewriter(llm_server).clean(" FINAL REPORT\n INDICATION:  Cough.\n")
    assert dropped.report is None and dropped.dropped_reason == DROP_NO_SECTION
    assert llm_server.requests == []


@pytest.mark.parametrize("url, needle", [
    ("file:///etc/passwd", "http(s) URL"),
    ("http://10.1.2.3:8000/v1", "--llm-allow-http"),
    ("http://llm.example.org/v1", "not a loopback"),
    ("https://user:secret@llm.example.org/v1", "user name or password"),
    ("https:///v1", "names no host"),
], ids=["file-scheme", "http-private-ip", "http-remote-name", "credentials-in-url", "no-host"])
def test_llm_endpoint_refused(url: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        LLMRewriter(url, "m")
    assert needle in str(info.value) and "secret" not in str(info.value)


def test_llm_plain_http_allowed_for_loopback_or_when_told() -> None:
    for url in ("http://localhost:8000/v1", "http://127.0.0.1/v1", "http://[::1]:8000/v1"):
        LLMRewriter(url, "m")
    assert LLMRewriter("http://10.1.2.3:8000/v1", "m", allow_http=True).url == "http://10.1.2.3:8000/v1/chat/completions"
    LLMRewriter("https://llm.example.org/v1", "m")


@pytest.mark.parametrize("code", [302, 307])
def test_llm_redirect_is_not_followed(llm_server, code: int, monkeypatch) -> None:
    monkeypatch.setenv("TEST_CLEANER_KEY", "secret-2")
    target = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # where the redirect points: must get nothing
    target.requests, target.status, target.fail_after = [], 200, None
    thread = threading.Thread(target=target.serve_forever, daemon=True)
    thread.start()
    try:
        llm_server.status = code
        llm_server.location = f"http://127.0.0.1:{target.server_address[1]}/v1/chat/completions"
        with pytest.raises(LLMUnavailable, match="redirects are not followed"):
            _rewriter(llm_server, api_key_env="TEST_CLEANER_KEY").clean(RAW)
        assert len(llm_server.requests) == 1 and target.requests == []
    finally:
        target.shutdown()
        target.server_close()
        thread.join(5)


def test_cli_llm(llm_server, tmp_path, capsys) -> None:
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"id": "a", "text": RAW}) + "\n")
    out = tmp_path / "o.jsonl"
    url = f"http://127.0.0.1:{llm_server.server_address[1]}/v1"
    assert _run([str(src), "-o", str(out), "--llm-endpoint", url, "--llm-model", "m", "--llm-timeout", "5"]) == 0
    assert _read_jsonl(out) == [{"id": "a", "report": REWRITE, "changes": [LLM_REWRITE]}]
    assert _run([str(src), "-o", str(out), "--llm-endpoint", url]) == 2
    assert "--llm-endpoint and --llm-model go together" in capsys.readouterr().err
    assert _run([str(src), "-o", str(out), "--llm-fallback"]) == 2
    assert "need --llm-endpoint" in capsys.readouterr().err


def test_cli_llm_unreachable_exits_2_unless_fallback(tmp_path, capsys, caplog) -> None:
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"id": "a", "text": RAW}) + "\n")
    out = tmp_path / "o.jsonl"
    out.write_bytes(b"previous\n")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    argv = [str(src), "-o", str(out), "--llm-endpoint", url, "--llm-model", "m", "--llm-timeout", "2"]
    capsys.readouterr()
    assert _run(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "cannot reach the LLM endpoint" in err[0] and "--llm-fallback" in err[0]
    assert out.read_bytes() == b"previous\n"
    caplog.set_level(logging.WARNING)
    assert _run([*argv, "--llm-fallback"]) == 0
    assert _read_jsonl(out) == [{"id": "a", "report": clean_report(RAW).report,
                                 "changes": [*clean_report(RAW).changes, LLM_ERROR]}]
    assert "the LLM endpoint failed for 1 report(s)" in caplog.text
    assert _run([str(src), "-o", str(out), "--llm-endpoint", "http://llm.example.org/v1", "--llm-model", "m"]) == 2
    assert "--llm-allow-http" in capsys.readouterr().err


def test_cli_llm_outage_resumes(llm_server, tmp_path, capsys) -> None:
    """The endpoint goes down after the first report: exit 2 with the progress kept; the rerun sends only the rest."""
    src = tmp_path / "r.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": RAW}) + "\n" for i in range(3)))
    out = tmp_path / "o.jsonl"
    argv = [str(src), "-o", str(out), "--llm-endpoint", f"http://127.0.0.1:{llm_server.server_address[1]}/v1",
            "--llm-model", "m", "--llm-timeout", "5", "--no-progress"]
    llm_server.fail_after = 2  # rewrite + self-check of report 0, then HTTP 503
    assert _run(argv) == 2
    assert "HTTP 503" in capsys.readouterr().err and not out.exists()
    assert (tmp_path / "o.jsonl.partial").is_file()
    llm_server.fail_after, llm_server.requests = None, []
    assert _run(argv) == 0
    assert len(llm_server.requests) == 4  # reports 1 and 2 only
    assert _read_jsonl(out) == [{"id": i, "report": REWRITE, "changes": [LLM_REWRITE]} for i in range(3)]
    assert not (tmp_path / "o.jsonl.partial").exists()


# --------------------------------------------------------------------------------------------------------------
# resume after an interruption, and a run where every item fails
def _interrupt_after(monkeypatch, k: int | None) -> list[str]:
    """Make the rule-based cleaner of the CLI raise KeyboardInterrupt at its (k+1)-th call; returns the calls."""
    import unix_cxr.data.cleaning as cleaning

    calls, real = [], clean_report  # the real one (imported above), whatever is patched now

    def flaky(text: str) -> CleanResult:
        if k is not None and len(calls) >= k:
            raise KeyboardInterrupt
        calls.append(text)
        return real(text)

    monkeypatch.setattr(cleaning, "clean_report", flaky)
    return calls


def _many_reports(tmp_path, n: int = 12):
    src = tmp_path / "reports.jsonl"
    texts = list(GOOD.values())
    lines = [json.dumps({"id": f"r{i}", "text": texts[i % 3] + f" FINDINGS: Finding {i}.\n"}) for i in range(n)]
    lines[4] = "{broken"  # a bad line in the part done before the interruption
    lines[9] = json.dumps({"id": "r1", "text": "FINDINGS: Duplicate."})  # a duplicate of a line done before it
    src.write_text("\n".join(lines) + "\n")
    return src


@pytest.mark.parametrize("k", [0, 3, 7, 9])
def test_cli_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, caplog, k: int) -> None:
    caplog.set_level(logging.INFO)
    src = _many_reports(tmp_path)
    want = tmp_path / "want.jsonl"
    assert _run([str(src), "-o", str(want), "--no-progress"]) == 1
    out = tmp_path / "got.jsonl"
    out.write_bytes(b"old\n")
    calls = _interrupt_after(monkeypatch, k)
    assert _run([str(src), "-o", str(out), "--no-progress"]) == 130
    assert out.read_bytes() == b"old\n"  # the interrupted run replaced nothing
    partial = tmp_path / "got.jsonl.partial"
    assert partial.is_file() == (k > 0)
    done = len(calls)
    calls = _interrupt_after(monkeypatch, None)
    caplog.clear()
    assert _run([str(src), "-o", str(out), "--no-progress"]) == 1
    assert out.read_bytes() == want.read_bytes()
    assert len(calls) == 10 - done  # 10 good lines in all (one broken, one duplicate): none cleaned twice
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["got.jsonl", "reports.jsonl",
                                                                                 "want.jsonl"]
    assert "reports.jsonl:5: not valid JSON" in caplog.text and "duplicate id 'r1'" in caplog.text  # listed again
    if k:
        assert "resuming from" in caplog.text


def test_cli_resume_starts_over_for_other_input_or_no_resume(tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    src = _many_reports(tmp_path)
    out = tmp_path / "o.jsonl"
    _interrupt_after(monkeypatch, 5)
    assert _run([str(src), "-o", str(out), "--no-progress"]) == 130
    src.write_text(src.read_text().replace("Finding 0.", "Finding zero."))  # the input changed
    calls = _interrupt_after(monkeypatch, None)
    assert _run([str(src), "-o", str(out), "--no-progress"]) == 1
    assert len(calls) == 10 and "from another input or other options; starting over" in caplog.text
    assert "Finding zero." in out.read_text()
    _interrupt_after(monkeypatch, 5)
    assert _run([str(src), "-o", str(out), "--no-progress"]) == 130
    calls = _interrupt_after(monkeypatch, None)
    assert _run([str(src), "-o", str(out), "--no-progress", "--no-resume"]) == 1
    assert len(calls) == 10


def test_cli_resume_folder_input(tmp_path, monkeypatch) -> None:
    root = tmp_path / "files"
    for i in range(6):
        (root / f"p1{i}").mkdir(parents=True)
        (root / f"p1{i}" / f"s{i}.txt").write_text(GOOD["s50000001"])
    want, out = tmp_path / "want.jsonl", tmp_path / "o.jsonl"
    assert _run([str(root), "-o", str(want)]) == 0
    _interrupt_after(monkeypatch, 4)
    assert _run([str(root), "-o", str(out)]) == 130
    calls = _interrupt_after(monkeypatch, None)
    assert _run([str(root), "-o", str(out)]) == 0
    assert len(calls) == 2 and out.read_bytes() == want.read_bytes()


def test_cli_resume_after_a_torn_progress_line(tmp_path, monkeypatch) -> None:
    src = _many_reports(tmp_path)
    want, out = tmp_path / "want.jsonl", tmp_path / "o.jsonl"
    assert _run([str(src), "-o", str(want)]) == 1
    _interrupt_after(monkeypatch, 6)
    assert _run([str(src), "-o", str(out)]) == 130
    partial = tmp_path / "o.jsonl.partial"
    partial.write_bytes(partial.read_bytes()[:-7])  # a kill while the last outcome was being written
    calls = _interrupt_after(monkeypatch, None)
    assert _run([str(src), "-o", str(out)]) == 1
    assert out.read_bytes() == want.read_bytes() and len(calls) == 4 + 1


def test_cli_every_item_fails_keeps_the_old_output(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"{broken\n[1, 2]\n" + b"[" * 100_000 + b"\n")
    out = tmp_path / "o.jsonl"
    out.write_bytes(b"previous good output\n")
    assert _run([str(src), "-o", str(out)]) == 1
    assert out.read_bytes() == b"previous good output\n"
    assert "every item failed" in caplog.text and "bad.jsonl:3: not valid JSON (nested too deeply)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "o.jsonl"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert _run([str(empty), "-o", str(out)]) == 0  # nothing failed: an empty input gives an empty output
    assert out.read_bytes() == b""
