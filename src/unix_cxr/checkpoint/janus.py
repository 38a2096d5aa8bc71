"""Starting UniX from a local Janus-Pro folder (spec 1.2-1.4, 5.2): the weights stage 1 starts from.

    JANUS-PRO-1B/                   deepseek-ai/Janus-Pro-1B, downloaded by you (nothing here downloads)
      config.json                   Janus-style: language_config, vision_config, aligner_config, gen_*_config
      pytorch_model.bin             the weights as a pickle: convert once, unix-cxr convert-janus FOLDER --trust-pickle
      model.safetensors             what the conversion writes (or model.safetensors.index.json and its shards)
      tokenizer.json, tokenizer_config.json, special_tokens_map.json, processor configs   the Janus-Pro tokenizer

What goes where (`load_janus_init`; key names declared here once, the rest is `keymap` and `vision_keys`):

    language_model.model.layers.{i}.*          decoder.layers.{i}.und.*        the understanding expert
    language_model.model.embed_tokens / norm   decoder.embed_tokens / decoder.norm
    language_model.lm_head                     lm_head
    vision_model.vision_tower.* (timm SigLIP)  vision.tower.* (transformers; fused qkv split)
    aligner.layers.{0,2}.*                     vision.connector.fc{1,2}.*
    gen_vision_model.*, gen_aligner.*, gen_head.*, gen_embed.*   Janus's own VQ image generation: not read

Janus's LLM is LLaMA-style, with no q/k/v bias and no q/k-norm: those start at 0 and 1, set explicitly. Then, with
`copy_to_gen`, the generation expert becomes a copy of the understanding expert (`copy_und_to_gen`, BAGEL's
`init_moe()`), as one logged step. What Janus has no counterpart for (time_embedder, vae2llm, llm2vae, the fixed
sin-cos tables) keeps the model's own initial values. The `unix-full` preset has Janus-Pro-1B's dimensions.

`is_janus_folder(path)` tells a Janus-Pro folder (weights with `aligner.*` keys) from a UniX release folder
(whose config.json is Janus-style too, but whose weights name the connector `connector.*`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import DecoderConfig
from ..model.unix import UniX
from ..utils.atomic import check_output_path
from .keymap import from_authors, llm_key_to_authors, to_authors
from .pickled import load_weights_only, require_trust
from .safetensors_io import (
    PICKLE_SUFFIXES,
    check_finite,
    open_safetensors,
    read_safetensors,
    state_dict_mismatch,
    summarise_keys,
    write_safetensors_atomic,
)

log = logging.getLogger(__name__)

__all__ = [
    "JanusInit",
    "convert_pickled_janus",
    "copy_und_to_gen",
    "from_janus",
    "is_janus_folder",
    "janus_expected_shapes",
    "load_janus_init",
    "to_janus",
]

# ---- the files of a Janus-Pro folder ---------------------------------------------------------------------------
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED = "pytorch_model.bin"
PICKLED_INDEX = "pytorch_model.bin.index.json"

# ---- Janus's key names -------------------------------------------------------------------------------------------
JANUS_LLM = "language_model."  # the same names as UniX files for the understanding side (keymap)
JANUS_TOWER = "vision_model.vision_tower."  # UniX files: vit_model.vision_tower.
JANUS_ALIGNER = "aligner."  # UniX files: connector.
JANUS_GENERATION = ("gen_vision_model.", "gen_aligner.", "gen_head.", "gen_embed.")  # Janus's VQ generation
_UNIX_TOWER, _UNIX_CONNECTOR = "vit_model.vision_tower.", "connector."  # what keymap writes for those two parts
_JANUS_POOL = JANUS_TOWER + "attn_pool."  # SigLIP's attention-pool head: saved, used by no forward path

# ---- our tensors that Janus provides, and those UniX adds to its LLM ---------------------------------------------
_FROM_JANUS = ("decoder.embed_tokens.", "decoder.norm.", "lm_head.", "vision.tower.", "vision.connector.")
_UND_LAYER = re.compile(r"^decoder\.layers\.\d+\.und\.")
_NEW_BIAS = re.compile(r"^decoder\.layers\.\d+\.und\.[qkv]_proj\.bias$")  # Janus: no q/k/v bias -> 0
_NEW_QK_NORM = re.compile(r"^decoder\.layers\.\d+\.und\.[qk]_norm\.weight$")  # Janus: no q/k-norm -> 1

# language_config field -> DecoderConfig field: the dims that fix the tensor shapes
_LANGUAGE_DIMS = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
                  "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                  "num_key_value_heads": "num_kv_heads", "vocab_size": "vocab_size"}


# ---- key maps ----------------------------------------------------------------------------------------------------
def to_janus(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensors of the parts Janus has (understanding side, lm_head, SigLIP, connector) -> Janus's names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in to_authors(sd).items():
        if key.startswith(_UNIX_TOWER):
            key = JANUS_TOWER + key[len(_UNIX_TOWER):]
        elif key.startswith(_UNIX_CONNECTOR):
            key = JANUS_ALIGNER + key[len(_UNIX_CONNECTOR):]
        out[key] = value
    return out


def from_janus(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Janus's tensors (language_model.*, vision_model.vision_tower.*, aligner.*) -> ours (inverse of to_janus)."""
    return from_authors({(_UNIX_CONNECTOR + k[len(JANUS_ALIGNER):] if k.startswith(JANUS_ALIGNER) else k): v
                         for k, v in sd.items()})


def _janus_targets(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of our state dict that a Janus-Pro file fills (or that stand in for what its LLM lacks)."""
    return {k: v for k, v in state.items() if k.startswith(_FROM_JANUS) or _UND_LAYER.match(k)}


def janus_expected_shapes(model: UniX) -> dict[str, tuple[int, ...]]:
    """Janus key -> the shape this model needs, for every Janus tensor it can take (the q/k/v biases and q/k-norm
    weights included, which a Janus file does not have). Works on a model on the meta device."""
    targets = _janus_targets(model.state_dict())
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in targets.items()}
    return {k: tuple(v.shape) for k, v in to_janus(meta).items()}


# ---- the folder --------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {' '.join(str(err).split())}") from None


def _read_index(index: Path, suffix: str) -> dict[str, Path]:
    """`weight_map` of a sharded checkpoint's index: key -> shard file (a plain file name in the index's folder)."""
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: not a sharded checkpoint index (no weight_map of tensor name -> shard file)")
    out: dict[str, Path] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", "..") or not name.endswith(suffix):
            raise ValueError(f"{index}: shard {name!r} of tensor {key} is not a {suffix} file name in this folder")
        shard = index.parent / name
        if not shard.is_file():
            raise ValueError(f"{shard}: no such shard (named by {index.name} for tensor {key})")
        out[key] = shard
    return out


def _pickle_refusal(pickled: Path, folder: Path) -> ValueError:
    return ValueError(f"{pickled}: Janus-Pro weights as a pickle are not loaded (unpickling can run arbitrary code); "
                      f"convert the folder once with: unix-cxr convert-janus {folder} --trust-pickle")


def _weight_files(folder: Path) -> dict[Path, list[str] | None]:
    """The safetensors file(s) of a Janus folder: {file: the keys the index puts there, or None for all of them}.

    Only the pickle there: a ValueError naming it and the conversion command."""
    if (folder / WEIGHTS).is_file():
        return {folder / WEIGHTS: None}
    if (folder / WEIGHTS_INDEX).is_file():
        shards: dict[Path, list[str]] = {}
        for key, shard in _read_index(folder / WEIGHTS_INDEX, ".safetensors").items():
            shards.setdefault(shard, []).append(key)
        return dict(shards)
    pickled = [folder / n for n in (PICKLED, PICKLED_INDEX) if (folder / n).is_file()]
    pickled = pickled or sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise _pickle_refusal(pickled[0], folder)
    raise ValueError(f"{folder}: no {WEIGHTS} (nor {WEIGHTS_INDEX}) in this Janus-Pro folder")


def _header(files: dict[Path, list[str] | None]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """key -> (file, shape) from the safetensors headers only (no tensor data is read)."""
    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file, keys in files.items():
        with open_safetensors(file) as f:
            present = set(f.keys())
            for key in present if keys is None else keys:
                if key not in present:
                    raise ValueError(f"{file}: no tensor {key}, which {WEIGHTS_INDEX} puts in this shard")
                out[key] = (file, tuple(f.get_slice(key).get_shape()))
    return out


def _language_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise ValueError(f"{folder}: no {CONFIG} (a Janus-Pro folder has one, with a language_config section)")
    data = _read_json(path)
    lang = data.get("language_config") if isinstance(data, dict) else None
    if not isinstance(lang, dict):
        raise ValueError(f"{path}: not a Janus-Pro config.json (no language_config section)")
    return lang


def _check_language_config(folder: Path, dec: DecoderConfig) -> None:
    """The dims of Janus's language_config against the model's decoder: a ValueError naming the first that differs."""
    lang = dict(_language_config(folder))
    if "num_attention_heads" in lang:  # LLaMA's default: as many key/value heads as heads
        lang.setdefault("num_key_value_heads", lang["num_attention_heads"])
    for theirs, ours in _LANGUAGE_DIMS.items():
        if theirs in lang and lang[theirs] != getattr(dec, ours):
            raise ValueError(f"{folder / CONFIG}: language_config.{theirs} is {lang[theirs]!r} but this model has "
                             f"decoder.{ours}={getattr(dec, ours)} (the unix-full preset has Janus-Pro-1B's dims)")


def is_janus_folder(path: str | Path) -> bool:
    """Is `path` a Janus-Pro folder: a config.json with `language_config`, and weights with Janus's `aligner.*`
    (a UniX release folder has a Janus-style config.json too, but names its connector `connector.*`)? A folder
    holding only Janus's pickle counts as one (`load_janus_init` then says how to convert it). Reads headers only;
    never raises for a bad folder (False)."""
    folder = Path(path)
    try:
        _language_config(folder)
        if not any((folder / name).is_file() for name in (WEIGHTS, WEIGHTS_INDEX)):
            return any((folder / name).is_file() for name in (PICKLED, PICKLED_INDEX))
        files = _weight_files(folder)
        keys = [k for file, listed in files.items() for k in (listed or _header({file: None}))]
    except (ValueError, OSError):
        return False
    return any(k.startswith(JANUS_ALIGNER) for k in keys)


# ---- loading -----------------------------------------------------------------------------------------------------
@dataclass
class JanusInit:
    """What `load_janus_init` did: our key names for what it wrote or kept, Janus's for what it did not read."""

    folder: Path
    loaded: list[str] = field(default_factory=list)  # filled from the Janus weights
    zeroed: list[str] = field(default_factory=list)  # q/k/v biases Janus's LLM lacks: set to 0
    unit: list[str] = field(default_factory=list)  # q/k-norm weights Janus's LLM lacks: set to 1
    copied: list[str] = field(default_factory=list)  # generation-expert tensors copied from their und twins
    kept: list[str] = field(default_factory=list)  # left at the model's own initial values
    skipped_generation: list[str] = field(default_factory=list)  # Janus's gen_* tensors, not read
    unknown: list[str] = field(default_factory=list)  # Janus tensors of no part UniX takes, not read

    @property
    def initialised(self) -> list[str]:
        """The tensors set to fixed values because Janus has none (biases 0, q/k-norm weights 1)."""
        return self.zeroed + self.unit

    def summary(self) -> str:
        return (f"{len(self.loaded)} loaded, {len(self.zeroed)} biases set to 0, {len(self.unit)} q/k-norm weights "
                f"set to 1, {len(self.copied)} generation-expert tensors copied from the understanding expert, "
                f"{len(self.kept)} kept at their initial values; not read: {len(self.skipped_generation)} Janus "
                f"generation tensors, {len(self.unknown)} unknown")


def _prefixes(keys: list[str]) -> str:
    """`time_embedder.*, decoder.layers.*.gen.*, ...`: the groups `keys` fall into, in order."""
    seen: dict[str, None] = {}
    for key in keys:
        parts = re.sub(r"\.\d+(?=\.)", ".*", key).split(".")
        depth = 4 if key.startswith("decoder.layers.") else 2 if parts[0] == "decoder" else 1
        seen[".".join(parts[:min(depth, len(parts) - 1)]) + ".*"] = None
    return summarise_keys(list(seen), 6)


def load_janus_init(model: UniX, folder: str | Path, *, copy_to_gen: bool = True,
                    allow_non_finite: bool = False) -> JanusInit:
    """Fill `model` from a local Janus-Pro folder (module doc): the LLM into the understanding expert (with the token
    embeddings, the final norm and lm_head), the SigLIP tower, the aligner as the connector; the q/k/v biases to 0 and
    the q/k-norm weights to 1; then, with `copy_to_gen`, the generation expert as a copy of the understanding expert.

    Checked before any tensor is read, each a one-line ValueError: the folder's language_config dims against the
    model's decoder (the first that differs), and every tensor's shape against the model (naming the first missing
    or mis-shaped tensor in Janus's naming). Janus's own generation tensors (gen_*) are not read (one log line counts
    them); tensors of no part UniX takes are not read and are named in a warning. Weights are read from
    safetensors only: a folder with only `pytorch_model.bin` is refused with the conversion command. Unless
    `allow_non_finite`, a tensor holding NaN or infinity is refused, naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (give a local Janus-Pro folder: {CONFIG} and {WEIGHTS})")
    cfg = model.cfg
    _check_language_config(folder, cfg.decoder)
    if cfg.decoder.tie_word_embeddings:
        raise ValueError("Janus-Pro's lm_head is not tied to its token embeddings; build the model with "
                         "decoder.tie_word_embeddings=false")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("the model is on the meta device; materialise it (to_empty) before loading Janus weights")
    files = _weight_files(folder)
    header = _header(files)

    state = model.state_dict()
    targets = _janus_targets(state)
    expected = janus_expected_shapes(model)
    added = [k for k in targets if _NEW_BIAS.match(k) or _NEW_QK_NORM.match(k)]
    optional = {llm_key_to_authors(k) for k in added}  # Janus has none of them; a file that has them loads them
    if not any(k.startswith(_JANUS_POOL) for k in header):  # the unused pooling head: ours stays if absent
        optional |= {k for k in expected if k.startswith(_JANUS_POOL)}
    report = JanusInit(folder)
    for key in header:
        if key.startswith(JANUS_GENERATION):
            report.skipped_generation.append(key)
        elif key not in expected:
            report.unknown.append(key)
    required = {k: torch.empty(s, device="meta") for k, s in expected.items() if k not in optional or k in header}
    given = {k: torch.empty(header[k][1], device="meta") for k in required if k in header}
    problem = state_dict_mismatch(required, given)
    if problem:
        d, v = cfg.decoder, cfg.vision
        where = next(iter(files)) if len(files) == 1 else folder / WEIGHTS_INDEX
        raise ValueError(f"{where}: Janus-Pro weights do not fit this model (decoder {d.num_layers} layers x "
                         f"{d.hidden_size}, vision {v.num_layers} layers x {v.hidden_size}): {problem} "
                         "(keys in Janus naming)")

    wanted = set(given)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(read_safetensors(file, lambda k, file=file: k not in wanted or header[k][0] != file,
                                        allow_non_finite))
    ours = from_janus(tensors)
    result = model.load_state_dict(ours, strict=False)  # copies into the model's own tensors, cast to their dtype
    if result.unexpected_keys:  # from_janus names only our tensors; a guard against a key-map bug
        raise ValueError(f"Janus key map produced tensors the model does not have: {result.unexpected_keys[:5]}")
    report.loaded = sorted(ours)
    log.info("Janus-Pro init from %s: loaded %d tensors (understanding expert, embeddings, final norm, lm_head, "
             "SigLIP tower, aligner -> connector)", folder, len(ours))
    if report.skipped_generation:
        log.info("ignoring %d tensors of Janus's own image generation (%s); UniX generates with its generation "
                 "expert and the VAE", len(report.skipped_generation), _prefixes(sorted(report.skipped_generation)))
    if report.unknown:
        log.warning("%d tensors in %s belong to no part UniX takes from Janus-Pro, not read: %s", len(report.unknown),
                    folder, summarise_keys(sorted(report.unknown)))

    with torch.no_grad():  # what Janus's LLaMA lacks: set explicitly, not assumed from the model's constructor
        for key in added:
            if key in ours:
                continue
            param = model.get_parameter(key)
            if _NEW_BIAS.match(key):
                param.zero_()
                report.zeroed.append(key)
            else:
                param.fill_(1.0)
                report.unit.append(key)
    if report.zeroed or report.unit:
        log.info("Janus-Pro's LLM has no q/k/v bias and no q/k-norm: set %d biases to 0 and %d q/k-norm weights to 1",
                 len(report.zeroed), len(report.unit))
    if cfg.vision.connector_act != "gelu":
        log.info("the Janus aligner was trained with exact GELU; this model's connector uses %s "
                 "(model override vision.connector_act=gelu matches Janus)", cfg.vision.connector_act)

    if copy_to_gen and model.with_generation:
        report.copied = copy_und_to_gen(model)
    elif copy_to_gen:
        log.info("report-only model (with_generation=False): no generation expert to initialise")
    elif model.with_generation:
        log.info("copy_to_gen=False: the generation expert keeps the model's own initial values")
    done = set(report.loaded) | set(report.zeroed) | set(report.unit) | set(report.copied)
    report.kept = [k for k in state if k not in done]
    if report.kept:
        log.info("kept the model's own initial values for %d tensors (no Janus counterpart): %s", len(report.kept),
                 _prefixes(report.kept))
    return report


def copy_und_to_gen(model: UniX) -> list[str]:
    """Initialise the generation expert as a copy of the understanding expert (spec 1.2, BAGEL's `init_moe()`):
    every `decoder.layers.{i}.gen.*` from `decoder.layers.{i}.und.*`, and `decoder.norm_gen` from `decoder.norm`.

    The values are copied into the generation expert's own tensors (no storage is shared: the two train apart).
    Logs one line; returns the generation tensors written (our names).
    """
    dec = model.decoder
    if not dec.with_generation:
        raise ValueError("a report-only model (with_generation=False) has no generation expert to initialise")
    pairs = [(f"decoder.layers.{i}.gen.", layer.gen, layer.und) for i, layer in enumerate(dec.layers)]
    pairs.append(("decoder.norm_gen.", dec.norm_gen, dec.norm))
    written: list[str] = []
    with torch.no_grad():
        for prefix, gen, und in pairs:
            gen_sd, und_sd = gen.state_dict(keep_vars=True), und.state_dict(keep_vars=True)
            if gen_sd.keys() != und_sd.keys():  # both are instances of one class; a guard
                raise ValueError(f"{prefix}: the generation and understanding experts hold different tensors")
            for name, tensor in gen_sd.items():
                if tensor.shape != und_sd[name].shape:
                    raise ValueError(f"{prefix}{name}: shape {tuple(tensor.shape)} differs from its understanding "
                                     f"twin's {tuple(und_sd[name].shape)}")
                tensor.copy_(und_sd[name])
                written.append(prefix + name)
    log.info("generation expert initialised as a copy of the understanding expert (init_moe): %d tensors, "
             "decoder.layers.*.gen.* <- decoder.layers.*.und.*, decoder.norm_gen <- decoder.norm", len(written))
    return written


# ---- the one-time conversion of the pickle -----------------------------------------------------------------------
def _pickled_files(folder: Path) -> list[Path]:
    if (folder / PICKLED_INDEX).is_file():
        return sorted(set(_read_index(folder / PICKLED_INDEX, ".bin").values()))
    if (folder / PICKLED).is_file():
        return [folder / PICKLED]
    raise ValueError(f"{folder}: no {PICKLED} (nor {PICKLED_INDEX}) to convert")


def _own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone the tensors that share storage with an earlier one (safetensors refuses shared tensors); keep the rest."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
        seen.add(ptr)
    return out


def convert_pickled_janus(folder: str | Path, trust_pickle: bool, allow_non_finite: bool = False) -> Path:
    """Convert a Janus-Pro folder's pickled weights (`pytorch_model.bin`, or the shards its
    `pytorch_model.bin.index.json` names) into one `FOLDER/model.safetensors`, once.

    Refused unless `trust_pickle`, before any file is opened; even then every file is read with
    `torch.load(weights_only=True)` only (tensors and plain containers; never a full unpickle). Every tensor is kept
    as it is (names, dtypes; also Janus's own generation tensors, which `load_janus_init` does not read); entries
    that are not tensors are dropped (logged). A tensor holding NaN or infinity is refused unless
    `allow_non_finite`. The write is atomic: an existing model.safetensors is left as it was on any error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (give the Janus-Pro folder that holds {PICKLED})")
    sources = _pickled_files(folder)
    require_trust(sources[0] if len(sources) == 1 else folder / PICKLED_INDEX, trust_pickle)
    out = check_output_path(folder / WEIGHTS)
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for source in sources:
        obj = load_weights_only(source)
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: expected a state dict (tensor name -> tensor), got {type(obj).__name__}")
        for key, value in obj.items():
            if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
                dropped.append(key if isinstance(key, str) else repr(key))
            elif key in tensors:
                raise ValueError(f"{source}: tensor {key} is in another shard too")
            else:
                tensors[key] = value
    if dropped:
        log.info("dropping %d entries that are not tensors: %s", len(dropped), summarise_keys(dropped))
    if not any(k.startswith(JANUS_LLM) for k in tensors):
        raise ValueError(f"{sources[0]}: not Janus-Pro weights (no {JANUS_LLM}* tensors); its entries: "
                         f"{summarise_keys(sorted(tensors) or dropped)}")
    check_finite(tensors, sources[0] if len(sources) == 1 else folder / PICKLED_INDEX, allow_non_finite)
    if out.exists():
        log.info("replacing %s", out)
    write_safetensors_atomic(_own_storage(tensors), out,
                             {"format": "pt", "source": ", ".join(s.name for s in sources)})
    log.info("wrote %d tensors from %s to %s (the Janus-Pro folder now loads from safetensors)", len(tensors),
             ", ".join(s.name for s in sources), out)
    return out
