"""The CheXpert observation labels: the one declaration of their names, order and values.

CheXpert (Irvin et al., 2019) labels a chest radiograph report with 14 observations. Each takes one of four values:
``1`` positive, ``0`` negative, ``-1`` uncertain, and ``None`` (null in JSON) when the report does not mention it.
"No Finding" is positive only when no pathology is present (support devices do not count as a pathology).

Every module that reads or writes CheXpert labels (the labeler, the dataset adapters, the phantoms, evaluation)
imports the names from here.
"""

from __future__ import annotations

from typing import Final

CHEXPERT_LABELS: Final[tuple[str, ...]] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
"""The 14 observations in CheXpert's order."""

CHEXPERT_5: Final[tuple[str, ...]] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The five competition observations used by most CheXpert-based evaluations."""

POSITIVE: Final[int] = 1
NEGATIVE: Final[int] = 0
UNCERTAIN: Final[int] = -1
LABEL_VALUES: Final[tuple[int | None, ...]] = (POSITIVE, NEGATIVE, UNCERTAIN, None)
"""Allowed values of one label: positive, negative, uncertain, not mentioned (``None``)."""


def empty_labels() -> dict[str, int | None]:
    """All 14 observations set to not mentioned (``None``), in CheXpert's order."""
    return dict.fromkeys(CHEXPERT_LABELS)


def check_labels(labels: dict[str, int | None]) -> None:
    """Raise ValueError unless ``labels`` has exactly the 14 keys and only allowed values."""
    missing = [k for k in CHEXPERT_LABELS if k not in labels]
    extra = [k for k in labels if k not in CHEXPERT_LABELS]
    if missing or extra:
        raise ValueError(f"CheXpert labels: missing {missing}, unknown {extra}")
    bad = {k: v for k, v in labels.items() if v not in LABEL_VALUES or isinstance(v, bool)}
    if bad:
        raise ValueError(f"CheXpert labels: values must be 1, 0, -1 or null, got {bad}")
