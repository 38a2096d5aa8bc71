"""Throughput of the rule-based report cleaner (unix_cxr.data.cleaning.clean_report) on one CPU core.

A script, not a test; torch is not needed. It builds a few thousand synthetic MIMIC-style reports (seeded) from
the phrasings in tests/test_cleaning.py — every rule's test sentences, normal findings, header variants (modern
headers, old exam-title reports without a FINDINGS header, lower case, FINDINGS AND IMPRESSION, CONCLUSION),
wrapped lines with `___` blanks — pins the process to one core where the OS allows it, and reports reports/s
(best of --repeats passes over the set) per CPU-second of this process (the one-core figure, robust to other
processes sharing the core) and per wall-clock second. It also checks, outside the timing, that cleaning is
idempotent on every synthetic report.

Usage: python benchmarks/bench_cleaning.py [--n 5000] [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import random
import statistics
import sys
import textwrap
import time
from pathlib import Path

from unix_cxr.data.cleaning import clean_report

log = logging.getLogger("bench_cleaning")
TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_cleaning.py"

NORMAL = [
    "The lungs are clear.", "Heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
    "No pleural effusion or pneumothorax.", "There is no focal consolidation.", "Osseous structures are intact.",
    "Mild atelectasis at the left base.", "The hila are unremarkable.", "There is mild pulmonary vascular congestion.",
    "Degenerative changes are noted in the thoracic spine.",
    "Low lung volumes accentuate the bronchovascular markings.",
]
IMPRESSIONS = ["No acute cardiopulmonary process.", "Mild pulmonary edema.", "Small left pleural effusion.",
               "Right lower lobe pneumonia.", "Cardiomegaly without decompensation.", "Lines and tubes as above."]


def _test_module():
    spec = importlib.util.spec_from_file_location("test_cleaning_phrasings", TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wrap(text: str, rng: random.Random) -> str:
    return "\n".join(" " + line for line in textwrap.wrap(text, width=rng.choice([68, 75, 80])))


def synthetic_reports(n: int, seed: int) -> list[str]:
    """`n` synthetic raw reports built from the test phrasings (deterministic for a seed)."""
    tests = _test_module()
    prefix = f"FINDINGS: {tests.CLEAR} "
    sentences = [raw[len(prefix):] for cases in tests.RULE_CASES.values() for raw, _ in cases
                 if raw.startswith(prefix)]
    whole = [raw for _, raw, _, _ in tests.REPORTS]
    rng = random.Random(seed)
    reports = []
    for i in range(n):
        if i % 10 == 0:  # a tenth are the test reports themselves
            reports.append(whole[(i // 10) % len(whole)])
            continue
        body = rng.sample(NORMAL, rng.randint(2, 5)) + rng.sample(sentences, rng.randint(1, 4))
        rng.shuffle(body)
        impression = rng.sample(IMPRESSIONS, rng.randint(1, 2)) + rng.sample(sentences, rng.randint(0, 1))
        style = rng.randrange(4)
        head = " " * 33 + "FINAL REPORT\n"
        if style == 0:
            reports.append(head + " EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___ year old with cough\n\n"
                           " TECHNIQUE:  Chest PA and lateral\n\n COMPARISON:  ___\n\n FINDINGS:\n\n"
                           + _wrap("  ".join(body), rng) + "\n\n IMPRESSION:\n\n" + _wrap("  ".join(impression), rng)
                           + "\n")
        elif style == 1:
            reports.append(head + " HISTORY:  Dyspnea.\n\n PA AND LATERAL CHEST RADIOGRAPH\n\n"
                           + _wrap("  ".join(body), rng) + "\n\n IMPRESSION :  " + "  ".join(impression) + "\n")
        elif style == 2:
            reports.append("Indication: fever.\n\nFindings: " + _wrap(" ".join(body), rng).strip()
                           + "\n\nConclusion: " + " ".join(impression) + "\n")
        else:
            reports.append(head + " COMPARISON:  ___\n\n FINDINGS AND IMPRESSION:  "
                           + _wrap("  ".join(body + impression), rng).strip() + "\n")
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="number of synthetic reports")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    reports = synthetic_reports(args.n, args.seed)
    results = [clean_report(r) for r in reports]  # warm-up, and the idempotence check below
    not_idempotent = sum(1 for r in results if r.report is not None and clean_report(r.report).changes)
    cpu, wall = [], []
    for _ in range(args.repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        for report in reports:
            clean_report(report)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "unpinned"
    log.info("python %s on %s, cores %s", platform.python_version(), platform.processor() or platform.machine(),
             cores)
    log.info("%d synthetic reports, mean %.0f characters; %d dropped; %d not idempotent", len(reports),
             statistics.fmean(len(r) for r in reports), sum(r.report is None for r in results), not_idempotent)
    n = len(reports)
    log.info("clean_report, per CPU-second: %.0f reports/s (best of %d), %.0f reports/s (median); %.1f us/report",
             n / min(cpu), args.repeats, n / statistics.median(cpu), 1e6 * min(cpu) / n)
    log.info("clean_report, per wall-clock second: %.0f reports/s (best), %.0f reports/s (median)",
             n / min(wall), n / statistics.median(wall))
    return 1 if not_idempotent else 0


if __name__ == "__main__":
    sys.exit(main())
