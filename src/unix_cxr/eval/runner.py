"""The measurements behind `unix-cxr eval reports|images|cycle`: reading the inputs, labelling, the metrics.

Library functions (the commands call them; tests and notebooks can too):

* reports: :func:`read_reports` (JSONL or the authors' CSV), :func:`check_same_ids`, :func:`label_texts`,
  :func:`evaluate_reports` (CheXpert F1 with both binarisations and bootstrap CIs, BLEU, ROUGE-L, METEOR, CIDEr,
  RadGraph), :func:`make_labeler` / :func:`rule_labeler_description` (the labeler and its card entry);
* images: :func:`list_images`, :func:`image_sizes`, :func:`image_input_entry`, :func:`read_image_labels`,
  :func:`labels_for_images`, :func:`evaluate_images` (FD, KD, PRDC, per-pathology FD) and :func:`make_encoder`.

The results cards, Markdown and output files are :mod:`unix_cxr.eval.cards`; the plots :mod:`unix_cxr.eval.plots`.

Bad input raises ``ValueError`` / ``FileNotFoundError`` with one line naming the problem, never a NaN: an empty
input file, bytes that are not UTF-8, a malformed line, duplicate ids, ids that differ between the predictions and
the references, an image that cannot be read, too few images for the statistics. Documented results instead of
errors: an empty report (labels all null with the rule labeler; 0 on the text metrics; counted in the card), images
of mixed sizes (squashed to 299 x 299 as the authors do; the card lists the sizes found), fewer images than feature
dimensions (FD computed but biased; the warning is in the card).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..chexpert import CHEXPERT_5, CHEXPERT_LABELS, check_labels
from ..data.records import read_jsonl
from ..utils.provenance import package_versions, sha256_file, sha256_file_list
from . import image_metrics as im
from . import report_metrics as rm

log = logging.getLogger(__name__)

RULE_F1_NAME = "CheXpert-rule F1 (unix-cxr labeler)"
"""The labeler name of every F1 made from the rule labeler's labels (never "CheXbert F1")."""
PRED_CSV_COLUMN = "Report Impression"
REF_CSV_COLUMN = "Ground Truth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MODE_SHORT = {"uncertain_as_negative": "UaN", "uncertain_as_positive": "UaP"}
SUMMARY_NAMES = {"micro_14": "Micro-14", "micro_5": "Micro-5", "macro_14": "Macro-14", "macro_5": "Macro-5"}
_LABEL_CHUNK = 64  # reports per labeler call (a multiple of CheXbert's batch of 16)


def _finite(name: str, value: float) -> float:
    """``value`` as a float; a NaN or inf raises instead of reaching the card."""
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"{name} is not finite ({value}); refusing to write it to the results card")
    return value


def progress_bar(iterable: Any, desc: str, enabled: bool, total: int | None = None, unit: str = "it") -> Any:
    """A tqdm progress bar on stderr (``enabled=False``: none)."""
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
    from .label_batch import read_jsonl as read_report_lines

    table: dict[str, str] = {}
    for line in read_report_lines(path):
        if line.error is not None:
            raise ValueError(f"{line.where}: {line.error}")
        if line.dropped is not None:  # a `data clean` row without a report: nothing to score it against
            raise ValueError(f"{line.where}: missing 'report' (dropped by data clean: {line.dropped})")
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
    with progress_bar(None, desc, progress, total=len(texts), unit="report") as bar:
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


def make_labeler(spec: Sequence[str] | None = None, *, chexbert_tokenizer: str | Path | None = None,
                 device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The labeler named by ``--labeler`` (``rules``, the default, or ``chexbert PATH``) and its card description.

    ``chexbert_tokenizer``: the bert-base-uncased tokenizer folder of CheXbert (default: the checkpoint's folder).
    """
    spec = list(spec or ["rules"])
    kind = spec[0].lower()
    if kind == "rules" and len(spec) == 1:
        if chexbert_tokenizer:
            raise ValueError("--chexbert-tokenizer is only used with --labeler chexbert PATH")
        from .labeler import Labeler

        return Labeler(), rule_labeler_description()
    if kind == "chexbert" and len(spec) == 2:
        from .chexbert import CheXbertLabeler

        checkpoint = Path(spec[1])
        tokenizer = Path(chexbert_tokenizer) if chexbert_tokenizer else checkpoint.parent
        labeler = CheXbertLabeler(checkpoint, tokenizer, device=device)
        desc = labeler.describe()
        desc["checkpoint_sha256"] = sha256_file(checkpoint)
        desc["vocab_sha256"] = sha256_file(tokenizer / "vocab.txt")
        return labeler, desc
    raise ValueError(f"--labeler must be 'rules' or 'chexbert PATH', got {' '.join(spec)!r}")


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
                entry[key] = {"name": f"{self.metric_name} {SUMMARY_NAMES[key]} {MODE_SHORT[mode]}",
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
            for name in progress_bar(CHEXPERT_LABELS, "FD per pathology", progress, unit="label"):
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


def image_input_entry(folder: Path, paths: list[Path], what: str) -> dict[str, Any]:
    """The card's entry for one image folder (sizes found, file-list sha256); warns about mixed sizes."""
    sizes = image_sizes(paths, what)
    if len(sizes) > 1:
        log.warning("%s: images of %d different sizes (%s); all are resized to 299 x 299 as the authors do", what,
                    len(sizes), ", ".join(list(sizes)[:4]))
    return {"dir": str(folder), "n_images": len(paths), "file_list_sha256": sha256_file_list(paths),
            "original_sizes": sizes, "mixed_sizes": len(sizes) > 1}
