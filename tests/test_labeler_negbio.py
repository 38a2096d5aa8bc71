"""The labeler's NegBio reading (`Labeler(reading="negbio")`): each place where NegBio's OpenI gold reads a report
otherwise than the project's conventions, as a sentence written for this test with the labels of both readings.
Everything else must be labelled as by the conventions (the convention cases of test_labeler_conventions, minus
the ones a NegBio difference is about, give the same labels in both readings)."""

from __future__ import annotations

import pytest
from test_labeler_conventions import ALL, AT, CM, EC, LL, LO, PO, Case

from unix_cxr.eval.labeler import READINGS, Labeler

CONVENTIONS, NEGBIO = Labeler(), Labeler(reading="negbio")

# (sentence, labels by the conventions, labels in the NegBio reading)
DIFFERENCES: list[tuple[str, dict[str, int | None], dict[str, int | None]]] = [
    # a masked word between a finding and a diagnosis is no hedge
    ("Left basilar opacity XXXX atelectasis.", {LO: 1, AT: -1}, {LO: 1, AT: 1}),
    # a slash between two findings offers no alternatives
    ("Right basilar atelectasis/scarring.", {AT: -1, LO: -1}, {AT: 1, LO: 1}),
    # a borderline heart is Cardiomegaly; a prominent one is not
    ("The heart size is borderline.", {CM: -1}, {CM: 1}),
    ("Borderline cardiomegaly.", {CM: -1}, {CM: 1}),
    ("The cardiac silhouette is prominent.", {CM: 1}, {CM: -1}),
    # an enlarged cardiomediastinal silhouette is no Cardiomegaly
    ("Enlarged cardiomediastinal silhouette.", {EC: 1, CM: 1}, {EC: 1, CM: None}),
    # a calcified nodule is a Nodule; a cavity and a nodular opacity are not
    ("Calcified nodule in the right upper lobe.", {LL: None}, {LL: 1}),
    ("Cavity in the left upper lobe.", {LL: 1}, {LL: None}),
    ("Nodular opacity in the right midlung.", {LL: 1}, {LL: None}),
    # pleural scarring is no Pleural_Thickening; fissural thickening and blunting: the other way round
    ("Biapical pleural scarring.", {PO: 1}, {PO: None}),
    ("Mild thickening of the minor fissure.", {PO: None}, {PO: 1}),
    ("Blunting of the left costophrenic angle.", {PO: 1}, {PO: None}),
]


@pytest.mark.parametrize(("text", "conventions", "negbio"), DIFFERENCES, ids=[d[0] for d in DIFFERENCES])
def test_negbio_reading_differs_where_negbio_does(text: str, conventions: dict, negbio: dict) -> None:
    by_conventions, by_negbio = CONVENTIONS.label(text), NEGBIO.label(text)
    assert {k: by_conventions[k] for k in conventions} == conventions, CONVENTIONS.explain(text)
    assert {k: by_negbio[k] for k in negbio} == negbio, NEGBIO.explain(text)


def _untouched(case: Case) -> bool:
    """A convention case that none of the NegBio differences is about."""
    words = ("xxxx", "/", "borderline", "prominen", "accentuated", "cardiomediastinal", "calcified", "cavit",
             "nodular", "scar", "fissur", "blunt", "costophrenic")
    return not any(w in case[0].lower() for w in words)


UNTOUCHED = [c for c in ALL if _untouched(c)]


def test_most_convention_cases_are_read_alike() -> None:
    assert len(UNTOUCHED) > 0.7 * len(ALL)
    texts = [c[0] for c in UNTOUCHED]
    assert NEGBIO.label_many(texts) == CONVENTIONS.label_many(texts)


def test_negbio_prefilter_does_not_change_labels() -> None:
    texts = [d[0] for d in DIFFERENCES] + [c[0] for c in ALL]
    assert NEGBIO.label_many(texts) == Labeler(prefilter=False, reading="negbio").label_many(texts)


def test_unknown_reading_is_refused() -> None:
    assert READINGS == ("conventions", "negbio")
    with pytest.raises(ValueError, match="reading must be one of"):
        Labeler(reading="chexpert")


def test_explain_names_the_negbio_rule() -> None:
    rules = [rule for _, _, _, rule in NEGBIO.explain("The heart size is borderline.")]
    assert any("positive in the NegBio reading" in r for r in rules)


def test_label_command_takes_the_reading(tmp_path) -> None:
    import json

    from unix_cxr.cli import main

    source = tmp_path / "reports.jsonl"
    source.write_text(json.dumps({"id": "a", "report": "The heart size is borderline."}) + "\n")
    out = {}
    for reading in READINGS:
        target = tmp_path / f"{reading}.jsonl"
        assert main(["label", str(source), "-o", str(target), "--reading", reading, "--no-progress"]) == 0
        out[reading] = json.loads(target.read_text())["labels"][CM]
    assert out == {"conventions": -1, "negbio": 1}
    with pytest.raises(SystemExit) as bad:
        main(["label", str(source), "-o", str(tmp_path / "x.jsonl"), "--reading", "chexpert"])
    assert bad.value.code == 2
