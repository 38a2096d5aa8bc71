"""The rule labeler against the project's labelling conventions (../shared/docs/labeling_conventions.md).

One parametrised case per convention: a sentence written for this test (no report text from any data set) and the
labels it must get; observations not listed are not checked. docs/labeler.md lists where the labeler deliberately
differs from the conventions; those choices are tested here too, marked "deliberate".
"""

from __future__ import annotations

import pytest

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.eval.labeler import Labeler, label_report

EC, CM, LO, LL = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion"
ED, CO, PN, AT = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
PX, PE, PO, FX, SD, NF = ("Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
                          "No Finding")

Case = tuple[str, dict[str, int | None]]

VALUES: list[Case] = [
    ("There may be a small left effusion.", {PE: -1}),
    ("Possible right lower lobe pneumonia.", {PN: -1}),
    ("A small pneumothorax cannot be excluded.", {PX: -1}),
    ("Most likely atelectasis at the left base.", {AT: -1}),
    ("Likely subsegmental atelectasis.", {AT: -1}),
    ("Findings suggestive of pulmonary edema.", {ED: -1}),
    ("Suggestion of a small right pleural effusion.", {PE: -1}),
    ("Atelectasis versus consolidation at the right base.", {AT: -1, CO: -1}),
    ("Left basilar atelectasis/scarring.", {AT: -1, LO: -1}),  # slash alternatives of two classes
    ("Right upper lobe nodule/mass.", {LL: 1}),  # one class: its certainty stays
    ("Apical pleural thickening/scarring.", {PO: 1, LO: None}),
    ("Atelectasis and/or pneumonia.", {AT: -1, PN: -1}),
    ("Questionable left apical pneumothorax.", {PX: -1}),
    ("Left basilar atelectasis or pneumonia.", {AT: -1, PN: -1}),
    ("Clinical correlation for pneumonia is recommended.", {PN: -1}),
    ("The differential includes pneumonia.", {PN: -1}),
    ("Right lower lobe opacity is likely atelectasis.", {LO: 1, AT: -1}),  # the hedge is the diagnosis's
    ("No focal consolidation.", {CO: 0}),
    ("Small right pleural effusion.", {PE: 1}),
]

CONFLICTS: list[Case] = [  # positive > uncertain > negative
    ("Small right effusion. No left effusion.", {PE: 1}),
    ("Possible left pneumonia. No right pneumonia.", {PN: -1}),
    ("Right lower lobe pneumonia. Possible left pneumonia.", {PN: 1}),
    ("No pneumothorax. Tiny apical pneumothorax is questioned. Small right pneumothorax.", {PX: 1}),
]

NO_FINDING: list[Case] = [
    ("Heart size is normal. The lungs are clear.", {NF: 1}),
    ("Pacemaker in place. The lungs are clear.", {NF: 1, SD: 1}),  # devices do not block it
    ("Possible small effusion.", {NF: None}),  # uncertain blocks it, and it is never 0
    ("Mild cardiomegaly.", {NF: None}),
    ("Old healed rib fracture.", {NF: None}),
    # findings outside the 12 pathology classes do not block it and set nothing
    ("Degenerative changes of the thoracic spine. Mild scoliosis.", {NF: 1}),
    ("Hyperinflated lungs consistent with emphysema.", {NF: 1}),
    ("Calcified granuloma in the left upper lobe.", {NF: 1, LL: None}),
    ("Calcified hilar lymph nodes.", {NF: 1, LL: None}),
    ("Tortuous and calcified thoracic aorta.", {NF: 1, EC: None}),
    ("Small hiatal hernia.", {NF: 1}),
    ("Elevated right hemidiaphragm.", {NF: 1}),
    ("Eventration of the left hemidiaphragm.", {NF: 1}),
    ("Low lung volumes.", {NF: 1}),
    ("Subcutaneous emphysema in the left chest wall.", {NF: 1, ED: None}),
    ("Small pneumomediastinum.", {NF: 1, PX: None}),
    ("Mediastinal shift to the left.", {NF: 1, EC: None}),
    ("Enlarged central pulmonary arteries.", {NF: 1, EC: None, CM: None}),
    ("Sclerotic bone lesion in the left humerus.", {NF: 1, LL: None}),
    ("Anterior dislocation of the right shoulder.", {NF: 1}),
]

HEART_AND_MEDIASTINUM: list[Case] = [
    ("Normal cardiomediastinal silhouette.", {EC: 0, CM: 0}),
    ("The cardiac silhouette is normal.", {CM: 0, EC: None}),
    ("The cardiac contour is normal.", {CM: 0, EC: None}),
    ("The mediastinal contours are normal.", {EC: 0, CM: None}),
    ("Mild cardiomegaly with normal mediastinal contours.", {CM: 1, EC: 0}),
    # stable / unchanged without a normality word: uncertain, by wording
    ("Heart size is stable.", {CM: -1, EC: None}),
    ("Unchanged cardiac silhouette.", {CM: -1, EC: None}),
    ("The mediastinal contours are stable.", {EC: -1, CM: None}),
    ("Stable cardiomediastinal silhouette.", {EC: -1, CM: -1}),
    ("Stable cardiomediastinal silhouette with normal heart size.", {EC: -1, CM: -1}),  # -1 beats 0
    ("Heart size is stable and normal.", {CM: 0}),
    ("The heart is otherwise normal in size.", {CM: 0}),
    ("Stable cardiomegaly.", {CM: 1}),
    # borderline: uncertain; top of the normal range: still normal
    ("Heart size is borderline.", {CM: -1}),
    ("Borderline cardiomegaly.", {CM: -1}),
    ("The heart is borderline enlarged.", {CM: -1}),
    ("Heart size is top normal.", {CM: 0}),
    ("Heart size at the upper limits of normal.", {CM: 0}),
    # what is and is not Enlarged Cardiomediastinum
    ("Tortuous thoracic aorta.", {EC: None}),
    ("Bilateral hilar enlargement.", {EC: None}),
    ("Mediastinal adenopathy.", {EC: 1}),
    ("Prominent mediastinal contour.", {EC: 1}),
    ("Mediastinal opacity, aorta versus mass.", {EC: -1, LO: None, LL: -1}),
    ("The mediastinum is widened.", {EC: 1}),
    ("Stable cardiomediastinal contour with mild cardiomegaly.", {EC: -1, CM: 1}),
]

LUNG_OPACITY: list[Case] = [
    ("Patchy opacity in the right lower lobe.", {LO: 1}),
    ("Right upper lobe infiltrate.", {LO: 1}),
    ("Increased density at the left base.", {LO: 1}),
    ("Bibasilar airspace disease.", {LO: 1}),
    ("Haziness at the left base.", {LO: 1}),
    ("Left apical scarring.", {LO: 1}),
    ("Pulmonary fibrosis.", {LO: 1}),
    ("Increased interstitial markings.", {LO: 1}),
    ("Diffuse interstitial pattern.", {LO: 1}),
    ("Peribronchial cuffing.", {LO: 1}),
    ("Peribronchial thickening.", {LO: 1}),
    # never inferred from other findings
    ("Left lower lobe atelectasis.", {LO: None, AT: 1}),
    ("Right lower lobe pneumonia.", {LO: None, PN: 1}),
    ("Moderate pulmonary edema.", {LO: None, ED: 1}),
    ("Right middle lobe consolidation.", {LO: None, CO: 1}),
    # clear-lung statements
    ("The lungs are clear.", {LO: 0, CO: 0}),
    ("The lungs are otherwise clear.", {LO: 0, CO: 0}),
    ("Lungs are hyperinflated but clear.", {LO: 0, CO: 0}),
    ("Lungs are clear of airspace disease.", {LO: 0, CO: 0}),
    ("The lungs are free of focal airspace disease.", {LO: 0, CO: 0}),
    ("Low lung volumes, otherwise clear.", {LO: 0, CO: 0}),
    ("The left lung is clear.", {LO: None, CO: None}),  # one lung: nothing
    ("No focal opacity to suggest pneumonia.", {LO: 0, PN: 0}),
    # opacities placed outside the lung
    ("Retrosternal density.", {LO: None}),
    ("Cardiac double density.", {LO: None}),
    ("Mediastinal opacity.", {LO: None, EC: 1}),
    ("Retrocardiac density compatible with a hiatal hernia.", {LO: None}),
]

LUNG_LESION: list[Case] = [
    ("Right upper lobe nodule.", {LL: 1}),
    ("Left lower lobe mass.", {LL: 1}),
    ("Nodular density in the right midlung.", {LL: 1, LO: 1}),
    ("Calcified nodular density in the left base.", {LL: None, LO: None}),
    ("Reticulonodular pattern in both lungs.", {LL: None, LO: 1}),
    ("Cavitary lesion in the left upper lobe.", {LL: 1}),
    ("Cavity in the right apex.", {LL: 1}),
    ("Calcified granuloma in the right upper lobe.", {LL: None}),
    ("Calcified nodule in the left lower lobe.", {LL: None}),
    ("Nodule in the left apex which is calcified.", {LL: None}),
    ("Non-calcified nodule in the right lung.", {LL: 1}),
    ("Right lower lobe nodule, likely a granuloma.", {LL: 1}),
    ("Nodule which is probably granulomatous.", {LL: 1}),
    ("Left pericardial mass.", {LL: None}),
    ("Left pleural mass.", {LL: None}),
    ("Lytic lesion in a left rib.", {LL: None}),
    ("Mediastinal mass.", {LL: 1, EC: 1}),
    ("Possible mediastinal nodule.", {LL: -1}),
    ("No pulmonary nodules or masses.", {LL: 0}),
]

EDEMA_PNEUMONIA_ATELECTASIS: list[Case] = [
    ("Moderate pulmonary edema.", {ED: 1}),
    ("Congestive heart failure.", {ED: 1, CM: None}),  # no Cardiomegaly from heart failure
    ("Pulmonary vascular congestion.", {ED: -1}),
    ("Prominent pulmonary vasculature.", {ED: -1}),
    ("Central vascular prominence.", {ED: -1}),
    ("Indistinct pulmonary vessels.", {ED: -1}),
    ("Infectious process in the right lower lobe.", {PN: 1}),
    ("Right lower lobe infection.", {PN: 1}),
    ("Reactivation tuberculosis in the right apex.", {PN: None}),
    ("Sequelae of old granulomatous infection.", {PN: None}),
    ("Subsegmental atelectasis at the left base.", {AT: 1}),
    ("Collapse of the right upper lobe.", {AT: 1}),
    ("Large left pneumothorax with collapse of the left lung.", {AT: 1, PX: 1}),
    ("Volume loss in the left hemithorax.", {AT: None}),
]

PLEURA: list[Case] = [
    ("No large pleural effusion.", {PE: 0}),
    ("The pleural spaces are clear.", {PE: 0}),
    ("No pleural air collections.", {PX: 0}),
    ("No change in the right pneumothorax or pleural fluid.", {PX: 1, PE: 1}),  # a list, not alternatives
    ("No definite pleural effusion.", {PE: 0}),
    # costophrenic blunting: Pleural Other unless explained as effusion
    ("Blunting of the left costophrenic angle.", {PO: 1, PE: None}),
    ("Blunting of the left costophrenic angle. No pleural effusion.", {PO: 1, PE: 0}),
    ("Blunting of the left costophrenic angle consistent with a small effusion.", {PE: 1, PO: None}),
    ("Blunting of the right costophrenic angle, possibly a small effusion.", {PE: -1, PO: None}),
    ("Blunted right costophrenic angle. Small right pleural effusion.", {PE: 1, PO: None}),
    ("Blunting of the right costophrenic angle may reflect effusion or scarring.", {PE: -1, PO: -1, LO: None}),
    ("Small effusion versus pleural thickening.", {PE: -1, PO: -1}),
    ("Right apical pleural thickening.", {PO: 1}),
    ("Bilateral apical pleural caps.", {PO: 1}),
    ("Calcified pleural plaques.", {PO: 1}),
    ("Left pleural scarring.", {PO: 1, LO: None}),
    ("Biapical pleuroparenchymal scarring.", {PO: 1, LO: None}),
    ("Thickening of the minor fissure.", {PO: None}),
    ("Fissural thickening.", {PO: None}),
]

FRACTURES: list[Case] = [
    ("Healed left rib fractures.", {FX: 1}),
    ("Acute fracture of the right clavicle.", {FX: 1}),
    ("Old fracture of the left seventh rib.", {FX: 1}),
    ("No fracture.", {FX: 0}),
    ("Wedge deformity of a midthoracic vertebral body.", {FX: None}),
    ("Compression deformity of T12.", {FX: None}),
    ("Deformity of the right clavicle from old trauma.", {FX: None}),
    ("No acute bony abnormality.", {FX: None}),
    ("The bones are intact.", {FX: None}),
    ("If there is concern for a fracture, a rib series is suggested.", {FX: None}),
    # other body parts in combined reports
    ("No fracture of the left hip.", {FX: None}),
    ("Right femoral neck fracture.", {FX: None}),
    ("Chest: no acute disease. Right knee: no fracture.", {FX: None}),
    ("Right knee. No fracture or dislocation.", {FX: None}),
    ("Right knee. No fracture. Chest. Old left rib fracture.", {FX: 1}),
    # a broken device is not a fracture
    ("Fracture of a sternotomy wire.", {FX: None, SD: 1}),
]

SUPPORT_DEVICES: list[Case] = [
    ("Endotracheal tube 5 cm above the carina.", {SD: 1}),
    ("Nasogastric tube in the stomach.", {SD: 1}),
    ("Right chest tube in place.", {SD: 1}),
    ("Right internal jugular central venous catheter.", {SD: 1}),
    ("Right arm PICC line with tip in the superior vena cava.", {SD: 1}),
    ("Left chest port with its tip in the right atrium.", {SD: 1}),
    ("Dual-chamber pacemaker with leads in the right atrium and ventricle.", {SD: 1}),
    ("Left-sided ICD in place.", {SD: 1}),
    ("Intact median sternotomy wires.", {SD: 1}),
    ("Surgical clips in the right axilla.", {SD: 1}),
    ("Cholecystectomy clips in the right upper quadrant.", {SD: 1}),
    ("Coronary artery stent.", {SD: 1}),
    ("Prosthetic aortic valve.", {SD: 1}),
    ("Mitral valve replacement.", {SD: 1}),
    ("Lower cervical spine fusion hardware.", {SD: 1}),
    ("Lower cervical spine fusion.", {SD: None}),  # hardware not mentioned
    ("IVC filter in place.", {SD: 1}),
    ("Rectal balloon catheter.", {SD: 1}),
    ("External monitor leads overlie the chest.", {SD: 1}),
    ("Surgical sutures in the left upper lobe.", {SD: 1}),
    ("Atrial septal occluder device.", {SD: 1}),
    # negated and removed
    ("The endotracheal tube has been removed.", {SD: 0}),
    ("Interval removal of the left chest tube.", {SD: 0}),
    ("No pacemaker.", {SD: 0}),
    # not devices
    ("Postoperative changes in the left chest.", {SD: None}),
    ("Bilateral breast implants.", {SD: None}),
    ("Bilateral breast prostheses.", {SD: None}),
    ("Nipple piercing.", {SD: None}),
    ("Body jewelry over the upper abdomen.", {SD: None}),
    # IU masks "wires", "hardware" and "filter" as XXXX: the masked device noun counts; a bare procedure does not
    ("Median sternotomy XXXX are intact.", {SD: 1}),
    ("Lower cervical spine fusion XXXX.", {SD: 1}),
    ("Partially visualized IVC XXXX.", {SD: 1}),
    ("Postoperative changes of median sternotomy.", {SD: None}),
    ("Status post sternotomy and bypass grafting.", {SD: None}),
    ("Right humeral prosthesis.", {SD: 1}),
    ("Left shoulder arthroplasty.", {SD: None}),
]

MASKED_HEDGES: list[Case] = [
    ("Left basilar opacity XXXX atelectasis.", {LO: 1, AT: -1}),
    ("Streaky opacities most XXXX representing subsegmental atelectasis.", {LO: 1, AT: -1}),
    ("Right lower lobe opacity, XXXX pneumonia.", {LO: 1, PN: -1}),
    ("Interstitial opacities XXXX represent interstitial edema.", {LO: 1, ED: -1}),
    ("This XXXX represents pneumonia.", {PN: -1}),
    ("Left lower lobe XXXX segment pneumonia.", {PN: 1}),  # a masked location word, not a hedge
]

CHANGE_AND_SECTIONS: list[Case] = [
    ("Improved but persistent left lower lobe pneumonia.", {PN: 1}),
    ("The right pleural effusion has resolved.", {PE: 0}),
    ("Interval resolution of the left lower lobe pneumonia.", {PN: 0}),
    ("INDICATION: Pneumonia. FINDINGS: The lungs are clear.", {PN: None, LO: 0}),
    ("COMPARISON: Chest tube placement. IMPRESSION: No pneumothorax.", {SD: None, PX: 0}),
]

ALL: list[Case] = (VALUES + CONFLICTS + NO_FINDING + HEART_AND_MEDIASTINUM + LUNG_OPACITY + LUNG_LESION
                   + EDEMA_PNEUMONIA_ATELECTASIS + PLEURA + FRACTURES + SUPPORT_DEVICES + MASKED_HEDGES
                   + CHANGE_AND_SECTIONS)


@pytest.mark.parametrize(("text", "expected"), ALL, ids=[c[0][:70] for c in ALL])
def test_convention(text: str, expected: dict[str, int | None]) -> None:
    labels = label_report(text)
    assert {k: labels[k] for k in expected} == expected, Labeler().explain(text)


def test_cases_name_real_observations() -> None:
    assert all(set(expected) <= set(CHEXPERT_LABELS) for _, expected in ALL)


@pytest.mark.parametrize("text", [c[0] for c in NO_FINDING[5:]])
def test_out_of_class_findings_set_only_no_finding(text: str) -> None:
    """Findings outside the 12 pathology classes: No Finding 1 and no pathology mentioned at all."""
    labels = label_report(text)
    assert labels[NF] == 1
    assert all(labels[obs] is None for obs in CHEXPERT_LABELS if obs not in (NF, LO, CO)), Labeler().explain(text)


def test_prefilter_does_not_change_convention_labels() -> None:
    texts = [c[0] for c in ALL]
    assert Labeler().label_many(texts) == Labeler(prefilter=False).label_many(texts)
