"""The text and the labels of a phantom case: :func:`report` (``"FINDINGS: ... IMPRESSION: ..."``) and
:func:`labels` (the 14 CheXpert labels, as CheXpert's labeler would read that report)."""

from __future__ import annotations

import numpy as np

from ...chexpert import CHEXPERT_LABELS, empty_labels
from .spec import DEFAULT_NEGATIVES, DEVICE_KINDS, NEGATABLE, Finding, PhantomSpec, _dual_chamber, _pick, _route

# --------------------------------------------------------------------------------------------------- labels

_NO_FINDING_EXEMPT = frozenset({"Support Devices", "No Finding"})


def stated_negatives(spec: PhantomSpec) -> tuple[str, ...]:
    """The pertinent negatives the report states: ``spec.negatives`` (or the default set) minus any label a
    finding makes positive or uncertain."""
    present = {f.label for f in spec.findings}
    chosen = DEFAULT_NEGATIVES if spec.negatives is None else spec.negatives
    return tuple(n for n in NEGATABLE if n in chosen and n not in present)


def labels(spec: PhantomSpec) -> dict[str, int | None]:
    """The 14 CheXpert labels of the case, as CheXpert's labeler would read its report.

    A finding makes its label 1 (-1 when uncertain; a certain finding wins over an uncertain one); each stated
    pertinent negative is 0; everything else is None. "No Finding" is 1 when no pathology is positive or uncertain
    (support devices do not count, as in CheXpert) and None otherwise.
    """
    out = empty_labels()
    for f in spec.findings:
        value = -1 if f.uncertain else 1
        if out[f.label] != 1:
            out[f.label] = value
    for neg in stated_negatives(spec):
        if out[neg] is None:
            out[neg] = 0
    if not any(out[k] in (1, -1) for k in CHEXPERT_LABELS if k not in _NO_FINDING_EXEMPT):
        out["No Finding"] = 1
    return out


# --------------------------------------------------------------------------------------------------- reports

_SIZE_WORD = {"mild": "small", "moderate": "moderate", "severe": "large"}
_DEGREE_WORD = {"mild": "mild", "moderate": "moderate", "severe": "severe"}
_ZONE_PHRASES = {
    "upper": ("{side} upper zone", "{side} upper lung", "{side} apical region"),
    "middle": ("{side} mid zone", "{side} mid lung", "{side} perihilar region"),
    "lower": ("{side} lower zone", "{side} lung base", "{side} lower lung"),
}
_ZONE_BILATERAL = {
    "upper": ("both upper zones", "the upper lungs bilaterally"),
    "middle": ("both mid zones", "the mid lungs bilaterally"),
    "lower": ("both lung bases", "the lower zones bilaterally"),
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _where(f: Finding, rng: np.random.Generator) -> str:
    if f.side == "bilateral":
        return _pick(rng, _ZONE_BILATERAL[f.zone or "lower"])
    return "the " + _pick(rng, _ZONE_PHRASES[f.zone or "lower"]).format(side=f.side)


def _hedge(text: str, rng: np.random.Generator) -> str:
    """Turn a statement of a finding (a noun phrase) into an uncertain one."""
    return _pick(rng, ("possible {x}", "questionable {x}", "{x} cannot be excluded", "{x} is not excluded",
                       "findings may represent {x}")).format(x=text)


def _phrase(f: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """(findings sentence, impression sentence) for one finding."""
    sev = f.severity
    if f.kind == "cardiomegaly":
        np_ = _pick(rng, (f"{_DEGREE_WORD[sev]} cardiomegaly", f"{_DEGREE_WORD[sev]} enlargement of the cardiac "
                          "silhouette, consistent with cardiomegaly"))
        body = _pick(rng, (f"The heart is {_DEGREE_WORD[sev]}ly enlarged, consistent with cardiomegaly.",
                           f"There is {np_}.", f"{_cap(np_)}."))
        imp = f"{_cap(_DEGREE_WORD[sev])} cardiomegaly."
        if f.uncertain:
            x = f"{_DEGREE_WORD[sev]} cardiomegaly"
            body, imp = f"{_cap(_hedge(x, rng))}.", f"{_cap(_hedge(x, rng))}."
        return body, imp
    if f.kind == "pleural_effusion":
        if f.side == "bilateral":
            x = f"{_SIZE_WORD[sev]} bilateral pleural effusions"
        else:
            x = f"{_SIZE_WORD[sev]} {f.side} pleural effusion"
        tail = _pick(rng, ("", " with blunting of the costophrenic angle" + ("s" if f.side == "bilateral" else ""),
                           " layering at the base" + ("s" if f.side == "bilateral" else "")))
        if f.uncertain:
            s = f"{_cap(_hedge(x, rng))}."
            return s, s
        body = _pick(rng, (f"There is a {x}{tail}.", f"{_cap(x)}{tail}.", f"{_cap(x)} is present{tail}."))
        if f.side == "bilateral":
            body = body.replace("There is a ", "There are ")
        return body, f"{_cap(x)}."
    if f.kind == "pneumothorax":
        x = f"{_SIZE_WORD[sev]} {f.side} pneumothorax"
        if f.uncertain:
            s = f"{_cap(_hedge(x, rng))}."
            return s, s
        apex = _pick(rng, ("", f" with a visible pleural line at the {f.side} apex",
                           " with the visceral pleural line displaced from the chest wall"))
        body = _pick(rng, (f"There is a {x}{apex}.", f"{_cap(x)}{apex}."))
        return body, f"{_cap(x)}."
    if f.kind in ("consolidation", "lung_opacity"):
        where = _where(f, rng)
        if f.kind == "consolidation":
            adj = {"mild": "small focal", "moderate": "patchy", "severe": "dense"}[sev]
            x = f"{adj} consolidation in {where}"
            extra = _pick(rng, ("", " with air bronchograms"))
            imp = f"{_cap(adj)} consolidation in {where}."
        else:
            adj = {"mild": "faint", "moderate": "patchy", "severe": "confluent"}[sev]
            noun = _pick(rng, ("opacity", "airspace opacity", "opacities"))
            x = f"{adj} {noun} in {where}"
            extra = ""
            imp = f"{_cap(adj)} {noun} in {where}."
        if f.uncertain:
            s = f"{_cap(_hedge(x, rng))}."
            return s, s
        body = _pick(rng, (f"There is {x}{extra}.", f"{_cap(x)}{extra}."))
        return body, imp
    if f.kind == "atelectasis":
        adj = {"mild": "minimal linear", "moderate": "plate-like", "severe": "extensive band-like"}[sev]
        where = _where(f, rng)
        x = f"{adj} atelectasis in {where}"
        if f.uncertain:
            s = f"{_cap(_hedge(x, rng))}."
            return s, s
        body = _pick(rng, (f"There is {x}.", f"{_cap(x)}.", f"{_cap(adj)} atelectasis is seen in {where}."))
        return body, f"{_cap(adj)} atelectasis in {where}."
    if f.kind == "edema":
        x = {"mild": "mild pulmonary edema", "moderate": "moderate pulmonary edema",
             "severe": "severe pulmonary edema"}[sev]
        if f.uncertain:
            s = f"{_cap(_hedge(x, rng))}."
            return s, s
        body = _pick(rng, (f"There is {x} with a perihilar predominance.", f"{_cap(x)}.",
                           f"Indistinct perihilar vessels, consistent with {x}."))
        return body, f"{_cap(x)}."
    raise AssertionError(f.kind)


def _device_phrase(spec: PhantomSpec, f: Finding, rng: np.random.Generator) -> str:
    if f.kind == "endotracheal_tube":
        return _pick(rng, ("Endotracheal tube terminates approximately 4 cm above the carina.",
                           "An endotracheal tube is in standard position above the carina.",
                           "The endotracheal tube tip is in satisfactory position."))
    if f.kind == "central_line":
        route = _route(spec, f)
        return _pick(rng, (f"{_cap(f.side or '')} {route} central venous catheter with the tip in the superior "
                           "vena cava.", f"A {f.side} {route} line terminates in the lower superior vena cava.",
                           f"{_cap(f.side or '')} {route} central line is in place, tip at the cavoatrial junction."))
    leads = "leads" if _dual_chamber(spec, f) else "lead"
    where = "right atrium and right ventricle" if leads == "leads" else "right ventricle"
    return _pick(rng, (f"{_cap(f.side or '')}-sided pacemaker with {leads} terminating in the {where}.",
                       f"A {f.side} chest wall pacemaker generator is present with {leads} in the {where}.",
                       f"{_cap(f.side or '')} pectoral pacer device with {leads} in the {where}."))


_NEGATIVE_PHRASES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("The heart size is normal.", "Normal heart size.", "Heart size is within normal limits.",
                     "No cardiomegaly."),
    "Enlarged Cardiomediastinum": ("The mediastinal contours are normal.", "Normal mediastinal contours.",
                                   "The mediastinum is not widened."),
    "Lung Opacity": ("No focal airspace opacity.", "No focal opacity is seen."),
    "Edema": ("No pulmonary edema.", "There is no pulmonary edema."),
    "Consolidation": ("No focal consolidation.", "There is no focal consolidation."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "Pleural Effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "Fracture": ("No displaced rib fracture.", "No acute rib fracture is seen."),
}
_NEGATIVE_GROUPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("Consolidation", "Pleural Effusion", "Pneumothorax"),
     ("No focal consolidation, pleural effusion, or pneumothorax.",
      "There is no focal consolidation, pleural effusion or pneumothorax.")),
    (("Pleural Effusion", "Pneumothorax"),
     ("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
      "No pleural effusion or pneumothorax is seen.")),
    (("Cardiomegaly", "Enlarged Cardiomediastinum"),
     ("The heart size and mediastinal contours are normal.", "Normal heart size and mediastinal contours.")),
)
_NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                       "No acute intrathoracic process.", "No radiographic evidence of acute cardiopulmonary disease.")
_FILLERS = ("The visualized osseous structures are unremarkable.", "The upper abdomen is unremarkable.",
            "Osseous structures are intact.")
_ORDER = ("edema", "consolidation", "lung_opacity", "atelectasis", "pleural_effusion", "pneumothorax", "cardiomegaly")


def report(spec: PhantomSpec, rng: np.random.Generator) -> str:
    """A report for the case, ``"FINDINGS: ... IMPRESSION: ..."``, with the phrasing chosen by ``rng``.

    Findings section: support devices, then lung, pleural and cardiac findings, then the stated pertinent
    negatives. Impression: the positive findings, or a normal impression when there is no pathology.
    """
    findings: list[str] = []
    impression: list[str] = []
    for f in spec.findings:
        if f.kind in DEVICE_KINDS:
            findings.append(_device_phrase(spec, f, rng))
    for kind in _ORDER:
        for f in spec.of_kind(kind):
            body, imp = _phrase(f, rng)
            findings.append(body)
            impression.append(imp)
    negatives = list(stated_negatives(spec))
    neg_sentences: list[str] = []
    for group, options in _NEGATIVE_GROUPS:
        if all(n in negatives for n in group) and rng.random() < 0.7:
            neg_sentences.append(_pick(rng, options))
            negatives = [n for n in negatives if n not in group]
    neg_sentences += [_pick(rng, _NEGATIVE_PHRASES[n]) for n in negatives]
    if neg_sentences:
        # cardiac statements read best last, as radiologists write them
        neg_sentences.sort(key=lambda s: ("heart" in s.lower() or "mediastin" in s.lower() or "cardio" in s.lower()))
    findings += neg_sentences
    if rng.random() < 0.3:
        findings.append(_pick(rng, _FILLERS))
    if not findings:
        findings.append(_pick(rng, ("The lungs are well expanded.", "Frontal view of the chest.")))
    if spec.is_normal:
        normal = _pick(rng, _NORMAL_IMPRESSIONS)
        if any(f.kind in DEVICE_KINDS for f in spec.findings) and rng.random() < 0.5:
            impression = ["Support devices as described.", normal]
        else:
            impression = [normal]
    return f"FINDINGS: {' '.join(findings)} IMPRESSION: {' '.join(impression)}"


