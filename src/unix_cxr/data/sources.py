"""Training sample sources for the packed loader (spec 2.4, 3.4, 6.2): one record -> one list of packing segments.

* `ChatSource` (stage 1, understanding): the stage-1 chat JSONL. A record is an image and a conversation; it becomes
  ``[VitImage, Text(prompt), Text(answer, loss=True)]`` (spec 2.4 a). Turns are split as BAGEL's
  `SftJSONLIterableDataset.change_format` does: a human turn is cut at each ``<image>`` tag, every non-blank piece
  is ``.strip()``-ed and becomes a text segment without loss, an image segment goes where the tag was; a gpt turn
  is one text segment with loss. A record without any ``<image>`` tag gets its images in front.
* `CaptionSource` (stages 2-3, generation): an image-caption set. A record becomes
  ``[Text(caption), Latent(latent, noised=True)]`` (spec 2.4 b); with probability `caption_dropout` (0.1, spec 3.4)
  the caption split is removed entirely (no BOS/EOS either), so the image gets RoPE position 0, the layout of the
  unconditional CFG branch at inference. Latents come from a latent cache (`unix_cxr.data.latent_cache`) or from a
  VAE applied on the fly. With ``posterior="sample"`` (default, as the authors' trainer, which VAE-encodes every
  step with a posterior sample) the latent is mean + std * eps; ``"mean"`` takes the posterior mean.

Accepted line formats. Chat JSONL: ``{"image": PATH | [PATHS], "conversations": [{"from": "human", "value":
"<image>PROMPT"}, {"from": "gpt", "value": "FINDINGS: ..."}]}`` (the authors' training format),
``{"images": [...], "messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` (their eval format) or
``{"image": PATH, "prompt": ..., "answer": ...}``. Caption JSONL: ``{"id"?: ..., "image": PATH, "caption": TEXT}``;
``"captions"`` may be a list or a dict of captions (the authors' parquet rows), one is picked at random per visit.
Relative image paths are resolved against `image_root` (default: the JSONL file's folder). A record without an
``"id"`` is named by its image path without the suffix (`default_record_id`), the same rule the latent cache uses.

Tokenisation: any callable ``tokenize(text) -> list[int]``, or a tokenizer object with ``encode(text,
add_special_tokens=False)`` (Hugging Face style; spec 2.4: training tokenises without special tokens).

Randomness: every random choice for a sample (caption pick, caption dropout, posterior noise) is a pure function of
``(seed, source name, epoch, record index)`` through `SampleRandom`, so a sample can be rebuilt from its key alone;
the loader's exact resume relies on it, and the choices do not depend on the rank or the number of ranks.
"""

from __future__ import annotations

import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from unix_cxr.config import UniXConfig
from unix_cxr.data.packing import Latent, Segment, Text, VitImage, image_rows, text_rows
from unix_cxr.data.records import iter_jsonl_lines

if TYPE_CHECKING:
    from unix_cxr.model.vae import LatentVAE

log = logging.getLogger(__name__)

__all__ = [
    "BuiltSample", "CaptionRecord", "CaptionSource", "ChatRecord", "ChatSource", "LatentStore", "SampleRandom",
    "SampleSource", "SampleTooLong", "Segment", "as_tokenize", "default_record_id", "read_caption_jsonl",
    "read_caption_lines", "read_chat_jsonl", "stable_hash",
]

Tokenize = Callable[[str], list[int]]
IMAGE_TAG = "<image>"
Posterior = Literal["sample", "mean"]


# ---- small helpers ------------------------------------------------------------------------------------------------
def stable_hash(text: str) -> int:
    """CRC-32 of the UTF-8 text: a process-independent integer (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


class SampleRandom:
    """Counter-based randomness for one sample: each named stream is seeded from (entropy..., hash(stream)).

    Streams are independent of each other and of the order in which they are used, so adding a new random choice
    never changes the existing ones.
    """

    def __init__(self, *entropy: int) -> None:
        if any(int(e) < 0 for e in entropy):
            raise ValueError(f"SampleRandom entropy must be non-negative integers, got {entropy}")
        self.entropy = tuple(int(e) for e in entropy)

    def _seq(self, stream: str) -> np.random.SeedSequence:
        return np.random.SeedSequence([*self.entropy, stable_hash(stream)])

    def uniform(self, stream: str) -> float:
        """One float in [0, 1)."""
        return float(np.random.default_rng(self._seq(stream)).random())

    def integer(self, stream: str, high: int) -> int:
        """One integer in [0, high)."""
        return int(np.random.default_rng(self._seq(stream)).integers(high))

    def torch_generator(self, stream: str) -> torch.Generator:
        """A CPU torch.Generator seeded from the stream (63 bits)."""
        seed = int(self._seq(stream).generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)
        return torch.Generator().manual_seed(seed)


def as_tokenize(tokenizer: Any) -> Tokenize:
    """`tokenizer.encode(text, add_special_tokens=False)` if it has `encode`, else the callable itself."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return lambda text: [int(t) for t in encode(text, add_special_tokens=False)]
    if callable(tokenizer):
        return lambda text: [int(t) for t in tokenizer(text)]
    raise TypeError(f"tokenizer must be callable (text -> ids) or have .encode(), got {type(tokenizer).__name__}")


def default_record_id(image: str) -> str:
    """The id of a record that has none: its image path as written, POSIX separators, without the suffix."""
    path = PurePosixPath(image.replace("\\", "/"))
    return path.with_suffix("").as_posix() if path.suffix else path.as_posix()


def _resolve(image: str, root: Path) -> str:
    path = Path(image)
    return str(path if path.is_absolute() else root / path)


def _record_id(obj: dict[str, Any], image: str | None, where: str) -> str:
    if "id" in obj:
        if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
            raise ValueError(f"'id' must be a string or an integer, got {type(obj['id']).__name__}")
        return str(obj["id"])
    return default_record_id(image) if image else where


# ---- records ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatRecord:
    """One stage-1 record: image paths (resolved) and the conversation as (role, text), role 'human' or 'gpt'."""

    id: str
    images: tuple[str, ...]
    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CaptionRecord:
    """One image-caption record: the image path (resolved; None if the set is latent-only) and its captions."""

    id: str
    image: str | None
    captions: tuple[str, ...]


_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _parse_chat(obj: dict[str, Any], root: Path, where: str) -> ChatRecord:
    images = obj.get("images", obj.get("image"))
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        raise ValueError("needs 'image' (a path) or 'images' (a list of paths)")
    if "conversations" in obj or "messages" in obj:
        key, role_key, text_key = (("conversations", "from", "value") if "conversations" in obj
                                   else ("messages", "role", "content"))
        turns_in = obj[key]
        if not isinstance(turns_in, list) or not turns_in:
            raise ValueError(f"'{key}' must be a non-empty list")
        turns = []
        for i, turn in enumerate(turns_in):
            ok = isinstance(turn, dict) and turn.get(role_key) in _ROLES and isinstance(turn.get(text_key), str)
            if not ok:
                raise ValueError(f"'{key}'[{i}] must be {{'{role_key}': one of {sorted(_ROLES)}, '{text_key}': text}}")
            turns.append((_ROLES[turn[role_key]], turn[text_key]))
    elif isinstance(obj.get("prompt"), str) and isinstance(obj.get("answer"), str):
        turns = [("human", obj["prompt"]), ("gpt", obj["answer"])]
    else:
        raise ValueError("needs 'conversations', 'messages' or 'prompt' + 'answer'")
    if not any(role == "gpt" for role, _ in turns):
        raise ValueError("the conversation has no answer (gpt / assistant turn)")
    return ChatRecord(_record_id(obj, images[0], where), tuple(_resolve(p, root) for p in images), tuple(turns))


def _parse_caption(obj: dict[str, Any], root: Path, where: str) -> CaptionRecord:
    image = obj.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise ValueError("'image' must be a non-empty path string")
    captions: Any = obj.get("captions", obj.get("caption"))
    if isinstance(captions, str):
        captions = [captions]
    elif isinstance(captions, dict):
        captions = list(captions.values())
    elif captions is None:
        captions = []
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError("'caption' must be a string ('captions': a list or dict of strings)")
    if image is None and "id" not in obj:
        raise ValueError("needs 'image' or 'id'")
    return CaptionRecord(_record_id(obj, image, where), _resolve(image, root) if image else None, tuple(captions))


def _parse_lines(path: str | Path, image_root: str | Path | None,
                 parse: Callable[..., Any]) -> list[tuple[str, Any, str | None]]:
    """(where, record or None, error or None) for every non-blank line, in file order.

    Ids need not be unique (one image may come with several prompts or captions); the latent cache, which keys
    latents by id, checks that one id always names one image.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    out: list[tuple[str, Any, str | None]] = []
    for line in iter_jsonl_lines(path):
        where, record, error = line.where, None, line.error
        if error is None and not isinstance(line.obj, dict):
            error = f"expected a JSON object, got {type(line.obj).__name__}"
        elif error is None:
            try:
                record = parse(line.obj, root, where)
            except ValueError as err:
                error = str(err)
        out.append((where, record, error))
    return out


def read_caption_lines(path: str | Path,
                       image_root: str | Path | None = None) -> list[tuple[str, CaptionRecord | None, str | None]]:
    """The lines of a caption JSONL in order: (FILE:LINE, record or None, error or None)."""
    return _parse_lines(path, image_root, _parse_caption)


def _split(lines: list[tuple[str, Any, str | None]]) -> tuple[list, list[str]]:
    return [r for _, r, e in lines if e is None], [f"{w}: {e}" for w, _, e in lines if e is not None]


def read_chat_jsonl(path: str | Path, image_root: str | Path | None = None) -> tuple[list[ChatRecord], list[str]]:
    """Parse a stage-1 chat JSONL: (records, one error string per bad line)."""
    return _split(_parse_lines(path, image_root, _parse_chat))


def read_caption_jsonl(path: str | Path,
                       image_root: str | Path | None = None) -> tuple[list[CaptionRecord], list[str]]:
    """Parse a caption JSONL: (records, one error string per bad line). Captions may be empty here."""
    return _split(read_caption_lines(path, image_root))


def _raise_errors(path: str | Path, errors: list[str]) -> None:
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"{path}: {len(errors)} bad line(s): " + "; ".join(errors[:5]) + more)


# ---- sources ------------------------------------------------------------------------------------------------------
class SampleTooLong(Exception):
    """Raised by `SampleSource.build` before any pixel is read when the sample exceeds the token cap."""

    def __init__(self, record_id: str, num_tokens: int, cap: int) -> None:
        super().__init__(f"record {record_id!r}: {num_tokens} tokens > cap {cap}")
        self.record_id, self.num_tokens, self.cap = record_id, num_tokens, cap


@dataclass(frozen=True)
class BuiltSample:
    """A record turned into packing segments, with its token count (markers included)."""

    segments: list[Segment]
    num_tokens: int
    record_id: str
    kind: str  # "und" (understanding) or "gen" (generation)
    caption_dropped: bool = False


class SampleSource(ABC):
    """An indexable set of records (each with an `id`) that builds one sample per (index, randomness).

    Subclasses set `read_jsonl(path, image_root) -> (records, errors)` for `from_jsonl`.
    """

    name: str
    kind: str
    records: list[Any]
    read_jsonl: Callable[..., tuple[list[Any], list[str]]]

    @classmethod
    def from_jsonl(cls, path: str | Path, cfg: UniXConfig, tokenizer: Any, *, image_root: str | Path | None = None,
                   **kwargs: Any) -> SampleSource:
        """Read the source's JSONL; any bad line is a ValueError naming the lines (a training set must be clean)."""
        records, errors = cls.read_jsonl(path, image_root)
        _raise_errors(path, errors)
        return cls(records, cfg, tokenizer, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def record_id(self, index: int) -> str:
        return self.records[index].id

    @abstractmethod
    def build(self, index: int, rand: SampleRandom, token_cap: int | None = None) -> BuiltSample:
        """The sample of record `index`; SampleTooLong (before reading pixels) if it has more than `token_cap`."""


def _check_cap(record_id: str, num_tokens: int, cap: int | None) -> None:
    if cap is not None and num_tokens > cap:
        raise SampleTooLong(record_id, num_tokens, cap)


class ChatSource(SampleSource):
    """Stage-1 understanding samples: SigLIP images + prompt text (no loss) + answer text (CE loss)."""

    kind = "und"
    read_jsonl = staticmethod(read_chat_jsonl)

    def __init__(self, records: Sequence[ChatRecord], cfg: UniXConfig, tokenizer: Any, *, name: str = "vlm_sft",
                 pad: Literal["white", "black", "squash"] = "white") -> None:
        if not records:
            raise ValueError(f"source {name!r}: no records")
        self.records, self.cfg, self.name, self.pad = list(records), cfg, name, pad
        self.tokenize = as_tokenize(tokenizer)

    def plan(self, record: ChatRecord) -> list[tuple[str, Any, bool]]:
        """The segment plan ('text', ids, loss) / ('image', image index, False), BAGEL's change_format."""
        plan: list[tuple[str, Any, bool]] = []
        tagged = any(role == "human" and IMAGE_TAG in text for role, text in record.turns)
        if not tagged:
            plan += [("image", i, False) for i in range(len(record.images))]
        used = 0
        for role, text in record.turns:
            if role == "gpt":
                plan.append(("text", self.tokenize(text), True))
                continue
            pieces = text.split(IMAGE_TAG)
            for i, piece in enumerate(pieces):
                if piece.strip():
                    plan.append(("text", self.tokenize(piece.strip()), False))
                if i < len(pieces) - 1:
                    if used >= len(record.images):
                        raise ValueError(f"record {record.id!r}: more {IMAGE_TAG} tags than images "
                                         f"({len(record.images)})")
                    plan.append(("image", used, False))
                    used += 1
        if tagged and used != len(record.images):
            raise ValueError(f"record {record.id!r}: {len(record.images)} images but {used} {IMAGE_TAG} tags")
        return plan

    def build(self, index: int, rand: SampleRandom, token_cap: int | None = None) -> BuiltSample:
        from unix_cxr.data.transforms import siglip_transform

        record = self.records[index]
        plan = self.plan(record)
        vit_rows = image_rows(self.cfg.vision.num_patches)
        num_tokens = sum(vit_rows if kind == "image" else text_rows(len(value)) for kind, value, _ in plan)
        _check_cap(record.id, num_tokens, token_cap)
        segments: list[Segment] = []
        for kind, value, loss in plan:
            if kind == "image":
                segments.append(VitImage(siglip_transform(record.images[value], self.cfg.vision, pad=self.pad)))
            else:
                segments.append(Text(list(value), loss=loss))
        return BuiltSample(segments, num_tokens, record.id, self.kind)


class LatentStore(Protocol):
    """What CaptionSource needs from a latent cache (`unix_cxr.data.latent_cache.LatentCache` is one)."""

    @property
    def latent_shape(self) -> tuple[int, int, int]: ...

    @property
    def has_logvar(self) -> bool: ...

    def get(self, record_id: str) -> Any: ...  # -> CachedLatent (mean, optional logvar, .sample(generator))


class CaptionSource(SampleSource):
    """Stage 2-3 generation samples: caption text (dropped with p = caption_dropout) + a noised latent image."""

    kind = "gen"
    read_jsonl = staticmethod(read_caption_jsonl)

    def __init__(self, records: Sequence[CaptionRecord], cfg: UniXConfig, tokenizer: Any, *,
                 latents: LatentStore | None = None, vae: LatentVAE | None = None, image_size: int | None = None,
                 pad: Literal["white", "black", "crop", "squash"] = "white", caption_dropout: float = 0.1,
                 posterior: Posterior = "sample", name: str = "t2i_pretrain") -> None:
        if not records:
            raise ValueError(f"source {name!r}: no records")
        if (latents is None) == (vae is None):
            raise ValueError("give exactly one of `latents` (a latent cache) or `vae` (encode on the fly)")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must lie in [0, 1], got {caption_dropout}")
        if posterior not in ("sample", "mean"):
            raise ValueError(f"posterior must be 'sample' or 'mean', got {posterior!r}")
        empty = [r.id for r in records if not r.captions]
        if empty:
            raise ValueError(f"source {name!r}: {len(empty)} record(s) without a caption, e.g. {empty[:3]}")
        if vae is not None and any(r.image is None for r in records):
            raise ValueError(f"source {name!r}: encoding with a VAE needs an 'image' in every record")
        self.records, self.cfg, self.name = list(records), cfg, name
        self.tokenize = as_tokenize(tokenizer)
        self.latents, self.vae, self.pad = latents, vae, pad
        self.caption_dropout, self.posterior = float(caption_dropout), posterior
        if vae is not None:
            from unix_cxr.data.transforms import vae_size

            self.image_size = vae_size(image_size, cfg)
            side = self.image_size // vae.downsample
            self.latent_shape = (vae.cfg.z_channels, side, side)
        else:
            if image_size is not None:
                log.warning("source %r: image_size=%s is not applied: latents come from the cache", name, image_size)
            self.latent_shape = tuple(latents.latent_shape)
            if posterior == "sample" and not latents.has_logvar:
                log.warning("source %r: posterior='sample' is not applied: the latent cache holds no log-variance, "
                            "the stored latents are used as they are", name)
        if max(self.latent_shape[1:]) > cfg.max_latent_size:
            raise ValueError(f"source {name!r}: latent grid {self.latent_shape[1:]} exceeds max_latent_size "
                             f"{cfg.max_latent_size}")

    def build(self, index: int, rand: SampleRandom, token_cap: int | None = None) -> BuiltSample:
        record = self.records[index]
        caption = record.captions[rand.integer("caption", len(record.captions)) if len(record.captions) > 1 else 0]
        dropped = rand.uniform("caption_dropout") < self.caption_dropout
        ids = [] if dropped else self.tokenize(caption)
        _, h, w = self.latent_shape
        num_tokens = image_rows(h * w) + (0 if dropped else text_rows(len(ids)))
        _check_cap(record.id, num_tokens, token_cap)
        latent = self._latent(record, rand)
        segments: list[Segment] = [] if dropped else [Text(ids)]
        segments.append(Latent(latent, noised=True))
        return BuiltSample(segments, num_tokens, record.id, self.kind, caption_dropped=dropped)

    def _latent(self, record: CaptionRecord, rand: SampleRandom) -> torch.Tensor:
        sample = self.posterior == "sample"
        if self.latents is not None:
            cached = self.latents.get(record.id)
            if sample and cached.logvar is not None:
                latent = cached.sample(rand.torch_generator("posterior"))
            else:
                latent = cached.mean
        else:
            from unix_cxr.data.transforms import vae_transform

            pixels = vae_transform(record.image, self.image_size, self.cfg, pad=self.pad)
            device = next(self.vae.parameters()).device
            eps = torch.randn(self.latent_shape, generator=rand.torch_generator("posterior"))[None] if sample else None
            with torch.no_grad():
                latent = self.vae.encode(pixels[None].to(device), sample=sample, eps=eps)[0]
        latent = latent.detach().to("cpu", torch.float32)
        if tuple(latent.shape) != self.latent_shape:
            raise ValueError(f"record {record.id!r}: latent shape {tuple(latent.shape)}, expected {self.latent_shape}")
        return latent
