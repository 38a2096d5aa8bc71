"""An offline, rule-based CheXpert labeler: 14 observations from the text of a chest radiograph report.

No network, no weights: regular expressions compiled once at import. The design follows the three stages of the
CheXpert labeler described by Irvin et al. (AAAI 2019), with phrase lists written for this project from the
published CheXpert observation definitions and ordinary radiology language (no other labeler's phrase files):

1. **Mention extraction.** The report is cut into sections (INDICATION / HISTORY / COMPARISON / TECHNIQUE and
   similar sections are dropped; FINDINGS, IMPRESSION and unlabelled text are read), sentences (``.``, ``;``, ``?``,
   ``!``, blank lines) and clauses (``but``, ``however``, ``although``, ``except``, ``which``, ``other than``,
   ``there is/are`` ...). Two kinds of mention are found per observation:

   * *finding* mentions, phrases that name the abnormality itself ("cardiomegaly", "left pleural effusion",
     "endotracheal tube", "old healed rib fracture"): positive unless negated or uncertain;
   * *attribute* mentions, neutral anatomy that needs a qualifier ("heart size", "cardiac silhouette",
     "cardiomediastinal silhouette", "mediastinal contours", "interstitial markings"): positive with "enlarged",
     "widened", "increased", "prominent", "borderline"; negative with "normal", "within normal limits",
     "unremarkable", "not enlarged", "upper limits of normal"; uncertain when the only qualifier is "stable" /
     "unchanged" (CheXpert's example of ambiguity inherent in the report: "heart size is stable") or when two
     qualifiers are offered as alternatives ("upper limits of normal or mildly enlarged"); no label when there is
     no qualifier ("the heart and lungs have ... in the interval");
   * *hedged* mentions, signs that suggest an observation without asserting it ("pulmonary vascular congestion",
     "cephalization" for Edema; "blunting of the costophrenic angle" for Pleural Effusion): at most uncertain.

   A mention's context is its clause, at most 300 characters on each side (bounds the work on run-on text).

2. **Mention classification**, in CheXpert's order, each rule bounded by the mention's clause:

   a. *pre-negation uncertainty*: "cannot exclude X", "X cannot be excluded", "X is not ruled out", "rule out X",
      "evaluate for X" ... -> uncertain (-1). Checked **before** negation so that the "not" / "cannot" inside these
      phrases does not negate the mention.
   b. *negation*: triggers before the mention ("no", "not", "without", "free of", "clear of", "negative for",
      "absence of", "resolution of", "removal of", "no longer" ...) whose scope runs forward to the mention unless
      a verb or clause word intervenes ("No pneumothorax is seen, small effusion"), and triggers after it ("X is
      not seen", "X has resolved", "X has been removed", "X is absent") reaching back over a list of nouns but not
      over a verb ("Small effusion is present and the pneumothorax has resolved"). Pseudo-negations do not
      negate: "no change in X", "no interval change", "without change", "near-complete resolution of X",
      "partially resolved X" (X is still present).
   c. *post-negation uncertainty*: hedges before the mention ("possible", "probable", "likely", "may represent",
      "suggestive of", "concerning for", "questionable", "versus", "differential includes" ...) and after it ("X
      is possible", "X is likely", "X may be present", "X versus Y"); "X or Y" makes both uncertain when the "or"
      is not part of a negated list ("No effusion or pneumothorax" stays negative). "Likely" counts as uncertain,
      as in CheXpert; "consistent with" and "compatible with" do not (positive).
   d. otherwise positive (1).

3. **Aggregation** per report, as CheXpert: an observation is 1 if any of its mentions is positive, else -1 if any
   is uncertain, else 0 if it has negative mentions, else ``None`` (not mentioned). CheXpert's one cross-class
   rule is kept: a positive or uncertain "heart failure" / "CHF" (an Edema mention) adds an uncertain Cardiomegaly
   mention. **No Finding** is 1 when none of the 12 pathologies (every observation except Support Devices and No
   Finding itself) is positive or uncertain, and ``None`` otherwise (CheXpert's rule; CheXpert's No Finding is never
   0). There is **no hierarchical propagation** (Edema, Consolidation, Pneumonia, Atelectasis or Lung Lesion do not
   imply Lung Opacity; Cardiomegaly does not imply Enlarged Cardiomediastinum), again as the reference labeler.
   "Normal cardiomediastinal silhouette" is an Enlarged Cardiomediastinum mention only (CheXpert's worked example
   leaves Cardiomegaly blank for it).

An empty report (nothing but white space, or nothing left after the dropped sections) is not an error: every
observation is ``None``, No Finding included (there is no report to call normal).

Conventions chosen where CheXpert's definition leaves room (docs/labeler.md has the reasons): old / healed fractures
are Fracture 1; tubes, lines, catheters, pacemakers / defibrillators and their leads, valves, stents, drains, ports
and sternotomy wires are Support Devices, surgical clips and orthopaedic hardware are not (nor "status post
sternotomy" without the wires); pleural thickening, plaques, calcification, pleural scarring, apical capping and
fissural thickening are Pleural Other; nodules, masses (not mediastinal), nodular opacities and tumours are Lung
Lesion, calcified granulomas are not (a calcified nodule is); "borderline" heart size is Cardiomegaly 1; "infection"
is a Pneumonia mention (as in CheXpert's worked example), granulomatous or tuberculous infection is not.

API: `label_report(text)` -> ``{observation: 1 | 0 | -1 | None}`` over the 14 names in CheXpert's order;
`Labeler().label_many(texts)` for lists; `Labeler().explain(text)` lists the mentions behind the labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ..chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN

__all__ = ["Labeler", "Mention", "label_report"]

NO_FINDING: Final = "No Finding"
SUPPORT_DEVICES: Final = "Support Devices"
PATHOLOGIES: Final[tuple[str, ...]] = tuple(o for o in CHEXPERT_LABELS if o not in (NO_FINDING, SUPPORT_DEVICES))
"""The 12 observations that decide No Finding."""


def _alt(patterns: Iterable[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + _alt(patterns) + r")\b")


# --------------------------------------------------------------------------------------------------------------
# Mentions. Text is lower-cased and white space collapsed before matching; every pattern is word-bounded.
# --------------------------------------------------------------------------------------------------------------

FINDINGS: Final[dict[str, tuple[str, ...]]] = {
    "Enlarged Cardiomediastinum": (
        r"widen(?:ed|ing) (?:of )?(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
        r"(?:enlarged|widened|wide|prominent) (?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?"
        r"|shadow|width))",
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"enlargement of the (?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
        r"mediastinal (?:mass(?:es)?|lymphadenopathy|adenopathy)",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac (?:enlargement|hypertrophy)",
        r"enlarged (?:heart|cardiac (?:silhouette|shadow|contours?|size))",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contours?))",
        r"(?:left |right )?(?:ventricular|atrial|biventricular) (?:enlargement|hypertrophy|dilatation|prominence)",
    ),
    "Lung Opacity": (
        r"(?<!nodular )(?<!calcified )opaci(?:ty|ties|fication|fications|fied)",
        r"infiltrat(?:e|es|ion|ions|ive)",
        r"(?<!bone )(?<!bony )(?<!mineral )(?<!nodular )(?<!calcified )(?<!calcific )(?<!soft tissue )(?<!breast )"
        r"(?<!metallic )(?<!curvilinear )(?<!sclerotic )densit(?:y|ies)(?! (?:foreign|nodules?|over the breast))",
        r"air[\s-]?space (?:disease|process|filling|abnormalit(?:y|ies)|changes?)",
        r"ground[\s-]glass",
        r"haz(?:y|iness)",
        r"reticul(?:ar|ation|onodular)",
        r"interstitial (?:prominence|thickening|pattern|changes?|(?:lung )?disease|process|infiltrates?|"
        r"abnormalit(?:y|ies))",
        r"(?:increased|prominent|coarse(?:ned)?|accentuated) (?:interstitial|bronchovascular|lung|pulmonary) "
        r"markings?",
    ),
    "Lung Lesion": (
        r"nodul(?:e|es|i|arity|arities)",
        r"(?:fibro|micro)?nodular (?:[\w-]+ ){0,3}?(?:opacit(?:y|ies)|densit(?:y|ies)|lesions?|foc(?:us|i)|shadows?|"
        r"irregularit(?:y|ies)|changes?|scarring)",
        r"mass[\s-]?like",
        r"(?<!mediastinal )(?<!soft tissue )(?<!breast )(?<!neck )(?<!abdominal )mass(?:es)?(?! effect)",
        r"(?<!lytic )(?<!osseous )(?<!bony )(?<!bone )(?<!sclerotic )(?<!blastic )(?<!skin )(?<!cutaneous )"
        r"(?<!skeletal )(?<!vertebral )(?<!rib )lesions?",
        r"tumou?rs?",
        r"neoplas(?:m|ms|tic)",
        r"malignan(?:cy|cies|t)",
        r"(?:broncho(?:genic|alveolar) )?carcinoma",
        r"(?:lung|pulmonary|bronchogenic) cancer",
        r"(?<!osseous )(?<!bone )(?<!bony )(?<!skeletal )metasta(?:sis|ses|tic disease)",
        r"cavitary (?:lesions?|nodules?|masses?)",
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
    ),
    "Pleural Effusion": (
        r"(?<!pericardial )(?<!pericardial effusion or )effusions?",
        r"hydro(?:pneumo)?thora(?:x|ces)",
        r"pleural fluid",
        r"(?:fissural|subpulmonic|layering|loculated) fluid",
        r"fluid (?:in|within|along) the (?:\w+ )?(?:fissures?|pleural spaces?)",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|calcifications?|scarring|fibrosis|reaction)",
        r"calcified pleura(?:l plaques?|l thickening)?",
        r"thickening of the (?:\w+ )?pleura",
        r"pleural[\s-]parenchymal (?:scarring|thickening)",
        r"fibrothorax",
        r"mesothelioma",
        r"(?:apical )?pleural cap(?:ping|s)?|apical cap(?:ping|s)?",
        r"(?:fissural|fissure|interlobar fissural?) thickening|thickening (?:of|in|along) the (?:\w+ )?fissures?",
    ),
    "Fracture": (
        r"(?<!catheter )(?<!lead )(?<!wire )(?<!screw )(?<!hardware )fractur(?:e|es|ed|ing)(?! (?:of the )?"
        r"(?:lateral most |most lateral )?(?:fixation )?(?:screws?|wires?|leads?|catheters?|hardware))",
        r"fx",
    ),
    "Support Devices": (
        r"(?:endotracheal|tracheostomy|trach|et|nasogastric|ng|og|orogastric|feeding|enteric|chest|thoracostomy"
        r"|gastric|dobhoff|dobbhoff|gastrostomy|jejunostomy|nasoenteric|pleural|mediastinal|drainage|ng/og"
        r"|og/ng) tubes?",
        r"tubes?",
        r"ett|ngt|ogt",
        r"tracheostomy",
        r"(?:central(?: venous)?|picc|pic|ij|internal jugular|subclavian|arterial|venous|swan[\s-]ganz|"
        r"pulmonary arter(?:y|ial)|dialysis|hemodialysis|catheter|support|monitoring|infusion|femoral|jugular|"
        r"tunnel(?:l)?ed|triple[\s-]lumen|port) lines?",
        r"lines? (?:and|or|&) tubes?",
        r"catheters?",
        r"piccs?",
        r"swan[\s-]ganz",
        r"port[\s-]?a[\s-]?caths?|mediports?|portacaths?",
        r"(?:chest|power|infusion|venous|subclavian|implanted|central venous|subcutaneous|chest wall) ports?",
        r"pacemakers?|pacers?|pacing (?:leads?|wires?|device)",
        r"aicds?|icds?|(?:implantable )?(?:cardioverter[\s-])?defibrillators?",
        r"(?:ecg|ekg|monitoring|telemetry|pacer|pacemaker|icd|aicd|defibrillator|transvenous|epicardial|"
        r"lv|rv|ra|right atrial|right ventricular|coronary sinus) (?:leads?|wires?)",
        r"(?:sternotomy|sternal|cerclage) (?:wires?|sutures?)",
        r"(?:cardiac |pulse |pacemaker |pacer |icd |aicd |defibrillator )generators?",
        r"leads?(?= (?:terminat|project|overl|extend|in the right|within the right|tips?\b|in (?:stable|unchanged|"
        r"satisfactory|good)))",
        r"(?:its|the|with|distal) tips? (?=(?:in|at|projects?|projecting|overl\w+|terminat\w+|near|approximat\w+|"
        r"positioned|located|lies|within|is|extends?|ends?)\b)",
        r"(?:prosthetic|mechanical|bioprosthetic|artificial) (?:(?:heart|cardiac|aortic|mitral|tricuspid|"
        r"pulmonic) )?valves?",
        r"(?:aortic|mitral|tricuspid|pulmonic|heart) valve (?:replacements?|prosthes[ie]s)",
        r"valve replacements?",
        r"tavr|tavi|(?:annuloplasty|valvuloplasty) rings?",
        r"stents?",
        r"(?:ivc|vena cava|greenfield) filters?",
        r"(?:intra[\s-]?aortic )?balloon pump|iabp",
        r"(?:left )?ventricular assist device|lvad|impella",
        r"ecmo|cannula(?:e|s)?",
        r"drains?",
        r"pigtail",
        r"(?:loop|event) recorder",
        r"(?:cardiac |implanted |medical |electronic |support |monitoring |stimulat(?:or|ion) )?devices?",
        r"(?:nerve|vagal|vagus|spinal cord|phrenic nerve|neuro)[\s-]?stimulators?",
        r"electrodes?",
        r"(?:vp|ventriculoperitoneal) shunt|shunt (?:tubing|catheter)",
    ),
}
"""Finding mentions per observation: positive unless negated or uncertain."""

HEDGED_FINDINGS: Final[dict[str, tuple[str, ...]]] = {
    "Edema": (
        r"(?:pulmonary |vascular |venous |interstitial |central )*congestion",
        r"(?:pulmonary )?(?:vascular|venous) (?:engorgement|redistribution|plethora|hypertension)",
        r"cephalization",
    ),
    "Pleural Effusion": (
        r"(?:blunt(?:ing|ed)|obliterat(?:ion|ed)|effacement|effaced)(?: of)?(?: the)?(?: [\w-]+){0,3}? "
        r"(?:costophrenic|cp|costodiaphragmatic) (?:angles?|sulc(?:us|i)|recess(?:es)?)",
        r"(?:costophrenic|cp|costodiaphragmatic) (?:angles?|sulc(?:us|i)|recess(?:es)?) (?:(?:is|are) )?"
        r"(?:[\w-]+ )?(?:blunt(?:ing|ed)|obliterat(?:ion|ed)|effaced|effacement)",
    ),
}
"""Signs that suggest an observation without asserting it: at most uncertain (-1), negative when negated."""

ATTRIBUTES: Final[dict[str, tuple[str, ...]]] = {
    "Cardiomegaly": (
        r"heart(?: size)?(?! (?:failure|valve|disease|rate))",
        r"cardiac (?:silhouette|size|contours?|shadow|diameter|outline|dimensions?|configuration)",
        r"size of the (?:heart|cardiac silhouette)",
        r"cardiothoracic ratio",
        r"cardiac(?= and mediastinal)",
    ),
    "Enlarged Cardiomediastinum": (
        r"cardio[\s-]?mediastinal(?: (?:silhouettes?|contours?|shadow|size|width|structures))?",
        r"mediastin(?:um|al (?:silhouettes?|contours?|width|shadow|structures|size))",
        r"mediastinal(?=,? (?:and|or) (?:hilar|cardiac|heart)\b)",
    ),
    "Lung Opacity": (
        r"(?:interstitial|bronchovascular|lung|pulmonary) markings?",
    ),
}
"""Attribute mentions: their label comes from a qualifier in the clause (`_QUALIFIER`)."""

_CHF = re.compile(r"\b(?:chf|heart failure)\b")

# Qualifiers of attribute mentions. At one position the alternatives are tried in this order, so "not enlarged"
# is negative and "upper limits of normal" is negative before "normal" or "large" could match.
_QUALIFIER = re.compile(
    r"\b(?:(?P<neg>not (?:significantly |appreciably |definitely |particularly )?(?:enlarged|widened|increased|"
    r"prominent|large)|(?:at |within |in )?(?:the )?(?:upper|high|top)(?: limits?| range| end| part)?(?: of)?"
    r"[\s-]+normal|normal(?:[\s-]+sized?|ly sized)?|within (?:the )?normal (?:limits|range)|wnl|unremarkable|"
    r"small|negative|satisfactory|maintained|preserved)"
    r"|(?P<pos>(?:(?:mild(?:ly)?|moderate(?:ly)?|marked(?:ly)?|severe(?:ly)?|slight(?:ly)?|minimal(?:ly)?|"
    r"massive(?:ly)?|significant(?:ly)?|somewhat|very|greatly|considerabl[ey]|grossly|again) )?(?:enlarged|"
    r"enlargement|increased|increase|widened|widening|wide|large|prominent|prominence|big|globular|accentuated|"
    r"coarse(?:ned)?|engorged|cardiomegaly)|borderline(?: (?:enlarged|large|size|cardiomegaly|enlargement))?)"
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
    r"shows?|demonstrat\w*|reveals?|represent\w*|likely|may|might|could|with|but|however|remains?|persists?|"
    r"appears?|resolved|removed|cleared)\b")

# c) Uncertainty (after negation).
_UNC_BEFORE = re.compile(
    r"\b(?:possibl[ey]|probabl[ey]|(?:most |more |less |very |not un)?likely|questionabl[ey]|question(?:ed)?(?: of)?|"
    r"suspect(?:ed)?|suspicious(?: for| of)?|suspicion (?:for|of)|concern(?:ing)? (?:for|of)|worr(?:y|isome) "
    r"(?:for|of)|worrisome|suggest(?:s|ed|ive|ing)?(?: of)?|may|might|could|can be seen|can represent|"
    r"(?:cannot|can ?not|can't) (?:be )?(?:entirely )?(?:exclude|excluded)|perhaps|presum(?:ed|ably|ptive)|"
    r"differential(?: diagnosis| considerations?)?(?: includes?| of)?|ddx|consider(?:ed|ation)?|equivocal|"
    r"(?<!age )(?<!age-)indeterminate|uncertain|not (?:entirely )?(?:certain|clear)|versus|vs|either|and/or|"
    r"(?:would be|to be) (?:considered|excluded)|favou?r(?:ed|ing)?|raises? the possibility|possibility of|"
    r"potential(?:ly)?|apparent|borderline(?= (?:pneumonia|edema|atelectasis|consolidation))|"
    r"atypical|correlat\w*(?: clinically)? for)\b")
_UNC_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were) (?:(?:also|more|most|less|felt|thought) )?(?:possible|likely|probable|"
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
    r"\b(?:from|due|secondary|related|with|possibl[ey]|probabl[ey]|suggest\w*|consistent|compatible|given|in|at|"
    r"on|over|by|because|after|before)\b")


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


def _keep_sections(text: str) -> str:
    """The report without its INDICATION / HISTORY / COMPARISON / TECHNIQUE-like sections, headers removed."""
    matches = list(_HEADER.finditer(text))
    if not matches:
        return text
    parts = [text[:matches[0].start()]]
    for i, match in enumerate(matches):
        name = match.group("name") or match.group("upper")
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        if not _DROP_NAME.fullmatch(name.strip()):
            parts.append(text[match.end():end])
    return ". ".join(p for p in parts if p.strip())


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
        if _last_valid_negation(full[:match.start()]) is not None:
            continue
        lo, hi = (match.end(), len(left)) if match.start() < len(left) else (len(left) + 3, match.start())
        between = full[lo:hi]
        if "," in between and match.group(0) != "or":
            continue  # "opacity, atelectasis versus pneumonia": the opacity is not in the alternative
        if len(between) < 50 and not _GAP_STOP.search(between) and not _OR_GAP_STOP.search(between):
            return True
    return False


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
    return POSITIVE, "positive"


_HEDGE_JOIN = re.compile(r"\b(?:or|versus|vs|to|and/or)\b")


def _qualify(sentence: str, start: int, end: int, clause: tuple[int, int]) -> tuple[int | None, str, int]:
    """Label of an attribute mention at sentence[start:end] from the nearest qualifier in its clause, the rule, and
    where the qualifier starts."""
    cs, ce = clause
    segment_end = sentence.find(",", end, ce)
    segment_end = ce if segment_end < 0 else segment_end

    def pick(matches: Sequence[re.Match[str]]) -> re.Match[str] | None:
        decisive = [m for m in matches if m.lastgroup != "stab"]
        return decisive[0] if decisive else (matches[0] if matches else None)

    after = list(_QUALIFIER.finditer(sentence, end, segment_end))
    chosen = pick(after)
    if chosen is not None and chosen.lastgroup != "stab":
        rivals = [m for m in after if m.start() > chosen.start() and m.lastgroup not in ("stab", chosen.lastgroup)]
        rival = rivals[0] if rivals else None
        if rival is not None and _HEDGE_JOIN.search(sentence, chosen.end(), rival.start()):
            return UNCERTAIN, f"qualifiers '{chosen.group(0)}' or '{rival.group(0)}'", chosen.start()
    if chosen is None:
        window_start = max(cs, sentence.rfind(",", cs, start) + 1)
        before = list(_QUALIFIER.finditer(sentence, window_start, start))
        before = [m for m in before if len(sentence[m.end():start].split()) <= 3]
        chosen = pick(before[::-1])
    if chosen is None:
        chosen = pick(list(_QUALIFIER.finditer(sentence, segment_end, ce)))
    if chosen is None:
        return None, "no qualifier", end
    kind, where = chosen.lastgroup, chosen.start()
    if kind == "neg":
        return NEGATIVE, f"qualifier '{chosen.group(0)}'", where
    if kind == "stab":
        return UNCERTAIN, f"ambiguous qualifier '{chosen.group(0)}'", where
    return POSITIVE, f"qualifier '{chosen.group(0)}'", where


_MAX_CONTEXT: Final = 300
"""Characters of a mention's clause read on each side of it: bounds the work on run-on text."""

# Keyword prefilter: every match of a group's patterns contains one of its keywords, so a sentence without any of
# them is not searched (plain substring tests are much faster than the full patterns). tests/test_labeler.py checks
# that the prefilter never changes a label.
_KEYWORDS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("finding", "Enlarged Cardiomediastinum"): ("mediastin",),
    ("finding", "Cardiomegaly"): ("cardi", "heart", "ventric", "atrial"),
    ("finding", "Lung Opacity"): ("opaci", "infiltrat", "densit", "air", "ground", "haz", "reticul", "interstitial",
                                  "markings"),
    ("finding", "Lung Lesion"): ("nodul", "mass", "lesion", "tumo", "neoplas", "malignan", "carcinoma", "cancer",
                                 "metasta"),
    ("finding", "Edema"): ("edema", "failure", "chf", "overload", "kerley"),
    ("finding", "Consolidation"): ("consolidat",),
    ("finding", "Pneumonia"): ("pneumoni", "infect"),
    ("finding", "Atelectasis"): ("atelecta", "collaps"),
    ("finding", "Pneumothorax"): ("pneumothora", "ptx"),
    ("finding", "Pleural Effusion"): ("effusion", "hydro", "fluid"),
    ("finding", "Pleural Other"): ("pleura", "fibrothorax", "mesothelioma", "cap", "fissur"),
    ("finding", "Fracture"): ("fractur", "fx"),
    ("finding", "Support Devices"): ("tube", "ett", "ngt", "ogt", "trach", "line", "catheter", "picc", "pic ",
                                     "swan", "port", "pac", "icd", "defibrillator", "lead", "wire", "suture",
                                     "generator", "tip", "valve", "tav", "ring", "stent", "filter", "pump", "iabp",
                                     "assist", "lvad", "impella", "ecmo", "cannula", "drain", "pigtail", "recorder",
                                     "device", "stimulat", "electrode", "shunt"),
    ("hedged", "Edema"): ("congest", "engorge", "redistribution", "plethora", "hypertension", "cephalization"),
    ("hedged", "Pleural Effusion"): ("costophrenic", "cp", "costodiaphragmatic"),
    ("attribute", "Cardiomegaly"): ("heart", "cardiac", "cardiothoracic"),
    ("attribute", "Enlarged Cardiomediastinum"): ("mediastin",),
    ("attribute", "Lung Opacity"): ("markings",),
}
_GROUPS: Final[tuple[tuple[str, str, re.Pattern[str], tuple[str, ...]], ...]] = tuple(
    (kind, obs, _compile(pats), _KEYWORDS[(kind, obs)])
    for kind, table in (("finding", FINDINGS), ("hedged", HEDGED_FINDINGS), ("attribute", ATTRIBUTES))
    for obs, pats in table.items())
"""(kind, observation, pattern, keywords), findings first: attribute mentions skip spans of finding mentions."""


def _report_text(text: str) -> str:
    """The part of a report that is labelled (sections kept), or "" when nothing is left."""
    kept = _keep_sections(text) if ":" in text else text
    return kept if kept.strip(" \t\r\n.,;:-") else ""


class Labeler:
    """Rule-based CheXpert labeler (module docstring). Stateless; safe to share between threads.

    ``prefilter=False`` searches every sentence with every pattern (slower, same labels; used by the tests to check
    the keyword prefilter).
    """

    labels: tuple[str, ...] = CHEXPERT_LABELS

    def __init__(self, prefilter: bool = True) -> None:
        self.prefilter = prefilter

    def _mentions(self, kept: str) -> list[Mention]:
        out: list[Mention] = []
        lowered = kept.lower()
        groups = [g for g in _GROUPS if not self.prefilter or any(k in lowered for k in g[3])]
        if not groups:
            return out
        for sentence in _sentences(kept):
            clauses: list[tuple[int, int]] | None = None
            spans: dict[str, list[tuple[int, int]]] = {}
            for kind, obs, regex, keys in groups:
                if self.prefilter and not any(k in sentence for k in keys):
                    continue
                for match in regex.finditer(sentence):
                    start, end = match.span()
                    if kind == "attribute" and any(s <= start < e for s, e in spans.get(obs, ())):
                        continue  # part of a finding mention of the same observation
                    if clauses is None:
                        clauses = _clauses(sentence)
                    clause = next(((cs, ce) for cs, ce in clauses if cs <= start < ce), clauses[-1])
                    clause = (max(clause[0], start - _MAX_CONTEXT), min(clause[1], end + _MAX_CONTEXT))
                    left, right = sentence[clause[0]:start], sentence[end:clause[1]]
                    if kind == "attribute":
                        status, rule, where = _qualify(sentence, start, end, clause)
                        if status is None:
                            continue
                        if status != NEGATIVE and (_classify(left, right, attribute=True)[0] == UNCERTAIN
                                                   or _UNC_BEFORE.search(sentence, end, max(end, where))):
                            status, rule = UNCERTAIN, f"{rule}, uncertainty"
                    else:
                        status, rule = _classify(left, right, attribute=False)
                        if kind == "finding":
                            spans.setdefault(obs, []).append((start, end))
                        elif status == POSITIVE:
                            status, rule = UNCERTAIN, "sign suggesting the observation"
                    out.append(Mention(obs, match.group(0), status, rule, sentence))
        return out

    def mentions(self, text: str) -> list[Mention]:
        """Every classified mention in ``text``, sentence by sentence."""
        kept = _report_text(text)
        return self._mentions(kept) if kept else []

    def label(self, text: str) -> dict[str, int | None]:
        """The 14 CheXpert labels of one report (module docstring for the rules)."""
        if not isinstance(text, str):
            raise TypeError(f"report must be a str, got {type(text).__name__}")
        labels: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
        kept = _report_text(text)
        if not kept:
            return labels
        statuses: dict[str, set[int]] = {}
        for mention in self._mentions(kept):
            statuses.setdefault(mention.observation, set()).add(mention.status)
            if mention.observation == "Edema" and mention.status != NEGATIVE and _CHF.search(mention.text):
                statuses.setdefault("Cardiomegaly", set()).add(UNCERTAIN)
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
