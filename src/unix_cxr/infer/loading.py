"""Loading a release folder for inference: the one dtype policy's choice for it (logged once), then weight-only
quantization, the upcast mode and, on CPU, oneDNN's packed layout for the float weights where that pays
(`infer.packed`: the same numbers in bf16, the same to float rounding in float32, faster) applied while the model
is still on the meta device, so that each weight takes its final form as it is read
(`checkpoint.release.load_release(prepare=...)`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checkpoint.release import Release, load_release
from ..checkpoint.safetensors_io import stored_floats
from ..config import SpecialTokens
from ..utils.dtype_policy import DtypeChoice, choose_dtype
from .packed import pack_weights
from .quantize import quantize_decoding
from .upcast import upcast_weights

log = logging.getLogger(__name__)


def release_choice(folder: str | Path, dtype: str | torch.dtype, device: str | torch.device,
                   quantize: str = "none") -> DtypeChoice:
    """What a release folder runs in (`dtype` through `utils.dtype_policy`, given the storage dtype and size of its
    model.safetensors, read from the header), logged once with its reason."""
    stored, numel = stored_floats(Path(folder) / "model.safetensors")
    choice = choose_dtype(dtype, device, stored, fp32_bytes=None if numel is None else 4 * numel,
                          quantized=quantize != "none")
    log.info("%s runs in %s", folder, choice.describe())
    return choice


def load_for_inference(folder: str | Path, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
                       quantize: str = "none", with_generation: bool = True, tokens: SpecialTokens | None = None,
                       choice: DtypeChoice | None = None, pack: bool = True) -> Release:
    """`load_release` in the policy's dtype, with `quantize` ("none", "int8", "int4": `infer.quantize`) and, where
    the policy says so, the large weights kept in bf16 and upcast on the fly (`infer.upcast`). `choice`: one made
    already, instead of the policy's (benchmarks measure a mode the policy would not pick on their CPU). `pack`:
    pack the linear layers on CPU for oneDNN where this CPU gains from it (`infer.packed.pack_weights`; not in the
    upcast mode, whose point is bf16-held weights)."""
    choice = choice or release_choice(folder, dtype, device, quantize)

    def prepare(model) -> None:
        quantize_decoding(model, quantize)
        if choice.weights is not None:
            upcast_weights(model, choice.weights)
        if pack and choice.weights is None and torch.device(device).type == "cpu":
            pack_weights(model)

    return load_release(folder, dtype=choice.dtype, with_generation=with_generation, device=device, tokens=tokens,
                        prepare=prepare)


__all__ = ["load_for_inference", "release_choice"]
