"""A stage's data: its groups (chat / caption JSONL) as sample sources, mixed and packed by `data.loader`."""

from __future__ import annotations

from pathlib import Path

from ..config import PackingConfig, UniXConfig
from ..data.loader import Group, PackedLoader
from ..data.sources import CaptionSource, ChatSource
from .parallel import Dist
from .recipe import StageConfig


def load_tokenizer_folder(path: str | None):
    from ..checkpoint.release import load_tokenizer

    if not path:
        raise ValueError("the recipe has no tokenizer (tokenizer=FOLDER with tokenizer.json)")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"tokenizer {folder}: no such folder")
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        raise ValueError(f"tokenizer {folder}: no tokenizer.json or tokenizer.model in this folder")
    return tokenizer


def build_loader(stage: StageConfig, cfg: UniXConfig, tokenizer, d: Dist, seed: int) -> PackedLoader:
    from ..data.latent_cache import LatentCache

    groups = []
    for name, g in stage.data.groups.items():
        if g.kind == "chat":
            source = ChatSource.from_jsonl(g.path, cfg, tokenizer, image_root=g.image_root, name=name, pad=g.pad)
        else:
            source = CaptionSource.from_jsonl(g.path, cfg, tokenizer, image_root=g.image_root, name=name,
                                              latents=LatentCache(g.latents), caption_dropout=g.caption_dropout,
                                              posterior=g.posterior)
        groups.append(Group(source, g.weight))
    packing = PackingConfig(max_tokens=stage.data.max_tokens, micro_batch_size=stage.data.micro_batch_size,
                            max_tokens_per_sample=min(stage.data.max_tokens_per_sample,
                                                      cfg.decoder.max_position_embeddings))
    return PackedLoader(groups, cfg, packing, seed=seed, rank=d.rank, world_size=d.world_size)
