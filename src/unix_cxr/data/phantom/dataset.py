"""A phantom data set on disk: :func:`write_dataset` (PNGs + labels.jsonl + reports.jsonl + specs.jsonl),
:func:`save_png`, and :func:`check_size` (the image sizes allowed; defined with the spec)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ...chexpert import CHEXPERT_LABELS
from .render import render
from .report import labels, report
from .spec import PhantomSpec, check_size, sample_spec

# --------------------------------------------------------------------------------------------------- data set

def case_id(index: int, n: int) -> str:
    return f"phantom_{index:0{max(5, len(str(max(0, n - 1))))}d}"


def generate(n: int, seed: int, size: int) -> Iterable[tuple[str, PhantomSpec, str]]:
    """(id, spec, report) of the cases of a data set, case ``i`` drawn from ``default_rng([seed, i])``."""
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        spec = sample_spec(rng, size=size)
        yield case_id(i, n), spec, report(spec, rng)


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write an 8-bit greyscale PNG with no timestamp or other varying chunks (byte-identical for equal arrays)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG", compress_level=6)


def write_dataset(out: str | Path, n: int, seed: int, size: int, progress: bool = False) -> dict[str, Any]:
    """Write ``n`` phantoms under ``out``: ``images/<id>.png``, ``labels.jsonl`` (``{"id", "labels"}``),
    ``reports.jsonl`` (``{"id", "report"}``) and ``specs.jsonl`` (``{"id", "spec"}``: side, zone, severity of
    each finding). Returns a summary: case counts, findings per kind, positives per CheXpert label."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_size(size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    kinds: Counter[str] = Counter()
    positives: Counter[str] = Counter()
    normal = 0
    cases = generate(n, seed, size)
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, total=n, desc="phantoms", unit="img", disable=None)  # no bar when not a terminal
    with open(out / "labels.jsonl", "w", encoding="utf-8", newline="\n") as fl, \
            open(out / "reports.jsonl", "w", encoding="utf-8", newline="\n") as fr, \
            open(out / "specs.jsonl", "w", encoding="utf-8", newline="\n") as fs:
        for cid, spec, text in cases:
            save_png(render(spec), images / f"{cid}.png")
            lab = labels(spec)
            fl.write(json.dumps({"id": cid, "labels": lab}) + "\n")
            fr.write(json.dumps({"id": cid, "report": text}) + "\n")
            fs.write(json.dumps({"id": cid, "spec": spec.to_dict()}) + "\n")
            kinds.update(f.kind for f in spec.findings)
            positives.update(k for k, v in lab.items() if v == 1)
            normal += spec.is_normal
    return {"n": n, "normal": normal, "findings": dict(sorted(kinds.items())),
            "positive_labels": {k: positives[k] for k in CHEXPERT_LABELS if positives[k]}}
