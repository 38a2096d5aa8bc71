"""Typed configuration of UniX: decoder, vision tower, VAE, special tokens, sampling and decoding.

Our own format is the nested dict of these dataclasses (YAML or JSON); unknown keys are an error.
The authors' formats are read as well:
  * the UniX inference `config.json` (`llm_config`, `vit_config`, `vae_config`, ...), as in ../shared/parity;
  * the Janus-style release `config.json` (`language_config`, `vision_config`, `aligner_config`);
  * the latent-diffusion VAE `config.yaml` that sits next to the VAE checkpoint.
Presets: `unix-full` (the released UniX, spec section 1) and `tiny` (a few thousand parameters, for tests),
shipped as YAML recipes in `unix_cxr/recipes/`.

`load_config(source, overrides)` is the one loader: a preset name, a recipe YAML (or JSON) in our format, the
authors' `config.json`, or a release folder (its `config.json` and `vae/config.yaml`), then dotted `key=value`
overrides (`decoder.num_layers=4 sampling.cfg_interval=[0.4,1.0]`), strictly: an unknown key names itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


ATTENTION_BACKENDS = ("sdpa", "flex", "flash")


@dataclass
class SpecialTokens:
    """Numeric ids of the four structural tokens (spec 2.1); declared here once."""

    bos: int = 100000  # text segment start; also the decoding start token
    eos: int = 100001  # text segment end; decoding stop
    start_of_image: int = 100003  # BOI marker around every image block
    end_of_image: int = 100580  # EOI marker


@dataclass
class DecoderConfig:
    """Qwen2-style mixture-of-transformers decoder (two experts per layer, one attention)."""

    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 16
    vocab_size: int = 102400
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True
    qkv_bias: bool = True
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 16384  # longest packed sequence / context we accept
    attention_backend: str = "sdpa"  # "sdpa", "flex" or "flash" (unix_cxr.model.attention)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"decoder hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"decoder num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"decoder head_dim {self.head_dim} must be even for RoPE")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention_backend!r}; choose one of "
                             f"{ATTENTION_BACKENDS}")


@dataclass
class VisionConfig:
    """SigLIP ViT as Janus uses it (no class token, learned positions, final LayerNorm) + MLP connector."""

    image_size: int = 384
    patch_size: int = 16
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"  # exact erf GELU in the tower (Janus timm ViT)
    connector_act: str = "gelu_pytorch_tanh"  # released inference; the trained Janus aligner used exact "gelu"
    pixel_mean: float = 0.555895  # CXR statistics, same for all three channels
    pixel_std: float = 0.336385

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.connector_act not in ("gelu", "gelu_pytorch_tanh"):
            raise ValueError(f"connector_act must be 'gelu' or 'gelu_pytorch_tanh', got {self.connector_act!r}")


@dataclass
class VAEConfig:
    """CompVis latent-diffusion AutoencoderKL (kl-f16) and UniX's latent normalisation."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    z_channels: int = 16
    embed_dim: int = 16
    in_channels: int = 3
    out_channels: int = 3
    scale_factor: float = 0.238092
    shift_factor: float = -0.201906

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def validate(self) -> None:
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError("vae channel widths must be multiples of 32 (GroupNorm with 32 groups)")


@dataclass
class SamplingConfig:
    """Flow-matching Euler sampler with timestep shift and text CFG (spec 4.2; released defaults)."""

    num_timesteps: int = 50  # points of the time grid; the authors take num_timesteps - 1 Euler steps
    timestep_shift: float = 3.0
    cfg_text_scale: float = 2.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)  # CFG applies when lo < t <= hi
    cfg_renorm_type: str = "global"  # "global", "channel", "text_channel" or "none"
    cfg_renorm_min: float = 0.0
    image_size: int = 512
    step_cache: str = "none"  # "taylor": forecast the velocity between model evaluations (infer/step_cache.py)
    step_cache_interval: int = 2  # taylor: after the warm-up, the model runs at every interval-th step
    step_cache_warmup: int = 3  # taylor: the first steps that always run the model

    def validate(self) -> None:
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if self.step_cache not in ("none", "taylor"):
            raise ValueError(f"step_cache must be 'none' or 'taylor', got {self.step_cache!r}")
        if self.step_cache_interval < 1 or self.step_cache_warmup < 2:
            raise ValueError("step_cache_interval must be >= 1 and step_cache_warmup >= 2")
        if self.cfg_renorm_type not in ("global", "channel", "text_channel", "none"):
            raise ValueError(f"unknown cfg_renorm_type {self.cfg_renorm_type!r}")


@dataclass
class DecodingConfig:
    """Report decoding (spec 4.1): greedy by default, at most `max_new_tokens`, stop at eos."""

    max_new_tokens: int = 499
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # The released inference tokenises the prompt with add_special_tokens=True inside bos ... eos, giving two
    # BOS tokens (spec 11.2). Keep it for parity with the released weights; training uses a single BOS.
    double_bos: bool = True


@dataclass(frozen=True)
class PackingConfig:
    """How samples become packed training sequences (`unix_cxr.data.loader`); token counts include markers.

    Spec 5.1 numbers: per-sample cap (``max_seq_len``) 16,384; BAGEL ``max_num_tokens`` 36,864; UniX yields by
    ``micro_batch_size`` samples (32 per GPU for a global batch of 256 on 8 GPUs without accumulation).
    Positions restart in every sample, so only a single sample is bounded by ``cfg.decoder.max_position_embeddings``
    (`data.packing.pack` refuses longer samples); a packed sequence may be longer.
    """

    max_tokens: int | None = 16384  # hard cap per packed sequence
    expected_tokens: int | None = None  # token mode: yield once reached (None: = max_tokens)
    max_tokens_per_sample: int = 16384  # longer samples are skipped and counted
    micro_batch_size: int | None = None  # UniX mode: yield once this many samples are packed
    max_buffer_size: int = 50
    prefer_buffer_before: int | None = None  # take from the buffer while below this (None: max_tokens // 2)

    def validate(self, cfg: UniXConfig | None = None) -> PackingConfig:
        if self.max_tokens is None and self.micro_batch_size is None:
            raise ValueError("packing needs max_tokens (token budget), micro_batch_size (UniX mode) or both")
        for name in ("max_tokens", "expected_tokens", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"packing {name} must be positive, got {value}")
        if self.max_tokens_per_sample < 1 or self.max_buffer_size < 0:
            raise ValueError("packing max_tokens_per_sample must be positive and max_buffer_size non-negative")
        limit = cfg.decoder.max_position_embeddings if cfg is not None else None
        if limit is not None and self.max_tokens_per_sample > limit:
            raise ValueError(f"packing max_tokens_per_sample {self.max_tokens_per_sample} exceeds the decoder's "
                             f"max_position_embeddings {limit} (unix_cxr.data.packing.pack refuses longer samples)")
        if self.expected_tokens is not None and self.max_tokens is not None and self.expected_tokens > self.max_tokens:
            raise ValueError(f"packing expected_tokens {self.expected_tokens} > max_tokens {self.max_tokens}")
        return self

    @property
    def sample_cap(self) -> int:
        """Samples above this are skipped: the per-sample cap, and never more than a whole sequence."""
        return min(self.max_tokens_per_sample, self.max_tokens or self.max_tokens_per_sample)

    @property
    def yield_tokens(self) -> int | None:
        """Token count at which a sequence is complete (token mode)."""
        if self.expected_tokens is not None:
            return self.expected_tokens
        return self.max_tokens if self.micro_batch_size is None else None

    @property
    def buffer_threshold(self) -> int:
        if self.prefer_buffer_before is not None:
            return self.prefer_buffer_before
        return (self.max_tokens or 0) // 2


@dataclass
class UniXConfig:
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    tokens: SpecialTokens = field(default_factory=SpecialTokens)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    max_latent_size: int = 32  # side of the latent position table -> largest image = 32 * 16 px
    vit_max_num_patch_per_side: int = 24  # side of the (unused, but saved) vit_pos_embed table
    train_timestep_shift: float = 1.0  # shift applied to training timesteps (released training: 1.0)

    def validate(self) -> UniXConfig:
        for part in (self.decoder, self.vision, self.vae, self.sampling):
            part.validate()
        self.packing.validate(self)
        ids = dataclasses.astuple(self.tokens)
        if len(set(ids)) != 4 or max(ids) >= self.decoder.vocab_size or min(ids) < 0:
            raise ValueError(f"special token ids {ids} must be distinct and inside the vocabulary")
        return self

    # ---- our own format -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniXConfig:
        return _build(cls, data, "config").validate()

    @classmethod
    def from_file(cls, path: str | Path) -> UniXConfig:
        """Read our YAML/JSON format, or the authors' config.json (detected by its keys): `load_config(path)`."""
        return load_config(Path(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _build(cls, data: Any, where: str):
    """Strictly build dataclass `cls` from a mapping: unknown keys raise ValueError naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown} (known: {sorted(fields)})")
    kwargs = {}
    for name, value in data.items():
        default = _default(fields[name])
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = check_value(value, default, fields[name].type, f"{where}.{name}")
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_value(value: Any, default: Any, annotation: Any, where: str) -> Any:
    """A scalar or tuple field's value checked against its type (read off its default; None where the annotation
    allows it): ValueError `WHERE must be TYPE, got VALUE`. Ints are accepted for floats; lists become tuples."""
    if value is None and (default is None or "None" in str(annotation)):
        return value
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = _is_number(value)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(_is_number(v) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value


# ---- presets and the one loader ------------------------------------------------------------------------------
PRESETS: tuple[str, ...] = ("tiny", "unix-full", "phantom")  # recipes/<name>.yaml; tiny: every code path, GQA too


def _read_mapping(path: Path, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


OWN_CONFIG = "unix-cxr.yaml"  # our full config in a release folder we export (the authors' config.json beside it)


def _read_text(path: Path) -> str:
    """A config file's text; ValueError naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _release_folder_config(folder: Path) -> UniXConfig:
    own = folder / OWN_CONFIG
    if own.is_file():  # ours is complete (special tokens, decoding, ...); the authors' config.json is not
        return _from_mapping(_read_mapping(own, _read_text(own)), str(own))
    config, vae_yaml = folder / "config.json", folder / "vae" / "config.yaml"
    vae_yaml = vae_yaml if vae_yaml.is_file() else None
    if config.is_file():
        return _authors_config(_read_mapping(config, _read_text(config)), vae_yaml, where=str(config))
    log.info("%s has no config.json: using the released UniX configuration", folder)
    cfg = _from_source("unix-full")
    if vae_yaml is not None:
        cfg.vae = vae_config_from_ldm_yaml(vae_yaml)
    return cfg


def _from_mapping(data: Mapping[str, Any], where: str) -> UniXConfig:
    """Our format or the authors' config.json (detected by its keys); not yet validated."""
    if "llm_config" in data or "language_config" in data:
        return _authors_config(dict(data))
    return _build(UniXConfig, dict(data), where)


def _from_source(source: str | Path | UniXConfig | Mapping[str, Any]) -> UniXConfig:
    """The config a source describes, before overrides and validation."""
    if isinstance(source, UniXConfig):
        return _build(UniXConfig, source.to_dict(), "config")
    if isinstance(source, Mapping):
        return _from_mapping(source, "config")
    if isinstance(source, str) and source in PRESETS:
        recipe = files("unix_cxr") / "recipes" / f"{source}.yaml"
        return _from_mapping(_read_mapping(Path(f"{source}.yaml"), recipe.read_text()), "config")
    path = Path(source)
    if path.is_dir():
        return _release_folder_config(path)
    if not path.is_file():
        hint = f" (presets: {', '.join(PRESETS)})" if isinstance(source, str) and not path.suffix else ""
        raise ValueError(f"config {source}: no such preset, file or folder{hint}")
    data = _read_mapping(path, _read_text(path))
    try:
        return _from_mapping(data, "config")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a UniX config ({type(err).__name__}: {err})") from None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """`["a.b=1", "c=[1, 2]"]` (values read as YAML scalars / lists) or a mapping -> {dotted key: value}."""
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. decoder.num_layers=4)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: the value is not a YAML scalar or list") from None
        if isinstance(parsed, str):  # YAML 1.1 reads 2e-4 (no dot) as a string; a user means the number
            with contextlib.suppress(ValueError):
                parsed = float(parsed) if _NUMBER.fullmatch(parsed.strip()) else parsed
        out[key.strip()] = parsed
    return out


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], what: str = "config") -> dict[str, Any]:
    """Set each dotted key of `overrides` in the nested dict `data` (a copy); an unknown key names itself."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for dotted, value in overrides.items():
        node, parts = data, dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or what
                known = sorted(node) if isinstance(node, dict) else []
                raise ValueError(f"unknown {what} key {dotted!r} ({where} has {known})")
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return data


def load_config(source: str | Path | UniXConfig | Mapping[str, Any] = "unix-full",
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> UniXConfig:
    """The one way to a UniXConfig: see the module doc. Returns a validated, independent config."""
    cfg = _from_source(source)
    changes = parse_overrides(overrides)
    if changes:
        cfg = _build(UniXConfig, apply_overrides(cfg.to_dict(), changes), "config")
    where = source if isinstance(source, str | Path) else "config"
    if isinstance(source, str | Path) and Path(source).is_dir():  # a release folder: name the file with the values
        where = next((p for p in (Path(source) / OWN_CONFIG, Path(source) / "config.json") if p.is_file()), where)
    try:
        return cfg.validate()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    except TypeError as err:  # a value of the wrong type that no earlier check caught
        raise ValueError(f"{where}: a config value has the wrong type ({err})") from None


# ---- the authors' formats ------------------------------------------------------------------------------
_JANUS_VISION = {"siglip_large_patch16_384": VisionConfig()}


def from_authors_config(data: dict[str, Any], vae_yaml: str | Path | None = None,
                        tokens: SpecialTokens | None = None) -> UniXConfig:
    """Translate the authors' UniX inference config.json (or the Janus-style release config) into ours.

    The authors' files do not carry the special token ids (their code hard-codes them): pass `tokens` for a
    model with another vocabulary (through `load_config`: the overrides `tokens.bos=...`).
    """
    cfg = _authors_config(data, vae_yaml, tokens, where="authors' config")
    try:
        return cfg.validate()
    except TypeError as err:
        raise ValueError(f"authors' config: a value has the wrong type ({err})") from None


def _authors_config(data: dict[str, Any], vae_yaml: str | Path | None = None,
                    tokens: SpecialTokens | None = None, where: str = "config") -> UniXConfig:
    """The authors' config.json as ours (not yet validated). Whatever is wrong with it (not a mapping, a missing
    key, a section or value of the wrong type) is a ValueError that starts with `where` (the file's path)."""
    vae = vae_config_from_ldm_yaml(vae_yaml) if vae_yaml is not None else None  # names its own file
    try:
        cfg = _translate_authors(data, tokens)
        if vae is not None:
            cfg.vae = vae
        # the inferencer's default output is 512 px (image_shapes); a smaller model draws at its largest size
        cfg.sampling.image_size = min(cfg.sampling.image_size, cfg.max_latent_size * cfg.vae.downsample)
        _check_types(cfg, "")
    except KeyError as err:
        raise ValueError(f"{where}: not a UniX or Janus config.json: missing key {err}") from None
    except (TypeError, AttributeError) as err:  # e.g. "llm_config": 3, a list where a mapping belongs
        raise ValueError(f"{where}: not a UniX or Janus config.json: a section or value has the wrong type "
                         f"({' '.join(str(err).split())})") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return cfg


def _check_types(node: Any, prefix: str) -> None:
    """TypeError naming the first field whose value does not have its type (`check_value`): the authors' files are
    JSON, so `"hidden_size": "2048"` or `2048.5` must not reach the model."""
    for f in dataclasses.fields(node):
        value, name = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_types(value, f"{name}.")
            continue
        try:
            check_value(value, _default(f), f.type, name)
        except ValueError as err:
            raise TypeError(str(err)) from None


def _translate_authors(data: dict[str, Any], tokens: SpecialTokens | None) -> UniXConfig:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    cfg = UniXConfig(tokens=tokens or SpecialTokens())
    if "llm_config" in data:
        llm = data["llm_config"]
        cfg.decoder = DecoderConfig(
            hidden_size=llm["hidden_size"],
            intermediate_size=llm["intermediate_size"],
            num_layers=llm["num_hidden_layers"],
            num_heads=llm["num_attention_heads"],
            num_kv_heads=llm.get("num_key_value_heads", llm["num_attention_heads"]),
            vocab_size=llm["vocab_size"],
            rope_theta=llm.get("rope_theta", 10000.0),
            rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
            qk_norm=llm.get("qk_norm", True),
            tie_word_embeddings=llm.get("tie_word_embeddings", False),
            max_position_embeddings=llm.get("max_position_embeddings", 16384),
        )
        vit = data.get("vit_config", {})
        cfg.vision = VisionConfig(
            image_size=vit.get("image_size", 384),
            patch_size=vit.get("patch_size", 16),
            hidden_size=vit.get("hidden_size", 1024),
            intermediate_size=vit.get("intermediate_size", 4096),
            num_layers=vit.get("num_hidden_layers", 24),
            num_heads=vit.get("num_attention_heads", 16),
            connector_act=data.get("connector_act", "gelu_pytorch_tanh"),
        )
        cfg.max_latent_size = data.get("max_latent_size", 32)
        cfg.vit_max_num_patch_per_side = data.get("vit_max_num_patch_per_side", 24)
        cfg.train_timestep_shift = data.get("timestep_shift", 1.0)
        if data.get("latent_patch_size", 1) != 1:
            raise ValueError("only latent_patch_size 1 (the released UniX) is supported")
        gen = data.get("inference_config", {}).get("generation")
        if gen:
            cfg.sampling = SamplingConfig(
                num_timesteps=gen.get("num_timesteps", 50),
                cfg_text_scale=gen.get("cfg_text_scale", 2.0),
                cfg_interval=tuple(gen.get("cfg_interval", (0.4, 1.0))),
            )
    else:  # Janus-style release config
        lang = data["language_config"]
        cfg.decoder = DecoderConfig(
            hidden_size=lang.get("hidden_size", 2048),
            intermediate_size=lang.get("intermediate_size", 5632),
            num_layers=lang.get("num_hidden_layers", 24),
            num_heads=lang.get("num_attention_heads", 16),
            num_kv_heads=lang.get("num_key_value_heads", lang.get("num_attention_heads", 16)),
            vocab_size=lang.get("vocab_size", 102400),
        )
        name = data.get("vision_config", {}).get("params", {}).get("model_name", "siglip_large_patch16_384")
        if name not in _JANUS_VISION:
            raise ValueError(f"unknown Janus vision tower {name!r}; known: {sorted(_JANUS_VISION)}")
        cfg.vision = dataclasses.replace(_JANUS_VISION[name])
    return cfg


def to_authors_config(cfg: UniXConfig) -> dict[str, Any]:
    """Our config as the authors' UniX inference config.json (the inverse of from_authors_config for that form)."""
    d, v, s = cfg.decoder, cfg.vision, cfg.sampling
    generation = {"cfg_text_scale": s.cfg_text_scale, "cfg_img_scale": 1.0, "cfg_interval": list(s.cfg_interval),
                  "num_timesteps": s.num_timesteps, "do_sample": False}
    return {
        "model_type": "unix", "architectures": ["UniX"], "visual_gen": True, "visual_und": True,
        "latent_patch_size": 1, "max_latent_size": cfg.max_latent_size,
        "vit_max_num_patch_per_side": cfg.vit_max_num_patch_per_side, "connector_act": v.connector_act,
        "interpolate_pos": False, "timestep_shift": cfg.train_timestep_shift,
        "llm_config": {
            "model_type": "qwen2", "hidden_size": d.hidden_size, "intermediate_size": d.intermediate_size,
            "num_hidden_layers": d.num_layers, "num_attention_heads": d.num_heads,
            "num_key_value_heads": d.num_kv_heads, "vocab_size": d.vocab_size, "rope_theta": d.rope_theta,
            "rms_norm_eps": d.rms_norm_eps, "max_position_embeddings": d.max_position_embeddings,
            "layer_module": "Qwen2MoTDecoderLayer", "qk_norm": d.qk_norm,
            "tie_word_embeddings": d.tie_word_embeddings,
        },
        "vit_config": {
            "model_type": "siglip_vision_model", "hidden_size": v.hidden_size, "image_size": v.image_size,
            "intermediate_size": v.intermediate_size, "num_attention_heads": v.num_heads,
            "num_hidden_layers": v.num_layers, "patch_size": v.patch_size, "select_layer": -1,
        },
        "vae_config": {"downsample": cfg.vae.downsample, "z_channels": cfg.vae.z_channels},
        "inference_config": {"generation": generation},
    }


def ldm_vae_yaml(cfg: VAEConfig) -> dict[str, Any]:
    """The latent-diffusion config.yaml content for a VAE config (the inverse of vae_config_from_ldm_yaml)."""
    return {"model": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": cfg.embed_dim, "lossconfig": {"target": "torch.nn.Identity"},
        "ddconfig": {"double_z": True, "z_channels": cfg.z_channels, "resolution": cfg.resolution,
                     "in_channels": cfg.in_channels, "out_ch": cfg.out_channels, "ch": cfg.ch,
                     "ch_mult": list(cfg.ch_mult), "num_res_blocks": cfg.num_res_blocks,
                     "attn_resolutions": list(cfg.attn_resolutions), "dropout": 0.0}}}}


def vae_config_from_ldm_yaml(path: str | Path) -> VAEConfig:
    """Read the latent-diffusion `config.yaml` (model.params.ddconfig) that ships next to the VAE checkpoint.

    Anything wrong with it (not YAML, not UTF-8, a missing key, a value of the wrong type) is a ValueError naming
    the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    try:
        params = data["model"]["params"]
        dd = params["ddconfig"]
        if not isinstance(dd, dict) or not isinstance(params, dict):
            raise TypeError
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a latent-diffusion config (missing model.params.ddconfig)") from None
    if not dd.get("double_z", True):
        raise ValueError(f"{path}: only double_z (KL) autoencoders are supported")
    try:
        cfg = VAEConfig(
            ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
            attn_resolutions=tuple(dd.get("attn_resolutions", ())), resolution=dd["resolution"],
            z_channels=dd["z_channels"], embed_dim=params.get("embed_dim", dd["z_channels"]),
            in_channels=dd.get("in_channels", 3), out_channels=dd.get("out_ch", 3),
        )
        _check_types(cfg, "ddconfig.")
    except KeyError as err:
        raise ValueError(f"{path}: latent-diffusion config without model.params.ddconfig.{err.args[0]}") from None
    except (TypeError, AttributeError) as err:
        raise ValueError(f"{path}: latent-diffusion config with a value of the wrong type "
                         f"({' '.join(str(err).split())})") from None
    return cfg
