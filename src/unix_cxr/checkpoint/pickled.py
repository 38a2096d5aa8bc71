"""The one place that reads a pickled checkpoint, for the one-time conversion commands only.

`unix-cxr convert-vae` (the authors' `kl-f16d16.ckpt`) and `unix-cxr convert-janus` (Janus-Pro's
`pytorch_model.bin`) turn a pickle into safetensors once; every loader reads safetensors only and refuses pickles.
Both commands go through these two functions:

* `require_trust(path, trust_pickle)`: refuse, before opening the file, unless the caller said the file is trusted;
* `load_weights_only(path)`: `torch.load(path, map_location="cpu", weights_only=True)` (tensors and plain
  containers; no full unpickle, ever), with every failure a ValueError naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_weights_only", "require_trust"]


def require_trust(path: str | Path, trust_pickle: bool) -> None:
    """ValueError unless `trust_pickle`: a pickled checkpoint is opened only when the caller vouches for it."""
    if not trust_pickle:
        raise ValueError(f"refusing to unpickle {path}: pickled checkpoints can run arbitrary code. "
                         "Pass trust_pickle=True (CLI: --trust-pickle) only for a file from a source you trust")


def load_weights_only(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, never a full unpickle.

    A file that needs anything else (a pickled class, a function) or is no PyTorch checkpoint at all is a
    ValueError naming it. The authors' kl-f16d16.ckpt loads this way (tested).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
        detail = " ".join(detail.split())
        for cut in (" Please use ", " Check the documentation ", " Please file an issue "):
            detail = detail.split(cut, 1)[0]
        if "Unsupported global" not in detail:  # random bytes, a broken pickle stream
            raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupt pickle data: {detail[:200]})"
                             ) from None
        raise ValueError(f"{path}: does not load with torch.load(weights_only=True) ({detail[:300]}); refusing "
                         "it: --trust-pickle reads tensors and plain containers only and never unpickles a file "
                         "fully (docs/weights.md)") from None
    except Exception as err:  # a truncated zip, an old format torch cannot parse, ...
        first = " ".join(str(err).split(". ")[0].split())
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first[:300]})") from None
