"""Per-expert LoRA with `peft`: adapters on the understanding expert, the generation expert or both (issue 7 item 6).

    model = apply_lora(model, LoraSettings(experts="gen", r=16, alpha=32))   # UniX stays UniX; only LoRA trains
    ... train ...
    save_adapter(model, "run/adapter")          # adapter_config.json + adapter_model.safetensors (standard peft)
    base = load_release("weights/UniX").model
    load_adapter(base, "run/adapter")           # on a fresh base model
    plain = merge_lora(base)                    # weights merged, adapter modules gone, the original state-dict keys
    rel = load_release_with_adapter("weights/UniX", "run/adapter", dtype=torch.float32)   # for inference
    merge_release("weights/UniX", "run/adapter", "weights/UniX-lora")   # = `unix-cxr lora merge`

The adapters are injected in place with peft's `inject_adapter_in_model` (no `PeftModel` wrapper): the model is
still a `UniX`, so `UniX.forward`, FSDP2's per-layer sharding and the inference engines (which call
`model.decoder`, `model.embed_text`, ... directly) run unchanged; each chosen `nn.Linear` becomes a peft
`lora.Linear` whose base weight is `<name>.base_layer.weight`. The target is one regular expression over full
module names, anchored at the decoder's layers, so SigLIP's q/k/v projections (same names) are never touched:

    decoder\\.layers\\.\\d+\\.(und|gen)\\.(q_proj|k_proj|v_proj|o_proj|mlp\\.gate_proj|mlp\\.up_proj|mlp\\.down_proj)

The files are those `PeftModel.save_pretrained` writes (keys `base_model.model.<module>.lora_A.weight`, safetensors
metadata `format: pt`, `adapter_config.json` with `inference_mode: true`), so peft itself
(`PeftModel.from_pretrained(unix_model, folder)`) reads them too. Folders are written to a temporary folder beside
the target and renamed, so a failed or killed write leaves no partial adapter or release.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.io import save_authors_weights
from ..checkpoint.release import Release, load_release
from ..checkpoint.safetensors_io import read_safetensors, state_dict_mismatch, stored_float_dtype
from ..model.unix import UniX
from ..utils.atomic import atomic_folder
from .freeze import is_generation_parameter

log = logging.getLogger(__name__)

EXPERTS = ("und", "gen", "both")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = "default"  # peft's default adapter name: the files then sit at the folder's top level
CONFIG_FILE = "adapter_config.json"  # peft's CONFIG_NAME
WEIGHTS_FILE = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
PEFT_PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained writes
MERGE_RECORD = "lora_merge.json"  # what a merged release folder was made from


@dataclass
class LoraSettings:
    """Which expert(s) get adapters and how large they are.

    experts: "und" (text / vision rows), "gen" (VAE latent rows) or "both"; r: rank; alpha: scaling numerator
    (the update is B A x * alpha / r); dropout: on the adapter input, training only; targets: the Linear layers of
    an expert to adapt (default all seven).
    """

    experts: str = "gen"
    r: int = 16
    alpha: float = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.validate()

    def validate(self) -> None:
        if self.experts not in EXPERTS:
            raise ValueError(f"lora.experts must be one of {', '.join(EXPERTS)}; got {self.experts!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora.r must be a positive integer; got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"lora.alpha must be a positive number; got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1); got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets must be distinct names among {', '.join(TARGETS)}; got "
                             f"{list(self.targets)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "lora") -> LoraSettings:
        """Settings from a recipe's mapping (e.g. its `lora:` section); an unknown key is an error naming it."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown {where} key(s) {unknown} (known: {known})")
        return cls(**dict(data))

    def target_regex(self) -> str:
        """The full module names to adapt, as the regular expression peft matches (`re.fullmatch`)."""
        experts = "und|gen" if self.experts == "both" else self.experts
        names = [f"mlp\\.{t}" if t in _MLP else t for t in self.targets]
        return rf"decoder\.layers\.\d+\.({experts})\.({'|'.join(names)})"

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=float(self.dropout),
                          target_modules=self.target_regex(), bias="none", init_lora_weights=True)


# ---- adapters on a model -----------------------------------------------------------------------------------------
def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def lora_module_names(model: nn.Module) -> list[str]:
    """Full names of the modules that carry a LoRA adapter, in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (what an optimizer of a LoRA run gets), in module order."""
    return [p for name, p in model.named_parameters() if _is_lora_parameter(name)]


def _is_lora_parameter(name: str) -> bool:
    return ".lora_" in name


def _freeze_all_but_lora(model: nn.Module, train_lora: bool) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(train_lora and _is_lora_parameter(name))


def _check_plain(model: nn.Module) -> None:
    if not isinstance(model, UniX):
        raise ValueError(f"LoRA adapters go on a UniX model, not {type(model).__name__}")
    if has_lora(model):
        raise ValueError("this model already carries a LoRA adapter (merge_lora or remove_lora it first)")


def _inject(model: UniX, config) -> None:
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except ValueError as err:  # e.g. "Target modules ... not found in the base model"
        remove_lora(model)
        raise ValueError(f"cannot place the LoRA adapter on this model: {' '.join(str(err).split())}") from None


def apply_lora(model: UniX, settings: LoraSettings) -> UniX:
    """Put fresh adapters (lora_B = 0: outputs unchanged) on the chosen expert(s) of every decoder layer, in place.

    Afterwards only the adapter parameters require grad; every other parameter is frozen. Returns `model`.
    """
    settings.validate()
    _check_plain(model)
    if settings.experts != "und" and not model.with_generation:
        raise ValueError(f"LoRA on the {settings.experts} expert(s) needs the generation expert, and this UniX was "
                         "built report-only (with_generation=False)")
    _inject(model, settings.peft_config())
    _freeze_all_but_lora(model, train_lora=True)
    n = sum(p.numel() for p in lora_parameters(model))
    log.info("LoRA r=%d alpha=%g on the %s expert(s): %d modules, %s adapter parameters trained, the rest frozen",
             settings.r, settings.alpha, settings.experts, len(lora_module_names(model)), f"{n:,}")
    return model


def _unload(model: nn.Module, merge: bool) -> nn.Module:
    """Replace every LoRA module by its base Linear (merged first when `merge`); drop the peft config attribute."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = lora_module_names(model)
    for name in names:
        target = model.get_submodule(name)
        assert isinstance(target, BaseTunerLayer)
        if merge:
            try:
                target.merge(safe_merge=True)  # safe_merge: refuses (ValueError) an update that holds NaN / inf
            except ValueError as err:
                raise ValueError(f"merging the LoRA adapter of {name}: {' '.join(str(err).split())}") from None
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, target.get_base_layer())
    if "peft_config" in model.__dict__:
        del model.__dict__["peft_config"]
    return model


def merge_lora(model: UniX) -> UniX:
    """Merge the adapter into the base weights (W += B A * alpha / r) and remove the adapter modules, in place.

    The result is a plain UniX with the state-dict keys it had before `apply_lora` / `load_adapter` (so
    `save_authors_weights` and release folders work); its parameters stay frozen (requires_grad False).
    """
    if not has_lora(model):
        raise ValueError("this model carries no LoRA adapter to merge")
    n = len(lora_module_names(model))
    _unload(model, merge=True)
    log.info("merged the LoRA adapter into %d Linear layers", n)
    return model


def remove_lora(model: UniX) -> UniX:
    """Remove the adapter modules without merging: the base model as it was before the adapter."""
    return _unload(model, merge=False)


def adapter_config(model: nn.Module):
    """The peft LoraConfig of the model's adapter (ValueError when it has none)."""
    configs = getattr(model, "peft_config", None)
    if not has_lora(model) or not configs or ADAPTER_NAME not in configs:
        raise ValueError("this model carries no LoRA adapter (apply_lora or load_adapter first)")
    return configs[ADAPTER_NAME]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors as peft names them in its files (`base_model.model.<module>.lora_A.weight`, ...)."""
    from peft import get_peft_model_state_dict

    adapter_config(model)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_adapter(model: UniX, folder: str | Path, base: str | Path | None = None) -> Path:
    """Write the model's adapter as peft does: `adapter_config.json` + `adapter_model.safetensors`, atomically.

    `base`: recorded as the config's `base_model_name_or_path` (e.g. the base release folder).
    """
    from safetensors.torch import save_file

    config = copy.deepcopy(adapter_config(model))
    state = adapter_state_dict(model)
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    if base is not None:
        config.base_model_name_or_path = str(base)
    folder = Path(folder)
    with atomic_folder(folder, "adapter folder", CONFIG_FILE) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config.save_pretrained(str(tmp), auto_mapping_dict={"base_model_class": type(model).__name__,
                                                             "parent_library": type(model).__module__})
    log.info("saved the LoRA adapter (%d tensors) to %s", len(state), folder)
    return folder


# ---- reading an adapter folder -----------------------------------------------------------------------------------
def read_adapter(folder: str | Path):
    """(peft LoraConfig, {module key without the peft prefix: tensor}) of an adapter folder; ValueError naming the
    problem (no folder, no or unreadable adapter_config.json, not LoRA, no safetensors weights, non-finite values)."""
    from peft import LoraConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"adapter {folder}: not a folder")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise ValueError(f"adapter {folder}: no {CONFIG_FILE} (not a peft adapter folder)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a JSON file ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        found = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{config_path}: not a LoRA adapter (peft_type {found!r}, expected 'LORA')")
    if not weights_path.is_file():
        other = " (adapter_model.bin is pickled and is not loaded)" if (folder / "adapter_model.bin").exists() else ""
        raise ValueError(f"adapter {folder}: no {WEIGHTS_FILE}{other}")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{config_path}: not a valid LoRA config ({' '.join(str(err).split())})") from None
    tensors = read_safetensors(weights_path)
    weights = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    bad = [k for k in weights if ".lora_" not in k]
    if bad or not weights:
        what = f"tensors that are not LoRA weights: {bad[:3]}" if bad else "no tensors"
        raise ValueError(f"{weights_path}: {what}")
    return config, weights


def _module_of(key: str) -> str:
    return key.split(".lora_", 1)[0]


def load_adapter(model: UniX, folder: str | Path, trainable: bool = False) -> UniX:
    """Put the adapter saved in `folder` on a plain (base) UniX, in place, and return it.

    Base parameters are frozen; the adapter's train only when `trainable` (to continue a LoRA run). On a
    report-only model the generation expert's adapter tensors are skipped (logged). An adapter that does not fit
    the model (other layers, other widths, another rank than its config) is a ValueError naming the tensors, and
    leaves the model as it was.
    """
    _check_plain(model)
    config, weights = read_adapter(folder)
    if not model.with_generation:
        skipped = [k for k in weights if is_generation_parameter(k)]
        if skipped:
            log.info("report-only model: skipping %d generation-expert adapter tensors of %s", len(skipped), folder)
            weights = {k: v for k, v in weights.items() if k not in skipped}
        if not weights:
            log.info("adapter %s only adapts the generation expert: the report-only model is unchanged", folder)
            return model
    modules = dict(model.named_modules())
    absent = sorted({_module_of(k) for k in weights if not isinstance(modules.get(_module_of(k)), nn.Linear)})
    if absent:
        raise ValueError(f"adapter {folder} does not fit this model: it adapts {len(absent)} Linear layer(s) the "
                         f"model lacks ({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''})")
    config = copy.deepcopy(config)
    config.inference_mode = False
    if not model.with_generation:  # exactly the modules the file holds: the und part of a "both" adapter
        config.target_modules = sorted({_module_of(k) for k in weights})
    _inject(model, config)
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    problem = state_dict_mismatch(expected, weights)
    if problem:
        remove_lora(model)
        raise ValueError(f"adapter {folder} does not fit this model: {problem}")
    dtypes = {k: v.dtype for k, v in expected.items()}
    result = set_peft_model_state_dict(model, {k: v.to(dtypes[k]) for k, v in weights.items()},
                                       adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:
        remove_lora(model)
        raise ValueError(f"adapter {folder}: tensors peft did not place: {result.unexpected_keys[:3]}")
    model.peft_config[ADAPTER_NAME].inference_mode = not trainable
    _freeze_all_but_lora(model, train_lora=trainable)
    log.info("loaded the LoRA adapter of %s onto %d Linear layers", folder, len(lora_module_names(model)))
    return model


# ---- release folders ---------------------------------------------------------------------------------------------
def load_release_with_adapter(base: str | Path, adapter: str | Path, merge: bool = True,
                              **load_release_kwargs) -> Release:
    """`load_release(base, **load_release_kwargs)` with the adapter of `adapter` on its model: merged into the
    weights (`merge=True`, the fastest for inference) or kept as separate LoRA modules.

    The result plugs into the engines as any release: `UniXPipeline(rel.model, rel.vae, rel.tokenizer)`.
    """
    read_adapter(adapter)  # a bad adapter folder fails before the (possibly large) base is loaded
    rel = load_release(base, **load_release_kwargs)
    load_adapter(rel.model, adapter)
    if merge and has_lora(rel.model):
        merge_lora(rel.model)
    rel.model.eval()
    return rel


def weights_dtype(path: str | Path) -> torch.dtype:
    """The floating dtype of a safetensors file's tensors (float32 when it holds none)."""
    return stored_float_dtype(path) or torch.float32


def merge_release(base: str | Path, adapter: str | Path, out: str | Path, **load_release_kwargs) -> Path:
    """Write a release folder at `out`: `base`'s files (config.json, unix-cxr.yaml, vae/, tokenizer, ...) with a
    model.safetensors holding base + adapter merged (computed in float32, stored in the base file's dtype), and
    `lora_merge.json` naming what it was made from. Atomic: a failed merge leaves `out` as it was."""
    from ..utils.provenance import sha256_file

    base, adapter, out = Path(base), Path(adapter), Path(out)
    config, _ = read_adapter(adapter)
    if not base.is_dir() or not (base / "model.safetensors").is_file():
        raise ValueError(f"base release {base}: not a release folder (no model.safetensors)")
    if out.resolve() == base.resolve() or out.resolve() in base.resolve().parents:
        raise ValueError(f"output {out} would replace the base release {base}; write the merged release elsewhere")
    dtype = weights_dtype(base / "model.safetensors")
    load_release_kwargs.setdefault("dtype", torch.float32)
    rel = load_release_with_adapter(base, adapter, merge=True, **load_release_kwargs)
    with atomic_folder(out, "output release", "model.safetensors") as tmp:
        for entry in sorted(base.iterdir()):
            if entry.name == "model.safetensors" or entry.name.startswith("."):
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        save_authors_weights(rel.model.to(dtype), tmp / "model.safetensors")
        record = {"base": str(base), "adapter": str(adapter),
                  "adapter_sha256": sha256_file(adapter / WEIGHTS_FILE), "adapter_config": config.to_dict(),
                  "dtype": str(dtype).removeprefix("torch.")}
        (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    log.info("wrote the merged release %s (base %s + adapter %s, %s)", out, base, adapter, record["dtype"])
    return out


__all__ = ["EXPERTS", "TARGETS", "LoraSettings", "adapter_config", "adapter_state_dict", "apply_lora",
           "has_lora", "load_adapter", "load_release_with_adapter", "lora_module_names",
           "lora_parameters", "merge_lora", "merge_release", "read_adapter", "remove_lora", "save_adapter",
           "weights_dtype"]
