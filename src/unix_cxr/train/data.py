"""A stage's data: its groups (chat / caption JSONL) as sample sources, mixed and packed by `data.loader`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import PackingConfig, UniXConfig
from ..data.loader import Group, PackedLoader
from ..data.sources import CaptionSource, ChatSource
from .parallel import Dist
from .recipe import GroupConfig, StageConfig


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


def build_loader(stage: StageConfig, cfg: UniXConfig, tokenizer, d: Dist, seed: int, *,
                 groups: Mapping[str, GroupConfig] | None = None, held_out: bool = False) -> PackedLoader:
    """The stage's training loader; with `groups` (and `held_out`) one over other files: read once, in file order,
    without caption dropout (the validation passes)."""
    from ..data.latent_cache import LatentCache

    sources = []
    for name, g in (stage.data.groups if groups is None else groups).items():
        if g.kind == "chat":
            source = ChatSource.from_jsonl(g.path, cfg, tokenizer, image_root=g.image_root, name=name, pad=g.pad)
        else:
            source = CaptionSource.from_jsonl(g.path, cfg, tokenizer, image_root=g.image_root, name=name,
                                              latents=LatentCache(g.latents),
                                              caption_dropout=0.0 if held_out else g.caption_dropout,
                                              posterior=g.posterior)
        sources.append(Group(source, g.weight))
    packing = PackingConfig(max_tokens=stage.data.max_tokens, micro_batch_size=stage.data.micro_batch_size,
                            max_tokens_per_sample=min(stage.data.max_tokens_per_sample,
                                                      cfg.decoder.max_position_embeddings))
    return PackedLoader(sources, cfg, packing, seed=seed, rank=d.rank, world_size=d.world_size,
                        shuffle=not held_out, num_epochs=1 if held_out else None)
