"""Training and evaluation files from `StudyRecord`s: stage-1 chat JSONL, the authors' eval JSON, caption sets.

One line (or item) per image: a study with two frontal images gives two training pairs, as in the authors' data
(spec §6.1: 2,365 test images from 2,135 studies). Image paths are written as the records hold them (relative to
the data set's image root, e.g. ``files/p10/p10000032/s50414267/<dicom_id>.jpg``).

* Stage 1 (understanding SFT, spec §5.3 / §6.2), `write_stage1`::

      {"image": "<rel path>", "conversations": [{"from": "human", "value": "<image>PROMPT"},
                                                {"from": "gpt", "value": "FINDINGS: ... IMPRESSION: ..."}]}

  PROMPT is one of the 20 templates of spec §6.3 (`PROMPT_TEMPLATES`): the 10 phrasings of the section set that
  matches the answer — ``FINDINGS`` when the record has no IMPRESSION, ``FINDINGS and IMPRESSION`` when it has one
  — picked by `choose_prompt` from a hash of (seed, study id, image path), so the choice is the same on every run
  and does not depend on record order. A record without FINDINGS (impression only) is left out: every answer of
  the authors' data starts with ``FINDINGS:``.
* The authors' eval JSON (spec §6.2), `write_eval_json`: a JSON list of ``{"messages": [{"role": "user",
  "content": "<image>PROMPT"}, {"role": "assistant", "content": "FINDINGS: ..."}], "images": ["<rel path>"]}``
  with the same prompt as the stage-1 line of that image.
* Stages 2-3 (generation PT / FT; the same image-caption pairs at 256 and 512 px), `write_captions`: JSONL
  ``{"image": "<rel path>", "caption": "<findings text>"}`` — the FINDINGS text with no ``FINDINGS:`` prefix, as
  the authors' text-to-image prompts are (spec §6.3). Records without FINDINGS are left out.

Every file is written atomically; each writer returns a `WriteStats` (lines written, records left out by reason).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import StudyRecord, write_json, write_jsonl

IMAGE_TOKEN = "<image>"
"""Placed before every prompt with no separator (spec §6.3)."""

FINDINGS_ONLY = "FINDINGS"
FINDINGS_AND_IMPRESSION = "FINDINGS and IMPRESSION"

PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    FINDINGS_ONLY: (
        "Examine this X-ray image and describe the FINDINGS.",
        "Review this X-ray and provide detailed FINDINGS.",  # sic: the authors' FINDINGS-only variant has no "a"
        "Give a radiology report based on the chest x-ray image, including FINDINGS.",
        "Analyze this chest X-ray and give the FINDINGS.",
        "Interpret this X-ray image and summarize the FINDINGS.",
        "Review this chest X-ray and provide the FINDINGS.",
        "As an imaging expert, review this X-ray and share the FINDINGS.",
        "Provide the FINDINGS for this chest X-ray.",
        "As a radiologist, analyze this X-ray and summarize the FINDINGS.",
        "Please interpret this X-ray and provide the FINDINGS.",
    ),
    FINDINGS_AND_IMPRESSION: (
        "Examine this X-ray image and describe the FINDINGS and IMPRESSION.",
        "Review this X-ray and provide a detailed FINDINGS and IMPRESSION.",
        "Give a radiology report based on the chest x-ray image, including FINDINGS and IMPRESSION.",
        "Analyze this chest X-ray and give the FINDINGS and IMPRESSION.",
        "Interpret this X-ray image and summarize the FINDINGS and IMPRESSION.",
        "Review this chest X-ray and provide the FINDINGS and IMPRESSION.",
        "As an imaging expert, review this X-ray and share the FINDINGS and IMPRESSION.",
        "Provide the FINDINGS and IMPRESSION for this chest X-ray.",
        "As a radiologist, analyze this X-ray and summarize the FINDINGS and IMPRESSION.",
        "Please interpret this X-ray and provide the FINDINGS and IMPRESSION.",
    ),
}
"""The authors' 20 prompt templates (spec §6.3): 10 phrasings for each section set, in the spec's order."""

DROP_NO_FINDINGS = "no FINDINGS (impression only)"


@dataclass
class WriteStats:
    """Lines (items) written and records left out, by reason."""

    written: int = 0
    left_out: Counter[str] = field(default_factory=Counter)


def section_set(record: StudyRecord) -> str:
    """``"FINDINGS and IMPRESSION"`` when the record has an IMPRESSION, else ``"FINDINGS"``."""
    return FINDINGS_AND_IMPRESSION if record.impression else FINDINGS_ONLY


def choose_prompt(record: StudyRecord, image: str, seed: int) -> str:
    """The prompt (with the image token) for one image of a record: a template of the record's section set,
    picked by SHA-256 of (seed, study id, image path)."""
    templates = PROMPT_TEMPLATES[section_set(record)]
    digest = hashlib.sha256(f"{seed}\x00{record.study_id}\x00{image}".encode()).digest()
    return IMAGE_TOKEN + templates[int.from_bytes(digest[:8], "big") % len(templates)]


def answer(record: StudyRecord) -> str:
    """The target text: ``FINDINGS: ...`` with `` IMPRESSION: ...`` when there is one."""
    return record.report


def stage1_items(record: StudyRecord, seed: int) -> list[dict[str, Any]]:
    """The stage-1 training lines of one record (one per image; none without FINDINGS)."""
    if not record.findings:
        return []
    return [{"image": image, "conversations": [{"from": "human", "value": choose_prompt(record, image, seed)},
                                               {"from": "gpt", "value": answer(record)}]}
            for image in record.image_paths]


def eval_items(record: StudyRecord, seed: int) -> list[dict[str, Any]]:
    """The authors' eval items of one record (one per image; none without FINDINGS)."""
    if not record.findings:
        return []
    return [{"messages": [{"role": "user", "content": choose_prompt(record, image, seed)},
                          {"role": "assistant", "content": answer(record)}], "images": [image]}
            for image in record.image_paths]


def caption_items(record: StudyRecord) -> list[dict[str, str]]:
    """The stage-2/3 image-caption lines of one record (one per image; none without FINDINGS)."""
    return [{"image": image, "caption": record.findings} for image in record.image_paths] if record.findings else []


def _items(records: Iterable[StudyRecord], make: Any, stats: WriteStats) -> Iterator[dict[str, Any]]:
    for record in records:
        items = make(record)
        if not items:
            stats.left_out[DROP_NO_FINDINGS] += 1
        yield from items


def write_stage1(records: Iterable[StudyRecord], path: str | Path, seed: int) -> WriteStats:
    """Write the stage-1 chat JSONL of ``records``; see the module docstring."""
    stats = WriteStats()
    stats.written = write_jsonl(path, _items(records, lambda r: stage1_items(r, seed), stats))
    return stats


def write_eval_json(records: Iterable[StudyRecord], path: str | Path, seed: int) -> WriteStats:
    """Write the authors' eval JSON list of ``records``; see the module docstring."""
    stats = WriteStats()
    items = list(_items(records, lambda r: eval_items(r, seed), stats))
    write_json(path, items)
    stats.written = len(items)
    return stats


def write_captions(records: Iterable[StudyRecord], path: str | Path) -> WriteStats:
    """Write the stage-2/3 image-caption JSONL of ``records``; see the module docstring."""
    stats = WriteStats()
    stats.written = write_jsonl(path, _items(records, caption_items, stats))
    return stats
