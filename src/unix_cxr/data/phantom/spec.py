"""What a phantom is: the finding vocabulary, :class:`Finding`, :class:`PhantomSpec`, the facts of a case that
follow from its seed, and :func:`sample_spec` (a random case mix). No drawing and no text here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------- vocabulary

PATHOLOGY_KINDS: tuple[str, ...] = (
    "cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "lung_opacity", "atelectasis", "edema",
)
DEVICE_KINDS: tuple[str, ...] = ("endotracheal_tube", "central_line", "pacemaker")
FINDING_KINDS: tuple[str, ...] = PATHOLOGY_KINDS + DEVICE_KINDS

KIND_LABEL: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly",
    "pleural_effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "lung_opacity": "Lung Opacity",
    "atelectasis": "Atelectasis",
    "edema": "Edema",
    "endotracheal_tube": "Support Devices",
    "central_line": "Support Devices",
    "pacemaker": "Support Devices",
}
"""The CheXpert label each finding kind makes positive (no parent propagation, as CheXpert's labeler)."""

SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SIDES: tuple[str, ...] = ("right", "left", "bilateral")

_ALLOWED_SIDES: dict[str, tuple[str | None, ...]] = {
    "cardiomegaly": (None,), "edema": (None,), "endotracheal_tube": (None,),
    "pleural_effusion": SIDES, "consolidation": SIDES, "lung_opacity": SIDES, "atelectasis": SIDES,
    "pneumothorax": ("right", "left"), "central_line": ("right", "left"), "pacemaker": ("right", "left"),
}
_DEFAULT_SIDE: dict[str, str | None] = {
    "cardiomegaly": None, "edema": None, "endotracheal_tube": None, "pleural_effusion": "right",
    "consolidation": "right", "lung_opacity": "right", "atelectasis": "right", "pneumothorax": "right",
    "central_line": "right", "pacemaker": "left",
}
_ZONED: frozenset[str] = frozenset({"consolidation", "lung_opacity", "atelectasis"})

SEVERITY_VALUE: dict[str, dict[str, float]] = {
    "cardiomegaly": {"mild": 0.55, "moderate": 0.61, "severe": 0.68},  # cardiothoracic ratio
    "pleural_effusion": {"mild": 0.08, "moderate": 0.28, "severe": 0.5},  # fluid height at the wall / lung height
    "pneumothorax": {"mild": 0.025, "moderate": 0.05, "severe": 0.085},  # apical-lateral rim width / image width
    "consolidation": {"mild": 0.045, "moderate": 0.065, "severe": 0.09},  # patch radius / image width
    "lung_opacity": {"mild": 0.05, "moderate": 0.075, "severe": 0.10},  # patch radius / image width
    "atelectasis": {"mild": 0.35, "moderate": 0.65, "severe": 1.0},  # extent: band count and thickness
    "edema": {"mild": 0.35, "moderate": 0.6, "severe": 0.85},  # perihilar haze density
}
"""Severity word → the number that drives the drawing (``Finding.value`` overrides it)."""

_VALUE_RANGE: dict[str, tuple[float, float]] = {
    "cardiomegaly": (0.3, 0.75), "pleural_effusion": (0.02, 0.6), "pneumothorax": (0.01, 0.12),
    "consolidation": (0.02, 0.14), "lung_opacity": (0.02, 0.14), "atelectasis": (0.1, 1.0), "edema": (0.1, 1.0),
}

NORMAL_CTR_RANGE: tuple[float, float] = (0.40, 0.48)
"""A normal heart's cardiothoracic ratio is drawn from this range by the seed (when ``PhantomSpec.ctr`` is None)."""

NEGATABLE: tuple[str, ...] = (
    "Cardiomegaly", "Enlarged Cardiomediastinum", "Lung Opacity", "Edema", "Consolidation", "Pneumothorax",
    "Pleural Effusion", "Fracture",
)
"""The CheXpert labels a phantom report may state as absent (pertinent negatives), which makes them 0."""

DEFAULT_NEGATIVES: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Pneumothorax", "Pleural Effusion")
"""The pertinent negatives stated when ``PhantomSpec.negatives`` is None (those not contradicted by a finding)."""

MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 512, 16


# --------------------------------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class Finding:
    """One finding to draw. ``side`` is the patient's side (left out: the kind's usual one, e.g. a left pacemaker;
    None for cardiomegaly, edema and the endotracheal tube); ``zone`` applies to consolidation, lung opacity and
    atelectasis (left out: lower); ``value`` overrides the number the severity word maps to (``SEVERITY_VALUE``);
    ``uncertain`` makes the report hedge ("possible ...") and the label -1 (the pixels still show it)."""

    kind: str
    side: str | None = ""
    severity: str = "moderate"
    zone: str | None = ""
    value: float | None = None
    uncertain: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FINDING_KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {', '.join(FINDING_KINDS)}")
        if self.side == "":
            object.__setattr__(self, "side", _DEFAULT_SIDE[self.kind])
        if self.side not in _ALLOWED_SIDES[self.kind]:
            allowed = ", ".join(str(s) for s in _ALLOWED_SIDES[self.kind])
            raise ValueError(f"{self.kind}: side must be one of {allowed}, got {self.side!r}")
        if self.zone == "":
            object.__setattr__(self, "zone", "lower" if self.kind in _ZONED else None)
        if self.kind in _ZONED and self.zone not in ZONES:
            raise ValueError(f"{self.kind}: zone must be one of {', '.join(ZONES)}, got {self.zone!r}")
        if self.kind not in _ZONED and self.zone is not None:
            raise ValueError(f"{self.kind} takes no zone, got {self.zone!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")
        if self.value is not None:
            if self.kind in DEVICE_KINDS:
                raise ValueError(f"{self.kind} takes no value")
            lo, hi = _VALUE_RANGE[self.kind]
            if not lo <= float(self.value) <= hi:
                raise ValueError(f"{self.kind}: value must be in [{lo}, {hi}], got {self.value}")
        if self.uncertain and self.kind in DEVICE_KINDS:
            raise ValueError(f"{self.kind} cannot be uncertain")

    @property
    def label(self) -> str:
        """The CheXpert label this finding makes positive (or uncertain)."""
        return KIND_LABEL[self.kind]

    @property
    def magnitude(self) -> float:
        """The number that drives the drawing: ``value`` or the severity's entry in ``SEVERITY_VALUE``."""
        if self.value is not None:
            return float(self.value)
        return SEVERITY_VALUE[self.kind][self.severity] if self.kind in SEVERITY_VALUE else 1.0

    def sides(self) -> tuple[str, ...]:
        """The lung sides this finding is drawn on (bilateral → both)."""
        if self.side == "bilateral":
            return ("right", "left")
        return (self.side,) if self.side else ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "side": self.side, "severity": self.severity, "zone": self.zone,
                "value": self.value, "uncertain": self.uncertain}


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that determines one phantom: findings, image size, seed, normal heart size, stated negatives.

    ``ctr`` sets a normal heart's cardiothoracic ratio (at most 0.5; above that add ``Finding("cardiomegaly")``);
    None draws it from the seed. ``negatives`` lists the CheXpert labels the report states as absent (from
    ``NEGATABLE``); None states ``DEFAULT_NEGATIVES``. Negatives contradicted by a finding are never stated.
    """

    findings: tuple[Finding, ...] = ()
    size: int = 128
    seed: int = 0
    ctr: float | None = None
    negatives: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", tuple(self.findings))
        check_size(self.size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        keys: list[tuple[str, str | None, str | None]] = []
        for f in self.findings:
            if not isinstance(f, Finding):
                raise ValueError(f"findings must be Finding objects, got {f!r}")
            for side in f.sides() or (None,):
                key = (f.kind, side, f.zone)
                if key in keys:
                    raise ValueError(f"finding {f.kind} (side {side}, zone {f.zone}) is given twice")
                keys.append(key)
        if self.ctr is not None:
            if self.has("cardiomegaly"):
                raise ValueError("give the heart size either as ctr or as a cardiomegaly finding, not both")
            if not 0.3 <= float(self.ctr) <= 0.5:
                raise ValueError(f"ctr of a normal heart must be in [0.3, 0.5], got {self.ctr} "
                                 "(a larger heart is cardiomegaly: add Finding('cardiomegaly', value=...))")
        if self.negatives is not None:
            object.__setattr__(self, "negatives", tuple(self.negatives))
            unknown = [n for n in self.negatives if n not in NEGATABLE]
            if unknown:
                raise ValueError(f"negatives {unknown} cannot be stated; expected a subset of {list(NEGATABLE)}")

    def has(self, kind: str) -> bool:
        return any(f.kind == kind for f in self.findings)

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def without(self, *kinds: str) -> PhantomSpec:
        """The same case (same seed, anatomy and noise) without the findings of these kinds."""
        return replace(self, findings=tuple(f for f in self.findings if f.kind not in kinds))

    @property
    def is_normal(self) -> bool:
        """No pathology (support devices may be present)."""
        return not any(f.kind in PATHOLOGY_KINDS for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "seed": self.seed, "ctr": self.ctr,
                "findings": [f.to_dict() for f in self.findings],
                "negatives": list(self.negatives) if self.negatives is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomSpec:
        negatives = data.get("negatives")
        return cls(findings=tuple(Finding(**f) for f in data.get("findings", ())), size=int(data.get("size", 128)),
                   seed=int(data.get("seed", 0)), ctr=data.get("ctr"),
                   negatives=tuple(negatives) if negatives is not None else None)


def check_size(size: int) -> int:
    """Raise ValueError unless ``size`` is a multiple of 16 from 64 to 512 (64, 128 and 256 are the usual ones)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
            MIN_SIZE <= size <= MAX_SIZE and size % SIZE_STEP == 0):
        raise ValueError(f"size must be 64, 128 or 256 (any multiple of {SIZE_STEP} from {MIN_SIZE} to {MAX_SIZE}), "
                         f"got {size!r}")
    return int(size)


# --------------------------------------------------------------------------------------------------- facts of the case

def _route(spec: PhantomSpec, f: Finding) -> str:
    """Central line route (a fact of the case, from the seed): internal jugular or subclavian."""
    draw = np.random.default_rng([spec.seed, 200, SIDES.index(f.side or "right")]).random()
    return "internal jugular" if draw < 0.6 else "subclavian"


def _dual_chamber(spec: PhantomSpec, f: Finding) -> bool:
    """Whether a pacemaker has an atrial lead too (a fact of the case, from the seed)."""
    return bool(np.random.default_rng([spec.seed, 201, SIDES.index(f.side or "left")]).random() < 0.5)


# --------------------------------------------------------------------------------------------------- sampling

def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


_KIND_WEIGHTS: dict[str, float] = {
    "pleural_effusion": 0.22, "cardiomegaly": 0.16, "consolidation": 0.14, "lung_opacity": 0.12,
    "atelectasis": 0.14, "pneumothorax": 0.11, "edema": 0.11,
}
_NEGATIVE_P: dict[str, float] = {
    "Pleural Effusion": 0.85, "Pneumothorax": 0.85, "Consolidation": 0.6, "Cardiomegaly": 0.6, "Edema": 0.4,
    "Lung Opacity": 0.3, "Enlarged Cardiomediastinum": 0.3, "Fracture": 0.1,
}


def sample_spec(rng: np.random.Generator, size: int = 128, p_normal: float = 0.35,
                p_devices: float = 0.2, p_uncertain: float = 0.08) -> PhantomSpec:
    """A random case: with probability ``p_normal`` no pathology, otherwise 1 to 3 different findings with random
    side, zone and severity; support devices with probability ``p_devices``; a random set of stated negatives."""
    check_size(size)
    seed = int(rng.integers(0, 2**31 - 1))
    findings: list[Finding] = []
    if rng.random() >= p_normal:
        count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        kinds = list(_KIND_WEIGHTS)
        w = np.array([_KIND_WEIGHTS[k] for k in kinds])
        chosen = rng.choice(len(kinds), size=count, replace=False, p=w / w.sum())
        for idx in sorted(int(i) for i in chosen):
            kind = kinds[idx]
            sides = [s for s in _ALLOWED_SIDES[kind]]
            side = sides[int(rng.integers(len(sides)))] if sides != [None] else None
            if side == "bilateral" and rng.random() < 0.5:  # bilateral less often than one side
                side = ("right", "left")[int(rng.integers(2))]
            zone = None
            if kind in _ZONED:
                zone = _pick(rng, ("upper", "middle", "lower", "lower", "lower") if kind == "atelectasis"
                             else ("upper", "middle", "lower", "lower"))
            severity = SEVERITIES[int(rng.integers(3))]
            uncertain = bool(rng.random() < p_uncertain)
            findings.append(Finding(kind, side=side, severity=severity, zone=zone, uncertain=uncertain))
    if rng.random() < p_devices:
        count = int(rng.choice([1, 2], p=[0.7, 0.3]))
        for idx in sorted(int(i) for i in rng.choice(len(DEVICE_KINDS), size=count, replace=False)):
            kind = DEVICE_KINDS[idx]
            side = None if kind == "endotracheal_tube" else (
                "left" if kind == "pacemaker" and rng.random() < 0.85 else "right" if kind == "pacemaker"
                else ("right", "left")[int(rng.random() < 0.25)])
            findings.append(Finding(kind, side=side))
    present = {f.label for f in findings}
    negatives = tuple(n for n in NEGATABLE if n not in present and rng.random() < _NEGATIVE_P[n])
    return PhantomSpec(findings=tuple(findings), size=size, seed=seed, negatives=negatives)


