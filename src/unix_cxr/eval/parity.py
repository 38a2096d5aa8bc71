"""`unix-cxr parity DIR`: run every golden case of a directory in the ../shared/parity format through our public API.

The directory holds the authors' `config.json`, `harness.json` (special tokens, sampling settings, image
sizes), `model.safetensors` (authors' key layout), the VAE (`vae.safetensors` or `vae/*.safetensors` with
`vae/config.yaml`) and `caseN_<kind>.safetensors` + `.json`. Everything (sizes, layer and head counts, step
counts) is read from those files. Each case compares every `output/*` tensor it knows and reports the worst.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint.io import load_authors_weights
from ..checkpoint.safetensors_io import open_safetensors
from ..checkpoint.vae import load_vae
from ..config import UniXConfig, load_config
from ..data.packing import Latent, Text, VitImage, pack
from ..flow import shift_timesteps
from ..infer.image import ImageGenerator, SamplingTrace, cfg_combine, latents_to_nchw
from ..infer.report import ReportGenerator
from ..model.unix import UniX
from ..model.vae import LatentVAE, to_01, to_uint8_hwc
from ..model.vision import normalize_pixels
from ..train.objectives import training_forward

log = logging.getLogger(__name__)

# float32: elementwise |ours - golden| <= atol + rtol * |golden| (the goldens' README); uint8 images may differ
# by 1 where the float image sits on a rounding boundary.
TOLERANCES = {"default": (1e-5, 1e-4), "image": (1e-4, 0.0), "exact": (0.0, 0.0), "uint8": (1.0, 0.0)}
# bfloat16 (8 mantissa bits): max |ours - golden| <= tol * max |golden|; VAE-decoded images amplify latent
# differences roughly 30-fold, hence the looser image bound. Token ids and layouts stay exact.
BF16_TOLERANCES = {"default": 0.05, "image": 0.2, "uint8": 0.2, "exact": 0.0}


@dataclass
class CaseResult:
    name: str
    max_abs: float  # largest |ours - golden| over the case's tensors
    max_rel: float  # largest max|ours - golden| / max|golden| over the case's tensors
    passed: bool
    worst: str  # tensor with the largest error relative to its tolerance
    note: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        extra = f"  ({self.note})" if self.note else ""
        return (f"{self.name:<22} max_abs={self.max_abs:.3e}  max_rel={self.max_rel:.3e}  {status}"
                f"  worst={self.worst}{extra}")


class Comparison:
    """Accumulates tensor comparisons of one case."""

    def __init__(self, name: str, low_precision: bool = False):
        self.name, self.max_abs, self.max_rel, self.passed, self.worst, self.score = name, 0.0, 0.0, True, "-", -1.0
        self.low_precision = low_precision

    def check(self, label: str, ours: torch.Tensor, golden: torch.Tensor, kind: str = "default") -> None:
        ours, golden = torch.as_tensor(ours).detach().double().cpu(), golden.double().cpu()
        if ours.shape != golden.shape:
            ours = ours.reshape(golden.shape) if ours.numel() == golden.numel() else ours
        if ours.shape != golden.shape:
            self.passed, self.worst = False, f"{label} shape {tuple(ours.shape)} != {tuple(golden.shape)}"
            return
        for who, tensor in (("golden", golden), ("ours", ours)):  # NaN exceeds no tolerance: refuse it by name
            if not bool(torch.isfinite(tensor).all()):
                if self.score != float("inf"):  # name the first such tensor: where the non-finite values start
                    self.worst = f"{label} ({who} has {int((~torch.isfinite(tensor)).sum())} non-finite values)"
                self.passed, self.score = False, float("inf")
                return
        diff = (ours - golden).abs()
        if not diff.numel():
            return
        max_abs = float(diff.max())
        max_rel = max_abs / max(float(golden.abs().max()), 1e-12)  # relative to the tensor's largest magnitude
        if self.low_precision and kind != "exact":
            score = max_abs / (BF16_TOLERANCES[kind] * float(golden.abs().max()) + 1e-30)
        else:
            atol, rtol = TOLERANCES[kind]
            score = float((diff / (atol + rtol * golden.abs()).clamp_min(1e-30)).max())
        self.max_abs, self.max_rel = max(self.max_abs, max_abs), max(self.max_rel, max_rel)
        if score > self.score:
            self.score, self.worst = score, label
        if score > 1.0:
            self.passed = False

    def fail(self, label: str, reason: str) -> None:
        """Fail the case for a reason that is no tolerance comparison (e.g. a broken invariant)."""
        self.passed, self.score, self.worst = False, float("inf"), f"{label} ({reason})"

    def result(self, note: str = "") -> CaseResult:
        return CaseResult(self.name, self.max_abs, self.max_rel, self.passed, self.worst, note)


@dataclass
class GoldenDir:
    root: Path
    cfg: UniXConfig
    harness: dict

    @classmethod
    def open(cls, root: str | Path) -> GoldenDir:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root}: no such golden folder")
        if not (root / "config.json").is_file() or not (root / "harness.json").is_file():
            raise ValueError(f"{root}: not a golden directory (config.json and harness.json are required)")
        harness = _read_json(root / "harness.json")
        overrides = {**cls.token_overrides(harness), **cls.sampling_overrides(harness),
                     "decoding.double_bos": False}  # the goldens' stand-in tokenizer adds no BOS of its own
        return cls(root, load_config(root, overrides), harness)

    @staticmethod
    def token_overrides(harness: dict) -> dict[str, int]:
        """The special-token ids of the harness as config overrides (the authors' config.json has none)."""
        names = {"bos": "bos_token_id", "eos": "eos_token_id", "start_of_image": "start_of_image",
                 "end_of_image": "end_of_image"}
        ids = harness.get("special_token_ids", {})
        return {f"tokens.{ours}": ids[theirs] for ours, theirs in names.items() if theirs in ids}

    @staticmethod
    def sampling_overrides(harness: dict) -> dict[str, object]:
        """The harness's sampling settings as config overrides."""
        names = {"num_timesteps": "num_timesteps", "timestep_shift": "infer_timestep_shift",
                 "cfg_text_scale": "cfg_text_scale", "cfg_interval": "cfg_interval",
                 "cfg_renorm_type": "cfg_renorm_type", "cfg_renorm_min": "cfg_renorm_min"}
        s = harness.get("settings", {})
        out: dict[str, object] = {f"sampling.{ours}": s[theirs] for ours, theirs in names.items() if theirs in s}
        if "gen_image" in s:
            out["sampling.image_size"] = s["gen_image"][0]
        return out

    def cases(self) -> list[Path]:
        return sorted(self.root.glob("case*_*.safetensors"))

    def vae_path(self) -> Path:
        single = self.root / "vae.safetensors"
        return single if single.is_file() else self.root / "vae"

    def gen_hw(self) -> tuple[int, int]:
        hw = self.harness.get("settings", {}).get("gen_image", [self.cfg.sampling.image_size] * 2)
        return int(hw[0]), int(hw[1])


def _read_json(path: Path) -> dict:
    """A JSON object from a golden folder; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_case(path: Path) -> dict[str, torch.Tensor]:
    """A golden case's tensors, unchecked: a non-finite golden FAILs by name in `Comparison.check` (and the
    additive attention masks of the training case hold -inf by design)."""
    with open_safetensors(path) as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def build_model(golden: GoldenDir, dtype: torch.dtype = torch.float32) -> UniX:
    """The model of a golden folder. Non-finite weights are loaded (with a warning naming the tensor) so that the
    cases using them FAIL by name, as any non-finite output or golden does (`Comparison.check`)."""
    model = UniX(golden.cfg).eval()
    load_authors_weights(model, golden.root / "model.safetensors", allow_non_finite=True)
    return model.to(dtype)


# ---- cases ---------------------------------------------------------------------------------------------
def case_vae(g: GoldenDir, t: dict, meta: dict, model: UniX, vae: LatentVAE, cmp: Comparison) -> None:
    images = t["input/image"].to(vae.dtype)
    with torch.no_grad():
        cmp.check("moments", vae.moments(images), t["output/moments"])
        cmp.check("latent_mean", vae.encode(images), t["output/latent_mean"])
        cmp.check("latent_sampled", vae.encode(images, sample=True, eps=t["input/posterior_eps"]),
                  t["output/latent_sampled"])
        decoded = vae.decode(t["input/decode_latent"])
        cmp.check("decoded", decoded, t["output/decoded"], "image")
        cmp.check("decoded_01", to_01(decoded), t["output/decoded_01"], "image")
        cmp.check("decoded_roundtrip", vae.decode(vae.encode(images)), t["output/decoded_roundtrip"], "image")


def case_vit(g: GoldenDir, t: dict, meta: dict, model: UniX, vae: LatentVAE | None, cmp: Comparison) -> None:
    pixels = normalize_pixels(t["input/image_uint8_hwc"], g.cfg.vision)
    cmp.check("pixel_values", pixels, t["input/pixel_values"])
    with torch.no_grad():
        cmp.check("vit_features", model.vision.features(pixels), t["output/vit_features"])
        cmp.check("vision_tokens", model.embed_images(pixels), t["output/vision_tokens"])


def case_understanding(g: GoldenDir, t: dict, meta: dict, model: UniX, vae: LatentVAE | None,
                       cmp: Comparison) -> str:
    engine = ReportGenerator(model)
    block = t["layout/text_block_token_ids"].tolist()
    steps = t["output/step_logits"].shape[0]
    state = engine.prefill(t["input/pixel_values"], [block], steps)
    cmp.check("image_block_hidden", state.image_hidden[0], t["output/image_block_hidden"])
    cmp.check("text_block_hidden", state.prompt_hidden[0], t["output/text_block_hidden"])
    logits = model.logits(state.prompt_hidden[0])
    cmp.check("text_block_logits", logits, t["output/text_block_logits"])
    cmp.check("last_position_logits", logits[-1], t["output/last_position_logits"])
    used = int(state.cache.lens[0])
    cmp.check("kv_cache_keys", state.cache.k[:, 0, :, :used].transpose(1, 2), t["output/kv_cache_keys"])
    cmp.check("kv_cache_values", state.cache.v[:, 0, :, :used].transpose(1, 2), t["output/kv_cache_values"])
    out = engine.decode(state, steps, keep_logits=True)
    step_logits = torch.stack([s[0] for s in out.step_logits])
    cmp.check("step_logits", step_logits, t["output/step_logits"][: step_logits.shape[0]])
    golden_ids = t["output/generated_tokens"]
    ours = torch.tensor([g.cfg.tokens.bos, *out.token_ids[0]])[: golden_ids.numel()]
    cmp.check("generated_tokens", ours, golden_ids, "exact")
    return f"tokens {ours.tolist()}"


def case_velocity(g: GoldenDir, t: dict, meta: dict, model: UniX, vae: LatentVAE | None, cmp: Comparison) -> None:
    engine = ImageGenerator(model, g.cfg.sampling)
    h, w = g.gen_hw()
    grid = (h // g.cfg.vae.downsample, w // g.cfg.vae.downsample)
    cond = engine.encode_context([t["input/prompt_ids"].tolist()])
    x_t = t["input/x_t"][None]
    tt = float(t["input/t"][0])
    v = engine.velocity(torch.cat([x_t, x_t]), tt, cond.with_empty_rows(1), grid)
    v_c, v_u = v[:1], v[1:]
    cmp.check("v_cond", v_c[0], t["output/v_cond"])
    cmp.check("v_uncond", v_u[0], t["output/v_uncond"])
    scale, rmin = float(meta.get("cfg_text_scale", 2.0)), float(meta.get("cfg_renorm_min", 0.0))
    for name, kind in (("v_cfg", "global"), ("v_cfg_renorm_channel", "channel"),
                       ("v_cfg_renorm_text_channel", "text_channel")):
        if f"output/{name}" in t:
            cmp.check(name, cfg_combine(v_c, v_u, scale, kind, rmin)[0], t[f"output/{name}"])


def case_sampling(g: GoldenDir, t: dict, meta: dict, model: UniX, vae: LatentVAE, cmp: Comparison) -> None:
    engine = ImageGenerator(model, g.cfg.sampling)
    h, w = meta.get("image_shape_hw", g.gen_hw())
    trace = SamplingTrace()
    latents = engine.sample([t["input/prompt_ids"].tolist()], h, w, init_noise=t["input/init_noise"][None],
                            trace=trace, num_timesteps=int(meta.get("num_timesteps_argument",
                                                                    g.cfg.sampling.num_timesteps)))
    cmp.check("timesteps", torch.tensor(trace.timesteps), t["output/timesteps"])
    cmp.check("step_x_t", torch.stack([x[0] for x in trace.x_t]), t["output/step_x_t"])
    cmp.check("step_velocity", torch.stack([v[0] for v in trace.velocity]), t["output/step_velocity"])
    cmp.check("final_latent_nchw", latents, t["output/final_latent_nchw"])
    tokens = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    cmp.check("final_latent_tokens", tokens, t["output/final_latent_tokens"])
    back = latents_to_nchw(tokens[None], latents.shape[2], latents.shape[3])
    if back.shape != latents.shape or not bool(((back == latents) | (back.isnan() & latents.isnan())).all()):
        cmp.fail("final_latent_tokens", "latents_to_nchw does not invert the token layout")
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype))
    cmp.check("decoded", decoded, t["output/decoded"], "image")
    cmp.check("decoded_01", to_01(decoded), t["output/decoded_01"], "image")
    cmp.check("image_uint8_hwc", to_uint8_hwc(decoded)[0], t["output/image_uint8_hwc"], "uint8")


def golden_training_samples(t: dict, meta: dict) -> list[list]:
    """Rebuild the packed samples from the golden layout: split lengths/modes + the packed text ids.

    A "full" split is a ViT image when its first content row is a ViT token row, else a clean VAE image; latent
    images are cropped from the padded latent batch to their `patchified_vae_latent_shapes`.
    """
    text_ids = t["input/packed_text_ids"].tolist()
    ce_rows = set(t["input/ce_loss_indexes"].tolist())
    vit_rows = set(t.get("input/packed_vit_token_indexes", torch.zeros(0)).tolist())
    vit = iter(t.get("input/vit_pixel_values", ()))
    latents = iter(t.get("input/padded_latent", ()))
    padded = t.get("input/padded_latent")
    default_hw = [tuple(padded.shape[-2:])] if padded is not None else []
    shapes = iter(t["input/patchified_vae_latent_shapes"].tolist() if "input/patchified_vae_latent_shapes" in t
                  else default_hw * len(padded if padded is not None else ()))
    samples, cursor, row = [], 0, 0
    for lens, modes in meta["split_lens_and_attn_modes_per_sample"]:
        sample = []
        for length, mode in zip(lens, modes, strict=True):
            if mode == "causal":
                ids = text_ids[cursor:cursor + length]
                sample.append(Text(ids[1:-1], loss=row in ce_rows))
                cursor += length
            elif mode == "full" and row + 1 in vit_rows:
                sample.append(VitImage(next(vit)))
                cursor += 2
            else:
                h, w = next(shapes)
                sample.append(Latent(next(latents)[:, :h, :w], noised=mode == "noise"))
                cursor += 2
            row += length
        samples.append(sample)
    return samples


def case_training(g: GoldenDir, t: dict, meta: dict, model: UniX, vae: LatentVAE | None, cmp: Comparison) -> None:
    batch = pack(golden_training_samples(t, meta), g.cfg)
    cmp.check("packed_text_ids", batch.text_ids, t["input/packed_text_ids"], "exact")
    cmp.check("packed_text_indexes", batch.text_indexes, t["input/packed_text_indexes"], "exact")
    cmp.check("packed_position_ids", batch.position_ids, t["input/packed_position_ids"], "exact")
    cmp.check("packed_vit_token_indexes", batch.vit_indexes, t["input/packed_vit_token_indexes"], "exact")
    cmp.check("packed_vae_token_indexes", batch.latent_indexes, t["input/packed_vae_token_indexes"], "exact")
    cmp.check("packed_latent_position_ids", batch.latent_position_ids, t["input/packed_latent_position_ids"], "exact")
    cmp.check("ce_loss_indexes", batch.ce_indexes, t["input/ce_loss_indexes"], "exact")
    cmp.check("packed_label_ids", batch.ce_labels, t["input/packed_label_ids"], "exact")
    dense = batch.layout.dense()
    for s, (start, end) in enumerate(batch.layout.sample_bounds()):
        golden_mask = t[f"input/nested_attention_mask_{s}"] == 0
        cmp.check(f"attention_mask_{s}", dense[start:end, start:end], golden_mask, "exact")
    shift = float(meta.get("timestep_shift_from_config", g.cfg.train_timestep_shift))
    raw = t["input/packed_timesteps_raw"]
    first_token = torch.searchsorted(batch.latent_image_ids, torch.arange(batch.num_latent_images))
    timesteps = shift_timesteps(torch.sigmoid(raw[first_token]), shift)
    out = training_forward(model, batch, noise=t["input/noise"], timesteps=timesteps)
    cmp.check("ce", out.ce, t["output/ce"])
    cmp.check("mse", out.mse, t["output/mse"])


CASES = {"vae": case_vae, "vit": case_vit, "understanding": case_understanding, "velocity": case_velocity,
         "sampling": case_sampling, "training": case_training}


def run_parity(root: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> list[CaseResult]:
    """Every case of a golden folder, with the model and each case's inputs on `device`. A broken folder (no
    config, unreadable weights) is a ValueError naming the file; a case that cannot be run (an unreadable or
    incomplete golden file, an error while computing it) is a FAIL of that case with the reason, and the other
    cases still run."""
    golden = GoldenDir.open(root)
    model = build_model(golden, dtype).to(device)
    vae: LatentVAE | None = None
    results = []
    for path in golden.cases():
        kind = path.stem.split("_", 1)[1]
        if kind not in CASES:
            results.append(CaseResult(path.stem, 0.0, 0.0, False, "-", f"unknown case kind {kind!r}"))
            continue
        if kind in ("vae", "sampling") and vae is None:
            vae = load_vae(golden.vae_path(), golden.cfg.vae, dtype=dtype, allow_non_finite=True).to(device)
        cmp = Comparison(path.stem, low_precision=dtype != torch.float32)
        try:
            tensors = _read_case(path)
            if kind != "training":  # training_forward and UniX.forward move what they need themselves
                tensors = {k: v.to(device) if k.startswith("input/") else v for k, v in tensors.items()}
            meta_path = path.with_suffix(".json")
            meta = _read_json(meta_path) if meta_path.is_file() else {}
            with torch.inference_mode():
                note = CASES[kind](golden, tensors, meta, model, vae, cmp)
        except (KeyError, StopIteration) as err:  # a golden file without a tensor this case needs
            results.append(CaseResult(path.stem, 0.0, 0.0, False, "-", f"incomplete golden case: {err!r}"))
            continue
        except Exception as err:
            log.debug("%s raised", path.stem, exc_info=True)
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            results.append(CaseResult(path.stem, 0.0, 0.0, False, "-", f"error: {type(err).__name__}: {reason}"))
            continue
        results.append(cmp.result(note or ""))
    if not results:
        raise ValueError(f"{root}: no case*_*.safetensors files")
    return results
