"""Test helper: a tiny training set made by the project itself: phantom radiographs and reports -> stage-1 chat
JSONL, stage-2 caption JSONL + a latent cache from a tiny random VAE, a word-level tokenizer over the reports'
vocabulary, and a two-stage recipe (und_sft, gen_pt) for the tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from conftest import randomize
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unix_cxr.config import ldm_vae_yaml, load_config


def word_tokenizer_from(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words[: vocab_size - 1])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def make_training_set(root: Path, n: int = 8, size: int = 32) -> dict[str, Path]:
    """Files for the tiny model (SigLIP 32 px, latent side <= 8): returns the paths a recipe needs."""
    import torch

    from unix_cxr.checkpoint.vae import save_vae
    from unix_cxr.data.build import build
    from unix_cxr.data.latent_cache import cache_latents, read_items
    from unix_cxr.data.phantom import write_dataset
    from unix_cxr.model.vae import LatentVAE

    cfg = load_config("tiny")
    raw = root / "phantoms"
    write_dataset(raw, n=n, seed=3, size=64, progress=False)
    for stage in (1, 2):
        build("phantom", raw, root / f"stage{stage}", stage=stage, val_fraction=0.0, test_fraction=0.0,
              progress=False)
    reports = [json.loads(line)["report"] for line in (raw / "reports.jsonl").read_text().splitlines()]
    tokenizer_dir = root / "tokenizer"
    word_tokenizer_from(reports, 300).save_pretrained(tokenizer_dir)  # ids 300-303: the tiny special tokens
    torch.manual_seed(0)
    vae_dir = root / "vae"
    vae_dir.mkdir()
    vae = randomize(LatentVAE(cfg.vae), seed=1).eval()
    save_vae(vae, vae_dir / "vae.safetensors")
    (vae_dir / "config.yaml").write_text(yaml.safe_dump(ldm_vae_yaml(cfg.vae)))
    captions = next((root / "stage2").glob("*train*.jsonl"))
    cache_latents(read_items(captions, raw), vae, root / "latents", size=size, progress=False)
    return {"chat": next((root / "stage1").glob("stage1_train*.jsonl")), "captions": captions,
            "latents": root / "latents", "tokenizer": tokenizer_dir, "vae": vae_dir, "images": raw}


def write_recipe(path: Path, files: dict[str, Path], *, steps: int = 4, micro: int = 2, global_batch: int = 4,
                 checkpoint_every: int = 2, stages: tuple[str, ...] = ("und_sft", "gen_pt")) -> Path:
    stage_defs = {
        "und_sft": {"kind": "und_sft", "data": {"groups": {"vlm_sft": {"kind": "chat", "path": str(files["chat"]),
                                                                    "image_root": str(files["images"])}}}},
        "gen_pt": {"kind": "gen_pt", "data": {"groups": {"t2i": {"kind": "caption", "path": str(files["captions"]),
                                                                 "latents": str(files["latents"]),
                                                                 "image_root": str(files["images"])}}}},
    }
    recipe = {"kind": "train", "model": "tiny", "tokenizer": str(files["tokenizer"]), "vae": str(files["vae"]),
              "seed": 7, "stages": {}}
    for name in stages:
        st = stage_defs[name]
        st.update(steps=steps, global_batch_size=global_batch, checkpoint_every=checkpoint_every,
                  optim={"lr": 1e-3, "warmup_steps": 1})
        st["data"]["micro_batch_size"] = micro
        recipe["stages"][name] = st
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
