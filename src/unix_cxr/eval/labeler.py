"""An offline, rule-based CheXpert labeler: 14 observations from the text of a chest radiograph report.

No network, no weights: regular expressions compiled once at import. The design follows the three stages of the
CheXpert labeler described by Irvin et al. (AAAI 2019), with phrase lists written for this project from the
published CheXpert observation definitions and ordinary radiology language (no other labeler's phrase files). The
labels follow the project's labelling conventions (``../shared/docs/labeling_conventions.md``, the specification
of the held-out gold set); docs/labeler.md lists them and the few places where the labeler deliberately differs.

1. **Mention extraction.** The report is cut into sections (INDICATION / HISTORY / COMPARISON / TECHNIQUE and
   similar sections are dropped; FINDINGS, IMPRESSION and unlabelled text are read), sentences (``.``, ``;``, ``?``,
   ``!``, blank lines) and clauses (``but``, ``however``, ``although``, ``except``, ``which``, ``otherwise``,
   ``other than``, ``there is/are`` ...). Kinds of mention:

   * *finding* mentions, phrases that name the abnormality itself ("cardiomegaly", "left pleural effusion",
     "endotracheal tube", "surgical clips", "old healed rib fracture"): positive unless negated or uncertain;
   * *attribute* mentions, neutral anatomy that needs a qualifier ("heart size", "cardiac silhouette",
     "cardiomediastinal silhouette" for both Cardiomegaly and Enlarged Cardiomediastinum, "mediastinal contours",
     "interstitial markings"): positive with "enlarged", "widened", "increased", "prominent"; negative with
     "normal", "within normal limits", "unremarkable", "not enlarged", "top normal", "upper limits of normal";
     uncertain with "borderline", when the only qualifier is "stable" / "unchanged" (CheXpert's stable rule), or
     when two qualifiers are offered as alternatives; no label without a qualifier;
   * *hedged* mentions, signs that suggest Edema without asserting it ("pulmonary vascular congestion", "vascular
     prominence", "indistinct vessels", "cephalization"): at most uncertain;
   * *costophrenic blunting*: Pleural Other, unless the report explains it as effusion (`_resolve_blunting`);
   * *clear statements*: "The lungs are clear" (Lung Opacity 0, Consolidation 0; one lung called clear sets
     nothing), "The pleural spaces are clear" (Pleural Effusion 0).

   Words around a mention can say it is none (`_EXCLUSIONS`: a calcified nodule, an opacity placed outside the
   lung, a hip or knee fracture; a combined report's part about another body part is not read for fractures).
   A mention's context is its clause, at most 300 characters on each side (bounds the work on run-on text).

2. **Mention classification**, in CheXpert's order, each rule bounded by the mention's clause:

   a. *pre-negation uncertainty*: "cannot exclude X", "X cannot be excluded", "X is not ruled out", "rule out X",
      "evaluate for X" ... -> uncertain (-1). Checked **before** negation so that the "not" / "cannot" inside these
      phrases does not negate the mention.
   b. *negation*: triggers before the mention ("no", "not", "without", "free of", "clear of", "negative for",
      "absence of", "resolution of", "removal of", "no longer" ...) whose scope runs forward to the mention unless
      a verb or clause word intervenes ("No pneumothorax is seen, small effusion"), and triggers after it ("X is
      not seen", "X has resolved", "X has been removed", "X is absent") reaching back over a list of nouns but not
      over a verb. Pseudo-negations do not negate: "no change in X", "no interval change", "near-complete
      resolution of X" (X is still present).
   c. *post-negation uncertainty*: hedges before the mention ("possible", "likely", "may", "suggestive of",
      "suggestion of", "questionable", "versus", "differential includes", "correlation for" ...) and after it ("X
      is possible", "X may be present"; "X is likely Y" hedges Y, not X); "X or Y", "X versus Y", "X and/or Y" and
      "X/Y" of two observations make both uncertain unless the "or" belongs to a list ("No effusion or
      pneumothorax", "no change in the effusion or pneumothorax"); a finding read as a normal structure or
      something else ("opacity, aorta versus mass") is uncertain; a masked ``XXXX`` between a finding and a
      diagnosis ("opacity XXXX atelectasis", "most XXXX representing") stood for a hedge: uncertain.
   d. otherwise positive (1).

3. **Aggregation** per report, as CheXpert: an observation is 1 if any of its mentions is positive, else -1 if any
   is uncertain, else 0 if it has negative mentions, else ``None`` (not mentioned). **No Finding** is 1 when none
   of the 12 pathologies (every observation except Support Devices and No Finding itself) is positive or
   uncertain, and ``None`` otherwise (never 0). There is no cross-class inference: heart failure does not imply
   Cardiomegaly, and Edema, Consolidation, Pneumonia, Atelectasis or Lung Lesion do not imply Lung Opacity.

An empty report (nothing but white space, or nothing left after the dropped sections) is not an error: every
observation is ``None``, No Finding included (there is no report to call normal).

API: `label_report(text)` -> ``{observation: 1 | 0 | -1 | None}`` over the 14 names in CheXpert's order;
`Labeler().label_many(texts)` for lists; `Labeler().explain(text)` lists the mentions behind the labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from ..chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN

__all__ = ["READINGS", "Labeler", "Mention", "label_report"]

NO_FINDING: Final = "No Finding"
SUPPORT_DEVICES: Final = "Support Devices"
FRACTURE: Final = "Fracture"
CARDIOMEGALY: Final = "Cardiomegaly"
PLEURAL_EFFUSION: Final = "Pleural Effusion"
PATHOLOGIES: Final[tuple[str, ...]] = tuple(o for o in CHEXPERT_LABELS if o not in (NO_FINDING, SUPPORT_DEVICES))
"""The 12 observations that decide No Finding."""


def _alt(patterns: Iterable[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + _alt(patterns) + r")\b")


# --------------------------------------------------------------------------------------------------------------
# Mentions. Text is lower-cased and white space collapsed before matching; every pattern is word-bounded.
# --------------------------------------------------------------------------------------------------------------

_OUTSIDE_LUNG: Final = r"(?<!retrosternal )(?<!mediastinal )(?<!double )"
"""Opacity wording that places the opacity outside the lung: not Lung Opacity."""

_NODULAR_LESION: Final = (r"(?<!reticular-)(?<!reticular )(?<!reticulo)(?:fibro|micro)?nodular (?:[\w-]+ ){0,3}?"
                           r"(?:opacit(?:y|ies)|densit(?:y|ies)|lesions?|foc(?:us|i))")
_CAVITY: Final = (r"(?<!thoracic )(?<!abdominal )(?<!pleural )(?<!chest )(?<!peritoneal )(?<!pelvic )(?<!oral )"
                  r"(?<!nasal )cavit(?:y|ies|ation)")
_PLEURAL_SCAR: Final = r"pleural scar(?:s|ring)?"
_PLEUROPARENCHYMAL_SCAR: Final = r"(?:pleural[\s-]?parenchymal|pleuroparenchymal) scar(?:s|ring)?"
"""Phrases of the conventions that NegBio's gold does not read as their class (`_NEGBIO_GROUPS`)."""

FINDINGS: Final[dict[str, tuple[str, ...]]] = {
    "Enlarged Cardiomediastinum": (
        r"widen(?:ed|ing) (?:of )?(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
        r"(?:enlarged|widened|wide|prominent) (?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?"
        r"|shadow|width))",
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"enlargement of the (?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
        r"mediastinal (?:mass(?:es)?|lymphadenopathy|adenopathy|opacit(?:y|ies)|densit(?:y|ies)|abnormalit(?:y|ies)"
        r"|fullness)",
        r"paratracheal (?:soft tissue(?: densit(?:y|ies)| fullness)?|densit(?:y|ies)|opacit(?:y|ies)|fullness|"
        r"(?:lymph)?adenopathy|mass(?:es)?|widening|stripe (?:widening|thickening))",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac (?:enlargement|hypertrophy)",
        r"enlarged (?:heart|cardiac (?:silhouette|shadow|contours?|size))",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contours?))",
        r"(?:left |right )?(?:ventricular|atrial|biventricular) (?:enlargement|hypertrophy|dilatation|prominence)",
    ),
    "Lung Opacity": (
        r"(?<!calcified )" + _OUTSIDE_LUNG + r"opaci(?:ty|ties|fication|fications|fied)",
        r"infiltrat(?:e|es|ion|ions|ive)",
        r"(?<!bone )(?<!bony )(?<!mineral )(?<!tubular )(?<!calcified )(?<!calcific )(?<!soft tissue )(?<!breast )"
        r"(?<!metallic )(?<!curvilinear )(?<!sclerotic )" + _OUTSIDE_LUNG + r"densit(?:y|ies)"
        r"(?! (?:foreign|nodules?|over the breast))",
        r"air[\s-]?space (?:disease|process|filling|abnormalit(?:y|ies)|changes?)",
        r"ground[\s-]glass",
        r"haz(?:y|iness)",
        r"reticul(?:ar|ation|onodular)",
        r"interstitial (?:prominence|thickening|pattern|changes?|(?:lung )?disease|process|infiltrates?|"
        r"abnormalit(?:y|ies))",
        r"(?:increased|prominent|coarse(?:ned)?|accentuated|irregular) "
        r"(?:interstitial|bronchovascular|lung|pulmonary) markings?",
        r"(?<!pleural )(?<!pleural-parenchymal )(?<!pleural parenchymal )(?<!pleuroparenchymal )(?<!skin )"
        r"(?<!surgical )scar(?:s|ring|red)?",
        r"(?<!pleural )fibros(?:is|es)|fibrotic",
        r"(?:peri)?bronchial (?:wall )?(?:cuffing|thickening)",
    ),
    "Lung Lesion": (
        r"nodul(?:e|es|i|arity|arities)",
        _NODULAR_LESION,
        r"mass[\s-]?like",
        r"(?<!pericardial )(?<!pleural )(?<!pleural-based )(?<!pleural based )(?<!soft tissue )(?<!breast )"
        r"(?<!neck )(?<!abdominal )(?<!chest wall )mass(?:es)?(?! effect)",
        r"(?<!lytic )(?<!osseous )(?<!bony )(?<!bone )(?<!sclerotic )(?<!blastic )(?<!skin )(?<!cutaneous )"
        r"(?<!skeletal )(?<!vertebral )(?<!rib )lesions?",
        r"tumou?rs?",
        r"neoplas(?:m|ms|tic)",
        r"malignan(?:cy|cies|t)",
        r"(?:broncho(?:genic|alveolar) )?carcinoma",
        r"(?:lung|pulmonary|bronchogenic) cancer",
        r"cavitary (?:lesions?|nodules?|masses?)",
        _CAVITY,
    ),
    "Edema": (
        r"(?<!soft tissue )(?<!subcutaneous )(?<!extremity )(?<!wall )edema",
        r"(?:congestive )?heart failure",
        r"chf",
        r"(?:fluid|volume) overload",
        r"kerley(?: b)? lines",
    ),
    "Consolidation": (
        r"consolidat(?:ion|ions|ive|ed|ing)",
    ),
    "Pneumonia": (
        r"(?:broncho)?pneumonias?",
        r"pneumonitis",
        r"(?<!granulomatous )(?<!tuberculous )(?<!tuberculosis )(?<!fungal )(?<!mycobacterial )"
        r"(?<!urinary tract )infect(?:ion|ions|ious|ed)",
        r"pneumonic",
    ),
    "Atelectasis": (
        r"atelecta(?:sis|ses|tic)",
        r"(?:lung|lobar|lobe|segmental|subsegmental) collapse",
        r"collaps(?:e|ed) (?:of )?(?:the )?(?:[\w-]+ ){0,4}?(?:lungs?|lobes?|segments?|lingula)",
    ),
    "Pneumothorax": (
        r"(?:hydro)?pneumothora(?:x|ces|xes)",
        r"ptx",
        r"pleural air(?: collections?)?",
    ),
    "Pleural Effusion": (
        r"(?<!pericardial )(?<!pericardial effusion or )effusions?",
        r"hydro(?:pneumo)?thora(?:x|ces)",
        r"pleural fluid",
        r"(?:fissural|subpulmonic|layering|loculated) fluid",
        r"fluid (?:in|within|along) the (?:\w+ )?(?:fissures?|pleural spaces?)",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|calcifications?|fibrosis|reaction)",
        _PLEURAL_SCAR,
        r"calcified pleura(?:l plaques?|l thickening)?",
        r"thickening of the (?:\w+ )?pleura",
        _PLEUROPARENCHYMAL_SCAR,
        r"(?:pleural[\s-]?parenchymal|pleuroparenchymal) thickening",
        r"fibrothorax",
        r"mesothelioma",
        r"(?:apical )?pleural cap(?:ping|s)?|apical cap(?:ping|s)?",
    ),
    "Fracture": (
        r"(?<!catheter )(?<!lead )(?<!wire )(?<!screw )(?<!hardware )fractures?(?! (?:of )?(?:the |a )?"
        r"(?:lateral most |most lateral )?(?:fixation |sternotomy |sternal )?(?:screws?|wires?|leads?|catheters?"
        r"|hardware|xxxx))",
    ),
    "Support Devices": (
        # tubes and drains
        r"(?:endotracheal|tracheostomy|trach|et|nasogastric|ng|og|orogastric|feeding|enteric|chest|thoracostomy"
        r"|gastric|dobhoff|dobbhoff|gastrostomy|jejunostomy|nasoenteric|pleural|mediastinal|drainage|ng/og"
        r"|og/ng) tubes?",
        r"tubes?|tubing",
        r"ett|ngt|ogt",
        r"tracheostomy",
        r"drains?",
        r"pigtail",
        # lines, catheters, PICC, ports
        r"(?:central(?: venous)?|picc|pic|ij|internal jugular|subclavian|arterial|venous|swan[\s-]ganz|"
        r"pulmonary arter(?:y|ial)|dialysis|hemodialysis|catheter|support|monitoring|infusion|femoral|jugular|"
        r"tunnel(?:l)?ed|triple[\s-]lumen|port) lines?",
        r"lines? (?:and|or|&) tubes?",
        r"catheters?",
        r"piccs?",
        r"swan[\s-]ganz",
        r"port[\s-]?a[\s-]?caths?|mediports?|portacaths?",
        r"(?:chest|power|infusion|venous|subclavian|implanted|central venous|subcutaneous|chest wall) ports?",
        r"(?:its|the|with|distal) tips? (?=(?:in|at|projects?|projecting|overl\w+|terminat\w+|near|approximat\w+|"
        r"positioned|located|lies|within|is|extends?|ends?|cours\w+)\b)",
        # pacemakers, defibrillators and their leads; recorders, stimulators
        r"pacemakers?|pacers?|pacing (?:leads?|wires?|device)",
        r"aicds?|icds?|(?:implantable )?(?:cardioverter[\s-])?defibrillators?",
        r"(?:ecg|ekg|monitoring|telemetry|pacer|pacemaker|icd|aicd|defibrillator|transvenous|epicardial|"
        r"lv|rv|ra|right atrial|right ventricular|coronary sinus) (?:leads?|wires?)",
        r"generators?",
        r"leads?(?= (?:terminat|project|overl|extend|in the right|within the right|tips?\b|in (?:stable|unchanged|"
        r"satisfactory|good)))",
        r"(?:loop|event) recorder",
        r"(?:nerve|vagal|vagus|spinal cord|phrenic nerve|neuro)[\s-]?stimulators?",
        r"electrodes?",
        # external monitor leads
        r"(?:external |cardiac |ecg |ekg )?monitor(?:ing)? (?:leads?|wires?|electrodes?)",
        # sternotomy wires (IU masks "wires": "sternotomy XXXX"); a bare "sternotomy" names no device
        r"(?:sternotomy|sternal|cerclage) (?:wires?|sutures?|xxxx)",
        # surgical clips anywhere, sutures, coils, occluders
        r"clips?",
        r"sutures?",
        r"(?:embolization )?coils?|coiled",
        r"occluders?",
        # orthopaedic hardware and prostheses (spinal fusion only when the hardware is named)
        r"hardware",
        r"(?:spinal|fusion|fixation|harrington|pedicle|surgical|orthopa?edic|compression|intramedullary) "
        r"(?:rods?|screws?|plates?|nails?)",
        r"(?:orthopa?edic|fixation|fusion) xxxx",
        r"(?<!breast )(?<!breast implants or )prosthe(?:sis|ses|tic)",
        # valve prostheses
        r"(?:prosthetic|mechanical|bioprosthetic|artificial) (?:(?:heart|cardiac|aortic|mitral|tricuspid|"
        r"pulmonic) )?valves?",
        r"(?:aortic|mitral|tricuspid|pulmonic|heart) valve (?:replacements?|prosthes[ie]s)",
        r"valve (?:replacements?|xxxx)",
        r"tavr|tavi|(?:annuloplasty|valvuloplasty) rings?",
        # stents, filters, pumps, assist devices, shunts, other devices
        r"stents?",
        r"(?:ivc|vena cava|greenfield) (?:filters?|xxxx)",
        r"(?:intra[\s-]?aortic )?balloon pump|iabp",
        r"(?:left )?ventricular assist device|lvad|impella",
        r"ecmo|cannula(?:e|s)?",
        r"(?:vp|ventriculoperitoneal) shunt|shunt (?:tubing|catheter)",
        r"(?:cardiac |implanted |medical |electronic |support |monitoring |stimulat(?:or|ion) |closure )?devices?",
    ),
}
"""Finding mentions per observation: positive unless negated or uncertain."""

HEDGED_FINDINGS: Final[dict[str, tuple[str, ...]]] = {
    "Edema": (
        r"(?:pulmonary |vascular |venous |interstitial |central )*congestion",
        r"(?:pulmonary )?(?:vascular|venous) (?:engorgement|redistribution|plethora|hypertension)",
        r"cephalization",
        r"(?:pulmonary |central )?vascular (?:prominence|indistinctness|blurring)",
        r"prominen(?:t|ce of the) (?:central )?(?:pulmonary )?(?:vasculature|vascularity|vessels|vascular markings)",
        r"indistinct(?:ness of the)? (?:central )?(?:pulmonary )?(?:vessels?|vasculature|vascularity|"
        r"vascular (?:margins?|margination|markings))",
    ),
}
"""Signs that suggest an observation without asserting it: at most uncertain (-1), negative when negated."""

_COSTOPHRENIC_ANGLE: Final = (r"(?:(?:costophrenic|cp|costodiaphragmatic) (?:angles?|sulc(?:us|i)|recess(?:es)?|xxxx)"
                               r"|(?:pleural|lateral|posterior) (?:sinus(?:es)?|sulc(?:us|i)))")
_BLUNTED: Final = r"(?:blunt(?:ing|ed)|obliterat(?:ion|ed)|effacement|effaced|obscur(?:ed|ation))"
BLUNTING: Final[tuple[str, ...]] = (
    _BLUNTED + r"(?: of)?(?: the)?(?: [\w-]+){0,3}? " + _COSTOPHRENIC_ANGLE,
    _COSTOPHRENIC_ANGLE + r" (?:(?:is|are) )?(?:[\w-]+ )?" + _BLUNTED,
)
"""Costophrenic blunting (IU masks "angle": "costophrenic XXXX"): Pleural Other, unless the report explains it as
effusion (`_resolve_blunting`)."""

_CARDIOMEDIASTINAL: Final = r"cardio[\s-]?mediastinal(?: (?:silhouettes?|contours?|shadow|size|width|structures))?"
"""Cardiomediastinal wording: an attribute of both Cardiomegaly and Enlarged Cardiomediastinum."""

ATTRIBUTES: Final[dict[str, tuple[str, ...]]] = {
    "Cardiomegaly": (
        _CARDIOMEDIASTINAL,
        r"heart(?: size)?(?! (?:failure|valve|disease|rate))",
        r"cardiac (?:silhouette|size|contours?|shadow|diameter|outline|dimensions?|configuration)",
        r"size of the (?:heart|cardiac silhouette)",
        r"cardiothoracic ratio",
        r"cardiac(?= and mediastinal)",
    ),
    "Enlarged Cardiomediastinum": (
        _CARDIOMEDIASTINAL,
        r"mediastin(?:um|al (?:silhouettes?|contours?|width|shadow|structures|size))",
        r"mediastinal(?=,? (?:and|or) (?:hilar|cardiac|heart)\b)",
    ),
    "Lung Opacity": (
        r"(?:interstitial|bronchovascular|lung|pulmonary) markings?",
    ),
}
"""Attribute mentions: their label comes from a qualifier in the clause (`_QUALIFIER`)."""

# Qualifiers of attribute mentions. At one position the alternatives are tried in this order, so "not enlarged"
# is negative and "upper limits of normal" is negative before "normal" or "large" could match.
_QUALIFIER = re.compile(
    r"\b(?:(?P<neg>not (?:significantly |appreciably |definitely |particularly )?(?:enlarged|widened|increased|"
    r"prominent|large)|(?:at |within |in )?(?:the )?(?:upper|high|top|borderline)(?: limits?| range| end| part)?"
    r"(?: of)?[\s-]+normal|normal(?:[\s-]+sized?|ly sized)?|within (?:the )?normal (?:limits|range)|wnl|unremarkable|"
    r"small|negative|satisfactory|maintained|preserved)"
    r"|(?P<pos>(?:(?:mild(?:ly)?|moderate(?:ly)?|marked(?:ly)?|severe(?:ly)?|slight(?:ly)?|minimal(?:ly)?|"
    r"massive(?:ly)?|significant(?:ly)?|somewhat|very|greatly|considerabl[ey]|grossly|again) )?(?:enlarged|"
    r"enlargement|increased|increase|widened|widening|wide|large|prominent|prominence|big|globular|accentuated|"
    r"coarse(?:ned)?|engorged|cardiomegaly))"
    r"|(?P<unc>borderline(?: (?:enlarged|large|size|cardiomegaly|enlargement))?)"
    r"|(?P<stab>stable|unchanged|similar|constant|no (?:significant |interval |appreciable |substantial )?change"
    r"|not (?:significantly )?changed))\b")

# --------------------------------------------------------------------------------------------------------------
# Context rules.
# --------------------------------------------------------------------------------------------------------------

# Clause boundaries inside a sentence: a mention's negation / uncertainty scope never crosses one.
_CLAUSE_BREAK = re.compile(
    r",?\s*\b(?:but|however|although|though|except(?: for)?|apart from|aside from|other than|"
    r"with the exception of|whereas|while|yet|otherwise|nevertheless|nonetheless|which|where|because|"
    r"as well as)\b"
    r"|\s+(?=\bthere (?:is|are|has|have|was|were)\b)"
    r"|\s+-\s+|:\s+")

# a) Pre-negation uncertainty: contains a negation word but asserts uncertainty.
_PRE_NEG_UNC_BEFORE = re.compile(
    r"\b(?:(?:cannot|can ?not|can't|could not|couldn't|does not|doesn't|do not|don't|unable to|not able to|"
    r"difficult to|hard to|to) (?:entirely |completely |totally |definitely |definitively |reliably |fully )?"
    r"(?:exclude|rule out|be excluded|be ruled out|excluded)|not (?:entirely |completely |totally |definitely )?"
    r"(?:excluded|ruled out|exclude)|(?:rule|r) ?/? ?out|r/o|(?:evaluat(?:e|ion)|assess(?:ment)?|eval) (?:for|of)"
    r"|question of|questionable|uncertain (?:if|whether)|(?:no|without) (?:definite|definitive|convincing|"
    r"clear|obvious)? ?(?:change|evidence) to (?:suggest|exclude))\b")
_PRE_NEG_UNC_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were) )?(?:(?:cannot|can ?not|can't|could not|may not|might not"
    r"|not) (?:be )?(?:entirely |completely |totally |definitely |definitively |reliably |fully )?"
    r"(?:excluded|ruled out)|(?:is|are) not (?:entirely |completely )?(?:excluded|ruled out)|"
    r"(?:is|are) not excluded|(?:is|are )?(?:difficult|hard) to (?:entirely |completely )?exclude|"
    r"(?:may|might|could|can|would) not be (?:seen|demonstrated|visible|detected|evident|apparent|identified|"
    r"visualized))\b")

# b) Negation.
_NEG_BEFORE = re.compile(
    r"\b(?:no|not|without|nor|neither|never|negative for|free of|clear of|absence of|absent|"
    r"resolution of|resolved|removal of|removed|interval removal of|no longer|ruled out|exclud(?:es|ed)|"
    r"clearing of|clear(?= (?:[\w-]+ )?(?:air ?space|infiltrat|consolidat|opacit|edema|effusion|focal))|"
    r"rather than|instead of|lack of|lacks|cleared)\b")
_PSEUDO_NEG = re.compile(
    r"(?:no|without|not) (?:(?:significant|appreciable|substantial|definite|major|marked|other|further|"
    r"acute|real|gross|sig|new|interval|significantly|appreciably|substantially|definitely|overall|"
    r"material|measurable|notable|detectable|visible|apparent|obvious|considerable|large|great|much|"
    r"radiographic|radiographically|evident) )*(?:interval )?(?:change|changed|changes|increase|increased|"
    r"decrease|decreased|worsening|worsened|improvement|improved|progression|enlargement of (?:the )?"
    r"(?:known|previously)|differen(?:ce|t))\b"
    r"|not only\b|no doubt\b|not necessarily\b"
    r"|(?:no|not) (?:been )?well[\s-]|not (?:be(?:en)? )?(?:assess|evaluat)")
_PSEUDO_RESOLUTION = re.compile(
    r"\b(?:near(?:ly)?|almost|partial(?:ly)?|incomplete(?:ly)?|not|nearly complete|near[\s-]complete|"
    r"substantial(?:ly)?|significant(?:ly)?|marked(?:ly)?|mostly|largely|slow(?:ly)?|interval partial|"
    r"some|minimal(?:ly)?|improving|not yet|has not|have not|not completely|not fully|incompletely)"
    r"[\s-]+(?:complete[\s-]+)?$")
_NEG_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were|has been|have been|had been|be) )?(?:(?:not|no longer) (?:be )?"
    r"(?:(?:clearly|definitely|well|convincingly|definitively|readily|currently|now|again|"
    r"radiographically|significantly|appreciably|longer)[\s-])?(?:seen|identified|visualized|visible|present|"
    r"evident|appreciated|demonstrated|detected|noted|apparent|shown|observed|re-?demonstrated|delineated|"
    r"confirmed|included)|absent|(?:now )?gone|excluded|ruled out|negative|none)\b"
    r"|\b(?:(?:is|are|appears?|remains?) )?within (?:the )?(?:limits of normal|normal limits)\b"
    r"|\b(?:(?:has|have|had) (?:since |now |completely |entirely )?(?:been )?)?(?:resolved|cleared|"
    r"disappeared|removed|withdrawn|discontinued|extubated)\b")

# Words that end a negation's or a hedge's reach: "No pneumothorax is seen, small effusion".
_SCOPE_STOP = re.compile(
    r"\b(?:is|are|was|were|has|have|had|shows?|showing|demonstrat(?:es|ed|ing)|reveals?|"
    r"(?:seen|noted|identified|present|visualized|appreciated)(?=\s*(?:,|and\b|with\b))|"
    r"there|that|who|which|but|however|though|although|except|remains?|with|"
    r"persists?|represents?|consistent|compatible|likely|possibl[ey]|probabl[ey]|may|might|could)\b")
_GAP_STOP = re.compile(
    r"\b(?:is|are|was|were|has|have|had|be|been|seen|noted|identified|present|visualized|there|which|that|who|"
    r"shows?|demonstrat\w*|reveals?|represent\w*|reflect\w*|likely|may|might|could|with|but|however|remains?|"
    r"persists?|"
    r"appears?|resolved|removed|cleared)\b")

# c) Uncertainty (after negation).
_UNC_BEFORE = re.compile(
    r"\b(?:possibl[ey]|probabl[ey]|(?:most |more |less |very |not un)?likely|questionabl[ey]|question(?:ed)?(?: of)?|"
    r"suspect(?:ed)?|suspicious(?: for| of)?|suspicion (?:for|of)|concern(?:ing)? (?:for|of)|worr(?:y|isome) "
    r"(?:for|of)|worrisome|suggest(?:s|ed|ive|ing|ion)?(?: of)?|may|might|could|can be seen|can represent|"
    r"(?:cannot|can ?not|can't) (?:be )?(?:entirely )?(?:exclude|excluded)|perhaps|presum(?:ed|ably|ptive)|"
    r"differential(?: diagnosis| considerations?)?(?: includes?| of)?|ddx|consider(?:ed|ation)?|equivocal|"
    r"(?<!age )(?<!age-)indeterminate|uncertain|not (?:entirely )?(?:certain|clear)|versus|vs|either|and/or|"
    r"(?:would be|to be) (?:considered|excluded)|favou?r(?:ed|ing)?|raises? the possibility|possibility of|"
    r"potential(?:ly)?|apparent|borderline|"
    r"atypical|correlat\w*(?: clinically)? for)\b")
_UNC_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were) (?:(?:also|more|most|less|felt|thought) )?(?:(?:possible|likely|probable)"
    r"(?! (?:an? |the )?(?!(?:present|seen|noted|identified|visible|due|related|secondary|caused|given|from|to|in|"
    r"at|on|within|and|or|but|developing|forming)\b)[a-z])|"
    r"suspected|questioned|questionable|considered|favou?red|a (?:possibility|consideration)|not excluded|"
    r"in question|unlikely|uncertain|equivocal|suggested|raised|suspicious)|(?:may|might|could|can) (?:also )?"
    r"(?:be )?(?:present|seen|noted|developing|forming|identified|visible|evident|possible|considered|"
    r"excluded|there|exist|persist)|versus|vs|not (?:entirely )?(?:excluded|certain)|suspected|"
    r"(?:would|could) be (?:considered|excluded)|(?:is|are) (?:felt|thought) to be)\b")
_UNC_STOP = re.compile(
    r"\b(?:is|are|was|were|has|have|had|there|but|however|though|although|except|no|without|shows?|"
    r"demonstrat(?:es|ed|ing)|reveals?|consistent|compatible)\b")
_OR = re.compile(r"\b(?:or|versus|vs|and/or)\b")
_OR_GAP_STOP = re.compile(
    r"\b(?:from|due|secondary|related|with|possibl[ey]|probabl[ey]|suggest\w*|favou?r\w*|consistent|compatible|given|"
    r"in|at|"
    r"on|over|by|because|after|before)\b")


# d) A masked hedge: IU reports replace some words with XXXX; one between a finding and a diagnosis stood for a
# hedge ("basilar opacity XXXX atelectasis", "most XXXX representing scarring"): the diagnosis is uncertain.
_MASKED_HEDGE_RULE: Final = "masked hedge word"
_MASKED_HEDGE = re.compile(
    r"(?:\b(?:opacit(?:y|ies)|densit(?:y|ies)|infiltrates?|changes?|findings?|appearance|markings?|process|disease|"
    r"distribution|pattern|which|this|these)(?:[^,]{0,60},)? xxxx(?: (?:to be|be|of|for))?|\bmost xxxx"
    r"|\bxxxx (?:represent(?:s|ing)?|reflect(?:s|ing)?|indicat(?:es|ing))) "
    r"(?:(?!(?:and|or|no|with|without)\b)[\w-]+ ){0,2}$")

_NON_CHEST_PART: Final = (r"(?:hips?|femurs?|femoral|knees?|pelvis|pelvic|acetabul(?:um|ar)|ankles?|feet|foot|"
                          r"wrists?|hands?|fingers?|tibias?|tibial|fibulas?|fibular|elbows?|forearms?|skull|"
                          r"lumbar spine|abdomen|kub)")
"""Body parts outside the chest that combined reports describe after the chest."""

# A recommendation conditional on a finding is no mention of it ("If there is concern for fracture, consider a rib
# series").
_CONDITIONAL = re.compile(r"\bif (?:there is )?(?:continued |persistent |further )?(?:clinical )?(?:concern|suspicion|"
                          r"question) (?:for|of) (?:an? )?(?:[\w-]+ ){0,3}$")


# A finding read as a normal structure or an abnormality ("mediastinal opacity, aorta versus mass"): uncertain.
_NORMAL_STRUCTURE: Final = (r"(?:an? |the )?(?:(?:prominent|ectatic|tortuous|normal|overlapping) )?"
                            r"(?:aorta|aortic \w+|vessels?|vascular(?:ity|ure)?|thymus|(?:epicardial )?fat(?: pads?)?|"
                            r"nipple(?: shadows?)?|normal \w+)")
_NORMAL_ALTERNATIVE = re.compile(
    r"(?: [\w-]+){0,4}?,? (?:(?:likely|possibly|probably) )?(?:" + _NORMAL_STRUCTURE + r" (?:or|versus|vs)\b|"
    r"(?:[\w-]+ ){1,3}(?:or|versus|vs) " + _NORMAL_STRUCTURE + r"\b)")


@dataclass(frozen=True)
class _Exclusion:
    """Words around a mention that say it is not a mention of its observation: ``before`` is searched in the
    sentence up to the mention (it ends where the mention starts), ``after`` is matched where the mention ends;
    ``phrase``, when given, limits the exclusion to mentions whose phrase it matches."""

    before: re.Pattern[str] | None = None
    after: re.Pattern[str] | None = None
    phrase: re.Pattern[str] | None = None


_EXCLUSIONS: Final[dict[str, tuple[_Exclusion, ...]]] = {
    "Lung Lesion": (
        # a calcified nodule is a granuloma, not a lesion ("non-calcified nodule" is one)
        _Exclusion(
            before=re.compile(r"(?<!non)(?<!non-)(?<!un)calcifi(?:ed|c) (?:[\w-]+ ){0,3}$"),
            after=re.compile(r",? (?:(?:which|that) )?(?:(?:is|are|appears?) )?(?:(?:most )?(?:likely|probably)|"
                             r"consistent with|compatible with|represent(?:s|ing)?|suggestive of|reflecting|due to)? ?"
                             r"(?:an? |of )?(?:(?:old|small|tiny|densely|partially|likely) )*calcifi"
                             r"|(?: [\w-]+){0,5}?,? (?:which|that) (?:is|are|appears?) (?:\w+ )?calcified")),
    ),
    "Lung Opacity": (
        # a calcified nodular density is a granuloma
        _Exclusion(before=re.compile(r"(?<!non)(?<!non-)(?<!un)calcifi(?:ed|c) (?:[\w-]+ ){0,2}$"),
                   phrase=re.compile(r"opaci|densit")),
        # an opacity the report explains by something outside the lung
        _Exclusion(
            after=re.compile(r"[^.;]{0,80}?\b(?:hiatal|hiatus) hernia|[^.;]{0,80}?\b(?:secondary to|due to|from|"
                             r"correspond\w* (?:with|to)|represent\w*|compatible with|consistent with) "
                             r"(?:\w+ )?(?:soft tissues?|chest wall|breast|nipple|overlap\w*|overlying)")),
        # scarring offered against effusion or thickening is pleural ("effusion or scarring")
        _Exclusion(before=re.compile(r"\b(?:effusions?|thickening|fluid)\b[^.,;]{0,30}(?:\b(?:or|versus|vs|and/or|"
                                     r"alternatively) | ?/ ?)(?:[\w-]+ ){0,2}$"),
                   after=re.compile(r"(?: (?:or|versus|vs|and/or|alternatively) | ?/ ?)(?:[\w-]+ ){0,3}(?:effusions?|"
                                    r"fluid|thickening)\b"),
                   phrase=re.compile(r"scar")),
    ),
    "Fracture": (
        # fractures of the hip, femur, knee ... in combined reports
        _Exclusion(before=re.compile(r"\b" + _NON_CHEST_PART + r"(?: [\w-]+){0,2} $"),
                   after=re.compile(r"(?: [\w-]+){0,4}? (?:of|in|involving|at) (?:the )?(?:(?:right|left|proximal|"
                                    r"distal) )?(?:[\w-]+ )?" + _NON_CHEST_PART + r"\b")),
    ),
}
"""Mentions that are not mentions of their observation, by the words around them."""

# A sentence that opens a combined report's part about another body part ("Right knee.", "Pelvis: ..."), or
# returns to the chest ("Chest: ...", "Thoracic spine."); fractures in another body part's part are not read.
_REGION = re.compile(
    r"(?:\d+[.)]? )?(?:(?:right|left|bilateral|both) )?(?:(?P<other>" + _NON_CHEST_PART + r")|chest|thoracic spine|"
    r"ribs?|shoulders?|clavicles?|sternum)"
    r"(?: (?:\d+ )?(?:series|radiographs?|views?|images?|films?))?(?::|$)")

# A clear-lung statement: Lung Opacity 0 and Consolidation 0 ("Lungs are clear", "The lungs are otherwise clear",
# "Clear lungs"); one lung called clear ("The left lung is clear") is not one.
_CLEAR_LUNGS = re.compile(
    r"\b(?:lungs|lung (?:fields|xxxx))\b:?(?: (?!(?:not|no|without|is)\b)[\w-]+){0,6}? (?:clear|free)\b"
    r"(?! (?:of|from) (?!(?:any |all )?(?:focal |acute )?(?:air[\s-]?space|infiltrat|consolidat|opacit))[a-z])"
    r"|\bclear lungs\b|(?:^|, )otherwise,? clear$")
_CLEAR_PLEURA = re.compile(r"\bpleural spaces? (?:(?:are|is|appears?|remains?) )?(?:[\w-]+ )?clear\b")
CLEAR_STATEMENTS: Final[dict[str, tuple[re.Pattern[str], tuple[str, ...]]]] = {
    "lungs": (_CLEAR_LUNGS, ("Lung Opacity", "Consolidation")),
    "pleura": (_CLEAR_PLEURA, (PLEURAL_EFFUSION,)),  # "The pleural spaces are clear"
}
"""Statements that a region is clear, and the observations they make negative."""

# Effusion offered against scarring or thickening ("... may be effusion versus scarring"): costophrenic blunting
# so explained is uncertain Pleural Other.
_BLUNT_ALTERNATIVE = re.compile(r"\b(?:or|versus|vs|and/or|alternatively)\b.*\b(?:scar\w*|thicken\w*|fat)\b"
                                r"|\b(?:scar\w*|thicken\w*)\b.*\b(?:or|versus|vs|and/or|alternatively)\b")
_BLUNTING_RULE: Final = "costophrenic blunting"


@dataclass(frozen=True)
class Mention:
    """One mention found in a report: which observation, the matched phrase, its status and why."""

    observation: str
    text: str
    status: int
    rule: str
    sentence: str


# --------------------------------------------------------------------------------------------------------------
# Sections and sentences.
# --------------------------------------------------------------------------------------------------------------

_DROPPED_SECTIONS = (
    r"indications?|(?:clinical )?history|clinical (?:information|indication|data|details)|"
    r"reason for (?:exam(?:ination)?|study|request)|comparisons?|techniques?|examinations?|exam|procedure|"
    r"notifications?|recommendations?(?:\(s\))?|type of (?:exam|study)|views?|wet read")
_HEADER = re.compile(
    r"(?:(?<=^)|(?<=[\n.]))[ \t]*(?P<name>(?i:" + _DROPPED_SECTIONS + r"|findings?|impressions?|conclusions?|"
    r"summary|opinion|interpretation|report))[ \t]*:"
    r"|\b(?P<upper>[A-Z][A-Z /()]{2,40}[A-Z)]):")
_DROP_NAME = re.compile(r"(?:" + _DROPPED_SECTIONS + r")\s*$", re.IGNORECASE)
_SENTENCE = re.compile(r"[.?!;](?!\d)|\n\s*\n|\s\u2022\s|\n\s*(?:\d+[.)]|[-*])\s")
_SPACE = re.compile(r"\s+")


def _keep_sections(text: str) -> list[str]:
    """The sections of a report that are read (INDICATION / HISTORY / COMPARISON / TECHNIQUE-like sections dropped,
    headers removed), in order."""
    matches = list(_HEADER.finditer(text)) if ":" in text else []
    if not matches:
        return [text]
    parts = [text[:matches[0].start()]]
    for i, match in enumerate(matches):
        name = match.group("name") or match.group("upper")
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        if not _DROP_NAME.fullmatch(name.strip()):
            parts.append(text[match.end():end])
    return parts


def _sentences(text: str) -> list[str]:
    """Lower-cased sentences with single spaces."""
    out = []
    for raw in _SENTENCE.split(text):
        sent = _SPACE.sub(" ", raw).strip(" ,:-").lower()
        if sent:
            out.append(sent)
    return out


def _clauses(sentence: str) -> list[tuple[int, int]]:
    """(start, end) of the clauses of a sentence."""
    bounds, start = [], 0
    for match in _CLAUSE_BREAK.finditer(sentence):
        if match.start() > start:
            bounds.append((start, match.start()))
        start = match.end() if match.end() > match.start() else match.start()
    bounds.append((start, len(sentence)))
    return bounds


# --------------------------------------------------------------------------------------------------------------
# Classification.
# --------------------------------------------------------------------------------------------------------------

def _last_valid_negation(left: str) -> re.Match[str] | None:
    """The last negation trigger in ``left`` that is not a pseudo-negation."""
    found = None
    for match in _NEG_BEFORE.finditer(left):
        if _PSEUDO_NEG.match(left, match.start()):
            continue
        word = match.group(0)
        if word in ("resolved", "resolution of", "cleared") and _PSEUDO_RESOLUTION.search(left[:match.start()]):
            continue
        found = match
    return found


def _negated_before(left: str) -> bool:
    trigger = _last_valid_negation(left)
    if trigger is None or _SCOPE_STOP.search(left, trigger.end()):
        return False
    if trigger.group(0) == "not":  # negates its verb phrase ("is not consistent with X"), not a later list
        between = left[trigger.end():]
        return "," not in between and len(between.split()) <= 5
    return True


def _negated_after(right: str) -> bool:
    match = _NEG_AFTER.search(right)
    if match is None or not _reaches_back(right[:match.start()]):
        return False
    return not (match.group(0).endswith("resolved") and _PSEUDO_RESOLUTION.search(right[:match.start()]))


def _uncertain_before(left: str) -> bool:
    last = None
    for last in _UNC_BEFORE.finditer(left):  # noqa: B007 - the last trigger is the one that matters
        pass
    return last is not None and not _UNC_STOP.search(left, last.end())


def _or_uncertain(left: str, right: str) -> bool:
    """'X or Y' / 'X versus Y' outside a negated list: both are uncertain."""
    full = left + " \x00 " + right
    for match in _OR.finditer(full):
        if _last_valid_negation(full[:match.start()]) is not None or _CHANGE_LIST.search(full, 0, match.start()):
            continue  # a list: "no effusion or pneumothorax", "no change in the effusion or pneumothorax"
        lo, hi = (match.end(), len(left)) if match.start() < len(left) else (len(left) + 3, match.start())
        between = full[lo:hi]
        if "," in between and match.group(0) != "or":
            continue  # "opacity, atelectasis versus pneumonia": the opacity is not in the alternative
        if len(between) < 50 and not _GAP_STOP.search(between) and not _OR_GAP_STOP.search(between):
            return True
    return False


_CHANGE_LIST = re.compile(r"\b(?:no|without) (?:[\w-]+ ){0,2}(?:change|changes|increase|decrease) (?:in|of)\b")
_LIST_WORD = re.compile(r"\b(?:and|or|nor)\b")


def _reaches_back(gap: str) -> bool:
    """Whether a trigger after a mention reaches back over ``gap`` to it: no verb in between, and commas only in a
    list ("effusion, pneumothorax, or consolidation is not seen"; not "tube courses below the diaphragm, tip not
    visualized")."""
    if len(gap) > 80 or _GAP_STOP.search(gap):
        return False
    return "," not in gap or _LIST_WORD.search(gap) is not None


def _after(regex: re.Pattern[str], right: str) -> bool:
    """Whether the first ``regex`` trigger after a mention reaches back to it."""
    match = regex.search(right)
    return match is not None and _reaches_back(right[:match.start()])


def _classify(left: str, right: str, attribute: bool) -> tuple[int, str]:
    """Status of a mention from its clause context (``left`` before it, ``right`` after it)."""
    if _PRE_NEG_UNC_BEFORE.search(left) or _after(_PRE_NEG_UNC_AFTER, right):
        return UNCERTAIN, "pre-negation uncertainty"
    if not attribute and (_negated_before(left) or _negated_after(right)):
        return NEGATIVE, "negation"
    if _uncertain_before(left) or _after(_UNC_AFTER, right) or _or_uncertain(left, right):
        return UNCERTAIN, "uncertainty"
    if "xxxx" in left and _MASKED_HEDGE.search(left):
        return UNCERTAIN, _MASKED_HEDGE_RULE
    if (" or " in right or " v" in right) and _NORMAL_ALTERNATIVE.match(right):
        return UNCERTAIN, "read as a normal structure or a finding"
    return POSITIVE, "positive"


_HEDGE_JOIN = re.compile(r"\b(?:or|versus|vs|to|and/or)\b")


_SEGMENT_END = re.compile(r",|\bwith\b")
_SLASH = re.compile(r" ?/ ?(?:[\w-]+ ){0,2}")
_SLASH_RULE: Final = "slash alternatives"
_OTHERWISE = re.compile(r",?\s*otherwise\b")


def _over_otherwise(sentence: str, clause: tuple[int, int], clauses: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``clause`` joined to the next clause when "otherwise" separates them: an attribute's qualifier may follow it
    ("The heart is otherwise normal")."""
    cs, ce = clause
    if not _OTHERWISE.match(sentence, ce):
        return clause
    return cs, next((e for s, e in clauses if s >= ce), ce)


def _qualifiers(observation: str, sentence: str, start: int, end: int) -> list[re.Match[str]]:
    """Qualifiers in sentence[start:end] that can qualify ``observation`` ("cardiomegaly" qualifies only the
    heart)."""
    found = list(_QUALIFIER.finditer(sentence, start, end))
    if observation == CARDIOMEGALY:
        return found
    return [m for m in found if not m.group(0).endswith("cardiomegaly")]


def _qualify(observation: str, sentence: str, start: int, end: int, clause: tuple[int, int]) -> \
        tuple[int | None, str, int]:
    """Label of an attribute mention of ``observation`` at sentence[start:end] from the nearest qualifier in its
    clause, the rule, and where the qualifier starts. The nearest qualifier is looked for after the mention up to a
    comma or "with" ("stable cardiomediastinal silhouette with normal heart size"), then before it, then in the rest
    of the clause."""
    cs, ce = clause
    stop = _SEGMENT_END.search(sentence, end, ce)
    segment_end = ce if stop is None else stop.start()

    def pick(matches: Sequence[re.Match[str]]) -> re.Match[str] | None:
        decisive = [m for m in matches if m.lastgroup != "stab"]
        return decisive[0] if decisive else (matches[0] if matches else None)

    after = _qualifiers(observation, sentence, end, segment_end)
    chosen = pick(after)
    if chosen is not None and chosen.lastgroup != "stab":
        rivals = [m for m in after if m.start() > chosen.start() and m.lastgroup not in ("stab", chosen.lastgroup)]
        rival = rivals[0] if rivals else None
        if rival is not None and _HEDGE_JOIN.search(sentence, chosen.end(), rival.start()):
            return UNCERTAIN, f"qualifiers '{chosen.group(0)}' or '{rival.group(0)}'", chosen.start()
    if chosen is None:
        window_start = max(cs, sentence.rfind(",", cs, start) + 1)
        before = _qualifiers(observation, sentence, window_start, start)
        before = [m for m in before if len(sentence[m.end():start].split()) <= 3]
        chosen = pick(before[::-1])
    if chosen is None:
        chosen = pick(_qualifiers(observation, sentence, segment_end, ce))
    if chosen is None:
        return None, "no qualifier", end
    kind, where = chosen.lastgroup, chosen.start()
    if kind == "neg":
        return NEGATIVE, f"qualifier '{chosen.group(0)}'", where
    if kind in ("stab", "unc"):
        return UNCERTAIN, f"ambiguous qualifier '{chosen.group(0)}'", where
    return POSITIVE, f"qualifier '{chosen.group(0)}'", where


_MAX_CONTEXT: Final = 300
"""Characters of a mention's clause read on each side of it: bounds the work on run-on text."""

# Keyword prefilter: every match of a group's patterns contains one of its keywords, so a sentence without any of
# them is not searched (plain substring tests are much faster than the full patterns). Keywords are looked for in
# the sentence with a space before it, so " tip" is a word start ("tip", not "multiple"). tests/test_labeler.py
# checks that the prefilter never changes a label.
_KEYWORDS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("finding", "Enlarged Cardiomediastinum"): ("mediastin", "paratracheal"),
    ("finding", "Cardiomegaly"): ("cardi", "heart", "ventric", "atrial"),
    ("finding", "Lung Opacity"): ("opaci", "infiltrat", "densit", "air", "ground", "haz", "reticul", "interstitial",
                                  "markings", "scar", "fibro", "bronchial"),
    ("finding", "Lung Lesion"): ("nodul", "mass", "lesion", "tumo", "neoplas", "malignan", "carcinoma", "cancer",
                                 "cavit"),
    ("finding", "Edema"): ("edema", "failure", "chf", "overload", "kerley"),
    ("finding", "Consolidation"): ("consolidat",),
    ("finding", "Pneumonia"): ("pneumoni", "infect"),
    ("finding", "Atelectasis"): ("atelecta", "collaps"),
    ("finding", "Pneumothorax"): ("pneumothora", "ptx", "pleural air"),
    ("finding", "Pleural Effusion"): ("effusion", "hydro", "fluid"),
    ("finding", "Pleural Other"): ("pleur", "fibrothorax", "mesothelioma", "cap"),
    ("finding", "Fracture"): ("fracture",),
    ("finding", "Support Devices"): ("tube", " ett", "ngt", "ogt", "tracheost", "drain", "pigtail", " line",
                                     "catheter", "picc", "swan", " port", "mediport", "portacath", "pacer", "pacem",
                                     "pacing", "icd", "defibrillator", "lead", "wire", "generator", "recorder",
                                     "stimulat", "electrode", "monitor", "stern", "cerclage", "clip", "sutur", "coil",
                                     "occluder", "hardware", " rod", " screw", " plate", " nail", "orthop",
                                     "fixation", "fusion", "prosthe", " tip", "valve", "tav", "plasty", " stent",
                                     "ivc", "vena", "filter", "pump", "iabp", "assist", "lvad", "impella", "ecmo",
                                     "cannula", "shunt", "device"),
    ("hedged", "Edema"): ("congest", "engorge", "redistribution", "plethora", "hypertension", "cephalization",
                          "prominen", "indistinct", "blurring"),
    ("blunting", "Pleural Other"): ("costophrenic", "cp", "costodiaphragmatic", "sinus", "sulc"),
    ("clear", "lungs"): ("clear", "free"),
    ("clear", "pleura"): ("pleural space",),
    ("attribute", "Cardiomegaly"): ("heart", "cardiac", "cardio"),
    ("attribute", "Enlarged Cardiomediastinum"): ("mediastin",),
    ("attribute", "Lung Opacity"): ("markings",),
}

_Group = tuple[str, str, re.Pattern[str], tuple[str, ...]]


def _build_groups(findings: dict[str, tuple[str, ...]], attributes: dict[str, tuple[str, ...]],
                  blunting: tuple[str, ...], keywords: dict[tuple[str, str], tuple[str, ...]] = _KEYWORDS) \
        -> tuple[_Group, ...]:
    """(kind, observation, pattern, keywords), findings first: attribute mentions skip spans of finding mentions."""
    return (
        *((kind, obs, _compile(pats), keywords[(kind, obs)])
          for kind, table in (("finding", findings), ("hedged", HEDGED_FINDINGS),
                              ("blunting", {"Pleural Other": blunting} if blunting else {}))
          for obs, pats in table.items()),
        *(("clear", name, regex, keywords[("clear", name)]) for name, (regex, _) in CLEAR_STATEMENTS.items()),
        *(("attribute", obs, _compile(pats), keywords[("attribute", obs)]) for obs, pats in attributes.items()),
    )


_GROUPS: Final = _build_groups(FINDINGS, ATTRIBUTES, BLUNTING)

# --------------------------------------------------------------------------------------------------------------
# The NegBio reading (``Labeler(reading="negbio")``): NegBio's OpenI gold (Peng et al., AMIA 2018) reads seven
# things otherwise than the conventions; docs/labeler.md counts each on that gold.
# --------------------------------------------------------------------------------------------------------------

READINGS: Final = ("conventions", "negbio")
"""``conventions``: the project's labelling conventions (default); ``negbio``: NegBio's gold's reading."""

_NEGBIO_FISSURE: Final = (r"(?:minor |major |horizontal |oblique )?fissur(?:e|al) thickening",
                          r"thickening of the (?:right |left )?(?:minor |major |horizontal |oblique )?fissures?",
                          r"thickened (?:right |left )?(?:minor |major |horizontal |oblique )?fissures?")
_NEGBIO_GROUPS: Final = _build_groups(
    {**FINDINGS,
     "Lung Lesion": tuple(pat for pat in FINDINGS["Lung Lesion"] if pat not in (_NODULAR_LESION, _CAVITY)),
     "Pleural Other": (*(p for p in FINDINGS["Pleural Other"] if p not in (_PLEURAL_SCAR, _PLEUROPARENCHYMAL_SCAR)),
                       *_NEGBIO_FISSURE)},
    {**ATTRIBUTES, "Cardiomegaly": tuple(p for p in ATTRIBUTES["Cardiomegaly"] if p != _CARDIOMEDIASTINAL)},
    (),  # costophrenic blunting is no Pleural_Thickening
    {**_KEYWORDS, ("finding", "Pleural Other"): (*_KEYWORDS[("finding", "Pleural Other")], "fissur")})
"""A cavity and a nodular opacity are no Nodule; pleural scarring is no Pleural_Thickening, fissural thickening is
one; an enlarged cardiomediastinal silhouette is no Cardiomegaly."""
_NEGBIO_EXCLUSIONS: Final = {obs: rules for obs, rules in _EXCLUSIONS.items() if obs != "Lung Lesion"}
"""A calcified nodule is a Nodule."""
_NEGBIO_POSITIVE_RULES: Final = (_MASKED_HEDGE_RULE, _SLASH_RULE)
"""Rules of the conventions that make a mention uncertain and that NegBio's gold reads as positive."""
_BORDERLINE = re.compile(r"\bborderline\b")
_PROMINENT = re.compile(r"^qualifier '(?:prominen|accentuated)")


def _negbio_status(m: Mention) -> Mention:
    """A mention as NegBio's gold reads it: a masked word between a finding and a diagnosis and a slash between two
    findings are no hedges; a borderline heart is Cardiomegaly, a prominent one is not."""
    if m.observation == CARDIOMEGALY and m.status == POSITIVE and _PROMINENT.search(m.rule):
        return replace(m, status=UNCERTAIN, rule=f"{m.rule} (uncertain in the NegBio reading)")
    if m.status == UNCERTAIN and (m.rule in _NEGBIO_POSITIVE_RULES or (
            m.observation == CARDIOMEGALY and _BORDERLINE.search(m.sentence))):
        return replace(m, status=POSITIVE, rule=f"{m.rule} (positive in the NegBio reading)")
    return m


def _report_parts(text: str) -> list[str]:
    """The sections of a report that are labelled, or [] when nothing is left."""
    return [part for part in _keep_sections(text) if part.strip(" \t\r\n.,;:-")]


def _not_a_mention(observation: str, sentence: str, start: int, end: int,
                   exclusions: dict[str, tuple[_Exclusion, ...]] = _EXCLUSIONS) -> bool:
    """Whether the words around sentence[start:end] say it is not a mention of ``observation`` (`_EXCLUSIONS`)."""
    for rule in exclusions.get(observation, ()):
        if rule.phrase is not None and not rule.phrase.search(sentence, start, end):
            continue
        if ((rule.before is not None and rule.before.search(sentence, max(0, start - _MAX_CONTEXT), start))
                or (rule.after is not None and rule.after.match(sentence, end))):
            return True
    return False


def _slash_alternatives(sentence: str, mentions: list[Mention], spans: Sequence[tuple[int, int]]) -> list[Mention]:
    """Positive mentions of two observations joined by a slash ("atelectasis/scarring") are alternatives: both
    uncertain. Two mentions of one observation ("nodule/mass") keep their certainty."""
    joined: set[int] = set()
    for i, (_, end) in enumerate(spans):
        for j, (start, _) in enumerate(spans):
            if (mentions[i].observation != mentions[j].observation and start >= end
                    and _SLASH.fullmatch(sentence, end, start)):
                joined.update((i, j))
    return [replace(m, status=UNCERTAIN, rule=_SLASH_RULE) if i in joined and m.status == POSITIVE else m
            for i, m in enumerate(mentions)]


def _resolve_blunting(mentions: list[Mention]) -> list[Mention]:
    """Costophrenic blunting in a report that also mentions effusion (not negated) is explained by it: the blunting
    is dropped (the effusion mention labels it), or is uncertain Pleural Other when the effusion is offered against
    scarring or thickening."""
    blunting = [m for m in mentions if m.rule.startswith(_BLUNTING_RULE)]
    effusions = [m for m in mentions if m.observation == PLEURAL_EFFUSION and m.status != NEGATIVE]
    if not blunting or not effusions:
        return mentions
    kept = [m for m in mentions if not m.rule.startswith(_BLUNTING_RULE)]
    if any(_BLUNT_ALTERNATIVE.search(m.sentence) for m in effusions):
        kept += [replace(m, status=UNCERTAIN, rule=f"{_BLUNTING_RULE} explained as effusion or scarring")
                 for m in blunting]
    return kept


class Labeler:
    """Rule-based CheXpert labeler (module docstring). Stateless; safe to share between threads.

    ``prefilter=False`` searches every sentence with every pattern (slower, same labels; used by the tests to check
    the keyword prefilter). ``reading="negbio"`` labels as NegBio's OpenI gold reads reports instead of by the
    conventions (`READINGS`; docs/labeler.md), for comparisons with figures measured on that gold.
    """

    labels: tuple[str, ...] = CHEXPERT_LABELS

    def __init__(self, prefilter: bool = True, reading: str = "conventions") -> None:
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        self.prefilter, self.reading = prefilter, reading
        negbio = reading == "negbio"
        self._all_groups = _NEGBIO_GROUPS if negbio else _GROUPS
        self._exclusions = _NEGBIO_EXCLUSIONS if negbio else _EXCLUSIONS

    def _groups(self, text: str) -> list[_Group]:
        """The groups whose keywords occur in ``text``, each with only those keywords (a sentence of the text can
        hold no other); every group when the prefilter is off."""
        if not self.prefilter:
            return list(self._all_groups)
        groups = []
        for kind, obs, regex, keys in self._all_groups:
            present = tuple([k for k in keys if k in text])
            if present:
                groups.append((kind, obs, regex, present))
        return groups

    def _mentions(self, parts: Sequence[str]) -> list[Mention]:
        out: list[Mention] = []
        sections = [_sentences(part) for part in parts]
        groups = self._groups(" " + " ".join(" ".join(sentences) for sentences in sections))
        if not groups:
            return out
        fractures = any(g[1] == FRACTURE for g in groups)
        for sentences in sections:
            elsewhere = False  # in a combined report's part about another body part: its fractures are not read
            for sentence in sentences:
                region = _REGION.match(sentence) if fractures else None
                if region is not None:
                    elsewhere = region.group("other") is not None
                found = self._sentence_mentions(sentence, groups)
                out.extend([m for m in found if m.observation != FRACTURE] if elsewhere else found)
        return [_negbio_status(m) for m in out] if self.reading == "negbio" else _resolve_blunting(out)

    def _sentence_mentions(self, sentence: str, groups: Sequence[_Group]) -> list[Mention]:
        found: list[Mention] = []
        where: list[tuple[int, int]] = []  # the span of each of ``found``
        clauses: list[tuple[int, int]] | None = None
        spans: dict[str, list[tuple[int, int]]] = {}
        padded = " " + sentence
        for kind, obs, regex, keys in groups:
            if self.prefilter and not any([k in padded for k in keys]):
                continue
            for match in regex.finditer(sentence):
                start, end = match.span()
                if kind == "attribute" and any(s <= start < e for s, e in spans.get(obs, ())):
                    continue  # part of a finding mention of the same observation
                if _not_a_mention(obs, sentence, start, end, self._exclusions) or (
                        "if " in sentence and _CONDITIONAL.search(sentence, 0, start)):
                    continue
                if kind == "clear":
                    cleared = CLEAR_STATEMENTS[obs][1]
                    found += [Mention(o, match.group(0), NEGATIVE, f"clear-{obs} statement", sentence)
                              for o in cleared]
                    where += [(start, end)] * len(cleared)
                    continue
                if clauses is None:
                    clauses = _clauses(sentence)
                clause = next(((cs, ce) for cs, ce in clauses if cs <= start < ce), clauses[-1])
                clause = (max(clause[0], start - _MAX_CONTEXT), min(clause[1], end + _MAX_CONTEXT))
                left, right = sentence[clause[0]:start], sentence[end:clause[1]]
                status: int | None
                if kind == "attribute":
                    status, rule, qualifier = _qualify(obs, sentence, start, end,
                                                       _over_otherwise(sentence, clause, clauses))
                    if status is None:
                        continue
                    if status != NEGATIVE and (_classify(left, right, attribute=True)[0] == UNCERTAIN
                                               or _UNC_BEFORE.search(sentence, end, max(end, qualifier))):
                        status, rule = UNCERTAIN, f"{rule}, uncertainty"
                else:
                    status, rule = _classify(left, right, attribute=False)
                    if kind == "finding":
                        spans.setdefault(obs, []).append((start, end))
                    elif kind == "hedged" and status == POSITIVE:
                        status, rule = UNCERTAIN, "sign suggesting the observation"
                    elif kind == "blunting":
                        rule = f"{_BLUNTING_RULE}, {rule}"
                found.append(Mention(obs, match.group(0), status, rule, sentence))
                where.append((start, end))
        return _slash_alternatives(sentence, found, where) if "/" in sentence else found

    def mentions(self, text: str) -> list[Mention]:
        """Every classified mention in ``text``, sentence by sentence."""
        parts = _report_parts(text)
        return self._mentions(parts) if parts else []

    def label(self, text: str) -> dict[str, int | None]:
        """The 14 CheXpert labels of one report (module docstring for the rules)."""
        if not isinstance(text, str):
            raise TypeError(f"report must be a str, got {type(text).__name__}")
        labels: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
        parts = _report_parts(text)
        if not parts:
            return labels
        statuses: dict[str, set[int]] = {}
        for mention in self._mentions(parts):
            statuses.setdefault(mention.observation, set()).add(mention.status)
        for obs, found in statuses.items():
            labels[obs] = POSITIVE if POSITIVE in found else UNCERTAIN if UNCERTAIN in found else NEGATIVE
        if not any(labels[obs] in (POSITIVE, UNCERTAIN) for obs in PATHOLOGIES):
            labels[NO_FINDING] = POSITIVE
        return labels

    def label_many(self, texts: Iterable[str]) -> list[dict[str, int | None]]:
        """Labels of each report, in order."""
        return [self.label(t) for t in texts]

    def explain(self, text: str) -> list[tuple[str, str, int, str]]:
        """``(observation, phrase, status, rule)`` for every mention: why the labels are what they are."""
        return [(m.observation, m.text, m.status, m.rule) for m in self.mentions(text)]


_DEFAULT = Labeler()


def label_report(text: str) -> dict[str, int | None]:
    """The 14 CheXpert labels (1, 0, -1 or None) of one report text; see the module docstring."""
    return _DEFAULT.label(text)
