"""Packed loader (issue 3 item 6): sample layouts, caption dropout, mixing, token budget, sharding, exact resume.

Run: pytest tests/test_loader.py

Sources use a word-level tokenizer (CRC-32 of each word) and, for generation samples, an in-memory latent store,
so that only the stage-1 tests read (tiny, test-written) images.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from unix_cxr.config import load_config
from unix_cxr.data.latent_cache import CachedLatent
from unix_cxr.data.loader import Group, LoaderBatch, PackedLoader, PackingConfig
from unix_cxr.data.packing import Latent, Text, VitImage
from unix_cxr.data.sources import (
    CaptionRecord,
    CaptionSource,
    ChatSource,
    SampleRandom,
    read_chat_jsonl,
)

CFG = load_config("tiny")
VOCAB = 290  # below the tiny config's special ids (300..303)
LATENT_SHAPE = (CFG.vae.z_channels, 4, 4)
IMAGE_TOKENS = CFG.vision.num_patches + 2
LATENT_TOKENS = 4 * 4 + 2


def tokenize(text: str) -> list[int]:
    return [zlib.crc32(w.encode()) % VOCAB for w in text.split()]


class WordTokenizer:
    """Hugging Face-style object: encode(text, add_special_tokens=...)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([CFG.tokens.bos] if add_special_tokens else []) + tokenize(text)


class MemoryLatents:
    """An in-memory latent store: a deterministic latent and log-variance per record id."""

    latent_shape = LATENT_SHAPE
    has_logvar = True

    def get(self, record_id: str) -> CachedLatent:
        gen = torch.Generator().manual_seed(zlib.crc32(record_id.encode()))
        return CachedLatent(torch.randn(LATENT_SHAPE, generator=gen), torch.full(LATENT_SHAPE, -2.0), 0.5)


def captions(n: int, prefix: str = "c", long_every: int = 0) -> list[CaptionRecord]:
    """n records with 1..6-word captions; every `long_every`-th one has 80 words."""
    out = []
    for i in range(n):
        words = 80 if long_every and i % long_every == long_every - 1 else 1 + i % 6
        out.append(CaptionRecord(f"{prefix}{i}", None, (" ".join(f"w{i}x{j}" for j in range(words)),)))
    return out


def caption_source(n: int = 60, name: str = "t2i_pretrain", **kw) -> CaptionSource:
    long_every = kw.pop("long_every", 0)
    return CaptionSource(captions(n, name[:3], long_every), CFG, tokenize, latents=MemoryLatents(), name=name, **kw)


@pytest.fixture(scope="module")
def chat_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    lines = []
    for i in range(24):
        prompt = "<image>Examine this X-ray image and describe the FINDINGS."
        answer = "FINDINGS: " + " ".join(["no acute process"] * (1 + i % 3))
        lines.append({"id": f"s{i}", "image": f"img/{i % 4}.png",
                      "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]})
    (root / "chat.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "chat.jsonl"


def mixed_loader(chat_jsonl: Path, packing: PackingConfig, **kw) -> PackedLoader:
    chat = ChatSource.from_jsonl(chat_jsonl, CFG, tokenize)
    gen = caption_source(60, long_every=kw.pop("long_every", 0))
    return PackedLoader([Group(chat, 1.0), Group(gen, 2.0)], CFG, packing, **kw)


def take(loader: PackedLoader, n: int) -> list[LoaderBatch]:
    out = []
    for _ in range(n):
        batch = loader.next_batch()
        assert batch is not None
        out.append(batch)
    return out


def assert_same_batches(a: list[LoaderBatch], b: list[LoaderBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.samples == y.samples
        for name, value in vars(x.batch).items():
            other = getattr(y.batch, name)
            if name == "layout":
                for field in ("sample_id", "split_id", "mode"):
                    assert torch.equal(getattr(value, field), getattr(other, field))
            elif value is None:
                assert other is None
            else:
                assert torch.equal(value, other), name


# ---- samples ---------------------------------------------------------------------------------------------------
def test_chat_sample_layout(chat_jsonl: Path) -> None:
    source = ChatSource.from_jsonl(chat_jsonl, CFG, WordTokenizer())  # .encode(add_special_tokens=False) is used
    sample = source.build(0, SampleRandom(0))
    vit, prompt, answer = sample.segments
    assert isinstance(vit, VitImage) and vit.pixel_values.shape == (3, CFG.vision.image_size, CFG.vision.image_size)
    assert prompt == Text(tokenize("Examine this X-ray image and describe the FINDINGS."), loss=False)
    assert answer == Text(tokenize("FINDINGS: no acute process"), loss=True)
    assert sample.num_tokens == IMAGE_TOKENS + len(prompt.ids) + 2 + len(answer.ids) + 2
    assert sample.kind == "und" and sample.record_id == "s0"

    loader = PackedLoader([Group(source)], CFG, PackingConfig(micro_batch_size=1), shuffle=False)
    batch = loader.next_batch().batch
    # spec 2.4 a: the image split at rope 0, the prompt from 1; CE predicts the answer and its EOS
    assert batch.position_ids[:IMAGE_TOKENS].eq(0).all()
    assert batch.position_ids[IMAGE_TOKENS].item() == 1
    assert batch.ce_labels.tolist() == [*answer.ids, CFG.tokens.eos]


def test_chat_formats_agree(tmp_path: Path) -> None:
    conv = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>Describe."},
                                                 {"from": "gpt", "value": "FINDINGS: x."}]}
    msgs = {"images": ["a.png"], "messages": [{"role": "user", "content": "<image>Describe."},
                                              {"role": "assistant", "content": "FINDINGS: x."}]}
    plain = {"image": "a.png", "prompt": "<image>Describe.", "answer": "FINDINGS: x."}
    untagged = {"image": "a.png", "prompt": "Describe.", "answer": "FINDINGS: x."}  # image goes first
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in (conv, msgs, plain, untagged)) + "not json\n")
    records, errors = read_chat_jsonl(path)
    assert len(records) == 4 and len(errors) == 1 and "c.jsonl:5" in errors[0]
    source = ChatSource(records, CFG, tokenize)
    plans = [source.plan(r) for r in records]
    assert all(p == plans[0] for p in plans)
    assert [kind for kind, _, _ in plans[0]] == ["image", "text", "text"]
    assert records[0].id == "a" and records[0].images == (str(tmp_path / "a.png"),)
    with pytest.raises(ValueError, match=r"c\.jsonl:5"):
        ChatSource.from_jsonl(path, CFG, tokenize)


def test_caption_dropout_rate_layout_and_determinism() -> None:
    n, p = 3000, 0.1
    source = CaptionSource(captions(n), CFG, tokenize, latents=MemoryLatents(), caption_dropout=p)
    loader = PackedLoader([Group(source)], CFG, PackingConfig(micro_batch_size=50), num_epochs=1, seed=3)
    dropped, kept, layouts_checked = set(), set(), 0
    for lb in loader:
        bounds = lb.batch.layout.sample_bounds()
        for info, (start, end) in zip(lb.samples, bounds, strict=True):
            (dropped if info.caption_dropped else kept).add(info.record_id)
            if layouts_checked < 200:  # spec 3.4: no BOS/EOS left, the image (BOI ... EOI) at rope position 0
                pos = lb.batch.position_ids[start:end]
                rows = lb.batch.text_indexes.tolist()
                first = lb.batch.text_ids[rows.index(start)].item()
                if info.caption_dropped:
                    assert end - start == LATENT_TOKENS and pos.eq(0).all() and first == CFG.tokens.start_of_image
                else:
                    assert first == CFG.tokens.bos and pos[0] == 0 and pos[-1] == info.num_tokens - LATENT_TOKENS
                layouts_checked += 1
    assert len(dropped) + len(kept) == n
    assert abs(len(dropped) / n - p) < 0.02  # binomial sd 0.0055
    assert loader.stats["caption_dropped"] == len(dropped)
    # deterministic given the seed, independent of packing; another seed drops other captions
    name = zlib.crc32(b"t2i_pretrain")
    again = {f"c{r}" for r in range(n) if source.build(r, SampleRandom(3, name, 0, r)).caption_dropped}
    other = {f"c{r}" for r in range(n) if source.build(r, SampleRandom(4, name, 0, r)).caption_dropped}
    assert again == dropped and other != dropped


def test_caption_source_samples_the_posterior() -> None:
    store = MemoryLatents()
    sampled = CaptionSource(captions(3), CFG, tokenize, latents=store, caption_dropout=0.0)
    mean = CaptionSource(captions(3), CFG, tokenize, latents=store, caption_dropout=0.0, posterior="mean")
    a, b = (s.build(1, SampleRandom(0, 1)).segments[1] for s in (sampled, sampled))
    m = mean.build(1, SampleRandom(0, 1)).segments[1]
    assert isinstance(a, Latent) and a.noised
    assert torch.equal(a.latent, b.latent)  # same key, same draw
    assert torch.equal(m.latent, store.get("c1").mean)
    std = 0.5 * torch.exp(torch.tensor(-1.0))  # scale * exp(0.5 * logvar)
    assert 0.5 * std < (a.latent - m.latent).std() < 1.5 * std


def test_caption_choice_among_several() -> None:
    record = CaptionRecord("r", None, ("one", "two words", "three little words"))
    source = CaptionSource([record], CFG, tokenize, latents=MemoryLatents(), caption_dropout=0.0)
    lengths = {len(source.build(0, SampleRandom(0, e)).segments[0].ids) for e in range(40)}
    assert lengths == {1, 2, 3}


# ---- mixing, budget, skipping ----------------------------------------------------------------------------------
def test_mixing_weights() -> None:
    groups = [Group(caption_source(50, "a"), 3.0), Group(caption_source(50, "b"), 1.0),
              Group(caption_source(50, "off"), 0.0)]
    loader = PackedLoader(groups, CFG, PackingConfig(micro_batch_size=100), seed=1)
    take(loader, 40)
    counts = loader.stats["per_source"]
    assert counts["off"] == 0
    assert abs(counts["a"] / 4000 - 0.75) < 0.03  # sd 0.007


def test_token_budget_respected_and_nothing_lost(chat_jsonl: Path) -> None:
    packing = PackingConfig(max_tokens=150, max_tokens_per_sample=150, max_buffer_size=4)
    loader = mixed_loader(chat_jsonl, packing, num_epochs=1)
    batches = list(loader)
    assert all(b.num_tokens <= 150 for b in batches)
    assert all(b.num_tokens == sum(s.num_tokens for s in b.samples) for b in batches)
    # every record of the epoch is packed exactly once: buffered or overflowing samples are never dropped
    seen = [(s.key.source, s.key.index) for b in batches for s in b.samples]
    assert len(seen) == len(set(seen)) == 24 + 60
    # sequences are full but for the last few: each was closed because the next sample did not fit
    assert np.mean([b.num_tokens for b in batches[:-2]]) > 120


def test_overlong_samples_skipped_and_counted() -> None:
    source = caption_source(60, long_every=5, caption_dropout=0.0)  # 12 captions of 80 words: 100 tokens
    loader = PackedLoader([Group(source)], CFG, PackingConfig(max_tokens=256, max_tokens_per_sample=64),
                          num_epochs=1)
    batches = list(loader)
    ids = {s.record_id for b in batches for s in b.samples}
    long_ids = {f"t2i{i}" for i in range(60) if i % 5 == 4}
    assert loader.stats["skipped_too_long"] == 12
    assert not ids & long_ids and len(ids) == 48
    assert all(s.num_tokens <= 64 for b in batches for s in b.samples)


def test_micro_batch_mode(chat_jsonl: Path) -> None:
    loader = mixed_loader(chat_jsonl, PackingConfig(max_tokens=None, micro_batch_size=5), num_epochs=1)
    sizes = [len(b.samples) for b in loader]
    assert sizes == [5] * 16 + [4]


# ---- determinism, sharding, resume -----------------------------------------------------------------------------
def test_deterministic(chat_jsonl: Path) -> None:
    packing = PackingConfig(max_tokens=160)
    a = take(mixed_loader(chat_jsonl, packing, seed=7), 6)
    b = take(mixed_loader(chat_jsonl, packing, seed=7), 6)
    c = take(mixed_loader(chat_jsonl, packing, seed=8), 6)
    assert_same_batches(a, b)
    assert [s.key for x in a for s in x.samples] != [s.key for x in c for s in x.samples]


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_disjoint_and_covering(shuffle: bool) -> None:
    world = 3
    per_rank = []
    for rank in range(world):
        loader = PackedLoader([Group(caption_source(61))], CFG, PackingConfig(micro_batch_size=4), rank=rank,
                              world_size=world, shuffle=shuffle, num_epochs=2, seed=5)
        keys = [s.key for b in loader for s in b.samples]
        per_rank.append(keys)
    for epoch in (0, 1):
        subsets = [{k.index for k in keys if k.epoch == epoch} for keys in per_rank]
        assert sum(len(s) for s in subsets) == 61 and set().union(*subsets) == set(range(61))
        assert [len(s) for s in subsets] == [21, 20, 20]
    orders = [[k.index for k in per_rank[0] if k.epoch == e] for e in (0, 1)]
    assert (orders[0] != orders[1]) == shuffle  # a new permutation each epoch


@pytest.mark.parametrize("packing", [PackingConfig(max_tokens=150, max_buffer_size=3),
                                     PackingConfig(max_tokens=140, micro_batch_size=5)], ids=["tokens", "micro"])
def test_exact_resume(chat_jsonl: Path, packing: PackingConfig) -> None:
    reference = mixed_loader(chat_jsonl, packing, seed=11, on_error="skip")
    full = take(reference, 25)

    run = mixed_loader(chat_jsonl, packing, seed=11, on_error="skip")
    states = []
    for _ in range(25):
        run.next_batch()
        states.append(json.loads(json.dumps(run.state_dict())))  # it must survive JSON (checkpoints)
    # resume from a state whose buffer or next sequence is not empty, mid-epoch
    cut = next(i for i, s in enumerate(states[:20]) if s["buffer"] or s["pending"])
    resumed = mixed_loader(chat_jsonl, packing, seed=11, on_error="skip")
    resumed.load_state_dict(states[cut])
    assert_same_batches(take(resumed, 25 - cut - 1), full[cut + 1:])
    assert resumed.stats == run.stats


def test_state_from_another_loader_is_refused(chat_jsonl: Path) -> None:
    loader = mixed_loader(chat_jsonl, PackingConfig(max_tokens=150), world_size=2, rank=1)
    take(loader, 2)
    state = loader.state_dict()
    other = mixed_loader(chat_jsonl, PackingConfig(max_tokens=150), world_size=4, rank=1)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)


def test_torch_dataloader_single_process(chat_jsonl: Path) -> None:
    packing = PackingConfig(max_tokens=150)
    direct = take(mixed_loader(chat_jsonl, packing), 4)
    loader = mixed_loader(chat_jsonl, packing)
    batches = []
    for lb in DataLoader(loader, batch_size=None, num_workers=0):
        batches.append(lb)
        if len(batches) == 4:
            break
    assert_same_batches(batches, direct)
    assert loader.state_dict()["stats"]["batches"] == 4  # the state is that of the consumed batches


def test_bad_records_raise_or_are_skipped(tmp_path: Path, chat_jsonl: Path) -> None:
    lines = chat_jsonl.read_text().splitlines()
    bad = json.loads(lines[0]) | {"id": "missing", "image": "img/nope.png"}
    path = chat_jsonl.parent / "with_missing.jsonl"
    path.write_text("\n".join([json.dumps(bad), *lines[1:6]]) + "\n")
    source = ChatSource.from_jsonl(path, CFG, tokenize)
    with pytest.raises(ValueError, match="'missing'"):
        list(PackedLoader([Group(source)], CFG, PackingConfig(micro_batch_size=2), num_epochs=1))
    loader = PackedLoader([Group(source)], CFG, PackingConfig(micro_batch_size=2), num_epochs=1, on_error="skip")
    assert sum(len(b.samples) for b in loader) == 5 and loader.stats["failed"] == 1


def test_invalid_settings() -> None:
    source = caption_source(4)
    with pytest.raises(ValueError, match=r"max_tokens_per_sample .* exceeds the decoder's max_position_embeddings"):
        limit = CFG.decoder.max_position_embeddings
        PackedLoader([Group(source)], CFG, PackingConfig(max_tokens=2 * limit, max_tokens_per_sample=limit + 1))
    with pytest.raises(ValueError, match="fewer than world_size"):
        PackedLoader([Group(source)], CFG, world_size=8)
    with pytest.raises(ValueError, match="not all 0"):
        PackedLoader([Group(source, 0.0)], CFG)
    with pytest.raises(ValueError, match="unique"):
        PackedLoader([Group(source), Group(caption_source(4))], CFG)
    with pytest.raises(ValueError, match="micro_batch_size"):
        PackingConfig(max_tokens=None).validate(CFG)


def test_batches_run_through_training_forward(chat_jsonl: Path, tiny_model) -> None:
    from unix_cxr.flow import sample_timesteps
    from unix_cxr.train.objectives import training_forward

    lb = next(b for b in take(mixed_loader(chat_jsonl, PackingConfig(max_tokens=200), seed=2), 10)
              if {s.kind for s in b.samples} == {"und", "gen"})
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(lb.batch.latent_tokens.shape, generator=gen)
    out = training_forward(tiny_model, lb.batch, noise, sample_timesteps(lb.batch.num_latent_images, 1.0, gen))
    assert out.ce.numel() == lb.batch.ce_labels.numel() > 0 and torch.isfinite(out.ce).all()
    assert out.mse.numel() > 0 and torch.isfinite(out.mse).all()
