"""Training recipes: a typed, strict YAML format for one or more chained stages (spec 5.1-5.4).

    model: tiny                      # a load_config source: preset, recipe file, authors' config.json, release folder
    model_overrides: {}              # dotted overrides of the model config
    init: null                       # weights to start from: a release folder (ours or the authors') or a
                                     # Janus-Pro folder (stage 1); null = random
    copy_init_moe: true              # from a Janus-Pro folder: generation expert = a copy of the und expert (logged)
    tokenizer: path/to/tokenizer     # a folder with tokenizer.json (transformers' AutoTokenizer, local files only)
    vae: null                        # a VAE folder to copy into the exported release folders
    precision: fp32                  # fp32 | bf16-mixed (fp32 masters, bf16 compute) | bf16 (authors': all bf16)
    seed: 4396
    keep_freed_memory: true          # glibc reuses freed blocks, no page faults per step (utils.memory); resident
                                     # memory stays near the step's peak
    stages:                          # run in this order; each starts from the previous stage's result
      und_sft:
        kind: und_sft                # und_sft (stage 1) | gen_pt (stage 2) | gen_ft (stage 3)
        steps: 3840
        global_batch_size: 256       # samples per optimizer step, over all ranks
        optim: {lr: 1.0e-4, warmup_steps: 80}
        data:
          micro_batch_size: 32       # samples per packed micro-batch (per rank); accumulation follows
          groups:
            vlm_sft: {kind: chat, path: data/stage1_train.jsonl}

Three preparation kinds run before the model stages of the phantom recipe (`phantom-tiny`): `phantom_data` draws
phantom radiographs and writes the stage files and a tokenizer (settings under `phantom:`,
`unix_cxr.train.phantom_data`), `vae` trains a small KL-f16 VAE and caches latents with it (settings under `vae:`,
`unix_cxr.train.vae_stage`), `vision` trains the SigLIP tower on the phantoms' findings and exports the weights
the next model stage starts from (settings under `vision:`, `unix_cxr.train.vision_stage`). In any string of a
recipe, `${output}` stands for the run's `--output` folder, so a recipe can name the files its own earlier stages
write (`tokenizer: ${output}/data/tokenizer`).

Stages and data groups are mappings keyed by name, so every field has a dotted path. Overrides (`key=value`,
values read as YAML) apply to the recipe (`precision=bf16-mixed`), to one stage (`stages.und_sft.steps=100`), or,
when they start with a stage field, to every stage (`optim.lr=2e-4`, `data.micro_batch_size=8`). Unknown keys
are an error naming them. Shipped recipes live in `unix_cxr/recipes/` with `kind: train` at the top.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..config import apply_overrides, check_value, parse_overrides

MODEL_KINDS = ("und_sft", "gen_pt", "gen_ft")
PREPARATION_KINDS = ("phantom_data", "vae", "vision")  # stages that prepare files or weights for the model stages
STAGE_KINDS = MODEL_KINDS + PREPARATION_KINDS
OUTPUT = "${output}"  # in recipe strings: the run's --output folder
EXPERTS = ("und", "gen", "both")
PRECISIONS = ("fp32", "bf16-mixed", "bf16")
VAE_PRECISIONS = ("fp32", "bf16-mixed", "auto")
GROUP_KINDS = ("chat", "caption")
ADAMW_IMPLEMENTATIONS = ("fused", "foreach", "for-loop")  # train/optimizer.py
# what each stage trains by default (spec 5.1 / 5.4): stage 1 the understanding side, stages 2-3 the generation side
DEFAULT_EXPERTS = {"und_sft": "und", "gen_pt": "gen", "gen_ft": "gen"}


@dataclass
class OptimConfig:
    """AdamW with a constant (or cosine) schedule after a linear warm-up; the released defaults (spec 5.4)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-15
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    min_lr: float = 1e-7  # cosine only
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    implementation: str = "fused"  # fused | foreach | for-loop (train/optimizer.py; for-loop: the demo model's)


@dataclass
class GroupConfig:
    """One data group of the mixture: a chat JSONL (stage 1) or a caption JSONL with a latent cache (stages 2-3)."""

    kind: str = "chat"
    path: str | None = None
    weight: float = 1.0
    image_root: str | None = None  # relative image paths start here (default: the JSONL's folder)
    latents: str | None = None  # caption groups: the latent cache folder (`unix-cxr data cache-latents`)
    pad: str = "black"  # chat groups: SigLIP squaring; the released training pads black (their evaluation: white)
    caption_dropout: float = 0.1  # caption groups: CFG text dropout (spec 3.4)
    posterior: str = "sample"  # caption groups: sample the VAE posterior as the authors do, or "mean"


@dataclass
class DataConfig:
    micro_batch_size: int = 32  # samples per packed micro-batch per rank
    max_tokens: int | None = None  # also cap a micro-batch's tokens (None: by samples only)
    max_tokens_per_sample: int = 10000  # the released max_seq_len; longer samples are skipped
    groups: dict[str, GroupConfig] = field(default_factory=dict)


@dataclass
class PhantomDataConfig:
    """A `phantom_data` stage: phantoms for training and validation (different seeds), stage files, tokenizer."""

    train: int = 2000  # training phantoms
    val: int = 200  # validation phantoms (never trained on)
    train_seed: int = 0
    val_seed: int = 1
    size: int = 128  # side of the phantom PNGs (the transforms resize to the model's sizes)
    vocab_size: int | None = None  # BPE vocabulary incl. the special tokens (None: the model's vocab_size)


@dataclass
class CacheConfig:
    """One latent cache a `vae` stage writes with its VAE, to `OUTPUT/<stage>/latents/<name>/`."""

    input: str | None = None  # a caption JSONL (or a folder of images)
    image_root: str | None = None
    store: str = "moments"  # moments | mean | sample (unix_cxr.data.latent_cache)


@dataclass
class VAEStageConfig:
    """A `vae` stage: trains the model config's VAE (`vae:` of the model) on images, then caches latents."""

    images: str | None = None  # a folder of images or a caption JSONL to train on
    image_root: str | None = None
    size: int = 64  # training and caching side (a multiple of 16)
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    edge_weight: float = 0.0  # L1 of the error's pixel differences: keeps thin lines (tubes, leads) sharper
    kl_weight: float = 1.0e-6
    precision: str = "fp32"  # fp32 | bf16-mixed (fp32 weights, bf16 autocast) | auto (bf16-mixed where the device
    #                          does bf16 in hardware, utils.dtype_policy.native_bf16; fp32 elsewhere)
    normalize: bool = True  # fold the latents' mean and std into the VAE so the config's scale / shift whiten them
    statistics_images: int = 2048  # the latent statistics and the summary's errors read the first this many images
    cache: dict[str, CacheConfig] = field(default_factory=dict)


@dataclass
class RepaConfig:
    """REPA (stage 2; `train.repa`): off while weight is 0. The paper: RadDINO, weight 0.5, the eighth layer."""

    weight: float = 0.0
    encoder: str = "raddino"  # raddino (a local Hugging Face folder in `path`) | patch (a fixed offline stand-in)
    path: str | None = None
    layer: int = 8  # 1-based LLM layer whose output is aligned (the released code's index 8 is layer: 9)
    projector_dim: int = 2048
    image_size: int = 224  # encoder input side: RadDINO at 224 px gives 16 x 16 patches = the 256 px latent grid
    inputs: str = "unit"  # unit: images in [0, 1]; released-wrap: the released uint8 wrap of [-1, 1] (ablation)
    pad: str = "white"  # how images are squared for the encoder (as the latent cache squares them)


@dataclass
class VisionStageConfig:
    """A `vision` stage: the SigLIP tower learns the findings of phantoms (a phantom folder with specs.jsonl)."""

    phantoms: str | None = None  # folder written by `unix-cxr data phantom` (images/ + specs.jsonl)
    val: str | None = None  # another such folder, only scored (summary.json)


@dataclass
class ValidationConfig:
    """Held-out passes of a model stage (`train.validation`); off while `every` is 0.

    Each pass reads the same micro-batches of `groups` (held-out files, the kinds of `data.groups`; no caption
    dropout, fixed noise), logs the held-out CE / MSE, and, when the run has a sampler (`unix-cxr train` gives
    one), writes a few generated reports (chat groups) and images (caption groups) under `samples/step-N/`.
    """

    every: int = 0  # optimizer steps between passes, and one at the end of the stage; 0: no validation
    batches: int = 4  # micro-batches per rank and pass (the first ones of the held-out files, in file order)
    samples: int = 4  # generated reports / images per pass (0: losses only)
    groups: dict[str, GroupConfig] = field(default_factory=dict)


@dataclass
class StageConfig:
    kind: str = "und_sft"
    steps: int = 100
    global_batch_size: int = 256
    experts: str | None = None  # und | gen | both (the paper's joint ablation); None: the stage's default
    ce_weight: float = 1.0
    mse_weight: float = 1.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)
    lora: dict[str, Any] = field(default_factory=dict)  # peft LoRA instead of full training ({}: off; train.lora)
    ema_decay: float | None = None  # keep an EMA of the trained weights (the authors: 0.9999); exported as final-ema/
    checkpoint_every: int = 100  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    activation_checkpointing: bool = False  # recompute each decoder / SigLIP layer in backward (less memory)
    compile: bool = False  # torch.compile each decoder layer (applied from outside the model, before FSDP2)
    phantom: PhantomDataConfig = field(default_factory=PhantomDataConfig)  # kind phantom_data only
    vae: VAEStageConfig = field(default_factory=VAEStageConfig)  # kind vae only
    vision: VisionStageConfig = field(default_factory=VisionStageConfig)  # kind vision only

    @property
    def prepares(self) -> bool:
        """A preparation stage (phantom_data, vae) rather than a UniX training stage."""
        return self.kind in PREPARATION_KINDS

    @property
    def exports_weights(self) -> bool:
        """Its `final/` holds UniX weights that the next model stage starts from (model stages and `vision`)."""
        return self.kind in (*MODEL_KINDS, "vision")

    @property
    def trained_experts(self) -> str:
        return self.experts or DEFAULT_EXPERTS[self.kind]


@dataclass
class TrainRecipe:
    kind: str = "train"
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    copy_init_moe: bool = True  # init from a Janus-Pro folder: the generation expert starts as a copy of the und one
    tokenizer: str | None = None
    vae: str | None = None  # a VAE folder copied into every exported release folder (so it can draw images)
    precision: str = "fp32"
    seed: int = 4396
    tensorboard: bool = True  # TensorBoard scalars in OUTPUT/<stage>/tensorboard/ (needs the tensorboard package)
    keep_freed_memory: bool = True  # glibc keeps freed blocks for the next step instead of unmapping them
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def validate(self) -> TrainRecipe:
        if self.kind != "train":
            raise ValueError(f"not a training recipe (kind {self.kind!r}, expected 'train')")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.stages:
            raise ValueError("a training recipe needs at least one stage")
        for name, st in self.stages.items():
            where = f"stages.{name}"
            if st.kind not in STAGE_KINDS:
                raise ValueError(f"{where}.kind must be one of {STAGE_KINDS}, got {st.kind!r}")
            if st.experts is not None and st.experts not in EXPERTS:
                raise ValueError(f"{where}.experts must be one of {EXPERTS}, got {st.experts!r}")
            if st.steps < 1 or st.global_batch_size < 1 or st.data.micro_batch_size < 1:
                raise ValueError(f"{where}: steps, global_batch_size and data.micro_batch_size must be positive")
            if st.ema_decay is not None and not 0.0 <= st.ema_decay <= 1.0:
                raise ValueError(f"{where}.ema_decay must lie in [0, 1], got {st.ema_decay}")
            if st.repa.weight < 0 or st.repa.inputs not in ("unit", "released-wrap") or st.repa.layer < 1:
                raise ValueError(f"{where}.repa: weight must be >= 0, inputs 'unit' or 'released-wrap', layer >= 1")
            if st.repa.weight > 0 and st.repa.encoder == "raddino" and not st.repa.path:
                raise ValueError(f"{where}.repa.path is not set (a local RadDINO folder; or repa.weight=0)")
            if st.lora and st.ema_decay is not None:
                raise ValueError(f"{where}: lora and ema_decay together are not supported (average the merged run)")
            if st.checkpoint_every < 1 or st.keep_checkpoints < 1:
                raise ValueError(f"{where}: checkpoint_every and keep_checkpoints must be positive")
            if st.kind == "phantom_data":
                _check_phantom(st.phantom, f"{where}.phantom")
                continue
            if st.optim.schedule not in ("constant", "cosine"):
                raise ValueError(f"{where}.optim.schedule must be 'constant' or 'cosine', got {st.optim.schedule!r}")
            if st.optim.implementation not in ADAMW_IMPLEMENTATIONS:
                raise ValueError(f"{where}.optim.implementation must be one of {ADAMW_IMPLEMENTATIONS}, "
                                 f"got {st.optim.implementation!r}")
            if not st.optim.lr > 0 or st.optim.warmup_steps < 0:
                raise ValueError(f"{where}.optim: lr must be positive and warmup_steps non-negative")
            if st.kind == "vae":
                _check_vae(st.vae, f"{where}.vae")
                continue
            if st.kind == "vision":
                if not st.vision.phantoms:
                    raise ValueError(f"{where}.vision.phantoms is not set (a phantom folder with specs.jsonl)")
                continue
            if not st.data.groups:
                raise ValueError(f"{where}.data.groups: no data groups")
            _check_validation(st.validation, f"{where}.validation")
            named = [(f"{where}.{part}.groups.{gname}", g) for part, groups in
                     (("data", st.data.groups), ("validation", st.validation.groups)) for gname, g in groups.items()]
            for gw, g in named:
                if g.kind not in GROUP_KINDS:
                    raise ValueError(f"{gw}.kind must be one of {GROUP_KINDS}, got {g.kind!r}")
                if not g.path:
                    raise ValueError(f"{gw}.path is not set (give it as {gw}.path=FILE)")
                if g.kind == "caption" and not g.latents:
                    raise ValueError(f"{gw}.latents is not set (a latent cache folder from data cache-latents)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_output(self, output: str | Path) -> TrainRecipe:
        """A copy with every `${output}` in its strings replaced by the run folder `output`."""
        def resolve(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace(OUTPUT, str(output))
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            return value

        return _build(TrainRecipe, resolve(self.to_dict()), "recipe").validate()


def _check_validation(v: ValidationConfig, where: str) -> None:
    if v.every < 0 or v.batches < 1 or v.samples < 0:
        raise ValueError(f"{where}: every and samples must be >= 0 and batches positive")
    if v.every and not v.groups:
        raise ValueError(f"{where}.groups: no held-out data groups (or validation.every=0)")


def _check_phantom(p: PhantomDataConfig, where: str) -> None:
    if p.train < 1 or p.val < 1:
        raise ValueError(f"{where}: train and val must be positive (phantoms to draw)")
    if p.train_seed == p.val_seed:
        raise ValueError(f"{where}: train_seed and val_seed must differ (the validation phantoms are unseen)")
    if p.size % 16 or not 64 <= p.size <= 512:
        raise ValueError(f"{where}.size must be a multiple of 16 from 64 to 512, got {p.size}")
    if p.vocab_size is not None and p.vocab_size < 8:
        raise ValueError(f"{where}.vocab_size must be at least 8, got {p.vocab_size}")


def _check_vae(v: VAEStageConfig, where: str) -> None:
    if not v.images:
        raise ValueError(f"{where}.images is not set (a folder of images or a caption JSONL to train on)")
    if v.size % 16 or v.size < 16:
        raise ValueError(f"{where}.size must be a positive multiple of 16, got {v.size}")
    if v.precision not in VAE_PRECISIONS:
        raise ValueError(f"{where}.precision must be one of {VAE_PRECISIONS}, got {v.precision!r}")
    if v.statistics_images < 1:
        raise ValueError(f"{where}.statistics_images must be positive, got {v.statistics_images}")
    if min(v.l1_weight, v.l2_weight, v.edge_weight, v.kl_weight) < 0 or v.l1_weight + v.l2_weight <= 0:
        raise ValueError(f"{where}: the loss weights must be non-negative, with l1_weight + l2_weight > 0")
    for name, c in v.cache.items():
        if not c.input:
            raise ValueError(f"{where}.cache.{name}.input is not set (a caption JSONL or a folder of images)")
        if c.store not in ("moments", "mean", "sample"):
            raise ValueError(f"{where}.cache.{name}.store must be moments, mean or sample, got {c.store!r}")


# ---- strict building ------------------------------------------------------------------------------------------
_NESTED = {"stages": StageConfig, "groups": GroupConfig, "cache": CacheConfig}  # mapping fields: name -> dataclass


def _build(cls, data: Any, where: str):
    """Like the model config's builder (unknown keys and wrong types name themselves), plus the name -> settings
    mappings of stages and data groups."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown recipe keys {unknown} (known: {sorted(fields)})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default is dataclasses.MISSING else \
            fields[name].default
        if name in _NESTED:
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{name}: expected a mapping of name -> settings")
            kwargs[name] = {str(k): _build(_NESTED[name], v or {}, f"{where}.{name}.{k}") for k, v in value.items()}
        elif dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        elif isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{name} must be a mapping, got {value!r}")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = check_value(value, default, fields[name].type, f"{where}.{name}")
    return cls(**kwargs)


def shipped_recipes() -> dict[str, str]:
    """Name -> first comment line of every training recipe shipped in unix_cxr/recipes/."""
    out = {}
    for entry in sorted(files("unix_cxr").joinpath("recipes").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        text = entry.read_text()
        if not any(line.strip() == "kind: train" for line in text.splitlines()):
            continue
        first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        out[entry.name[: -len(".yaml")]] = first
    return out


def _read(source: str | Path) -> dict[str, Any]:
    text: str
    if isinstance(source, str) and source in shipped_recipes():
        text, where = files("unix_cxr").joinpath("recipes", f"{source}.yaml").read_text(), f"recipe {source}"
    else:
        path = Path(source)
        if not path.is_file():
            known = ", ".join(shipped_recipes())
            raise ValueError(f"recipe {source}: no such file or shipped recipe (shipped: {known})")
        text, where = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a recipe must be a mapping, got {type(data).__name__}")
    return data


def _spread(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Stage-field overrides without a `stages.` prefix go to every stage."""
    stage_fields = {f.name for f in dataclasses.fields(StageConfig)}
    recipe_fields = {f.name for f in dataclasses.fields(TrainRecipe)}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        head = key.split(".", 1)[0]
        if head not in recipe_fields and head in stage_fields:
            for name in data.get("stages") or {}:
                out[f"stages.{name}.{key}"] = value
        else:
            out[key] = value
    return out


def _complete(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe as a full nested dict (every default present), so that dotted overrides find their keys."""
    return json.loads(json.dumps(_build(TrainRecipe, data, "recipe").to_dict()))


def load_recipe(source: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TrainRecipe:
    """A shipped recipe name or a YAML path, plus dotted overrides (see the module doc); validated."""
    data = _complete(_read(source))
    changes = _spread(data, parse_overrides(overrides))
    for key in [k for k in changes if k.startswith("model_overrides.")]:  # model config keys stay dotted
        data["model_overrides"][key[len("model_overrides."):]] = changes.pop(key)
    if changes:
        data = apply_overrides(data, changes, "recipe")
    return _build(TrainRecipe, data, "recipe").validate()


def save_recipe(recipe: TrainRecipe, path: Path) -> None:
    from ..utils.atomic import write_atomic

    write_atomic(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
