"""Generated samples at the trainer's validation passes (a `train.validation.Sampler`).

`unix-cxr train` gives the trainer a `PipelineSampler`: at each validation pass it runs the model being trained
through `UniXPipeline` on the first `validation.samples` held-out records of the stage, greedy reports for the
images of the chat groups and images for the captions of the caption groups (with the recipe's VAE, the same seed
every pass), and writes them into the pass's folder:

    samples/step-N/reports.jsonl     {"image": path, "report": text} per held-out image
    samples/step-N/image_K.png       drawn from caption K (marked synthetic, like every generated PNG)
    samples/step-N/captions.jsonl    {"file": "image_K.png", "caption": text}

Training and inference are sibling layers, so this lives above both and is passed in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.vae import load_vae
from ..data.sources import read_caption_jsonl, read_chat_jsonl
from ..infer.marking import save_synthetic_png
from ..infer.pipeline import UniXPipeline
from ..train.data import load_tokenizer_folder
from ..train.recipe import StageConfig
from ..utils.atomic import write_atomic

log = logging.getLogger(__name__)


class PipelineSampler:
    """Reports and images of held-out records. The tokenizer and VAE folders (the recipe's, `${output}` resolved)
    are read at the first pass: an earlier stage of the same run may write them."""

    def __init__(self, tokenizer: str | None, vae: str | None, *, steps: int = 25, seed: int = 0,
                 max_new_tokens: int = 256) -> None:
        self.tokenizer_folder, self.vae_folder = tokenizer, vae
        self.steps, self.seed, self.max_new_tokens = steps, seed, max_new_tokens
        self._tokenizer: Any = None
        self._vae = None

    def __call__(self, model: nn.Module, stage: StageConfig, folder: Path) -> dict[str, Any]:
        v = stage.validation
        images = [rec.images[0] for g in v.groups.values() if g.kind == "chat"
                  for rec in read_chat_jsonl(g.path, g.image_root)[0] if rec.images][: v.samples]
        captions = [rec.captions[0] for g in v.groups.values() if g.kind == "caption"
                    for rec in read_caption_jsonl(g.path, g.image_root)[0] if rec.captions][: v.samples]
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer_folder(self.tokenizer_folder)
        vae = self._load_vae(model) if captions else None
        pipe = UniXPipeline(model, vae, self._tokenizer, decoding={"max_new_tokens": self.max_new_tokens},
                            sampling={"num_timesteps": self.steps}, batch_size=max(1, v.samples),
                            name="training sample")
        out: dict[str, Any] = {"reports": [], "images": []}
        folder.mkdir(parents=True, exist_ok=True)
        if images:
            out["reports"] = [(path, r.text) for path, r in zip(images, pipe.report(images), strict=True)]
            write_atomic(folder / "reports.jsonl", "".join(json.dumps({"image": p, "report": t}) + "\n"
                                                           for p, t in out["reports"]))
        if captions:
            if vae is None:
                log.warning("validation samples: no images (the recipe names no VAE)")
            else:
                drawn = pipe.generate(captions, seed=self.seed)
                lines = []
                for k, (caption, image) in enumerate(zip(captions, drawn, strict=True)):
                    save_synthetic_png(folder / f"image_{k}.png", image.pixels, model="training sample",
                                       prompt=caption, seed=image.seed)
                    lines.append(json.dumps({"file": f"image_{k}.png", "caption": caption}) + "\n")
                    out["images"].append((caption, image.pixels[..., 0]))
                write_atomic(folder / "captions.jsonl", "".join(lines))
        return out

    def _load_vae(self, model: nn.Module):
        if self._vae is None and self.vae_folder and Path(self.vae_folder).is_dir():
            param = next(model.parameters())
            self._vae = load_vae(self.vae_folder, model.cfg.vae, dtype=torch.float32).to(param.device).eval()
        return self._vae


__all__ = ["PipelineSampler"]
