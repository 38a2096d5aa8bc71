"""Weight I/O of the UniX image autoencoder (`unix_cxr.model.vae.LatentVAE`): safetensors only, strictly checked.

* `load_vae(path)` reads safetensors only (ldm or diffusers layout, auto-detected) and loads strictly; a file that
  is not safetensors, or a tensor holding NaN or infinity (unless `allow_non_finite`), is a ValueError naming it;
* `convert_pickled_vae` turns the authors' pickled `kl-f16d16.ckpt` into an ldm-layout safetensors file once,
  only when the caller states that the pickle is trusted, and even then only through
  `torch.load(weights_only=True)` (tensors and plain containers; no full unpickle, ever; `.pickled`);
* `save_vae` writes either layout, with the config in the file's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal

import torch

from ..config import VAEConfig, vae_config_from_ldm_yaml
from ..model.vae import LatentVAE, build_autoencoder
from ..utils.atomic import check_output_path
from .pickled import load_weights_only, require_trust
from .safetensors_io import (
    PICKLE_SUFFIXES,
    check_finite,
    open_safetensors,
    read_safetensors,
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
    with open_safetensors(file) as f:
        meta = f.metadata() or {}
    if CONFIG_METADATA_KEY not in meta:
        return None
    try:
        data = json.loads(meta[CONFIG_METADATA_KEY])
        return VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (ValueError, TypeError, AttributeError) as err:  # not JSON, not a mapping, unknown or missing fields
        raise ValueError(f"{file}: the VAE config in the file's metadata ({CONFIG_METADATA_KEY}) is not valid "
                         f"({type(err).__name__}: {' '.join(str(err).split())})") from None


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], cfg: VAEConfig,
                     layout: str = "diffusers") -> None:
    """Strict comparison of a state dict with the expected one (same layout): ValueError naming the problems."""
    problem = state_dict_mismatch(expected, sd)
    if problem:
        raise ValueError(f"VAE weights do not fit the config (ch={cfg.ch}, ch_mult={tuple(cfg.ch_mult)}, "
                         f"num_res_blocks={cfg.num_res_blocks}, z_channels={cfg.z_channels}): {problem}"
                         f" (keys in {layout} naming)")


def vae_from_state_dict(sd: dict[str, torch.Tensor], cfg: VAEConfig, dtype: torch.dtype = torch.float32,
                        allow_non_finite: bool = False) -> LatentVAE:
    """Build a LatentVAE from a state dict in either layout (auto-detected), strictly.

    A tensor holding NaN or infinity is a ValueError naming it, unless `allow_non_finite`.
    """
    check_finite(sd, "VAE state dict", allow_non_finite)
    return _build_vae(sd, cfg, dtype)


def _build_vae(sd: dict[str, torch.Tensor], cfg: VAEConfig, dtype: torch.dtype) -> LatentVAE:
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


def load_vae(path: str | Path, cfg: VAEConfig | None = None, dtype: torch.dtype = torch.float32,
             allow_non_finite: bool = False) -> LatentVAE:
    """Load the VAE from a .safetensors file or a folder holding one (plus an optional LDM `config.yaml`).

    Config, first found: `cfg`; the folder's `config.yaml`; the config stored by `save_vae` in the file's
    metadata; the default `VAEConfig()` (the released kl-f16). Pickled checkpoints are refused; so (ValueError
    naming the file) is a file that is not safetensors, weights that do not fit the config, and, unless
    `allow_non_finite`, a tensor holding NaN or infinity.
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
    sd = read_safetensors(file, allow_non_finite=allow_non_finite)
    try:
        vae = _build_vae(sd, cfg, dtype)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None
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


def convert_pickled_vae(ckpt_path: str | Path, out_path: str | Path, trust_pickle: bool,
                        allow_non_finite: bool = False) -> Path:
    """Convert a pickled VAE checkpoint (e.g. the authors' kl-f16d16.ckpt) into an ldm-layout safetensors file.

    Refused unless `trust_pickle`. Even then the file is read with `torch.load(weights_only=True)` only
    (tensors and plain containers; a file that needs more is refused, never unpickled fully). Keeps only the
    autoencoder tensors (drops e.g. `loss.*`); refuses a tensor holding NaN or infinity unless
    `allow_non_finite`; the write is atomic (an existing output is left as it was on any error).
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    require_trust(ckpt_path, trust_pickle)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"output {out_path} must end in .safetensors")
    check_output_path(out_path)
    if not ckpt_path.is_file():
        raise ValueError(f"{ckpt_path}: no such file")
    obj = load_weights_only(ckpt_path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{ckpt_path}: expected a state dict (or {{'state_dict': ...}}), got {type(obj).__name__}")
    dropped: list[str] = [repr(k) for k in obj if not isinstance(k, str)]
    obj = {k: v for k, v in obj.items() if isinstance(k, str)}
    # a whole latent-diffusion model holds the autoencoder under `first_stage_model.`
    prefix = "first_stage_model."
    nested = not any(k.startswith(AUTOENCODER_PREFIXES) for k in obj) and any(
        k.startswith(prefix + "encoder.") for k in obj)
    kept: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = key[len(prefix):] if nested and key.startswith(prefix) else key
        if isinstance(value, torch.Tensor) and name.startswith(AUTOENCODER_PREFIXES) and (
                not nested or key.startswith(prefix)):
            kept[name] = value
        else:
            dropped.append(key)
    if dropped:
        log.info("dropping %d non-autoencoder entries from %s: %s", len(dropped), ckpt_path, summarise_keys(dropped))
    if not kept:
        raise ValueError(f"{ckpt_path}: no autoencoder tensors ({', '.join(p + '*' for p in AUTOENCODER_PREFIXES)}); "
                         f"its entries: {summarise_keys(dropped)}")
    try:
        layout = detect_layout(kept)
        if layout == "diffusers":
            kept = convert_layout(kept, count_levels(kept, layout), "diffusers")
    except ValueError as err:
        raise ValueError(f"{ckpt_path}: {err}") from None
    check_finite(kept, ckpt_path, allow_non_finite)
    tensors = {k: v.detach().clone().contiguous() for k, v in kept.items()}
    out = write_safetensors_atomic(tensors, out_path, {"format": "pt", "layout": "ldm", "source": ckpt_path.name})
    log.info("wrote %d VAE tensors (ldm layout) from %s to %s", len(tensors), ckpt_path, out)
    return out


__all__ = ["check_state_dict", "convert_pickled_vae", "load_vae", "save_vae", "vae_from_state_dict"]
