"""Dataset adapters: public chest X-ray data sets -> `StudyRecord`, and patient-level splits.

Each adapter reads one layout and yields one `StudyRecord` per study, with image paths relative to the data set's
image root (`image_root`). Report text goes through `unix_cxr.data.cleaning`: with ``clean=True`` (the default)
the rule-based `clean_report`, else only its document-scope rules (the report banner) and section extraction
(`extract_sections`), whitespace collapsed.

* ``mimic`` — MIMIC-CXR-JPG under ROOT: ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``,
  ``mimic-cxr-2.0.0-metadata.csv[.gz]`` (``dicom_id, subject_id, study_id, ViewPosition``, required),
  ``mimic-cxr-2.0.0-split.csv[.gz]`` (``dicom_id, split``: the official split, optional),
  ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (``subject_id, study_id`` + the 14 labels, optional) and the report
  files ``pXX/pXXXXXXXX/sXXXXXXXX.txt`` under ``mimic-cxr-reports/files/`` (else under ``files/``).
  Patient id ``p<subject_id>``, study id ``s<study_id>`` (the folder names).
* ``chexpert-plus`` — the CheXpert-Plus CSV (ROOT is the CSV, or a folder holding ``df_chexpert_plus_*.csv``),
  one row per image. Columns read (as in the public release ``df_chexpert_plus_240401.csv``; confirmed from
  published code that reads it, not from the file itself): ``path_to_image`` (``train/patient00001/study1/
  view1_frontal.jpg``), ``frontal_lateral`` (``Frontal`` / ``Lateral``), ``ap_pa`` (``AP``, ``PA``, ``LL``, ...),
  ``deid_patient_id``, ``section_findings``, ``section_impression``, ``split`` (``train`` / ``valid``). Rows are
  grouped into studies by the ``patientN/studyM`` part of ``path_to_image`` (patient id ``patientN``, study id
  ``patientN/studyM``); a row whose path has no such part uses ``deid_patient_id`` and
  ``patient_report_date_order``. An image is found as written, with a ``.png`` suffix, or under ``PNG/`` (the
  PNG release). The 14 CheXpert label columns are read when the CSV has them (CheXpert's own ``train.csv``
  style); the separate ``chexbert_labels/`` files are not read. A frontal image without AP/PA gets the view
  ``FRONTAL``.
* ``iu`` — IU X-Ray (OpenI) XML reports: a folder of ``*.xml`` (searched recursively) or a ``.tgz`` of them (as
  inside the ``torchxrayvision`` wheel). ``AbstractText Label="FINDINGS"`` / ``"IMPRESSION"``, ``parentImage id``
  (one image each), MeSH ``major`` / ``minor`` (into ``extra``). One report is one patient and one study (the
  collection has no patient ids), id ``CXR<n>``. Images are looked up by id under the image root (``<id>.png``,
  also Kaggle's ``<n>_IM-....dcm.png`` names); when it holds no images at all, paths are ``<id>.png``, unchecked.
  Views come from an ``indiana_projections.csv`` (``filename, projection``) next to the reports or the images when
  there is one; otherwise they are unknown. With ``clean=True`` the collection's ``XXXX`` de-identification
  masks that stand alone become ``___`` so the de-identification rule removes them (``x-XXXX`` stays).
* ``chat`` — the authors' format (spec §6.2): a JSON list or JSONL of ``{"messages": [{"role": "user", ...},
  {"role": "assistant", "content": "FINDINGS: ... IMPRESSION: ..."}], "images": [...]}``; the training form
  ``{"image": ..., "conversations": [{"from": "human"}, {"from": "gpt"}]}`` is read too. Patient and study come
  from a MIMIC-style path (``.../pN/sM/x.jpg``); other paths make each image its own patient and study. Items of
  one study with the same answer are merged into one record.
* ``jsonl`` / ``csv`` — one record per line or row, column names configurable (`Columns`; the defaults are
  `StudyRecord`'s field names, so ``records.jsonl`` reads back). Sections come from ``findings`` /
  ``impression``, else from a raw ``report`` column through section extraction. Several images in one CSV cell
  are separated by `Columns.image_sep`. A missing study id falls back to the first image path, a missing patient
  id to the study id.
* ``phantom`` — a folder written by ``unix-cxr data phantom``: ``images/<id>.png``, ``reports.jsonl``,
  ``labels.jsonl``. Synthetic, view ``PA``, one patient per image.

``frontal_only`` keeps PA / AP images (and CheXpert-Plus ``FRONTAL``), as the paper trains on frontal
radiographs; images whose source gives no view at all are kept and counted as "view unknown".

Per-item problems (a missing image or report file, a malformed row or XML file, an unknown split name) go to
`Issues.failures` with where they happened and never stop the adapter; a whole-source problem (ROOT or a
required CSV missing) raises FileNotFoundError or ValueError. Studies left out on purpose (no frontal image, no
FINDINGS or IMPRESSION left) are counted in `Issues.dropped` by reason.

`assign_splits` gives every patient one split by hashing the patient id with the seed (SHA-256, so the same on
every run and machine, and independent of record order), keeping any official split.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ..chexpert import CHEXPERT_LABELS
from .cleaning import DROP_EMPTY, DROP_NO_SECTION, RULES, clean_report, extract_sections
from .records import (
    SPLITS,
    StudyRecord,
    json_error,
    name_error,
    normalize_split,
    read_jsonl,
    shown,
    split_report,
    unicode_error,
    views_summary,
)

log = logging.getLogger(__name__)

DROP_NO_FRONTAL = "no frontal (PA/AP) image"
DROP_NO_IMAGE = "no image"
SKIP_NOT_FRONTAL = "not frontal"
VIEW_UNKNOWN = "view unknown (kept by the frontal-only filter)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
MAX_XML_BYTES = 16 << 20  # one IU X-Ray report (OpenI XML) is a few KB; a larger file or archive member is refused


@dataclass
class Issues:
    """What an adapter left out: per-item `failures` (bad input: where, error), `dropped` studies by reason,
    `images_left_out` (single images, e.g. not frontal) by reason, and `notes` (counted observations)."""

    failures: list[tuple[str, str]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    images_left_out: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def fail(self, where: str, error: str) -> None:
        """Record one failed item (logged as an error line); a file name that is not UTF-8 is shown escaped."""
        where, error = shown(where), shown(error)
        log.error("%s: %s", where, error)
        self.failures.append((where, error))

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


@dataclass(frozen=True)
class Columns:
    """Column (or JSON key) names of the generic ``jsonl`` / ``csv`` adapters. ``labels`` is a JSON object of the
    14 CheXpert labels; without it the 14 label names are read as columns when present."""

    patient_id: str = "patient_id"
    study_id: str = "study_id"
    image_paths: str = "image_paths"
    view_position: str = "view_position"
    findings: str = "findings"
    impression: str = "impression"
    report: str = "report"
    split: str = "split"
    labels: str = "labels"
    image_sep: str = ";"

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> Columns:
        """Columns from ``FIELD=NAME`` strings (``image_paths=path``); ValueError on an unknown field."""
        known = {f for f in cls.__dataclass_fields__}
        values: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not value or key not in known:
                raise ValueError(f"--column expects FIELD=NAME with FIELD one of {sorted(known)}, got {pair!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class AdapterOptions:
    """Options shared by the adapters. ``image_root`` overrides where images are looked up (default: see
    `image_root`); ``reports_dir`` is MIMIC's report folder; ``columns`` is for ``jsonl`` / ``csv``."""

    frontal_only: bool = True
    clean: bool = True
    check_images: bool = True
    image_root: Path | None = None
    reports_dir: Path | None = None
    columns: Columns = Columns()


# --------------------------------------------------------------------------------------------------------------
# shared helpers
def _one_line(text: str) -> str:
    return " ".join(text.split())


_DOCUMENT_RULES = tuple(rule for rule in RULES if rule.scope == "document")


def sections_from_text(text: str, clean: bool) -> tuple[str, str] | str:
    """(findings, impression) of raw report text, or the reason it is dropped (`unix_cxr.data.cleaning` names)."""
    if not text or not text.strip():
        return DROP_EMPTY
    if clean:
        result = clean_report(text)
        if result.report is None:
            return result.dropped_reason or DROP_NO_SECTION
        return split_report(result.report)
    for rule in _DOCUMENT_RULES:  # structural only (the MIMIC "FINAL REPORT" banner), so extraction sees headers
        text, _ = rule.apply(text)
    sections, _ = extract_sections(text)
    findings, impression = _one_line(sections.findings), _one_line(sections.impression)
    return (findings, impression) if findings or impression else DROP_NO_SECTION


def sections_from_parts(findings: str | None, impression: str | None, clean: bool) -> tuple[str, str] | str:
    """(findings, impression) of already separated sections (cleaned as one report), or the reason to drop."""
    findings, impression = (findings or "").strip(), (impression or "").strip()
    if not findings and not impression:
        return DROP_EMPTY
    if not clean:
        return _one_line(findings), _one_line(impression)
    text = "\n\n".join(part for part in (f"FINDINGS:\n{findings}" if findings else "",
                                         f"IMPRESSION:\n{impression}" if impression else "") if part)
    return sections_from_text(text, clean=True)


def _read_text(path: Path) -> str:
    """UTF-8 text of a file; ValueError (with the offset) for bytes that are not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def _open_csv(path: Path) -> IO[str]:
    """Text of a CSV (or .csv.gz); bytes that are not UTF-8 are kept as lone surrogates for `_csv_rows` to find."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _not_utf8(values: Iterable[str | None]) -> str | None:
    """``not valid UTF-8 (byte 0x..)`` for the first value holding a byte that was not UTF-8, else None."""
    for value in values:
        if value and (match := _ESCAPED_BYTE.search(value)):
            return f"not valid UTF-8 (byte 0x{ord(match.group()) - 0xDC00:02x})"
    return None


def _allow_long_fields() -> None:
    """Report text makes CSV fields longer than the csv module's default limit (128 KiB)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(max(csv.field_size_limit(), min(limit, 1 << 30)))
            return
        except OverflowError:
            limit //= 2


def _csv_rows(path: Path, issues: Issues) -> Iterator[tuple[str, dict[str, str]]]:
    """(``FILE:LINE``, row) of a CSV with a header; a row with too many or too few fields, a byte that is not
    UTF-8 or a row the csv module refuses is a failure. A header that is not UTF-8 is a ValueError (whole file)."""
    _allow_long_fields()
    with _open_csv(path) as handle:
        reader = csv.DictReader(handle)
        try:
            fieldnames = reader.fieldnames
        except csv.Error as err:
            raise ValueError(f"{shown(path)}:1: malformed CSV header ({err})") from None
        if fieldnames is None:
            return
        if (bad := _not_utf8(fieldnames)) is not None:
            raise ValueError(f"{shown(path)}:1: CSV header {bad}")
        while True:
            line = reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:  # e.g. a field over the size limit; the reader goes on with the next line
                issues.fail(f"{path}:{line + 1}", f"malformed CSV row ({err})")
                continue
            where = f"{path}:{reader.line_num}"
            if None in row or any(value is None for value in row.values()):
                issues.fail(where, f"malformed CSV row: expected {len(fieldnames)} fields")
                continue
            if (bad := _not_utf8(row.values())) is not None:
                issues.fail(where, bad)
                continue
            yield where, row


def _need_file(path: Path, what: str) -> None:
    """FileNotFoundError unless `path` exists, ValueError unless it is a regular file (a FIFO or device would block
    or never end)."""
    if path.is_file():
        return
    if path.exists():
        raise ValueError(f"{what} {path} is not a regular file")
    raise FileNotFoundError(f"{what} {path} does not exist")


def _find_file(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _short(value: Any) -> str:
    """A value for an error message: its repr when short, else only its type and length (no report text)."""
    text = repr(value)
    return text if len(text) <= 24 else f"a {type(value).__name__} of {len(str(value))} characters"


def _label_value(value: Any) -> int | None:
    """A CheXpert label from JSON or CSV (1, 0, -1, "1.0", "", null, NaN) -> 1, 0, -1 or None; ValueError else."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        raise ValueError(f"label value {_short(value)} is not 1, 0, -1 or empty")
    if isinstance(value, str):
        value = value.strip()
        if not value or value.lower() in ("nan", "null", "none"):
            return None
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"label value {_short(value)} is not 1, 0, -1 or empty") from None
    if isinstance(value, (int, float)) and value in (1, 0, -1):
        return int(value)
    raise ValueError(f"label value {_short(value)} is not 1, 0, -1 or empty")


def labels_from_mapping(row: Mapping[str, Any]) -> dict[str, int | None] | None:
    """The 14 CheXpert labels of a row that has all 14 names as keys, else None; ValueError on a bad value."""
    if not all(name in row for name in CHEXPERT_LABELS):
        return None
    out: dict[str, int | None] = {}
    for name in CHEXPERT_LABELS:
        try:
            out[name] = _label_value(row[name])
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return out


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def image_root(source: str, root: str | Path, opts: AdapterOptions | None = None) -> Path | None:
    """The folder that a source's image paths are relative to: ``opts.image_root`` when set, else ROOT for
    folder sources and the input file's folder for file sources (for ``iu`` from a ``.tgz``: None)."""
    opts = opts or AdapterOptions()
    if opts.image_root is not None:
        return Path(opts.image_root)
    root = Path(root)
    if root.is_dir():
        return root
    return None if source == "iu" else root.parent


def _check_image(rel: str, root: Path | None, opts: AdapterOptions, issues: Issues, where: str) -> bool:
    if not opts.check_images or root is None:
        return True
    if (root / rel).is_file():
        return True
    issues.fail(where, f"missing image file {root / rel}")
    return False


def _keep_view(view: str | None, opts: AdapterOptions, issues: Issues) -> bool:
    """Whether the frontal-only filter keeps an image with this view (counting what it leaves out)."""
    if not opts.frontal_only:
        return True
    if view is None:
        issues.notes[VIEW_UNKNOWN] += 1
        return True
    if view.strip().upper() in _FRONTAL_OR_UNSPECIFIED:
        return True
    issues.images_left_out[SKIP_NOT_FRONTAL] += 1
    return False


_FRONTAL_OR_UNSPECIFIED = frozenset({"PA", "AP", "FRONTAL"})


def _record(issues: Issues, where: str, **kwargs: Any) -> StudyRecord | None:
    try:
        return StudyRecord(**kwargs)
    except ValueError as err:
        issues.fail(where, str(err))
        return None


# --------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
_DIGITS = re.compile(r"\d+")


def _mimic_reports_dir(root: Path, opts: AdapterOptions) -> Path:
    if opts.reports_dir is not None:
        if not Path(opts.reports_dir).is_dir():
            raise FileNotFoundError(f"reports folder {opts.reports_dir} does not exist")
        return Path(opts.reports_dir)
    for candidate in (root / "mimic-cxr-reports" / "files", root / "files"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no report folder under {root} (expected mimic-cxr-reports/files/ or files/)")


def read_mimic(root: str | Path, issues: Issues | None = None,
               opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """MIMIC-CXR-JPG studies in metadata order (see the module docstring for the layout)."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    if not root.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG root {root} is not a folder")
    metadata = _find_file(root, [MIMIC_METADATA])
    if metadata is None:
        raise FileNotFoundError(f"{root / MIMIC_METADATA} (or .gz) not found")
    reports = _mimic_reports_dir(root, opts)
    images_root = image_root("mimic", root, opts)

    splits: dict[str, str | None] = {}
    if (split_csv := _find_file(root, [MIMIC_SPLIT])) is not None:
        for where, row in _csv_rows(split_csv, issues):
            try:
                splits[row["dicom_id"]] = normalize_split(row["split"])
            except (KeyError, ValueError) as err:
                issues.fail(where, f"bad split row: {err}")
    else:
        log.info("no %s under %s: every study gets a hashed split", MIMIC_SPLIT, root)

    labels: dict[tuple[str, str], dict[str, int | None]] = {}
    if (label_csv := _find_file(root, [MIMIC_CHEXPERT])) is not None:
        for where, row in _csv_rows(label_csv, issues):
            try:
                value = labels_from_mapping(row)
                if value is not None:
                    labels[(row["subject_id"], row["study_id"])] = value
            except (KeyError, ValueError) as err:
                issues.fail(where, f"bad label row: {err}")

    studies: dict[tuple[str, str], list[tuple[str, str | None, str]]] = {}  # (subject, study) -> (dicom, view, where)
    for where, row in _csv_rows(metadata, issues):
        dicom, subject, study = (row.get(k, "").strip() for k in ("dicom_id", "subject_id", "study_id"))
        if not dicom or not _DIGITS.fullmatch(subject) or not _DIGITS.fullmatch(study):
            issues.fail(where, f"bad metadata row: dicom_id={dicom!r} subject_id={subject!r} study_id={study!r}")
            continue
        view = (row.get("ViewPosition") or "").strip() or None
        studies.setdefault((subject, study), []).append((dicom, view, where))

    for (subject, study), images in studies.items():
        folder = f"p{subject[:2]}/p{subject}/s{study}"
        paths, views, official, failed = [], [], [], False
        for dicom, view, where in images:
            if not _keep_view(view or "", opts, issues):  # MIMIC gives a view for every image: blank is not frontal
                continue
            rel = f"files/{folder}/{dicom}.jpg"
            if not _check_image(rel, images_root, opts, issues, where):
                failed = True
                continue
            paths.append(rel)
            views.append(view)
            official.append(splits.get(dicom))
        if not paths:
            if not failed:
                issues.drop(DROP_NO_FRONTAL if opts.frontal_only else DROP_NO_IMAGE)
            continue
        report_path = reports / f"{folder}.txt"
        try:
            text = _read_text(report_path)
        except FileNotFoundError:
            issues.fail(str(report_path), "missing report file")
            continue
        except (OSError, ValueError) as err:
            issues.fail(str(report_path), f"cannot read report: {getattr(err, 'strerror', None) or err}")
            continue
        sections = sections_from_text(text, opts.clean)
        if isinstance(sections, str):
            issues.drop(sections)
            continue
        split = next((s for s in official if s is not None), None)
        record = _record(issues, str(report_path), patient_id=f"p{subject}", study_id=f"s{study}",
                         image_paths=paths, view_position=views_summary(views), findings=sections[0],
                         impression=sections[1], split=split, labels=labels.get((subject, study)))
        if record is not None:
            yield record


# --------------------------------------------------------------------------------------------------------------
# CheXpert-Plus
_CHEXPERT_STUDY = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/")


def _chexpert_csv(root: Path) -> Path:
    if not root.is_dir():
        _need_file(root, "CheXpert-Plus root")
        return root
    found = sorted(root.glob("df_chexpert_plus*.csv")) or sorted(root.glob("df_chexpert_plus*.csv.gz"))
    if not found:
        raise FileNotFoundError(f"no df_chexpert_plus*.csv in {root}")
    return found[-1]


def _chexpert_view(row: Mapping[str, str]) -> str | None:
    frontal_lateral = (row.get("frontal_lateral") or "").strip().lower()
    ap_pa = (row.get("ap_pa") or "").strip().upper()
    if frontal_lateral == "lateral":
        return "LATERAL"
    if ap_pa in ("AP", "PA"):
        return ap_pa
    if frontal_lateral == "frontal":
        return "FRONTAL"
    return ap_pa or None


def _chexpert_image(path: str, root: Path | None, opts: AdapterOptions) -> str | None:
    """The existing file for ``path_to_image`` relative to ``root`` (as written, .png, under PNG/), or None."""
    rel = PurePosixPath(path.replace("\\", "/").lstrip("/"))
    if not opts.check_images or root is None:
        return rel.as_posix()
    for candidate in (rel, rel.with_suffix(".png"), "PNG" / rel, "PNG" / rel.with_suffix(".png")):
        if (root / candidate).is_file():
            return PurePosixPath(candidate).as_posix()
    return None


def read_chexpert_plus(root: str | Path, issues: Issues | None = None,
                       opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """CheXpert-Plus studies in CSV order (see the module docstring for the columns read)."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    table = _chexpert_csv(root)
    images_root = image_root("chexpert-plus", root, opts)
    studies: dict[str, dict[str, Any]] = {}
    for where, row in _csv_rows(table, issues):
        path = (row.get("path_to_image") or "").strip()
        if not path:
            issues.fail(where, "empty path_to_image")
            continue
        if match := _CHEXPERT_STUDY.search("/" + path.replace("\\", "/")):
            patient, study = match.group(1), f"{match.group(1)}/{match.group(2)}"
        elif patient := (row.get("deid_patient_id") or "").strip():
            study = f"{patient}/{(row.get('patient_report_date_order') or '').strip() or PurePosixPath(path).stem}"
        else:
            issues.fail(where, f"cannot tell patient and study from path_to_image {path!r}")
            continue
        try:
            split = normalize_split(row.get("split"))
            row_labels = labels_from_mapping(row)
        except ValueError as err:
            issues.fail(where, str(err))
            continue
        entry = studies.setdefault(study, {"patient": patient, "images": [], "where": where, "split": split,
                                           "findings": row.get("section_findings") or "",
                                           "impression": row.get("section_impression") or "",
                                           "labels": row_labels})
        entry["images"].append((path, _chexpert_view(row), where))

    for study, entry in studies.items():
        paths, views, failed = [], [], False
        for path, view, where in entry["images"]:
            if not _keep_view(view, opts, issues):
                continue
            rel = _chexpert_image(path, images_root, opts)
            if rel is None:
                issues.fail(where, f"missing image file for {path} under {images_root}")
                failed = True
                continue
            paths.append(rel)
            views.append(view)
        if not paths:
            if not failed:
                issues.drop(DROP_NO_FRONTAL if opts.frontal_only else DROP_NO_IMAGE)
            continue
        sections = sections_from_parts(entry["findings"], entry["impression"], opts.clean)
        if isinstance(sections, str):
            issues.drop(sections)
            continue
        record = _record(issues, entry["where"], patient_id=entry["patient"], study_id=study, image_paths=paths,
                         view_position=views_summary(views), findings=sections[0], impression=sections[1],
                         split=entry["split"], labels=entry["labels"])
        if record is not None:
            yield record


# --------------------------------------------------------------------------------------------------------------
# IU X-Ray (OpenI XML)
IU_PROJECTIONS = "indiana_projections.csv"
_IU_MASK = re.compile(r"(?<![-\w])X{4}(?![-\w])")


def iu_image_key(name: str) -> str:
    """An IU image id or file name -> the key both share (``CXR1_IM-0001-3001``, ``1_IM-0001-3001.dcm.png``,
    ``CXR1_IM-0001-3001.png`` -> ``1_IM-0001-3001``)."""
    name = PurePosixPath(name.replace("\\", "/")).name
    lowered = name.lower()
    changed = True
    while changed:
        changed = False
        for suffix in IMAGE_SUFFIXES:
            if lowered.endswith(suffix):
                name, lowered, changed = name[: -len(suffix)], lowered[: -len(suffix)], True
    return name[3:] if name.upper().startswith("CXR") else name


def _too_large(size: int) -> str:
    return (f"{size:,} bytes, more than the limit of {MAX_XML_BYTES:,} for one XML report (a decompression bomb "
            "or not a report); refused")


def _read_xml_file(path: Path) -> bytes:
    if not path.is_file():
        raise OSError(f"{shown(path)} is not a regular file")
    if (size := path.stat().st_size) > MAX_XML_BYTES:
        raise ValueError(_too_large(size))
    return path.read_bytes()


def _iu_xml_sources(source: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(where, reader of the bytes) for each XML report in a folder or a tar file, sorted by name. A file or archive
    member larger than `MAX_XML_BYTES` is refused by its reader (ValueError) before it is read."""
    if source.is_dir():
        for path in sorted(source.rglob("*.xml"), key=lambda p: p.as_posix()):
            yield shown(path), lambda path=path: _read_xml_file(path)
        return
    _need_file(source, "IU X-Ray source")
    if not tarfile.is_tarfile(source):
        raise ValueError(f"{source} is neither a folder of XML reports nor a tar archive")
    with tarfile.open(source) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")),
                         key=lambda m: m.name)
        for member in members:
            def read(member: tarfile.TarInfo = member) -> bytes:
                if member.size > MAX_XML_BYTES:
                    raise ValueError(f"archive member {_too_large(member.size)}")
                handle = archive.extractfile(member)
                if handle is None:
                    raise OSError("cannot extract")
                return handle.read(MAX_XML_BYTES + 1)
            yield f"{shown(source)}:{shown(member.name)}", read


def _iu_images(folder: Path | None, issues: Issues) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*"), key=lambda p: p.as_posix()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if (bad := name_error(path.relative_to(folder))) is not None:  # it could not be written as a path
                issues.fail(str(path), bad)
                continue
            index.setdefault(iu_image_key(path.name), path)
    return index


def _iu_projections(folders: Iterable[Path | None], issues: Issues) -> dict[str, str]:
    for folder in folders:
        if folder is None or not (path := folder / IU_PROJECTIONS).is_file():
            continue
        views: dict[str, str] = {}
        for where, row in _csv_rows(path, issues):
            name, projection = (row.get("filename") or "").strip(), (row.get("projection") or "").strip()
            if not name or not projection:
                issues.fail(where, "projection row needs filename and projection")
                continue
            views[iu_image_key(name)] = projection.upper()
        log.info("IU X-Ray views from %s (%d images)", path, len(views))
        return views
    return {}


def _iu_text(element: ET.Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def parse_iu_xml(data: bytes) -> dict[str, Any]:
    """The fields of one OpenI report: id, findings, impression, image ids, MeSH major and minor terms."""
    tree = ET.fromstring(data)
    uid = tree.find("uId")
    sections = {str(el.get("Label", "")).upper(): _iu_text(el) for el in tree.iter("AbstractText")}
    mesh = tree.find("MeSH")
    return {
        "id": uid.get("id") if uid is not None else None,
        "findings": sections.get("FINDINGS", ""),
        "impression": sections.get("IMPRESSION", ""),
        "images": [el.get("id") for el in tree.iter("parentImage") if el.get("id")],
        "mesh_major": [_iu_text(el) for el in mesh.iter("major")] if mesh is not None else [],
        "mesh_minor": [_iu_text(el) for el in mesh.iter("minor")] if mesh is not None else [],
    }


def read_iu_xray(root: str | Path, issues: Issues | None = None,
                 opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """IU X-Ray reports from a folder of OpenI XML files or a ``.tgz`` of them, sorted by file name."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    images_root = image_root("iu", root, opts)
    index = _iu_images(images_root, issues)
    if not index:
        log.warning("no IU images under %s: image paths are '<id>.png', unchecked",
                    images_root if images_root is not None else "the image root (give --images)")
    views = _iu_projections((root if root.is_dir() else None, images_root), issues)
    for where, read in _iu_xml_sources(root):
        try:
            report = parse_iu_xml(read())
        except (ET.ParseError, OSError, ValueError, RecursionError) as err:
            issues.fail(where, f"cannot read XML report: {getattr(err, 'strerror', None) or err}")
            continue
        rid = report["id"] or f"CXR{PurePosixPath(where.rsplit(':', 1)[-1]).stem}"
        paths, kept_views, failed = [], [], False
        for image_id in report["images"]:
            key = iu_image_key(image_id)
            view = views.get(key)
            if not _keep_view(view, opts, issues):
                continue
            if index:
                if key not in index:
                    if opts.check_images:
                        issues.fail(where, f"missing image file for {image_id} under {images_root}")
                        failed = True
                        continue
                    rel = f"{image_id}.png"
                else:
                    rel = _rel(index[key], images_root)
            else:
                rel = f"{image_id}.png"
            paths.append(rel)
            kept_views.append(view)
        if not paths:
            if not failed:
                issues.drop(DROP_NO_IMAGE if not report["images"] or not opts.frontal_only else DROP_NO_FRONTAL)
            continue
        findings, impression = report["findings"], report["impression"]
        if opts.clean:
            findings, impression = _IU_MASK.sub("___", findings), _IU_MASK.sub("___", impression)
        sections = sections_from_parts(findings, impression, opts.clean)
        if isinstance(sections, str):
            issues.drop(sections)
            continue
        record = _record(issues, where, patient_id=rid, study_id=rid, image_paths=paths,
                         view_position=views_summary(kept_views), findings=sections[0], impression=sections[1],
                         extra={"mesh_major": report["mesh_major"], "mesh_minor": report["mesh_minor"]})
        if record is not None:
            yield record


# --------------------------------------------------------------------------------------------------------------
# the authors' chat JSON
_MIMIC_PATH = re.compile(r"(?:^|/)(p\d+)/(s\d+)/[^/]+$")


def _json_items(path: Path, issues: Issues) -> Iterator[tuple[str, Any]]:
    """(where, item) of a JSON list file or a JSONL file (chosen by the first non-blank character)."""
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        try:
            items = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
        except (ValueError, RecursionError) as err:  # nested too deeply, an integer too long, not UTF-8
            message = str(err) if isinstance(err, ValueError) and "UTF-8" in str(err) else json_error(err)
            raise ValueError(f"{path}: {message}") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of items")
        for number, item in enumerate(items):
            where = f"{path}[{number}]"
            if (bad := unicode_error(item)) is not None:
                issues.fail(where, bad)
                continue
            yield where, item
        return
    yield from read_jsonl(path, issues.fail)


def _chat_fields(item: Any) -> tuple[list[str], str, str | None]:
    """(images, answer, split) of one chat item in either form; ValueError says what is wrong."""
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    if "messages" in item:
        messages, role, key, want = item["messages"], "role", "content", ("assistant",)
        images = item.get("images")
    elif "conversations" in item:
        messages, role, key, want = item["conversations"], "from", "value", ("gpt", "assistant")
        images = item.get("image")
        images = [images] if isinstance(images, str) else images
    else:
        raise ValueError("neither 'messages' nor 'conversations'")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("messages must be a list of objects")
    answers = [m.get(key) for m in messages if m.get(role) in want]
    if not answers or not isinstance(answers[-1], str) or not answers[-1].strip():
        raise ValueError("no assistant answer")
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        raise ValueError("needs a non-empty list of image paths")
    split = item.get("split")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"split must be a string, got {type(split).__name__}")
    return images, answers[-1], normalize_split(split)


def read_chat(root: str | Path, issues: Issues | None = None,
              opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """Records from the authors' chat JSON (list or JSONL); see the module docstring."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    _need_file(root, "chat file")
    images_root = image_root("chat", root, opts)
    groups: dict[tuple[str, str, str, str, str | None], dict[str, Any]] = {}
    for where, item in _json_items(root, issues):
        try:
            images, answer, split = _chat_fields(item)
        except ValueError as err:
            issues.fail(where, str(err))
            continue
        sections = sections_from_text(answer, opts.clean)
        if isinstance(sections, str):
            issues.drop(sections)
            continue
        kept = []
        for image in images:
            if opts.frontal_only:
                issues.notes[VIEW_UNKNOWN] += 1
            if _check_image(image, images_root, opts, issues, where):
                kept.append(image)
        if not kept:
            continue
        match = _MIMIC_PATH.search(kept[0])
        patient, study = match.groups() if match else (PurePosixPath(kept[0]).stem,) * 2
        key = (patient, study, *sections, split) if match else (patient, study, where, "", split)
        group = groups.setdefault(key, {"where": where, "images": [], "sections": sections})
        group["images"].extend(p for p in kept if p not in group["images"])
    for (patient, study, *_, split), group in groups.items():
        record = _record(issues, group["where"], patient_id=patient, study_id=study, image_paths=group["images"],
                         view_position=None, findings=group["sections"][0], impression=group["sections"][1],
                         split=split)
        if record is not None:
            yield record


# --------------------------------------------------------------------------------------------------------------
# generic JSONL / CSV
def _generic_record(row: Mapping[str, Any], where: str, cols: Columns, opts: AdapterOptions,
                    images_root: Path | None, issues: Issues) -> StudyRecord | None:
    def text(name: str) -> str:
        value = row.get(name)
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(f"{name!r} must be a string, got {type(value).__name__}")
        return str(value).strip()

    raw_images = row.get(cols.image_paths)
    if raw_images is None:
        raise ValueError(f"missing {cols.image_paths!r} (set the column with --column image_paths=NAME)")
    if isinstance(raw_images, str):
        images = [p.strip() for p in raw_images.split(cols.image_sep) if p.strip()]
    elif isinstance(raw_images, list) and all(isinstance(p, str) for p in raw_images):
        images = [p for p in raw_images if p]
    else:
        raise ValueError(f"{cols.image_paths!r} must be a path, a list of paths or {cols.image_sep!r}-separated "
                         f"paths, got {type(raw_images).__name__}")
    if not images:
        issues.drop(DROP_NO_IMAGE)
        return None
    study = text(cols.study_id) or str(PurePosixPath(images[0]).with_suffix(""))
    patient = text(cols.patient_id)
    if not patient:
        issues.notes["no patient id (split per study)"] += 1
        patient = study
    view = text(cols.view_position) or None
    split = normalize_split(text(cols.split))
    raw_labels = row.get(cols.labels)
    if isinstance(raw_labels, dict):
        labels = labels_from_mapping(raw_labels)
        if labels is None:
            raise ValueError(f"{cols.labels!r} must have the 14 CheXpert labels")
    elif raw_labels is None or raw_labels == "":
        labels = labels_from_mapping(row)
    else:
        raise ValueError(f"{cols.labels!r} must be an object of the 14 CheXpert labels or null")
    findings, impression = text(cols.findings), text(cols.impression)
    if findings or impression:
        sections = sections_from_parts(findings, impression, opts.clean)
    else:
        sections = sections_from_text(text(cols.report), opts.clean)
    if isinstance(sections, str):
        issues.drop(sections)
        return None
    if not _keep_view(view, opts, issues):
        issues.drop(DROP_NO_FRONTAL)
        return None
    kept = [p for p in images if _check_image(p, images_root, opts, issues, where)]
    if not kept:
        return None
    return StudyRecord(patient_id=patient, study_id=study, image_paths=kept, view_position=view,
                       findings=sections[0], impression=sections[1], split=split, labels=labels)


def _read_generic(rows: Iterable[tuple[str, Any]], root: Path, source: str, issues: Issues,
                  opts: AdapterOptions) -> Iterator[StudyRecord]:
    images_root = image_root(source, root, opts)
    for where, row in rows:
        if not isinstance(row, dict):
            issues.fail(where, f"expected a JSON object, got {type(row).__name__}")
            continue
        try:
            record = _generic_record(row, where, opts.columns, opts, images_root, issues)
        except ValueError as err:
            issues.fail(where, str(err))
            continue
        if record is not None:
            yield record


def read_jsonl_records(root: str | Path, issues: Issues | None = None,
                       opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """One record per JSONL line, keys named by ``opts.columns``."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    _need_file(root, "JSONL file")
    yield from _read_generic(read_jsonl(root, issues.fail), root, "jsonl", issues, opts)


def read_csv_records(root: str | Path, issues: Issues | None = None,
                     opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """One record per CSV row (header required), columns named by ``opts.columns``."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    _need_file(root, "CSV file")
    yield from _read_generic(_csv_rows(root, issues), root, "csv", issues, opts)


# --------------------------------------------------------------------------------------------------------------
# phantom data sets (unix-cxr data phantom)
def read_phantom(root: str | Path, issues: Issues | None = None,
                 opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """Records of a folder written by ``unix-cxr data phantom`` (synthetic images), in ``reports.jsonl`` order."""
    root, issues, opts = Path(root), issues if issues is not None else Issues(), opts or AdapterOptions()
    reports_file = root / "reports.jsonl"
    if not reports_file.is_file():
        raise FileNotFoundError(f"{reports_file} not found (write a phantom set with `unix-cxr data phantom`)")
    images_root = image_root("phantom", root, opts)
    labels: dict[str, dict[str, int | None]] = {}
    if (root / "labels.jsonl").is_file():
        for where, row in read_jsonl(root / "labels.jsonl", issues.fail):
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                issues.fail(where, "expected {\"id\": ..., \"labels\": {...}}")
                continue
            try:
                value = labels_from_mapping(row.get("labels") or {})
            except ValueError as err:
                issues.fail(where, str(err))
                continue
            if value is None:
                issues.fail(where, "labels must have the 14 CheXpert labels")
                continue
            labels[row["id"]] = value
    for where, row in read_jsonl(reports_file, issues.fail):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("report"), str):
            issues.fail(where, "expected {\"id\": \"...\", \"report\": \"...\"}")
            continue
        rid = row["id"]
        rel = f"images/{rid}.png"
        if not _check_image(rel, images_root, opts, issues, where):
            continue
        sections = sections_from_text(row["report"], opts.clean)
        if isinstance(sections, str):
            issues.drop(sections)
            continue
        record = _record(issues, where, patient_id=rid, study_id=rid, image_paths=[rel], view_position="PA",
                         findings=sections[0], impression=sections[1], labels=labels.get(rid))
        if record is not None:
            yield record


ADAPTERS: dict[str, Callable[[str | Path, Issues | None, AdapterOptions | None], Iterator[StudyRecord]]] = {
    "mimic": read_mimic,
    "chexpert-plus": read_chexpert_plus,
    "iu": read_iu_xray,
    "chat": read_chat,
    "jsonl": read_jsonl_records,
    "csv": read_csv_records,
    "phantom": read_phantom,
}
"""Source name (as ``unix-cxr data build --source`` takes it) -> adapter."""


def read_source(source: str, root: str | Path, issues: Issues | None = None,
                opts: AdapterOptions | None = None) -> Iterator[StudyRecord]:
    """The records of ``root`` read by the adapter named ``source``; ValueError for an unknown name."""
    if source not in ADAPTERS:
        raise ValueError(f"unknown source {source!r} (expected one of {', '.join(ADAPTERS)})")
    return ADAPTERS[source](root, issues, opts)


# --------------------------------------------------------------------------------------------------------------
# patient-level splits
def split_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """``{"train": 1 - val - test, "val": val, "test": test}``; ValueError unless both are in [0, 1) and sum < 1."""
    for name, value in (("val", val_fraction), ("test", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val + test fractions must leave some training data, got {val_fraction + test_fraction}")
    return {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}


def hash_unit(patient_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, patient id): the first 8 bytes of SHA-256, so stable everywhere."""
    digest = hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hashed_split(patient_id: str, fractions: Mapping[str, float], seed: int) -> str:
    """The split whose interval on [0, 1) (laid out in `SPLITS` order) holds `hash_unit(patient_id, seed)`."""
    u, edge, last = hash_unit(patient_id, seed), 0.0, None
    for name in SPLITS:
        width = fractions.get(name, 0.0)
        if width > 0:
            edge, last = edge + width, name
            if u < edge:
                return name
    if last is None:
        raise ValueError(f"fractions must give some split a positive share, got {dict(fractions)}")
    return last  # rounding: u just under 1 with fractions summing to 1 - epsilon


def assign_splits(records: Iterable[StudyRecord], fractions: Mapping[str, float], seed: int) -> list[StudyRecord]:
    """Records with ``split`` set, patient by patient, with no patient in two splits.

    A record's official split is kept. A patient's records without one take the patient's official split (the
    most frequent one, ties in `SPLITS` order); a patient with none is placed by `hashed_split`. The result does
    not depend on the order of ``records``. A patient whom the official split itself puts in two splits is left
    as given and logged as a warning (see `patient_leaks`).
    """
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative shares of {SPLITS} summing to 1, got {dict(fractions)}")
    records = list(records)
    official: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        if record.split is not None:
            official[record.patient_id][record.split] += 1
    chosen: dict[str, str] = {}
    for patient, counts in official.items():
        chosen[patient] = max(SPLITS, key=lambda s: (counts[s], -SPLITS.index(s)))
        if len(counts) > 1:
            log.warning("patient %s is in several official splits (%s); kept as given", patient,
                        ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
    out = []
    for record in records:
        if record.split is None:
            split = chosen.get(record.patient_id) or hashed_split(record.patient_id, fractions, seed)
            record = replace(record, split=split)
        out.append(record)
    return out


def patient_leaks(records: Iterable[StudyRecord]) -> dict[str, set[str]]:
    """Patients whose records are in more than one split -> those splits (empty when there is no leakage)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for record in records:
        seen[record.patient_id].add(str(record.split))
    return {patient: splits for patient, splits in seen.items() if len(splits) > 1}


def section_coverage(records: Iterable[StudyRecord]) -> dict[str, int]:
    """How many records have FINDINGS, IMPRESSION, both, only one, and how many there are."""
    counts = Counter()
    for record in records:
        counts["records"] += 1
        counts["findings"] += bool(record.findings)
        counts["impression"] += bool(record.impression)
        counts["both"] += bool(record.findings and record.impression)
        counts["findings_only"] += bool(record.findings and not record.impression)
        counts["impression_only"] += bool(record.impression and not record.findings)
    return {k: counts[k] for k in ("records", "findings", "impression", "both", "findings_only", "impression_only")}
