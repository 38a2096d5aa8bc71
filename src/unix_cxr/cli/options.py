"""Options shared by the commands that run a model (`demo`, `report`, `generate`, `serve`), and the one way they
load it: `--model` (a release folder of ours or the authors', or `demo`, the shipped phantom model), `--device`
and `--dtype`, checked before any weights are read."""

from __future__ import annotations

import argparse
from typing import Any

DTYPE_CHOICES = ("auto", "float32", "bfloat16")


def add_model_options(p: argparse.ArgumentParser, default_batch: int = 4) -> None:
    p.add_argument("--model", default="demo",
                   help="a release folder (ours, or the authors' UniX folder: config.json, model.safetensors, vae/, "
                        "tokenizer files) or 'demo', the small phantom model shipped in the package (default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="weights and compute dtype (auto: bfloat16 on CUDA and on native-bf16 CPUs for bf16 "
                        "weights, else float32; docs/usage.md)")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                   help="int8: weight-only int8 for report decoding (understanding expert, lm_head and token "
                        "embeddings; the generation expert keeps its weights); int4: the expert and lm_head in "
                        "4 bits, groups of 128 (CPU only; embeddings int8) (docs/usage.md)")
    p.add_argument("--compile", action="store_true",
                   help="compile the report decoding step with torch.compile (tens of seconds once, then faster "
                        "steps; docs/usage.md)")
    p.add_argument("--no-pack", action="store_true",
                   help="keep the plain weights on CPU (by default the linear layers are held in oneDNN's packed "
                        "layout where that is faster: bf16 gives the same numbers, float32 the same to rounding; "
                        "docs/usage.md)")
    p.add_argument("--batch-size", type=int, default=default_batch, help="images or reports per model call")


def load_pipeline(args: argparse.Namespace, **settings: Any):
    """The UniXPipeline of `args.model` on `args.device` in `args.dtype` (ValueError naming a bad option)."""
    from pathlib import Path

    from ..eval.labeler import Labeler
    from ..infer.pipeline import DEMO_MODEL, UniXPipeline
    from ..utils.devices import resolve_device

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    if args.model != DEMO_MODEL and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: not a folder (give a release folder, or 'demo')")
    settings.setdefault("labeler", Labeler())
    return UniXPipeline.from_pretrained(args.model, device=device, dtype=args.dtype, batch_size=args.batch_size,
                                        quantize=args.quantize, compile_decoding=args.compile,
                                        pack=not args.no_pack, **settings)
