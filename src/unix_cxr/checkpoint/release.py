"""Loading a UniX release folder, as the authors publish it, from a local path (no hub access).

    RELEASE/
      config.json          authors' config (Janus-style `language_config`/..., or the UniX `llm_config` form);
                           absent -> the released defaults (unix-full), as the authors' loader falls back
      model.safetensors    the UniX state dict in the authors' key layout
      vae/                 *.safetensors (ldm or diffusers keys) + config.yaml (latent-diffusion); a pickled
                           kl-f16d16.ckpt must be converted once: unix-cxr convert-vae ... --trust-pickle
      tokenizer.json, tokenizer_config.json, special_tokens_map.json   the Janus-Pro tokenizer
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import SpecialTokens, UniXConfig, load_config
from ..model.unix import UniX
from ..model.vae import LatentVAE
from .io import load_authors_weights
from .vae import load_vae

log = logging.getLogger(__name__)


@dataclass
class Release:
    cfg: UniXConfig
    model: UniX
    vae: LatentVAE | None
    tokenizer: object | None  # a transformers tokenizer, when the folder has tokenizer files


def release_config(folder: Path, tokens: SpecialTokens | None = None) -> UniXConfig:
    """The config of a release folder (`load_config(folder)`), with other special-token ids when given."""
    overrides = {f"tokens.{k}": v for k, v in dataclasses.asdict(tokens).items()} if tokens else {}
    return load_config(folder, overrides)


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in `folder` (local files only), or None when the folder has none."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers reads config.json too and warns that model type "unix" is not one of its own: true and harmless
    # for a tokenizer, so its warnings are silenced for this call only.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)


def load_release(folder: str | Path, dtype: torch.dtype = torch.bfloat16, with_generation: bool = True,
                 device: str | torch.device = "cpu", tokens: SpecialTokens | None = None,
                 allow_non_finite: bool = False, prepare: Callable[[UniX], object] | None = None) -> Release:
    """Build the model of a release folder and load its weights, VAE (when generating) and tokenizer.

    `tokens`: special-token ids, for models with another vocabulary than the released one (its files don't say).
    `prepare`: called on the model while it is still on the meta device (nothing allocated), before the weights
    are loaded into it, e.g. `infer.quantize.quantize_decoding`: its int8 layers then quantize each weight as it is
    read, and the float weights are never in memory whole. A weight file that is not safetensors, or (unless
    `allow_non_finite`) a tensor holding NaN or infinity, is a ValueError naming the file and the tensor.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{folder}: no model.safetensors")
    cfg = release_config(folder, tokens)
    with torch.device("meta"):
        model = UniX(cfg, with_generation=with_generation).to(dtype)
    if prepare is not None:
        prepare(model)
    model = model.to_empty(device=device)
    model.reset_fixed_tables()
    load_authors_weights(model, weights, allow_non_finite=allow_non_finite)
    vae = None
    if with_generation and (folder / "vae").is_dir():
        vae = load_vae(folder / "vae", cfg.vae, dtype=dtype, allow_non_finite=allow_non_finite).to(device)
    return Release(cfg, model.eval(), vae, load_tokenizer(folder))
