"""Weight I/O of the UniX image autoencoder (`unix_cxr.model.vae.LatentVAE`): safetensors only, strictly checked.

* `load_vae(path)` reads safetensors only (ldm or diffusers layout, auto-detected) and loads strictly;
* `convert_pickled_vae` turns the authors' pickled `kl-f16d16.ckpt` into an ldm-layout safetensors file once,
  only when the caller states that the pickle is trusted;
* `save_vae` writes either layout, with the config in the file's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..config import VAEConfig, vae_config_from_ldm_yaml
from ..model.vae import LatentVAE, build_autoencoder
from .safetensors_io import (
    PICKLE_SUFFIXES,
    refuse_pickle,
    state_dict_mismatch,
    summarise_keys,
    write_safetensors_atomic,
)
from .vae_keys import convert_layout, count_levels, detect_layout, diffusers_to_ldm, ldm_to_diffusers

log = logging.getLogger(__name__)

PREFERRED_FILES = ("vae.safetensors", "kl-f16d16.safetensors")
AUTOENCODER_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
CONFIG_METADATA_KEY = "unix_cxr.vae_config"


# ---- loading --------------------------------------------------------------------------------------------------
def _resolve_file(path: Path) -> tuple[Path, Path | None]:
    """The safetensors file to read and the LDM config.yaml beside it (folders only)."""
    if path.is_dir():
        config = path / "config.yaml"
        config = config if config.is_file() else None
        for name in PREFERRED_FILES:
            if (path / name).is_file():
                return path / name, config
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0], config
        if len(found) > 1:
            raise ValueError(f"{path}: several .safetensors files and none named {' or '.join(PREFERRED_FILES)}: "
                             f"{[p.name for p in found]}")
        pickled = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled:
            refuse_pickle(pickled[0])
        raise ValueError(f"{path}: no VAE weights (*.safetensors) in this folder")
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    refuse_pickle(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file or a folder holding one")
    return path, None


def _config_from_metadata(file: Path) -> VAEConfig | None:
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if CONFIG_METADATA_KEY not in meta:
        return None
    data = json.loads(meta[CONFIG_METADATA_KEY])
    return VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], cfg: VAEConfig,
                     layout: str = "diffusers") -> None:
    """Strict comparison of a state dict with the expected one (same layout): ValueError naming the problems."""
    problem = state_dict_mismatch(expected, sd)
    if problem:
        raise ValueError(f"VAE weights do not fit the config (ch={cfg.ch}, ch_mult={tuple(cfg.ch_mult)}, "
                         f"num_res_blocks={cfg.num_res_blocks}, z_channels={cfg.z_channels}): {problem}"
                         f" (keys in {layout} naming)")


def vae_from_state_dict(sd: dict[str, torch.Tensor], cfg: VAEConfig, dtype: torch.dtype = torch.float32) -> LatentVAE:
    """Build a LatentVAE from a state dict in either layout (auto-detected), strictly."""
    layout = detect_layout(sd)
    with torch.device("meta"):
        autoencoder = build_autoencoder(cfg)
    expected = autoencoder.state_dict()
    if layout == "ldm":  # check in the file's own naming, so that messages name the keys the user has
        check_state_dict(sd, diffusers_to_ldm(expected, cfg), cfg, layout)
        sd = ldm_to_diffusers(sd, cfg)
    check_state_dict(sd, expected, cfg, "diffusers")
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    autoencoder.load_state_dict(sd, strict=True, assign=True)
    return LatentVAE(cfg, autoencoder).eval()


def load_vae(path: str | Path, cfg: VAEConfig | None = None, dtype: torch.dtype = torch.float32) -> LatentVAE:
    """Load the VAE from a .safetensors file or a folder holding one (plus an optional LDM `config.yaml`).

    Config, first found: `cfg`; the folder's `config.yaml`; the config stored by `save_vae` in the file's
    metadata; the default `VAEConfig()` (the released kl-f16). Pickled checkpoints are refused.
    """
    file, yaml_path = _resolve_file(Path(path))
    if cfg is None and yaml_path is not None:
        cfg = vae_config_from_ldm_yaml(yaml_path)
        log.info("VAE config from %s", yaml_path)
    if cfg is None:
        cfg = _config_from_metadata(file)
    if cfg is None:
        log.info("no VAE config given or found next to %s; using the default kl-f16 config", file)
        cfg = VAEConfig()
    vae = vae_from_state_dict(load_file(str(file)), cfg, dtype)
    log.info("loaded VAE from %s (%d parameters)", file, sum(p.numel() for p in vae.parameters()))
    return vae


# ---- writing ---------------------------------------------------------------------------------------------------
def save_vae(vae: LatentVAE, path: str | Path, layout: Literal["ldm", "diffusers"] = "ldm") -> Path:
    """Write the autoencoder weights as safetensors in the ldm (CompVis) or diffusers layout, with the config."""
    if layout not in ("ldm", "diffusers"):
        raise ValueError(f"layout must be 'ldm' or 'diffusers', got {layout!r}")
    sd = vae.autoencoder.state_dict()
    if layout == "ldm":
        sd = diffusers_to_ldm(sd, vae.cfg)
    metadata = {"format": "pt", "layout": layout, CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(vae.cfg))}
    out = write_safetensors_atomic(sd, Path(path), metadata)
    log.info("saved VAE (%s layout, %d tensors) to %s", layout, len(sd), out)
    return out


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        log.warning("%s does not load with weights_only=True (%s: %s); unpickling it fully because "
                    "trust_pickle is set", path, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return torch.load(path, map_location="cpu", weights_only=False)


def convert_pickled_vae(ckpt_path: str | Path, out_path: str | Path, trust_pickle: bool) -> Path:
    """Convert a pickled VAE checkpoint (e.g. the authors' kl-f16d16.ckpt) into an ldm-layout safetensors file.

    Refused unless `trust_pickle`. Loads with weights_only=True first and falls back to a full unpickle (logged)
    only if that fails. Keeps only the autoencoder tensors (drops e.g. `loss.*`); the write is atomic.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if not trust_pickle:
        raise ValueError(f"refusing to unpickle {ckpt_path}: pickled checkpoints can run arbitrary code. "
                         "Pass trust_pickle=True (CLI: --trust-pickle) only for a file from a source you trust")
    if out_path.suffix != ".safetensors":
        raise ValueError(f"output {out_path} must end in .safetensors")
    if not ckpt_path.is_file():
        raise ValueError(f"{ckpt_path}: no such file")
    obj = _torch_load(ckpt_path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TypeError(f"{ckpt_path}: expected a state dict (or {{'state_dict': ...}}), got {type(obj).__name__}")
    # a whole latent-diffusion model holds the autoencoder under `first_stage_model.`
    prefix = "first_stage_model."
    nested = not any(k.startswith(AUTOENCODER_PREFIXES) for k in obj) and any(
        k.startswith(prefix + "encoder.") for k in obj)
    kept: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in obj.items():
        name = key[len(prefix):] if nested and key.startswith(prefix) else key
        if isinstance(value, torch.Tensor) and name.startswith(AUTOENCODER_PREFIXES) and (
                not nested or key.startswith(prefix)):
            kept[name] = value
        else:
            dropped.append(key)
    if dropped:
        log.info("dropping %d non-autoencoder entries from %s: %s", len(dropped), ckpt_path, summarise_keys(dropped))
    layout = detect_layout(kept)
    if layout == "diffusers":
        kept = convert_layout(kept, count_levels(kept, layout), "diffusers")
    tensors = {k: v.detach().clone().contiguous() for k, v in kept.items()}
    out = write_safetensors_atomic(tensors, out_path, {"format": "pt", "layout": "ldm", "source": ckpt_path.name})
    log.info("wrote %d VAE tensors (ldm layout) from %s to %s", len(tensors), ckpt_path, out)
    return out


__all__ = ["check_state_dict", "convert_pickled_vae", "load_vae", "save_vae", "vae_from_state_dict"]
