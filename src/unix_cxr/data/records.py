"""The one typed record every dataset adapter yields (`StudyRecord`), and its JSONL files.

A `StudyRecord` is one radiology study: who (``patient_id``), which study (``study_id``), its images (paths
relative to the data set's image root, POSIX separators), their view position, the report's FINDINGS and
IMPRESSION text (single-line, either may be empty), the split (``train`` / ``val`` / ``test``, or ``None`` before
`unix_cxr.data.adapters.assign_splits`), optional CheXpert labels (the 14 names of `unix_cxr.chexpert`) and
``extra``, a small dict of source-specific fields that no writer relies on (for example the IU X-Ray MeSH tags).

Files are JSON Lines, one record per line, with the field names above; `write_jsonl` writes any JSONL atomically
(a temporary file next to the target, then `os.replace`), so a crash never leaves half a file behind.
`iter_jsonl_lines` is the one JSONL line reader of the project (records, training sources, the clean / label /
eval commands): each non-blank line parsed, or why it cannot be. `BatchProgress` is the resume file of the JSONL
batch jobs (`unix-cxr data clean`, `unix-cxr label`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..chexpert import check_labels
from ..utils.atomic import atomic_open

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names, in the order `assign_splits` lays them on the unit interval."""

# official split names of the public data sets -> ours (MIMIC-CXR: validate; CheXpert: valid)
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def normalize_split(value: str | None) -> str | None:
    """Map an official split name to ``train`` / ``val`` / ``test``; empty or None -> None; else ValueError."""
    if value is None or not str(value).strip():
        return None
    name = _SPLIT_ALIASES.get(str(value).strip().lower())
    if name is None:
        raise ValueError(f"unknown split {value!r} (expected one of {sorted(_SPLIT_ALIASES)})")
    return name


@dataclass(frozen=True)
class StudyRecord:
    """One study: images (relative paths) with its report sections, split and optional CheXpert labels.

    ``view_position`` is the images' view when they agree (``"PA"``), else their distinct views joined by ``","``
    in image order, or None when the source does not say.
    """

    patient_id: str
    study_id: str
    image_paths: list[str]
    view_position: str | None
    findings: str
    impression: str
    split: str | None = None
    labels: dict[str, int | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("patient_id", "study_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.image_paths, list) or not all(isinstance(p, str) and p for p in self.image_paths):
            raise ValueError(f"image_paths must be a list of non-empty strings, got {self.image_paths!r}")
        if self.view_position is not None and not isinstance(self.view_position, str):
            raise ValueError(f"view_position must be a string or null, got {self.view_position!r}")
        for name in ("findings", "impression"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or null, got {self.split!r}")
        if self.labels is not None:
            if not isinstance(self.labels, dict):
                raise ValueError(f"labels must be an object or null, got {type(self.labels).__name__}")
            check_labels(self.labels)
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be an object, got {type(self.extra).__name__}")

    @property
    def report(self) -> str:
        """The cleaned form ``FINDINGS: ... IMPRESSION: ...`` (a missing section left out; "" when both are)."""
        parts = [f"FINDINGS: {self.findings}" if self.findings else "",
                 f"IMPRESSION: {self.impression}" if self.impression else ""]
        return " ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the field names as keys."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyRecord:
        """The record of `to_dict` output; ValueError names a missing, unknown or mistyped field."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        required = {"patient_id", "study_id", "image_paths", "view_position", "findings", "impression"}
        missing = sorted(required - data.keys())
        unknown = sorted(data.keys() - names)
        if missing or unknown:
            raise ValueError(f"record: missing {missing}, unknown {unknown}")
        return cls(**data)


_CLEANED = re.compile(r"(?:FINDINGS:\s*(?P<findings>.*?))?\s*(?:\bIMPRESSION:\s*(?P<impression>.*))?", re.DOTALL)


def split_report(report: str) -> tuple[str, str]:
    """(findings, impression) of the cleaned form ``FINDINGS: ... [IMPRESSION: ...]`` or ``IMPRESSION: ...``, the
    inverse of `StudyRecord.report`; ValueError for text in neither form."""
    text = report.strip()
    match = _CLEANED.fullmatch(text)
    if not text or match is None or not (text.startswith("FINDINGS:") or text.startswith("IMPRESSION:")):
        raise ValueError(f"not in the form 'FINDINGS: ... IMPRESSION: ...': {report[:60]!r}")
    return " ".join((match["findings"] or "").split()), " ".join((match["impression"] or "").split())


def views_summary(views: Iterable[str | None]) -> str | None:
    """`StudyRecord.view_position` for images with these views: the common one, else the distinct ones joined by
    ``","`` in order (unknown views left out); None when no image's view is known."""
    known = list(dict.fromkeys(v for v in views if v))
    return ",".join(known) if known else None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line, atomically. Returns the number of lines."""
    count = 0
    with atomic_open(path) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | Path, data: Any) -> None:
    """Write one JSON document (indented), atomically."""
    with atomic_open(path) as out:
        json.dump(data, out, ensure_ascii=False, indent=1)
        out.write("\n")


def write_records(path: str | Path, records: Iterable[StudyRecord]) -> int:
    """Write records as JSONL, atomically. Returns the number written."""
    return write_jsonl(path, (r.to_dict() for r in records))


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line of a JSONL file: where it is (``"FILE:LINE"``, 1-based ``number``) and either its parsed
    value ``obj`` (any JSON value; ``error`` is None) or why it could not be parsed (``error`` set, ``obj`` None)."""

    where: str
    number: int
    obj: Any = None
    error: str | None = None


def iter_jsonl_lines(path: str | Path) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSONL file as a `JsonlLine`, in file order: the project's one JSONL line reader.

    Lines are split on ``\\n`` and decoded as UTF-8 (a byte-order mark on line 1 is allowed). A line comes back
    with ``error`` set, and the reading goes on, when it is not UTF-8 (``not valid UTF-8 (byte 0x.. at offset
    N)``, N counted from the line's start), not JSON (``not valid JSON (MESSAGE at column N)``), nested too deeply
    to parse (``not valid JSON (nested too deeply)``), holds an integer longer than Python converts
    (``not valid JSON (an integer of more than 4300 digits)``) or a string with a lone UTF-16 surrogate escape
    such as ``"\\ud800"`` (``not valid Unicode (a lone surrogate \\ud800 ...)``: such text cannot be written as
    UTF-8). Callers check the value itself (an object, the fields they need). FileNotFoundError (raised by this
    call, not on the first line) if ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return _jsonl_lines(path)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def unicode_error(value: Any) -> str | None:
    """Why a parsed JSON value cannot be written as UTF-8 (a lone surrogate in a string or key), or None."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"not valid Unicode (a lone surrogate \\u{ord(err.object[err.start]):04x} in a string; "
                "such text cannot be written as UTF-8)")
    except (RecursionError, ValueError):
        return "not valid JSON (nested too deeply)"
    return None


def json_error(err: ValueError | RecursionError) -> str:
    """The reason of a failed `json.loads`, as `iter_jsonl_lines` reports it (``not valid JSON (...)``)."""
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err.msg} at column {err.colno})"
    if isinstance(err, RecursionError):
        return "not valid JSON (nested too deeply)"
    if "integer string conversion" in str(err):  # int() of a number longer than sys.get_int_max_str_digits()
        return f"not valid JSON (an integer of more than {sys.get_int_max_str_digits()} digits)"
    return f"not valid JSON ({' '.join(str(err).split())})"


def _parse_line(line: str) -> tuple[Any, str | None]:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, int-digit limit, nesting
        return None, json_error(err)
    if _SURROGATE_ESCAPE.search(line) and (error := unicode_error(value)) is not None:
        return None, error
    return value, None


def _jsonl_lines(path: Path) -> Iterator[JsonlLine]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{shown(path)}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield JsonlLine(where, number, error=f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset "
                                                     f"{err.start})")
                continue
            if not line.strip():
                continue
            value, error = _parse_line(line)
            yield JsonlLine(where, number, value, error)


def read_jsonl(path: str | Path, on_error: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, Any]]:
    """(``"FILE:LINE"``, parsed value) for each non-blank line. A line that is not UTF-8 or not JSON raises
    ValueError naming it, or, with ``on_error``, is passed to ``on_error(where, message)`` and skipped."""
    for line in iter_jsonl_lines(path):
        if line.error is None:
            yield line.where, line.obj
        elif on_error is None:
            raise ValueError(f"{line.where}: {line.error}")
        else:
            on_error(line.where, line.error)


def read_records(path: str | Path, on_error: Callable[[str, str], None] | None = None) -> Iterator[StudyRecord]:
    """The records of a JSONL file written by `write_records`. A bad line raises ValueError naming it, or, with
    ``on_error``, is reported as ``on_error(where, message)`` and skipped."""
    for where, value in read_jsonl(path, on_error):
        try:
            yield StudyRecord.from_dict(value)
        except (TypeError, ValueError) as err:
            if on_error is None:
                raise ValueError(f"{where}: {err}") from None
            on_error(where, str(err))


# ---- file names ----------------------------------------------------------------------------------------------------
def shown(path: str | Path) -> str:
    """`path` as text that can always be printed and written as UTF-8: bytes of a file name that are not UTF-8
    (which Python keeps as lone surrogates) become ``\\xNN``; any other name comes back unchanged."""
    text = os.fspath(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def name_error(name: str | Path) -> str | None:
    """Why a file name cannot serve as an id or be written to an output file (bytes that are not UTF-8), or None."""
    text = os.fspath(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"file name is not valid UTF-8 ({shown(Path(text).name)}); rename the file"
    return None


# ---- resumable JSONL batch jobs ------------------------------------------------------------------------------------
PARTIAL_SUFFIX = ".partial"
PARTIAL_FORMAT = "unix-cxr-partial"


def partial_path(output: str | Path) -> Path:
    """The progress file of a batch job writing `output`: ``OUTPUT.partial`` beside it."""
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def input_fingerprint(path: str | Path, files: Sequence[Path] | None = None) -> dict[str, Any]:
    """What identifies a batch job's input for resuming: a file's absolute path, size and modification time; for a
    folder, its path, the number of `files` and a hash of their relative names, sizes and modification times."""
    path = Path(path).absolute()
    if files is None:
        st = path.stat()
        return {"path": shown(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    for file in files:
        try:
            st = file.stat()
            stamp = f"{st.st_size} {st.st_mtime_ns}"
        except OSError:
            stamp = "unreadable"
        digest.update(f"{shown(file)}\0{stamp}\n".encode())
    return {"path": shown(path), "files": len(files), "listing": digest.hexdigest()}


class BatchProgress:
    """The progress file ``OUTPUT.partial`` of a resumable JSONL batch job (`unix-cxr data clean`, `label`).

    The job writes its OUTPUT atomically at the end, as before; in addition, the outcome of each input item (a
    small JSON object that holds the item's ``where`` and what it gave: an output row, an error, ...) is appended
    to ``OUTPUT.partial`` and flushed as soon as it is known. The file's first line is a header: the job, its
    input (`input_fingerprint`) and its options. A rerun with the same header replays the recorded outcomes of the
    first items instead of computing them again (`replay`), then goes on (`add`); a header that differs (other
    input, other options) or an unreadable file is logged and the job starts over, as it does with
    ``resume=False``. A torn last line (an interruption while writing it) is dropped. `finish` removes the file
    once OUTPUT is complete.
    """

    def __init__(self, output: str | Path, header: dict[str, Any], resume: bool = True) -> None:
        self.path = partial_path(output)
        self.header = json.loads(json.dumps({"format": PARTIAL_FORMAT, "version": 1, **header}))
        self.done: list[dict[str, Any]] = []
        self._ends: list[int] = []  # byte offset after the header and after each record of `done`
        self._handle: Any = None
        self._replaying = True
        if resume:
            self._load()
        elif self.path.exists():
            log.info("%s: not resuming (--no-resume); starting over", shown(self.path))

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            log.warning("%s: cannot read it (%s); starting over", shown(self.path), err.strerror or err)
            return
        offset, records = 0, []
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # torn last line
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                break
            if not isinstance(value, dict):
                break
            if offset == 0 and value != self.header:
                log.info("%s is from another input or other options; starting over", shown(self.path))
                return
            offset += len(raw)
            records.append(value)
            self._ends.append(offset)
        if not records:
            return
        self.done = records[1:]
        log.info("resuming from %s: %d item(s) already done", shown(self.path), len(self.done))

    def replay(self, k: int, where: str) -> dict[str, Any] | None:
        """The recorded outcome of the `k`-th item (0-based) if it was done and names the same `where`, else None;
        after the first None every later call returns None (the job computes from there on)."""
        if not self._replaying:
            return None
        if k < len(self.done) and self.done[k].get("where") == where:
            return self.done[k]
        if k < len(self.done):
            log.warning("%s: item %d is %s, not %s as recorded; computing from there on", shown(self.path), k + 1,
                        where, self.done[k].get("where"))
        self._replaying = False
        del self.done[k:], self._ends[k + 1:]
        return None

    def add(self, outcome: dict[str, Any]) -> None:
        """Record the outcome of the next item (appended and flushed at once)."""
        self._replaying = False
        if self._handle is None:
            if self.done:
                self._handle = open(self.path, "r+", encoding="utf-8", newline="\n")  # noqa: SIM115
                self._handle.seek(self._ends[len(self.done)])
                self._handle.truncate()
            else:
                self._handle = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
                self._handle.write(json.dumps(self.header) + "\n")
        self._handle.write(json.dumps(outcome) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file (kept for a rerun to resume from)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        """The job is complete: close and remove the progress file."""
        self.close()
        self.path.unlink(missing_ok=True)
