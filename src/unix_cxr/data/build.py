"""`unix-cxr data build`: a public data set -> records, patient-level splits and training files.

    unix-cxr data build --source mimic|chexpert-plus|iu|chat|jsonl|csv|phantom ROOT --out DIR
        [--stage 1|2|3] [--seed S] [--val-fraction F] [--test-fraction F] [--frontal-only | --all-views]
        [--clean | --no-clean] [--images DIR] [--reports DIR] [--column FIELD=NAME ...] [--skip-image-check]

reads ROOT with the adapter of ``--source`` (`unix_cxr.data.adapters`; the layouts are in its docstring), gives
every patient one split (the official split when the data set has one, else a hash of the patient id and
``--seed``) and writes, atomically:

* ``DIR/records.jsonl`` — one `StudyRecord` per study, split included;
* stage 1: ``DIR/stage1_{train,val,test}.jsonl`` (the chat JSONL with the 20 prompt templates) and
  ``DIR/eval_test.json`` (the test split in the authors' eval format); stages 2 and 3 (same pairs, different
  resolution): ``DIR/captions_{train,val,test}.jsonl`` (`unix_cxr.data.writers`);
* ``DIR/summary.json`` — counts per split, section coverage, studies dropped by reason, images left out,
  every failure, and the options used. The same summary is logged at the end.

Image paths in every file are relative to the image root (``--images``, default ROOT, or ROOT's folder when ROOT
is a file), which ``summary.json`` records. A bad item (missing image or report, malformed row, XML or JSON line)
is logged as one error line and left out; the others are written, the failures are listed at the end and the exit
status is 1. So is a line that is nested too deeply, holds a 5,000-digit number or a lone surrogate, a CSV row
with a byte that is not UTF-8, a file whose name is not UTF-8, or an IU report (file or archive member) larger than
`adapters.MAX_XML_BYTES`, which is refused before it is read. A missing ROOT or a bad option is exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .adapters import (
    AdapterOptions,
    Issues,
    assign_splits,
    image_root,
    patient_leaks,
    read_source,
    section_coverage,
    split_fractions,
)
from .records import SPLITS, StudyRecord, shown, write_json, write_records
from .writers import WriteStats, write_captions, write_eval_json, write_stage1

log = logging.getLogger(__name__)

MAX_LISTED_FAILURES = 100  # in the log; summary.json lists all


def build(source: str, root: Path, out: Path, *, stage: int = 1, seed: int = 0, val_fraction: float = 0.05,
          test_fraction: float = 0.05, opts: AdapterOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole build (see the module docstring) and return the summary that ``summary.json`` holds."""
    opts = opts or AdapterOptions()
    if stage not in (1, 2, 3):
        raise ValueError(f"--stage must be 1, 2 or 3, got {stage}")
    fractions = split_fractions(val_fraction, test_fraction)
    if not root.exists():
        raise FileNotFoundError(f"ROOT {root} does not exist")
    issues = Issues()
    with logging_redirect_tqdm():
        bar = tqdm(read_source(source, root, issues, opts), desc=f"reading {source}", unit="study", file=sys.stderr,
                   disable=None if progress else True)  # None: no bar when stderr is not a terminal
        records = list(bar)
    records = assign_splits(records, fractions, seed)
    leaks = patient_leaks(records)
    if leaks:
        log.warning("%d patient(s) are in more than one split (as the official split has them)", len(leaks))

    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "records.jsonl", records)
    by_split: dict[str, list[StudyRecord]] = {name: [r for r in records if r.split == name] for name in SPLITS}
    files: dict[str, WriteStats] = {}
    for name in SPLITS:
        if stage == 1:
            files[f"stage1_{name}.jsonl"] = write_stage1(by_split[name], out / f"stage1_{name}.jsonl", seed)
        else:
            files[f"captions_{name}.jsonl"] = write_captions(by_split[name], out / f"captions_{name}.jsonl")
    if stage == 1:
        files["eval_test.json"] = write_eval_json(by_split["test"], out / "eval_test.json", seed)

    root_of_images = image_root(source, root, opts)
    summary: dict[str, Any] = {
        "source": source,
        "root": shown(root),
        "image_root": shown(root_of_images.resolve()) if root_of_images is not None else None,
        "stage": stage,
        "seed": seed,
        "fractions": fractions,
        "frontal_only": opts.frontal_only,
        "clean": opts.clean,
        "check_images": opts.check_images,
        "records": len(records),
        "splits": {name: {"studies": len(by_split[name]), "patients": len({r.patient_id for r in by_split[name]}),
                          "images": sum(len(r.image_paths) for r in by_split[name])} for name in SPLITS},
        "coverage": section_coverage(records),
        "files": {name: {"written": s.written, "left_out": dict(s.left_out)} for name, s in files.items()},
        "dropped": dict(issues.dropped.most_common()),
        "images_left_out": dict(issues.images_left_out.most_common()),
        "notes": dict(issues.notes.most_common()),
        "patients_in_several_splits": len(leaks),
        "failures": [{"where": where, "error": error} for where, error in issues.failures],
    }
    write_json(out / "summary.json", summary)
    return summary


def log_summary(summary: dict[str, Any], out: Path) -> None:
    """Log what `build` did: counts per split, coverage, files, drops, notes and the failures."""
    log.info("%s -> %s: %d studies (%s), %d failed item(s)", summary["source"], out, summary["records"],
             ", ".join(f"{name} {s['studies']} studies / {s['patients']} patients / {s['images']} images"
                       for name, s in summary["splits"].items()), len(summary["failures"]))
    cov = summary["coverage"]
    log.info("sections: %d with FINDINGS, %d with IMPRESSION, %d with both, %d FINDINGS only, %d IMPRESSION only",
             cov["findings"], cov["impression"], cov["both"], cov["findings_only"], cov["impression_only"])
    for name, stats in summary["files"].items():
        left = ", ".join(f"{reason}: {n}" for reason, n in stats["left_out"].items())
        log.info("  %s: %d lines%s", name, stats["written"], f" (records left out: {left})" if left else "")
    for reason, count in summary["dropped"].items():
        log.info("  dropped (%s): %d", reason, count)
    for reason, count in summary["images_left_out"].items():
        log.info("  images left out (%s): %d", reason, count)
    for note, count in summary["notes"].items():
        log.info("  %s: %d", note, count)
    failures = summary["failures"]
    if failures:
        log.error("%d item(s) failed:", len(failures))
        for failure in failures[:MAX_LISTED_FAILURES]:
            log.error("  %s: %s", failure["where"], failure["error"])
        if len(failures) > MAX_LISTED_FAILURES:
            log.error("  ... and %d more (all in %s)", len(failures) - MAX_LISTED_FAILURES, out / "summary.json")
