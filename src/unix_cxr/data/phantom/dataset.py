"""A phantom data set on disk: :func:`write_dataset` (PNGs + labels.jsonl + reports.jsonl + specs.jsonl),
:func:`save_png`, and :func:`check_size` (the image sizes allowed; defined with the spec)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from ...chexpert import CHEXPERT_LABELS
from .render import render
from .report import labels, report
from .spec import PhantomSpec, check_size, sample_spec

log = logging.getLogger(__name__)

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


def _draw(job: tuple[PhantomSpec, Path]) -> None:
    spec, path = job
    save_png(render(spec), path)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _drawn(cases: list[tuple[str, PhantomSpec, str]], images: Path, workers: int) -> Iterator[None]:
    """Draw every case's PNG, yielding once per case in order; `workers` processes where it pays. Each image is a
    function of its spec alone, so the files are the same bytes whatever the number of workers. Where worker
    processes cannot start (a parent whose main module cannot be imported again), the rest is drawn here."""
    jobs = [(spec, images / f"{cid}.png") for cid, spec, _ in cases]
    done = 0
    if workers > 1 and len(jobs) >= 64:
        try:  # spawn, not fork: the parent may hold threads (torch's)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for _ in pool.map(_draw, jobs, chunksize=16):
                    done += 1
                    yield
            return
        except BrokenProcessPool:
            log.warning("phantoms: worker processes failed to start; drawing the remaining %d in this process",
                        len(jobs) - done)
    for job in jobs[done:]:
        yield _draw(job)


def write_dataset(out: str | Path, n: int, seed: int, size: int, progress: bool = False,
                  workers: int | None = None) -> dict[str, Any]:
    """Write ``n`` phantoms under ``out``: ``images/<id>.png``, ``labels.jsonl`` (``{"id", "labels"}``),
    ``reports.jsonl`` (``{"id", "report"}``) and ``specs.jsonl`` (``{"id", "spec"}``: side, zone, severity of
    each finding), the images drawn by ``workers`` processes (default: one per usable CPU; the files do not depend
    on it). Returns a summary: case counts, findings per kind, positives per CheXpert label."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
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
    cases = list(generate(n, seed, size))
    drawn = zip(cases, _drawn(cases, images, workers or usable_cpus()), strict=True)
    if progress:
        from tqdm import tqdm

        drawn = tqdm(drawn, total=n, desc="phantoms", unit="img", disable=None)  # no bar when not a terminal
    with open(out / "labels.jsonl", "w", encoding="utf-8", newline="\n") as fl, \
            open(out / "reports.jsonl", "w", encoding="utf-8", newline="\n") as fr, \
            open(out / "specs.jsonl", "w", encoding="utf-8", newline="\n") as fs:
        for (cid, spec, text), _ in drawn:
            lab = labels(spec)
            fl.write(json.dumps({"id": cid, "labels": lab}) + "\n")
            fr.write(json.dumps({"id": cid, "report": text}) + "\n")
            fs.write(json.dumps({"id": cid, "spec": spec.to_dict()}) + "\n")
            kinds.update(f.kind for f in spec.findings)
            positives.update(k for k, v in lab.items() if v == 1)
            normal += spec.is_normal
    return {"n": n, "normal": normal, "findings": dict(sorted(kinds.items())),
            "positive_labels": {k: positives[k] for k in CHEXPERT_LABELS if positives[k]}}
