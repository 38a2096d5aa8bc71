"""The `phantom_data` stage of the phantom recipe: its own training data, drawn here, and a tokenizer for it.

    OUTPUT/<stage>/
        phantoms/train/     `write_dataset` with `phantom.train_seed`: images/, reports, labels, specs (JSONL)
        phantoms/val/       the same with `phantom.val_seed`: never trained on (benchmarks/phantom_quality.py)
        stage1/             `data build --stage 1` of the training phantoms: stage1_train.jsonl (chat, 20 prompts)
        stage2/             `data build --stage 2`: captions_train.jsonl (FINDINGS text -> image)
        tokenizer/          byte-level BPE learned from the training reports and the prompt templates
                            (`unix_cxr.data.tokenizer`), the model's special tokens at their config ids
        summary.json        what was drawn (findings per kind, positives per label) and the tokenizer's size

Every file is a deterministic function of the stage's settings (the phantoms are, byte for byte), so an
interrupted stage is simply drawn again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from ..config import load_config
from ..utils.atomic import write_atomic
from .parallel import Dist
from .recipe import StageConfig, TrainRecipe

log = logging.getLogger(__name__)


def prepare_phantom_data(recipe: TrainRecipe, stage: StageConfig, out: Path, d: Dist, progress: bool = True) -> None:
    """Draw the phantoms, build the stage files and train the tokenizer into `out` (rank 0; the others wait)."""
    if d.is_main:
        _prepare(recipe, stage, out, progress)
    d.barrier()


def _prepare(recipe: TrainRecipe, stage: StageConfig, out: Path, progress: bool) -> None:
    from ..data.build import build
    from ..data.phantom import write_dataset
    from ..data.tokenizer import train_bpe_tokenizer
    from ..data.writers import PROMPT_TEMPLATES

    p = stage.phantom
    cfg = load_config(recipe.model, recipe.model_overrides)
    vocab_size = p.vocab_size or cfg.decoder.vocab_size
    if vocab_size > cfg.decoder.vocab_size:
        raise ValueError(f"phantom.vocab_size {vocab_size} exceeds the model's decoder.vocab_size "
                         f"{cfg.decoder.vocab_size}")
    began = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a partial earlier attempt: everything is drawn again
    out.mkdir(parents=True)
    summary = {}
    for split, n, seed in (("train", p.train, p.train_seed), ("val", p.val, p.val_seed)):
        summary[split] = write_dataset(out / "phantoms" / split, n=n, seed=seed, size=p.size, progress=progress)
        log.info("%d %s phantoms (seed %d, %d px): %d normal", n, split, seed, p.size, summary[split]["normal"])
    for number in (1, 2):
        build("phantom", out / "phantoms" / "train", out / f"stage{number}", stage=number, seed=recipe.seed,
              val_fraction=0.0, test_fraction=0.0, progress=False)
    reports = [json.loads(line)["report"] for line in
               (out / "phantoms" / "train" / "reports.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = [t for templates in PROMPT_TEMPLATES.values() for t in templates]
    tokenizer = train_bpe_tokenizer(reports + prompts, vocab_size, cfg.tokens)
    tokenizer.save_pretrained(out / "tokenizer")
    lengths = [len(tokenizer.encode(r, add_special_tokens=False)) for r in reports]
    summary["tokenizer"] = {"size": len(tokenizer), "model_vocab_size": cfg.decoder.vocab_size,
                            "tokens_per_report_mean": sum(lengths) / len(lengths),
                            "tokens_per_report_max": max(lengths)}
    summary["seconds"] = round(time.perf_counter() - began, 1)
    write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    log.info("tokenizer: %d tokens (model vocabulary %d), %.1f tokens per report (at most %d); data in %.0f s",
             len(tokenizer), cfg.decoder.vocab_size, summary["tokenizer"]["tokens_per_report_mean"], max(lengths),
             summary["seconds"])


__all__ = ["prepare_phantom_data"]
