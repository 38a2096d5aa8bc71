"""Latent cache for generation training (issue 3 item 4): encode a data set's images with the VAE once.

Layout of a cache folder::

    DIR/index.json              settings, shard table, id -> shard, failures (rewritten atomically after each shard)
    DIR/shard_00000.safetensors records 0 .. shard_size-1 of the input, in input order
    DIR/shard_00001.safetensors ...

Each shard holds, per record id, the normalised posterior mean ``scale * (mean - shift)`` under the key ``ID``
(shape (C, h, w), what `LatentVAE.encode(images)` returns) and, with ``store="moments"`` (the default), the raw
log-variance of the posterior under ``ID::logvar``. Why moments: the authors' trainer VAE-encodes every image at every
step with a *posterior sample* (BAGEL's ``vae_model.encode`` samples), so a cache of fixed latents would change the
training data. Storing mean and log-variance keeps that exact: `CachedLatent.sample` draws
``mean + scale * exp(0.5 * clamp(logvar)) * eps`` at load time, identical to
``LatentVAE.encode(sample=True, eps=eps)``.
``store="mean"`` keeps only the mean (half the size; training then sees the deterministic mean), ``store="sample"``
stores one posterior sample drawn from a generator seeded by (seed, id), deterministic and independent of batching.
``dtype`` is float32 or bfloat16 (both tensors). Ids ending in ``::logvar`` are refused.

Resumable: record i always goes to shard i // shard_size, and a shard file is written atomically only once all of
its images are encoded, then the index is rewritten atomically. On restart, shards that the index lists as done
and whose file holds exactly the listed ids are skipped; any other shard (never started, interrupted, or whose file
was lost) is encoded again. A restart with other settings, another VAE (weights fingerprint) or another input (hash
of the ids and paths) is refused unless ``overwrite=True``.

Per-image failures (missing or unreadable file, bad JSONL line, duplicate id, a latent with NaN or infinite values:
never stored) are recorded in the index with the reason and the run goes on; `unix-cxr data cache-latents` exits 1
at the end if any record failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open

from unix_cxr.checkpoint.safetensors_io import unreadable_safetensors, write_safetensors_atomic
from unix_cxr.config import UniXConfig
from unix_cxr.data.records import name_error, shown
from unix_cxr.data.sources import SampleRandom, default_record_id, read_caption_lines, stable_hash
from unix_cxr.utils.atomic import write_atomic

if TYPE_CHECKING:
    from unix_cxr.model.vae import LatentVAE

log = logging.getLogger(__name__)

__all__ = ["CACHE_DTYPES", "IMAGE_SUFFIXES", "INDEX_NAME", "LOGVAR_SUFFIX", "STORES", "CacheItem", "CacheSummary",
           "CachedLatent", "LatentCache", "cache_latents", "items_from_folder", "items_from_jsonl", "read_items",
           "vae_fingerprint"]

FORMAT = "unix-cxr-latent-cache"
VERSION = 1
INDEX_NAME = "index.json"
LOGVAR_SUFFIX = "::logvar"
STORES = ("moments", "mean", "sample")
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")
LOGVAR_RANGE = (-30.0, 20.0)  # as ldm's DiagonalGaussianDistribution (and unix_cxr.model.vae)


# ---- input -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheItem:
    """One record to encode: its id and image path, or the reason it cannot be (a bad input line)."""

    id: str
    image: str | None
    error: str | None = None


def items_from_folder(folder: str | Path) -> list[CacheItem]:
    """Every image file under `folder` (recursively, sorted); id = relative path without the suffix. A file whose
    name is not UTF-8 is a failed item (its id could not be stored), shown with its bytes escaped."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    items = []
    for p in files:
        rel = p.relative_to(folder)
        bad = name_error(rel)
        rid = default_record_id(rel.as_posix())
        items.append(CacheItem(rid, str(p)) if bad is None else CacheItem(shown(rid), shown(p), bad))
    return _unique(items)


def items_from_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[CacheItem]:
    """The lines of a caption JSONL in order (`read_caption_lines`); a bad line is a failed item named FILE:LINE.

    Several lines may name the same image with the same id (several captions): it is encoded once.
    """
    items = []
    for where, record, error in read_caption_lines(path, image_root):
        if record is None:
            items.append(CacheItem(where, None, error))
        else:
            items.append(CacheItem(record.id, record.image, None if record.image else "no 'image' in the record"))
    return _unique(items)


def _unique(items: list[CacheItem]) -> list[CacheItem]:
    """Drop repeats of (id, image); an id that names two different images is a failure from its second use."""
    seen: dict[str, str | None] = {}
    out, repeats = [], 0
    for item in items:
        if item.error is not None:
            out.append(item)
        elif item.id not in seen:
            seen[item.id] = item.image
            out.append(item)
        elif seen[item.id] == item.image:
            repeats += 1
        else:
            out.append(CacheItem(item.id, item.image, f"id {item.id!r} already names another image "
                                                      f"({seen[item.id]})"))
    if repeats:
        log.info("%d repeated record(s) name an image already listed under the same id; each image is cached once",
                 repeats)
    return out


def read_items(input_path: str | Path, image_root: str | Path | None = None) -> list[CacheItem]:
    """INPUT of `unix-cxr data cache-latents`: a folder of images or a caption JSONL."""
    input_path = Path(input_path)
    if input_path.is_dir():
        return items_from_folder(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"{input_path}: no such file or folder")
    if not input_path.is_file():  # a FIFO would block, a device never end
        raise ValueError(f"{input_path}: not a regular file or a folder")
    return items_from_jsonl(input_path, image_root)


# ---- device ------------------------------------------------------------------------------------------------------
# ---- writing -----------------------------------------------------------------------------------------------------
@dataclass
class CacheSummary:
    """What `cache_latents` did: counts, the failures (id, image, error) and where the cache is."""

    out: Path
    total: int
    encoded: int = 0  # images encoded in this run
    cached: int = 0  # ids in the cache at the end
    shards_done: int = 0  # shards encoded in this run
    shards_skipped: int = 0  # shards found complete and kept
    failed: list[dict[str, Any]] = field(default_factory=list)


def vae_fingerprint(vae: LatentVAE) -> str:
    """SHA-256 over the VAE's tensors (names, dtypes, shapes, bytes) and its latent normalisation."""
    digest = hashlib.sha256(f"{vae.scale_factor!r} {vae.shift_factor!r}".encode())
    for name, tensor in sorted(vae.autoencoder.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def _input_hash(items: Sequence[CacheItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}\0{item.image}\0{item.error is not None}\n".encode())
    return digest.hexdigest()


def _shard_complete(out: Path, entry: dict[str, Any]) -> bool:
    path = out / entry["file"]
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except (OSError, SafetensorError) as err:  # an unreadable shard is encoded again
        log.warning("%s is unreadable (%s); encoding it again", path, err)
        return False
    expected = set(entry["ids"]) | ({i + LOGVAR_SUFFIX for i in entry["ids"]} if entry["has_logvar"] else set())
    return keys == expected


def cache_latents(items: Sequence[CacheItem], vae: LatentVAE, out: str | Path, *, size: int = 256,
                  shard_size: int = 1024, dtype: str = "float32", store: str = "moments", batch_size: int = 8,
                  pad: str = "white", seed: int = 0, overwrite: bool = False, progress: bool = True,
                  on_image: Callable[[int], None] | None = None) -> CacheSummary:
    """Encode `items` with `vae` into sharded safetensors under `out`; resume an interrupted run (module doc).

    `on_image(n)` is called after each image is read, with the number read so far in this run (progress hooks;
    tests raise from it to simulate an interruption). Encoding runs on the VAE's device and dtype, under no_grad.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from unix_cxr.data.transforms import vae_size, vae_transform

    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not items:
        raise ValueError("nothing to encode: the input has no records")
    out = Path(out)
    cfg = UniXConfig(vae=vae.cfg)
    side = vae_size(size, cfg) // vae.downsample
    items = [CacheItem(it.id, it.image, f"id ends with the reserved suffix {LOGVAR_SUFFIX!r}")
             if it.id.endswith(LOGVAR_SUFFIX) and it.error is None else it for it in items]
    settings = {"size": size, "pad": pad, "store": store, "dtype": dtype, "shard_size": shard_size,
                "seed": seed if store == "sample" else None, "vae": vae_fingerprint(vae),
                "input": _input_hash(items), "num_items": len(items)}
    index = _open_index(out, settings, overwrite)
    index.update({"format": FORMAT, "version": VERSION, "settings": settings,
                  "latent_shape": [vae.cfg.z_channels, side, side], "scale_factor": vae.scale_factor,
                  "shift_factor": vae.shift_factor, "has_logvar": store == "moments"})
    index.setdefault("shards", {})
    num_shards = (len(items) + shard_size - 1) // shard_size
    summary = CacheSummary(out, len(items))
    device = next(vae.parameters()).device
    storage = CACHE_DTYPES[dtype]
    seen = [0]

    def read(item: CacheItem) -> torch.Tensor:
        try:
            return vae_transform(item.image, size, cfg, pad=pad)  # type: ignore[arg-type]
        finally:
            seen[0] += 1
            if on_image is not None:
                on_image(seen[0])

    with logging_redirect_tqdm(), tqdm(total=len(items), desc="caching latents", unit="img",
                                       disable=not progress) as bar:
        for k in range(num_shards):
            chunk = items[k * shard_size:(k + 1) * shard_size]
            name = _shard_name(k)
            entry = index["shards"].get(name)
            if entry is not None and _shard_complete(out, entry):
                summary.shards_skipped += 1
                bar.update(len(chunk))
                continue
            tensors: dict[str, torch.Tensor] = {}
            failed: list[dict[str, Any]] = [{"id": it.id, "image": it.image, "error": it.error}
                                            for it in chunk if it.error is not None]
            todo = [it for it in chunk if it.error is None]
            for start in range(0, len(todo), batch_size):
                batch_items, pixels = [], []
                for item in todo[start:start + batch_size]:
                    try:
                        pixels.append(read(item))
                        batch_items.append(item)
                    except (OSError, ValueError) as err:
                        log.error("%s (%s): %s", item.id, item.image, err)
                        failed.append({"id": item.id, "image": item.image, "error": str(err)})
                    bar.update(1)
                if not pixels:
                    continue
                with torch.no_grad():
                    moments = vae.moments(torch.stack(pixels).to(device)).float()
                mean, logvar = moments.chunk(2, dim=1)
                latents = vae.scale_factor * (mean - vae.shift_factor)
                for i, item in enumerate(batch_items):
                    if store == "sample":
                        gen = SampleRandom(seed, stable_hash(item.id)).torch_generator("posterior")
                        eps = torch.randn(latents[i].shape, generator=gen).to(device)
                        std = torch.exp(0.5 * logvar[i].clamp(*LOGVAR_RANGE))
                        record = {item.id: (latents[i] + vae.scale_factor * std * eps).to(storage)}
                    else:
                        record = {item.id: latents[i].to(storage)}
                    if store == "moments":
                        record[item.id + LOGVAR_SUFFIX] = logvar[i].to(storage)
                    problem = _non_finite(record)
                    if problem:  # never store NaN / inf: training would read it as data
                        log.error("%s (%s): %s", item.id, item.image, problem)
                        failed.append({"id": item.id, "image": item.image, "error": problem})
                        continue
                    tensors.update(record)
                    summary.encoded += 1
            ids = [it.id for it in chunk if it.id in tensors]
            write_safetensors_atomic(tensors, out / name, {"format": FORMAT, "shard": str(k), "store": store})
            order = {it.id: n for n, it in enumerate(chunk)}
            index["shards"][name] = {"file": name, "first": k * shard_size, "ids": ids,
                                     "has_logvar": store == "moments",
                                     "failed": sorted(failed, key=lambda f: order.get(f["id"], 0))}
            summary.shards_done += 1
            _finish_index(index, num_shards)
            _write_json_atomic(index, out / INDEX_NAME)
    _finish_index(index, num_shards)
    _write_json_atomic(index, out / INDEX_NAME)
    summary.failed = index["failed"]
    summary.cached = len(index["ids"])
    return summary


def _non_finite(record: dict[str, torch.Tensor]) -> str | None:
    """Why a record's tensors must not be cached (NaN or infinity in them, as stored), or None."""
    for key, tensor in record.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            what = "log-variance" if key.endswith(LOGVAR_SUFFIX) else "latent"
            return (f"the VAE gave a {what} with {int((~finite).sum())} non-finite values (NaN or infinity) of "
                    f"{tensor.numel()}; not cached (are the VAE weights finite?)")
    return None


def _open_index(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    path = out / INDEX_NAME
    if not path.is_file():
        if out.is_dir() and any(out.glob("shard_*.safetensors")):
            log.warning("%s has shard files but no %s: they are encoded again", out, INDEX_NAME)
        out.mkdir(parents=True, exist_ok=True)
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable cache index ({err}); remove it or pass overwrite") from err
    if index.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} index")
    if overwrite:
        for entry in index.get("shards", {}).values():
            (out / entry["file"]).unlink(missing_ok=True)
        path.unlink()
        log.info("overwrite: removed the previous cache in %s", out)
        return {}
    old = index.get("settings", {})
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise ValueError(f"{out} holds a cache made with other settings ({'; '.join(changed)}); use another output "
                         "folder or overwrite (--overwrite)")
    done = len(index.get("shards", {}))
    log.info("resuming the cache in %s: %d shard(s) listed as done", out, done)
    return index


def _finish_index(index: dict[str, Any], num_shards: int) -> None:
    shards = index["shards"]
    index["ids"] = {i: name for name in sorted(shards) for i in shards[name]["ids"]}
    index["failed"] = [f for name in sorted(shards) for f in shards[name]["failed"]]
    index["num_shards"] = num_shards
    index["complete"] = len(shards) == num_shards


# ---- reading -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedLatent:
    """One cached record: normalised posterior mean (C, h, w), raw log-variance (or None), the VAE scale factor."""

    mean: torch.Tensor
    logvar: torch.Tensor | None
    scale_factor: float

    def sample(self, generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """A posterior sample in normalised units: mean + scale * std * eps (= LatentVAE.encode(sample=True))."""
        if self.logvar is None:
            raise ValueError("this cache stores no log-variance (store='mean' or 'sample'): nothing to sample from")
        if eps is None:
            eps = torch.randn(self.mean.shape, generator=generator)
        std = torch.exp(0.5 * self.logvar.clamp(*LOGVAR_RANGE))
        return self.mean + self.scale_factor * std * eps.to(self.mean.dtype)


class LatentCache:
    """Read a cache folder written by `cache_latents`: `get(id)` -> CachedLatent (float32, CPU).

    Shards are opened lazily with safetensors' memory-mapped reader and kept open; the open handles are not
    pickled (a copy sent to a DataLoader worker reopens what it needs).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no latent cache index (run `unix-cxr data cache-latents` first)")
        self.index = json.loads(path.read_text(encoding="utf-8"))
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} index")
        if not self.index.get("complete"):
            log.warning("latent cache %s is incomplete (%d of %d shards); only the cached ids are available",
                        self.root, len(self.index.get("shards", {})), self.index.get("num_shards", 0))
        self._ids: dict[str, str] = self.index.get("ids", {})
        self._handles: dict[str, Any] = {}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c, h, w = self.index["latent_shape"]
        return int(c), int(h), int(w)

    @property
    def has_logvar(self) -> bool:
        return bool(self.index["has_logvar"])

    @property
    def scale_factor(self) -> float:
        return float(self.index["scale_factor"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.index["settings"])

    @property
    def failed(self) -> list[dict[str, Any]]:
        return list(self.index.get("failed", []))

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._ids

    def _handle(self, shard: str) -> Any:
        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(str(self.root / shard), framework="pt")
            except SafetensorError as err:
                raise unreadable_safetensors(self.root / shard, err) from None
        return self._handles[shard]

    def get(self, record_id: str) -> CachedLatent:
        """The cached latent of `record_id`; ValueError if it is not cached (e.g. its image failed)."""
        shard = self._ids.get(record_id)
        if shard is None:
            raise ValueError(f"record {record_id!r} is not in the latent cache {self.root}")
        f = self._handle(shard)
        try:
            mean = f.get_tensor(record_id).to(torch.float32)
            logvar = f.get_tensor(record_id + LOGVAR_SUFFIX).to(torch.float32) if self.has_logvar else None
        except SafetensorError as err:
            raise unreadable_safetensors(self.root / shard, err) from None
        return CachedLatent(mean, logvar, self.scale_factor)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state
