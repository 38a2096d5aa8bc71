"""The inputs of the batch jobs `unix-cxr report` (images) and `unix-cxr generate` (reports), as `Item` lists.

`image_items` -- each argument is one of:

* a folder: its image files (PNG, JPEG, DICOM by suffix: ``unix_cxr.data.latent_cache.IMAGE_SUFFIXES``), sorted,
  its subfolders too with ``recursive``; id = the path inside the folder without the suffix (``sub/a``);
* a ``.jsonl`` file: one ``{"id", "image"}`` object per line (``unix_cxr.data.latent_cache.items_from_jsonl``:
  ``image`` relative to the file's folder; ``id`` defaults to the image path without its suffix);
* a ``.csv`` file: a header row, then the columns ``id`` and ``image`` (relative to the file's folder);
* anything else: one image file, id = its name without the suffix.

`report_items` -- an argument that starts with ``@`` or ends with ``.jsonl``, ``.csv`` or ``.txt`` is a file:

* ``.jsonl``: one ``{"id", "report"}`` object per line (``id`` a string or an integer);
* ``.csv``: a header row, then the columns ``id`` and ``report``;
* any other file (``.txt``): the whole file is one report, id = its name without the suffix;

any other argument is the text of one report, id ``text-N`` for the N-th such argument (from 1).

A missing argument path, a CSV without the needed columns or an input with nothing in it is a bad argument
(ValueError / OSError). A bad line or row, an unreadable text file, an empty report and a repeated id (its later
uses) are failed items (`Item.error`): the job records them and goes on.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["REPORT_FILE_SUFFIXES", "Item", "image_items", "report_items"]

REPORT_FILE_SUFFIXES = (".jsonl", ".csv", ".txt")


@dataclass(frozen=True)
class Item:
    """One input item: ``id``; ``source``, the image file (`report`) or the report text (`generate`); ``where``
    it came from, for messages; ``error``, why it cannot be done (None when it can)."""

    id: str
    source: str | None
    where: str
    error: str | None = None


def _unique(items: list[Item]) -> list[Item]:
    """The items, a repeated id failing from its second use (the outputs are keyed by id)."""
    first: dict[str, str] = {}
    out = []
    for item in items:
        if item.error is None and item.id in first:
            item = replace(item, error=f"duplicate id {item.id!r} (first: {first[item.id]})")
        elif item.error is None:
            first[item.id] = item.where
        out.append(item)
    return out


def _csv_items(path: Path, column: str) -> list[Item]:
    """The rows of a CSV file with the columns ``id`` and `column` (header first; other columns are ignored)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("id", column) if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{path}: no column {' or '.join(missing)} in the header row (needs id,{column})")
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a valid CSV file ({err})") from None
    items = []
    for line, row in rows:
        where = f"{path}:{line}"
        rid, value = (row.get("id") or "").strip(), row.get(column) or ""
        if not rid or not value.strip():
            items.append(Item(rid or where, None, where, f"empty {'id' if not rid else column!r}"))
        else:
            items.append(Item(rid, value, where))
    return items


# ---- images (`unix-cxr report`) ------------------------------------------------------------------------------------
def _from_cache_items(found: list) -> list[Item]:
    return [Item(c.id, c.image, c.image or c.id, c.error) for c in found]


def _folder_images(folder: Path, recursive: bool) -> list[Item]:
    from ..data.latent_cache import IMAGE_SUFFIXES, items_from_folder

    items = [item for item in _from_cache_items(items_from_folder(folder)) if recursive or "/" not in item.id]
    if not items:
        hint = "" if recursive else " (--recursive for its subfolders)"
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder{hint}")
    return items


def _image_file(path: Path) -> Item:
    from ..data.records import name_error, shown

    bad = name_error(path.name)
    return Item(path.stem, str(path), str(path)) if bad is None else Item(shown(path.stem), None, shown(path), bad)


def image_items(inputs: Sequence[str], recursive: bool = False) -> list[Item]:
    """The images named by `inputs` (module doc), in order; ValueError when there are none."""
    from ..data.latent_cache import items_from_jsonl

    items: list[Item] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            items += _folder_images(path, recursive)
        elif path.suffix.lower() == ".jsonl":
            items += _from_cache_items(items_from_jsonl(path))
        elif path.suffix.lower() == ".csv":
            items += [replace(i, source=str(path.parent / i.source)) if i.source else i
                      for i in _csv_items(path, "image")]
        elif path.exists() or path.is_symlink():
            items.append(_image_file(path))
        else:
            raise FileNotFoundError(f"{arg}: no such file or folder")
    if not items:
        raise ValueError(f"no images in {', '.join(inputs)}")
    return _unique(items)


# ---- reports (`unix-cxr generate`) ---------------------------------------------------------------------------------
def _report(rid: str, text: str, where: str) -> Item:
    return Item(rid, text, where) if text.strip() else Item(rid, None, where, "empty report")


def _jsonl_reports(path: Path) -> list[Item]:
    from ..data.records import iter_jsonl_lines

    items = []
    for line in iter_jsonl_lines(path):
        obj, where = line.obj, line.where
        if line.error is not None:
            items.append(Item(where, None, where, line.error))
        elif not isinstance(obj, dict):
            items.append(Item(where, None, where, f"expected a JSON object, got {type(obj).__name__}"))
        elif missing := [key for key in ("id", "report") if obj.get(key) is None]:
            items.append(Item(where, None, where, f"missing {' and '.join(repr(k) for k in missing)}"))
        elif not isinstance(rid := obj["id"], str | int) or isinstance(rid, bool):
            items.append(Item(where, None, where, f"'id' must be a string or an integer, got {type(rid).__name__}"))
        elif not isinstance(text := obj["report"], str):
            items.append(Item(str(rid), None, where, f"'report' must be a string, got {type(text).__name__}"))
        else:
            items.append(_report(str(rid), text, where))
    return items


def _text_file(path: Path) -> Item:
    from ..data.records import name_error, shown

    where = shown(path)
    if (bad := name_error(path.name)) is not None:
        return Item(shown(path.stem), None, where, bad)
    try:
        return _report(path.stem, path.read_bytes().decode("utf-8-sig"), where)
    except UnicodeDecodeError as err:
        return Item(path.stem, None, where, f"not valid UTF-8 (byte {err.start})")
    except OSError as err:
        return Item(path.stem, None, where, f"cannot read: {err.strerror or err}")


def _report_file(arg: str) -> list[Item]:
    path = Path(arg[1:] if arg.startswith("@") else arg)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a .jsonl, .csv or .txt file of reports")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_reports(path)
    if suffix == ".csv":
        return _csv_items(path, "report")
    return [_text_file(path)]


def report_items(inputs: Sequence[str]) -> list[Item]:
    """The reports named by `inputs` (module doc), in order; ValueError when there are none."""
    items: list[Item] = []
    texts = 0
    for arg in inputs:
        if arg.startswith("@") or arg.lower().endswith(REPORT_FILE_SUFFIXES):
            items += _report_file(arg)
        else:
            texts += 1
            items.append(_report(f"text-{texts}", arg, f"report argument {texts}"))
    if not items:
        raise ValueError(f"no reports in {', '.join(inputs)}")
    return _unique(items)
