"""Packed, mixed, rank-sharded and exactly resumable training batches (issue 3 item 6; spec 2.3-2.4, 3.4, 5.1-5.3).

`PackedLoader` draws samples from weighted groups of `unix_cxr.data.sources` sources (spec 5.3: ``t2i_pretrain``,
``t2i_finetune``, ``vlm_sft``, weights switched per stage), packs them into one sequence with
`unix_cxr.data.packing.pack` and yields a `LoaderBatch` (the `PackedBatch` plus what went into it).

Packing (BAGEL's `PackedDataset`, with UniX's micro-batch mode), per `PackingConfig`:
  * a sample with more than `max_tokens_per_sample` tokens (BAGEL ``max_num_tokens_per_sample``) is skipped and
    counted (``stats["skipped_too_long"]``), before its pixels are read;
  * token mode: samples are appended until the sequence holds at least `expected_tokens`, never more than
    `max_tokens` (BAGEL ``max_num_tokens``). A sample that does not fit goes to an overflow buffer (at most
    `max_buffer_size`, default 50); while the sequence holds fewer than `prefer_buffer_before` tokens the next
    sample is taken from the buffer first. When the buffer is full (or a buffered sample does not fit either) the
    sequence is yielded and that sample starts the next one. (BAGEL drops it instead: a bug we do not copy.)
  * micro-batch mode (UniX, ``micro_batch_size``): a sequence is yielded once it holds that many samples; with a
    `max_tokens` as well, the buffer rules above still keep each sequence under it.

Mixing: each draw picks a group with probability weight / sum(weights) among the groups with weight > 0 that are
not exhausted; the overflow buffer does not take part (a buffered sample is used whatever its group).

Sharding: epoch e of a source is a permutation of its records (seeded by (seed, source name, e); identity with
``shuffle=False``); rank r of world_size W takes positions r, r + W, r + 2W, ... of it. The ranks' subsets are
disjoint and together cover the source once per epoch. Sources are repeated epoch after epoch (``num_epochs=None``,
as BAGEL's infinite iterators) or stop after `num_epochs`; when every source is exhausted the buffer is drained,
the last partial sequence yielded, and iteration ends.

Determinism and resume: all randomness is counter-based. The group chosen at draw k is a function of
(seed, rank, k); a sample is a function of its key (source, epoch, record index) through
`unix_cxr.data.sources.SampleRandom` (caption pick, caption dropout, posterior noise), the same on every rank and
world size. `state_dict()` therefore only needs, per source, (epoch, position), the draw counter, and the keys of
the samples waiting in the overflow buffer or already placed in the next sequence; `load_state_dict` rebuilds
those samples from their keys. Loading a state into a fresh loader built with the same sources, seed, rank and
world size continues with exactly the batches the uninterrupted loader would have yielded. The state is plain
JSON-serialisable Python (it goes into training checkpoints).

Torch DataLoader: the loader is an `IterableDataset` that yields ready packed sequences, so use
``DataLoader(loader, batch_size=None, num_workers=0)``; its state is then exactly that of the batches consumed.
Worker processes are refused, because a worker's copy of the loader advances where the main process cannot see it.
To add them: worker w of W on rank r would read shard r * W + w of world_size * W (same permutation rule), and each
batch would carry its worker's `state_dict()` so that the trainer keeps the latest state of every worker and
restores each in its worker (the DataLoader hands batches round-robin across workers, so that is deterministic too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from unix_cxr.config import PackingConfig, UniXConfig
from unix_cxr.data.packing import PackedBatch, pack
from unix_cxr.data.sources import BuiltSample, SampleRandom, SampleSource, SampleTooLong, stable_hash

log = logging.getLogger(__name__)

__all__ = ["Group", "LoaderBatch", "PackedLoader", "PackingConfig", "SampleInfo", "SampleKey"]

STATE_VERSION = 1
_MIX_STREAM = stable_hash("mix")
_PERM_STREAM = stable_hash("permutation")


@dataclass(frozen=True)
class Group:
    """A data group of the mixture (spec 5.3): one source and its sampling weight (0 switches it off)."""

    source: SampleSource
    weight: float = 1.0


@dataclass(frozen=True)
class SampleKey:
    """Where a sample comes from: enough to rebuild it."""

    source: str
    epoch: int
    index: int


@dataclass(frozen=True)
class SampleInfo:
    """What a packed sample was: its key, record id, kind ('und' / 'gen'), tokens, whether its caption was dropped."""

    key: SampleKey
    record_id: str
    kind: str
    num_tokens: int
    caption_dropped: bool


@dataclass
class LoaderBatch:
    """One packed sequence and its samples, in packing order."""

    batch: PackedBatch
    samples: list[SampleInfo]

    @property
    def num_tokens(self) -> int:
        return int(self.batch.position_ids.numel())


@dataclass
class _Item:
    key: SampleKey
    sample: BuiltSample


@dataclass
class _Cursor:
    epoch: int = 0
    position: int = 0
    exhausted: bool = False


@dataclass
class _Stats:
    batches: int = 0
    samples: int = 0
    skipped_too_long: int = 0
    failed: int = 0
    caption_dropped: int = 0
    per_source: dict[str, int] = field(default_factory=dict)


class PackedLoader(IterableDataset):
    """Weighted mixture of sample sources -> packed sequences; deterministic, rank-sharded, resumable.

    on_error: "raise" (default) stops at the first record that cannot be built (unreadable image, missing cached
    latent); "skip" logs it, counts it in ``stats["failed"]`` and goes on (the choice stays deterministic).
    """

    def __init__(self, groups: Sequence[Group], cfg: UniXConfig, packing: PackingConfig | None = None, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 num_epochs: int | None = None, on_error: Literal["raise", "skip"] = "raise") -> None:
        super().__init__()
        if not groups:
            raise ValueError("the loader needs at least one group")
        names = [g.source.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique (they key the state and the randomness), got {names}")
        if any(not np.isfinite(g.weight) or g.weight < 0 for g in groups) or not any(g.weight > 0 for g in groups):
            raise ValueError(f"group weights must be finite, >= 0 and not all 0, got {[g.weight for g in groups]}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        for g in groups:
            if g.weight > 0 and len(g.source) < world_size:
                raise ValueError(f"source {g.source.name!r} has {len(g.source)} records, fewer than world_size "
                                 f"{world_size}: some ranks would get none")
        self.groups = list(groups)
        self.cfg = cfg
        self.packing = (packing or PackingConfig()).validate(cfg)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.num_epochs, self.on_error = shuffle, num_epochs, on_error
        self._by_name = {g.source.name: i for i, g in enumerate(self.groups)}
        self._reset()

    def _reset(self) -> None:
        self._cursors = [_Cursor(exhausted=g.weight <= 0) for g in self.groups]
        self._draws = 0
        self._buffer: list[_Item] = []
        self._pending: list[_Item] = []
        self._stats = _Stats(per_source={g.source.name: 0 for g in self.groups})
        self._shard_cache: dict[tuple[int, int], np.ndarray] = {}

    # ---- sharding and drawing ---------------------------------------------------------------------------------
    def _shard(self, i: int, epoch: int) -> np.ndarray:
        """Record indices of source i that this rank reads in `epoch`, in reading order."""
        if (i, epoch) not in self._shard_cache:
            source = self.groups[i].source
            n = len(source)
            if self.shuffle:
                entropy = [self.seed, stable_hash(source.name), epoch, _PERM_STREAM]
                order = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(n)
            else:
                order = np.arange(n)
            self._shard_cache = {k: v for k, v in self._shard_cache.items() if k[0] != i}
            self._shard_cache[(i, epoch)] = order[self.rank::self.world_size]
        return self._shard_cache[(i, epoch)]

    def _next_key(self, i: int) -> SampleKey | None:
        cursor = self._cursors[i]
        shard = self._shard(i, cursor.epoch)
        if cursor.position >= len(shard):
            cursor.epoch, cursor.position = cursor.epoch + 1, 0
            if self.num_epochs is not None and cursor.epoch >= self.num_epochs:
                cursor.exhausted = True
                return None
            shard = self._shard(i, cursor.epoch)
        index = int(shard[cursor.position])
        cursor.position += 1
        return SampleKey(self.groups[i].source.name, cursor.epoch, index)

    def _pick_group(self) -> int | None:
        active = [i for i, c in enumerate(self._cursors) if not c.exhausted]
        if not active:
            return None
        weights = np.array([self.groups[i].weight for i in active], dtype=np.float64)
        u = np.random.default_rng(np.random.SeedSequence([self.seed, _MIX_STREAM, self.rank, self._draws])).random()
        self._draws += 1
        pick = int(np.searchsorted(np.cumsum(weights / weights.sum()), u, side="right"))
        return active[min(pick, len(active) - 1)]

    def _build(self, key: SampleKey) -> BuiltSample:
        source = self.groups[self._by_name[key.source]].source
        rand = SampleRandom(self.seed, stable_hash(key.source), key.epoch, key.index)
        return source.build(key.index, rand, self.packing.sample_cap)

    def _draw(self) -> _Item | None:
        """The next usable sample of the mixture, or None when every source is exhausted."""
        while True:
            i = self._pick_group()
            if i is None:
                return None
            key = self._next_key(i)
            if key is None:
                continue
            try:
                return _Item(key, self._build(key))
            except SampleTooLong as err:
                self._stats.skipped_too_long += 1
                log.debug("skipping a sample of %s: %s", key.source, err)
            except (OSError, ValueError) as err:
                record = self.groups[i].source.record_id(key.index)
                if self.on_error == "raise":
                    raise ValueError(f"source {key.source!r}, record {record!r}: {err}") from err
                self._stats.failed += 1
                log.warning("skipping record %r of %s: %s", record, key.source, err)

    # ---- packing ----------------------------------------------------------------------------------------------
    def _complete(self, seq: list[_Item], used: int) -> bool:
        p = self.packing
        if p.micro_batch_size is not None and len(seq) >= p.micro_batch_size:
            return True
        return p.yield_tokens is not None and used >= p.yield_tokens

    def next_batch(self) -> LoaderBatch | None:
        """The next packed sequence, or None when every source is exhausted (only with num_epochs)."""
        p = self.packing
        seq, self._pending = self._pending, []
        used = sum(item.sample.num_tokens for item in seq)
        while not self._complete(seq, used):
            item, from_buffer = None, False
            if self._buffer and used < p.buffer_threshold:
                item, from_buffer = self._buffer.pop(0), True
            else:
                item = self._draw()
                if item is None and self._buffer:  # sources exhausted: drain the buffer
                    item, from_buffer = self._buffer.pop(0), True
                if item is None:
                    break
            n = item.sample.num_tokens
            if p.max_tokens is not None and used + n > p.max_tokens:
                if not from_buffer and len(self._buffer) < p.max_buffer_size:
                    self._buffer.append(item)
                    continue
                self._pending = [item]  # it starts the next sequence
                break
            seq.append(item)
            used += n
        if not seq:
            return None
        return self._emit(seq)

    def _emit(self, seq: list[_Item]) -> LoaderBatch:
        batch = pack([item.sample.segments for item in seq], self.cfg)
        infos = [SampleInfo(it.key, it.sample.record_id, it.sample.kind, it.sample.num_tokens,
                            it.sample.caption_dropped) for it in seq]
        s = self._stats
        s.batches += 1
        s.samples += len(seq)
        s.caption_dropped += sum(info.caption_dropped for info in infos)
        for info in infos:
            s.per_source[info.key.source] += 1
        return LoaderBatch(batch, infos)

    # ---- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[LoaderBatch]:
        if get_worker_info() is not None:
            raise ValueError("PackedLoader runs in the main process: use DataLoader(loader, batch_size=None, "
                             "num_workers=0) (a worker's copy would advance a state the trainer cannot save)")
        while (batch := self.next_batch()) is not None:
            yield batch

    def source(self, name: str) -> SampleSource:
        """The source of group `name` (e.g. to find the record behind a sample key)."""
        return self.groups[self._by_name[name]].source

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since the start of the run (restored with the state): batches, samples, skips, failures."""
        s = self._stats
        return {"batches": s.batches, "samples": s.samples, "skipped_too_long": s.skipped_too_long,
                "failed": s.failed, "caption_dropped": s.caption_dropped, "per_source": dict(s.per_source)}

    # ---- state ------------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "shuffle": self.shuffle,
                "num_epochs": self.num_epochs,
                "sources": {g.source.name: len(g.source) for g in self.groups}}

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is, after the last batch returned: JSON-serialisable."""
        key = lambda item: [item.key.source, item.key.epoch, item.key.index]
        return {
            "version": STATE_VERSION,
            **self._identity(),
            "cursors": {g.source.name: {"epoch": c.epoch, "position": c.position, "exhausted": c.exhausted}
                        for g, c in zip(self.groups, self._cursors, strict=True)},
            "draws": self._draws,
            "buffer": [key(item) for item in self._buffer],
            "pending": [key(item) for item in self._pending],
            "stats": self.stats,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a loader with the same sources, seed, rank, world size)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        mine = self._identity()
        diff = [f"{k}: state {state.get(k)!r} vs loader {v!r}" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise ValueError("the loader state was saved by a differently built loader, so it cannot resume "
                             "exactly: " + "; ".join(diff))
        self._reset()
        for g, cursor in zip(self.groups, self._cursors, strict=True):
            c = state["cursors"][g.source.name]
            cursor.epoch, cursor.position, cursor.exhausted = int(c["epoch"]), int(c["position"]), bool(c["exhausted"])
        self._draws = int(state["draws"])
        rebuild = lambda k: _Item(SampleKey(k[0], int(k[1]), int(k[2])),
                                  self._build(SampleKey(k[0], int(k[1]), int(k[2]))))
        self._buffer = [rebuild(k) for k in state["buffer"]]
        self._pending = [rebuild(k) for k in state["pending"]]
        st = state["stats"]
        self._stats = _Stats(st["batches"], st["samples"], st["skipped_too_long"], st["failed"],
                             st["caption_dropped"], dict(st["per_source"]))

