"""Training checkpoints with `torch.distributed.checkpoint` (DCP): sharded, so a run on N ranks resumes on M.

    DIR/<stage>/checkpoints/step-00000040/
        .metadata, __0_0.distcp, ...   model and optimizer (DCP; every rank writes only its shard)
        trainer.json                   step, scheduler, recipe-independent counters (rank 0)
        rank-00000.json ...            each rank's loader position and RNG state

A checkpoint is written into `.step-00000040.tmp/` and renamed once every rank has finished, so a kill during a
write leaves the previous checkpoint whole (a stale temporary folder is removed by the next save). The last
`keep` checkpoints are kept. The loader positions are per rank: model and optimizer reshard to any world size,
the data order resumes exactly on the same world size (another world size restarts the loader, logged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..utils.atomic import write_atomic
from .parallel import Dist

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under `folder` (temporary folders never count)."""
    if not folder.is_dir():
        return None
    done = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()
                  and (p / "trainer.json").is_file())
    return done[-1][1] if done else None


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], rank_state: dict[str, Any], d: Dist, keep: int,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint `step` (see the module doc); `extra`: more tensor state dicts (e.g. the EMA weights)."""
    final = folder / checkpoint_name(step)
    tmp = folder / f".{final.name}.tmp"
    if d.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    d.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd, **(extra or {})}, checkpoint_id=str(tmp))
    write_atomic(tmp / f"rank-{d.rank:05d}.json", json.dumps({**rank_state, "rng": _rng_state()}))
    d.barrier()
    if d.is_main:
        write_atomic(tmp / "trainer.json", json.dumps({**trainer_state, "step": step, "world_size": d.world_size},
                                                      indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(folder, keep)
    d.barrier()
    log.info("checkpoint %s", final)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> tuple[dict[str, Any],
                                                                                     dict[str, Any] | None]:
    """Restore model, optimizer and the `extra` state dicts in place; return (trainer state, this rank's state
    or None when the checkpoint was written by another world size)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.load({"model": model_sd, **(extra or {})}, checkpoint_id=str(path))  # every weight must be there
        # a parameter that has had no gradient yet has no AdamW state in the file (AdamW skips it either way)
        dcp.load({"optim": optim_sd}, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    trainer = json.loads((path / "trainer.json").read_text())
    rank_file = path / f"rank-{d.rank:05d}.json"
    if trainer.get("world_size") != d.world_size or not rank_file.is_file():
        log.warning("%s was written by %s ranks, this run has %d: model and optimizer are resharded, the data "
                    "loader starts its order again", path, trainer.get("world_size"), d.world_size)
        return trainer, None
    rank = json.loads(rank_file.read_text())
    _set_rng_state(rank.pop("rng", None))
    return trainer, rank


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it runs in one process when no process group is up: that is the intended use there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.iterdir() if _NAME.match(p.name))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state().tolist()}


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if state and "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
