"""The batch jobs of `unix-cxr report` (`ReportJob`) and `unix-cxr generate` (`GenerateJob`), run by `run_batch`.

`run_batch(items, job, output)` (items from `unix_cxr.infer.batch_inputs`):

* Processes. Under torchrun (`unix_cxr.utils.ranks.Ranks`) process R of W takes the items ``i % W == R``; each
  process writes its own part of OUTPUT (`unix_cxr.utils.journal`). Once all are done, process 0 merges OUTPUT in
  input order and removes the parts; every process then exits with the same status. All processes must see the
  same OUTPUT folder.
* Resume. A record is appended to the process's part, and flushed, after each batch; OUTPUT is written atomically
  at the end. A rerun with the same OUTPUT (``resume=True``) skips every item that OUTPUT or its parts -- of a run
  killed at any point, with any number of processes -- record as done: a report of the same id and image file, or
  all ``n`` images of the same id, prompt and seed whose files are still there. Failed items are tried again. The
  other settings (model, decoding, steps, size ...) are not compared: after changing them, use ``resume=False``
  (`--no-resume`) or another OUTPUT.
* Failures. An item that cannot be done (a bad input line, an unreadable image, a model error on that item) gets
  an error record; the others go on. ``BatchSummary.failed`` counts them over all processes.

`item_seed` is the seed rule of `generate`: the images of one report depend only on ``--seed`` and the report's id,
not on the batch size, the order of the inputs, resuming or the number of processes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..utils.journal import Part, finish, part_path, part_paths, read_all
from ..utils.ranks import Ranks
from .batch_inputs import Item

log = logging.getLogger(__name__)

__all__ = ["BatchSummary", "GenerateJob", "ReportJob", "file_stem", "item_seed", "log_summary", "run_batch"]

Record = dict[str, Any]
MAX_LISTED = 20


def _one_line(err: BaseException) -> str:
    """An error as one line; an error that is neither bad input nor a file problem also names its type."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


class Job(Protocol):
    """What `run_batch` needs of a job: items per call, what an earlier run did, a failure, and the work."""

    chunk: int

    def done(self, item: Item, records: list[Record]) -> list[Record] | None:
        """The records of `item` among `records` (those of its id, oldest first) if it is done, else None."""

    def failed(self, item: Item, error: str) -> Record:
        """The record of a failed item."""

    def run(self, batch: list[Item]) -> list[list[Record]]:
        """The records of each item of `batch` (an error record for an item that failed)."""


# ---- reports -------------------------------------------------------------------------------------------------------
class ReportJob:
    """`unix-cxr report`: ``{"id", "image", "report", "labels", "finished", "seconds"}`` per image, or
    ``{"id", "image", "error"}``. The images of a batch are read by one call of ``pipe.report``; when that call
    fails, each image is read alone, so that only the images the model cannot take fail."""

    def __init__(self, pipe: Any, prompt: str | None = None, batch_size: int = 4) -> None:
        self.pipe, self.prompt, self.chunk = pipe, prompt, batch_size

    def done(self, item: Item, records: list[Record]) -> list[Record] | None:
        found = [r for r in records if "report" in r and "error" not in r and r.get("image") == item.source]
        return found[-1:] or None

    def failed(self, item: Item, error: str) -> Record:
        return {"id": item.id, "image": item.source, "error": error}

    def _reports(self, pixels: list[Any]) -> list[Any]:
        """A Report, or why there is none (one line), for each image."""
        try:
            return list(self.pipe.report(pixels, prompt=self.prompt, labels=True))
        except Exception as err:  # one image the model cannot take must not fail its whole batch
            if len(pixels) == 1:
                return [_one_line(err)]
            return [out for image in pixels for out in self._reports([image])]

    def run(self, batch: list[Item]) -> list[list[Record]]:
        from ..data.imageio import read_image
        from ..data.transforms import as_uint8_grey

        records: dict[str, list[Record]] = {}
        ready, pixels = [], []
        for item in batch:
            try:
                pixels.append(as_uint8_grey(read_image(item.source)))
                ready.append(item)
            except (OSError, ValueError) as err:
                records[item.id] = [self.failed(item, _one_line(err))]
        for item, rep in zip(ready, self._reports(pixels) if pixels else [], strict=True):
            records[item.id] = [self.failed(item, rep) if isinstance(rep, str) else
                                {"id": item.id, "image": item.source, "report": rep.text, "labels": rep.labels,
                                 "finished": rep.finished, "seconds": round(rep.seconds, 4)}]
        return [records[item.id] for item in batch]


# ---- images --------------------------------------------------------------------------------------------------------
def item_seed(seed: int, item_id: str) -> int:
    """The seed of one report's images: the first 63 bits of SHA-256 of ``"SEED:ID"`` (UTF-8), e.g.
    ``item_seed(0, "a")``; its ``n`` images are ``pipe.generate([report], n=n, seed=item_seed(seed, id))``."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def file_stem(item_id: str) -> str:
    """A file name for an id: the id itself when it is plain (letters, digits, ``_.-``, at most 100), else its
    plain characters (others as ``_``) and 8 hex digits of its SHA-256, so that distinct ids keep distinct files."""
    if _PLAIN.fullmatch(item_id):
        return item_id
    plain = re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id).strip("_.-")[:80] or "item"
    return f"{plain}-{hashlib.sha256(item_id.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


class GenerateJob:
    """`unix-cxr generate`: for each report, ``n`` images ``FOLDER/<file_stem(id)>-<k>.png`` (marked synthetic,
    `unix_cxr.infer.marking`; with ``dicom`` also ``.dcm``), recorded as ``{"id", "k", "file", "seed", "prompt",
    "seconds"}`` (``file`` relative to FOLDER), or ``{"id", "error"}``. One report per call of
    ``pipe.generate`` (its ``n`` images are batched by the pipeline's batch size), seeded by `item_seed`."""

    chunk = 1

    def __init__(self, pipe: Any, folder: Path, *, n: int = 1, seed: int = 0, steps: int | None = None,
                 cfg: float | None = None, size: int | None = None, dicom: bool = False) -> None:
        """ValueError for a `size` the model cannot draw."""
        from ..data.transforms import vae_size

        self.pipe, self.folder, self.n, self.seed, self.steps, self.cfg = pipe, folder, n, seed, steps, cfg
        self.size = pipe.image_size if size is None else vae_size(size, pipe.model.cfg)
        self.dicom = dicom

    def _written(self, record: Record) -> bool:
        name = record.get("file")
        if not isinstance(name, str) or not (self.folder / name).is_file():
            return False
        return not self.dicom or (self.folder / name).with_suffix(".dcm").is_file()

    def done(self, item: Item, records: list[Record]) -> list[Record] | None:
        from .pipeline import t2i_prompt

        seed, prompt = item_seed(self.seed, item.id), t2i_prompt(item.source or "")
        found = {r.get("k"): r for r in records
                 if r.get("seed") == seed and r.get("prompt") == prompt and self._written(r)}
        return [found[k] for k in range(self.n)] if all(k in found for k in range(self.n)) else None

    def failed(self, item: Item, error: str) -> Record:
        return {"id": item.id, "error": error}

    def _draw(self, item: Item) -> list[Record]:
        from .marking import save_synthetic_dicom, save_synthetic_png

        seed = item_seed(self.seed, item.id)
        try:
            images = self.pipe.generate([item.source], n=self.n, seed=seed, steps=self.steps, cfg=self.cfg,
                                        size=self.size)
            records = []
            for k, image in enumerate(images):
                name = f"{file_stem(item.id)}-{k}"
                marks = {"model": self.pipe.name, "prompt": image.prompt, "seed": seed}
                save_synthetic_png(self.folder / f"{name}.png", image.pixels, **marks)
                if self.dicom:
                    save_synthetic_dicom(self.folder / f"{name}.dcm", image.pixels, **marks)
                records.append({"id": item.id, "k": k, "file": f"{name}.png", "seed": seed, "prompt": image.prompt,
                                "seconds": round(image.seconds, 4)})
            return records
        except Exception as err:  # one report that cannot be drawn (or saved) must not end the batch
            return [self.failed(item, _one_line(err))]

    def run(self, batch: list[Item]) -> list[list[Record]]:
        return [self._draw(item) for item in batch]


# ---- the driver ----------------------------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    """What `run_batch` did: ``total`` input items, ``ran`` done by this run, ``resumed`` done by an earlier one,
    ``failed`` (all over the processes); ``failures`` (id, error), in input order, on process 0 only."""

    total: int
    ran: int = 0
    resumed: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _by_id(records: list[Record]) -> dict[Any, list[Record]]:
    out: dict[Any, list[Record]] = {}
    for record in records:
        out.setdefault(record.get("id"), []).append(record)
    return out


def _outcomes(items: Sequence[Item], job: Job, records: list[Record]) -> tuple[list[Record], list[tuple[str, str]]]:
    """Every item's records in input order (its latest error when it is not done), and the failures."""
    by_id = _by_id(records)
    rows: list[Record] = []
    failures = []
    for item in items:
        mine = by_id.get(item.id, [])
        got = None if item.error else job.done(item, mine)
        if got is None:
            errors = [r["error"] for r in mine if isinstance(r.get("error"), str)]
            error = item.error or (errors[-1] if errors else "no outcome recorded (did a process stop?)")
            got = [job.failed(item, error)]
            failures.append((item.id, error))
        rows += got
    return rows, failures


def _work(todo: list[Item], job: Job, part: Part | None, echo: Callable[[Record], None] | None,
          progress: bool) -> list[Record]:
    """Run `job` on `todo`, batch by batch: each batch's records go to `part` (flushed) and, those that
    succeeded, to `echo`; returns the records when there is no `part` (none otherwise)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    kept: list[Record] = []
    with logging_redirect_tqdm(), tqdm(total=len(todo), unit="item", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(todo), job.chunk):
            batch = todo[start:start + job.chunk]
            records = [r for recs in job.run(batch) for r in recs]
            for record in records:
                if "error" in record:
                    log.error("%s: %s", record["id"], record["error"])
                elif echo is not None:
                    echo(record)
            if part is None:
                kept += records
            else:
                part.write(records)
            bar.update(len(batch))
    return kept


def run_batch(items: Sequence[Item], job: Job, output: Path | None, *, ranks: Ranks | None = None,
              resume: bool = True, progress: bool = True,
              echo: Callable[[Record], None] | None = None) -> BatchSummary:
    """Run `job` on `items` into the JSONL file `output` (module doc), or, with no `output` (one process only),
    pass each record that succeeded to `echo` as it comes. Process 0 returns the failures; every process the
    counts. A progress bar (process 0) goes to stderr."""
    ranks = ranks or Ranks()
    if output is None and ranks.world_size > 1:
        raise ValueError("several processes (torchrun) need an output file to merge their parts into")
    if output is not None:
        if not resume and ranks.is_main:
            for old in part_paths(output):
                old.unlink(missing_ok=True)
        ranks.barrier()  # no process starts writing before the old parts are gone
    earlier = _by_id(read_all(output) if output is not None and resume else [])
    mine = [item for item in items[ranks.rank::ranks.world_size] if item.error is None]
    todo = [item for item in mine if job.done(item, earlier.get(item.id, [])) is None]
    if ranks.is_main:
        for item in items:
            if item.error is not None:
                log.error("%s: %s", item.where, item.error)
    part = Part(part_path(output, ranks.rank, ranks.world_size)) if output is not None else None
    try:
        records = _work(todo, job, part, echo, progress and ranks.is_main)
    except BaseException:
        if part is not None:
            log.warning("stopped: the items done so far are kept in %s; run the same command again to resume",
                        part.path)
        raise
    finally:
        if part is not None:
            part.close()
    summary = BatchSummary(len(items), ranks.sum(len(todo)), ranks.sum(len(mine) - len(todo)))
    if output is None:
        summary.failures = _outcomes(items, job, records)[1]
    else:
        ranks.barrier()  # every part is complete
        if ranks.is_main:
            rows, summary.failures = _outcomes(items, job, read_all(output, include_output=resume))
            finish(output, rows)
    summary.failed = ranks.sum(len(summary.failures))
    return summary


def log_summary(summary: BatchSummary, what: str, output: Path | str | None) -> None:
    """The end of a batch command's log: counts, where the output went, and the failures (up to `MAX_LISTED`)."""
    where = f" -> {output}" if output is not None else ""
    log.info("%s: %d of %d item(s) done, %d failed%s (%d run now, %d kept from an earlier run)", what,
             summary.total - summary.failed, summary.total, summary.failed, where, summary.ran, summary.resumed)
    if summary.failures:
        log.error("%d item(s) failed:", len(summary.failures))
        for item_id, error in summary.failures[:MAX_LISTED]:
            log.error("  %s: %s", item_id, error)
        if len(summary.failures) > MAX_LISTED:
            log.error("  ... and %d more (each has an error line in the output)", len(summary.failures) - MAX_LISTED)
