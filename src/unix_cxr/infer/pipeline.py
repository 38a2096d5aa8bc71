"""`UniXPipeline`: one UniX model behind a small API -- reports from radiographs, radiographs from reports.

    from unix_cxr.infer.pipeline import UniXPipeline

    pipe = UniXPipeline.from_pretrained("path/to/release", device="cuda")   # or "tiny": random weights, for tests
    [rep] = pipe.report(["cxr.png"])            # Report(text, token_ids, finished, labels, seconds)
    [img] = pipe.generate([rep.text], seed=0)   # Image(pixels (S, S, 3) uint8, seed, prompt, seconds)

* :meth:`UniXPipeline.report`: images (file paths -- PNG, JPEG or DICOM through
  :func:`unix_cxr.data.imageio.read_image` --, PIL images or numpy arrays) -> one :class:`Report` each, greedy unless
  the decoding settings sample; ``on_token`` streams the tokens as they are chosen; ``labels=True`` adds CheXpert
  labels from the pipeline's ``labeler`` (any object with ``label_many(texts)`` or ``label(text)``, e.g.
  :class:`unix_cxr.eval.labeler.Labeler`; this layer does not import the evaluation code itself).
* :meth:`UniXPipeline.generate`: reports -> ``n`` :class:`Image` each, drawn from the report's :func:`t2i_prompt`
  by flow-matching Euler sampling; ``on_step`` reports the progress of the Euler updates.
* :meth:`UniXPipeline.read` / :meth:`UniXPipeline.draw`: the ``UnifiedPipeline`` protocol of
  :mod:`unix_cxr.eval.cycle` (texts and uint8 arrays only), thin wrappers over the two above.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from ..config import DecodingConfig, SamplingConfig, SpecialTokens
from ..data.writers import FINDINGS_AND_IMPRESSION, IMAGE_TOKEN, PROMPT_TEMPLATES
from ..utils.dtype_policy import choose_dtype
from .quantize import QUANTIZE_CHOICES, quantize_decoding

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_REPORT_PROMPT", "DEMO_MODEL", "RANDOM_PRESETS", "Image", "Report", "UniXPipeline", "as_grey_uint8",
           "demo_model_path", "resolve_dtype", "t2i_prompt"]

DEFAULT_REPORT_PROMPT = PROMPT_TEMPLATES[FINDINGS_AND_IMPRESSION][0]
"""The report prompt of :class:`UniXPipeline`: template 1 of the authors' FINDINGS-and-IMPRESSION set (spec §6.3)."""

RANDOM_PRESETS = ("tiny",)
"""Model names :meth:`UniXPipeline.from_pretrained` builds with random weights (for tests), instead of a folder."""

DEMO_MODEL = "demo"
"""The model name of the demo model shipped inside the package (:func:`demo_model_path`)."""


def demo_model_path() -> Path:
    """The release folder of the shipped demo model: the phantom model that `unix-cxr train --config phantom-tiny`
    trains (synthetic phantom radiographs only; docs/training.md), in the package's ``assets/demo/model``."""
    from importlib.resources import files

    return Path(str(files("unix_cxr").joinpath("assets", "demo", "model")))


@dataclass
class Report:
    """One generated report.

    ``text``: the decoded text (special tokens skipped, stripped); ``token_ids``: the generated ids without the start
    BOS and the stop EOS; ``finished``: True when the report ended with EOS (False: ``max_new_tokens`` was reached);
    ``labels``: the 14 CheXpert labels of ``text`` when asked for, else None; ``seconds``: the wall time of the
    image's batch (prefill and decoding), shared equally among the images of that batch.
    """

    text: str
    token_ids: list[int]
    finished: bool
    labels: dict[str, int | None] | None
    seconds: float


@dataclass
class Image:
    """One generated image: ``pixels`` (H, W, 3) uint8; ``seed`` of the call that drew it; ``prompt`` the
    text-to-image prompt it was drawn from; ``seconds`` the wall time of its batch (sampling and VAE decoding),
    shared equally among the images of that batch."""

    pixels: np.ndarray
    seed: int
    prompt: str
    seconds: float


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu",
                  stored: torch.dtype | None = None) -> torch.dtype:
    """The dtype the pipeline runs in: :func:`unix_cxr.utils.dtype_policy.choose_dtype` (``"auto"``: bfloat16 on
    CUDA with bf16 arithmetic and on native-bf16 CPUs for bf16-stored weights, float32 otherwise; an explicit
    ``"float32"``, ``"bfloat16"``, ``"float16"`` or torch dtype as given). ValueError for anything else."""
    return choose_dtype(dtype, device, stored).dtype


def t2i_prompt(report: str) -> str:
    """The text-to-image prompt of a report: its FINDINGS text without the ``FINDINGS:`` prefix, as in the authors'
    generation data (spec §6.3, ``unix_cxr.data.writers.write_captions``).

    A report in the form ``FINDINGS: ... [IMPRESSION: ...]`` gives its findings (the impression when it has no
    findings); any other text is used whole, with its white space collapsed.
    """
    from ..data.records import split_report

    text = " ".join(report.split())
    try:
        findings, impression = split_report(text)
    except ValueError:
        return text
    return findings or impression


def as_grey_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 1) / (H, W, 3) RGB uint8 -> (H, W) uint8; RGB through ITU-R 601 luma (PIL ``"L"``, as
    ``unix_cxr.data.imageio`` reads colour files). A 2-D float image in [0, 1] is quantised as the transforms do."""
    from ..data.transforms import as_uint8_grey

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return as_uint8_grey(arr)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"RGB images must be uint8, got {arr.dtype}")
    if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        return np.ascontiguousarray(arr[..., 0])
    return np.asarray(PILImage.fromarray(arr, "RGB").convert("L"))


def _grey_input(image: Any, index: int) -> np.ndarray:
    """One input of :meth:`UniXPipeline.report` -> (H, W) uint8.

    A path is read by :func:`unix_cxr.data.imageio.read_image`; a PIL image follows the same rules as an image
    file (alpha on white, colour to luma, 16-bit grey scaled); an array goes through :func:`as_grey_uint8`.
    """
    from ..data.imageio import _pil_to_grey, read_image
    from ..data.transforms import as_uint8_grey

    if isinstance(image, (str, os.PathLike)):
        return as_uint8_grey(read_image(image))  # FileNotFoundError / ValueError naming the file
    try:
        if isinstance(image, PILImage.Image):
            return as_uint8_grey(_pil_to_grey(image, f"image {index} (PIL {image.mode})"))
        if isinstance(image, np.ndarray):
            return as_grey_uint8(image)
    except ValueError as err:
        raise ValueError(f"image {index}: {err}") from None
    raise ValueError(f"image {index}: expected a file path, a PIL image or a numpy array, got {type(image).__name__}")


def _as_list(items: Any, what: str, single: tuple[type, ...]) -> list[Any]:
    """``items`` as a list: one item of a ``single`` type becomes a list of one."""
    if isinstance(items, single):
        return [items]
    if isinstance(items, (Sequence, np.ndarray)) or hasattr(items, "__iter__"):
        return list(items)
    raise ValueError(f"{what}: expected one item or a list, got {type(items).__name__}")


def _checked_overrides(overrides: Mapping[str, Any] | None, config: type, what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; expected some of {sorted(names)}")
    return dict(overrides or {})


def _random_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every trainable weight ~ N(0, 0.02^2), every norm weight ~ 1 + 0.05 N(0, 1), from one CPU generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue  # fixed tables (sin-cos positions)
            noise = torch.randn(p.shape, generator=gen)
            parts = name.split(".")
            is_norm = p.dim() == 1 and parts[-1] == "weight" and len(parts) > 1 and "norm" in parts[-2].lower()
            p.copy_(1 + 0.05 * noise if is_norm else 0.02 * noise)
    return module


def _random_preset(name: str, dtype: torch.dtype, device: str | torch.device, tokens: SpecialTokens | None,
                   seed: int) -> tuple[Any, Any]:
    """UniX and its VAE for preset ``name``, randomly initialised (the global RNG is left untouched)."""
    from ..config import load_config
    from ..model.unix import UniX
    from ..model.vae import LatentVAE

    cfg = load_config(name)
    if tokens is not None:
        cfg.tokens = tokens
        cfg.validate()
    with torch.random.fork_rng(devices=[]):
        model = _random_init(UniX(cfg), seed)
        vae = _random_init(LatentVAE(cfg.vae), seed + 1)
    model = model.to(device=device, dtype=dtype)
    model.reset_fixed_tables()
    return model.eval(), vae.to(device=device, dtype=dtype).eval()


class _TokenStream:
    """The engine's per-step callback for one batch -> ``on_token({image index: token id})`` for the images that
    are still writing (ids up to, not including, their EOS: exactly their ``Report.token_ids``)."""

    def __init__(self, on_token: Callable[[dict[int, int]], None], first: int, rows: int, eos: int) -> None:
        self.on_token, self.first, self.eos = on_token, first, eos
        self.done = [False] * rows

    def __call__(self, ids: torch.Tensor) -> None:
        new: dict[int, int] = {}
        for row, token in enumerate(ids.tolist()):
            if self.done[row]:
                continue
            if token == self.eos:
                self.done[row] = True
            else:
                new[self.first + row] = int(token)
        if new:
            self.on_token(new)


class UniXPipeline:
    """A UniX model with this package's engines (:class:`~unix_cxr.infer.report.ReportGenerator`,
    :class:`~unix_cxr.infer.image.ImageGenerator`); implements ``unix_cxr.eval.cycle.UnifiedPipeline``.

    Args:
        model, vae, tokenizer: e.g. the fields of :func:`unix_cxr.checkpoint.release.load_release`'s result (or use
            :meth:`from_pretrained`); the VAE is needed for drawing only. The tokenizer needs
            ``encode(text, add_special_tokens=False)`` and ``decode(ids, skip_special_tokens=True)`` (a Hugging Face
            tokenizer).
        report_prompt: the instruction of ``report``/``read`` (default :data:`DEFAULT_REPORT_PROMPT`; a leading
            ``<image>`` tag is dropped: the engine places the image block itself). Encoded without special tokens.
        decoding: overrides of the model's :class:`~unix_cxr.config.DecodingConfig` (``max_new_tokens``,
            ``do_sample``, ``temperature``, ``top_p``, ``double_bos``).
        sampling: overrides of its :class:`~unix_cxr.config.SamplingConfig` (``num_timesteps``, ``cfg_text_scale``,
            ...; ``image_size`` too, unless ``image_size`` is given).
        image_size: side of the drawn images (default: the sampling image size, 512 for the release).
        pad: how an image is squared for SigLIP (``unix_cxr.data.transforms.siglip_transform``; "white" as the
            authors' evaluation).
        batch_size: images (or reports) per engine call.
        batch_invariant: drawing only. True (default): each image of a batch is sampled and decoded on its own, so
            an image is bit-identical whatever ``batch_size`` (batched float kernels round a row differently with
            other rows beside it). False: the rows of a batch go through the model together (more throughput on
            a GPU); same-seed images then differ by about a grey level between batch sizes.
        read_seed: seed of ``report``/``read`` when decoding samples (``do_sample``); greedy decoding needs none. With
            sampling the texts also depend on ``batch_size`` (one generator across each batch).
        progress: a progress bar over the batches.
        compile_decoding: run each report decoding step through ``torch.compile``
            (:class:`~unix_cxr.infer.report.ReportGenerator`'s ``compile``): a compile of tens of seconds on a CPU,
            then a faster step (docs/usage.md has the measured figures); off by default.
        labeler: what ``report(..., labels=True)`` labels the texts with: ``label_many(texts) -> [labels]`` or
            ``label(text) -> labels`` (e.g. :class:`unix_cxr.eval.labeler.Labeler`).

    Drawing uses the report's :func:`t2i_prompt` (findings without the ``FINDINGS:`` prefix), one CPU generator
    seeded with ``seed`` for the initial noise of all images in order (so the images do not depend on
    ``batch_size``), and gives (S, S, 3) uint8 arrays.
    """

    def __init__(self, model: Any, vae: Any, tokenizer: Any, *, report_prompt: str = DEFAULT_REPORT_PROMPT,
                 decoding: Mapping[str, Any] | None = None, sampling: Mapping[str, Any] | None = None,
                 image_size: int | None = None, pad: str = "white", batch_size: int = 4, read_seed: int = 0,
                 progress: bool = False, name: str = "UniX", labeler: Any = None,
                 batch_invariant: bool = True, compile_decoding: bool = False) -> None:
        from ..data.sources import as_tokenize
        from ..data.transforms import SIGLIP_PADS, vae_size
        from .image import ImageGenerator
        from .report import ReportGenerator

        if tokenizer is None:
            raise ValueError("UniXPipeline needs a tokenizer (the release folder has no tokenizer files?)")
        if pad not in SIGLIP_PADS:
            raise ValueError(f"pad must be one of {SIGLIP_PADS}, got {pad!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.vae, self.tokenizer = model, vae, tokenizer
        self.name = name
        self.labeler = labeler
        self.decoding = _checked_overrides(decoding, DecodingConfig, "decoding")
        self.sampling = _checked_overrides(sampling, SamplingConfig, "sampling")
        size = self.sampling.pop("image_size", None) if image_size is None else image_size
        self.sampling.pop("image_size", None)
        self.image_size = vae_size(size, model.cfg)
        self.report_prompt = self._strip_image_tag(report_prompt)
        self.pad = pad
        self.batch_size = batch_size
        self.read_seed = read_seed
        self.progress = progress
        self.batch_invariant = batch_invariant
        self._encode = as_tokenize(tokenizer)
        self.prompt_ids = self._encode(self.report_prompt)
        self.reporter = ReportGenerator(model, compile=compile_decoding)
        self.drawer = ImageGenerator(model, None, vae)

    @classmethod
    def from_pretrained(cls, path_or_preset: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "auto", *, tokenizer: Any = None,
                        special_tokens: SpecialTokens | Sequence[int] | None = None, init_seed: int = 0,
                        quantize: str = "none", pack: bool = True, **settings: Any) -> UniXPipeline:
        """A pipeline of a local release folder, or of a preset with random weights.

        Args:
            path_or_preset: a release folder (``config.json``, ``model.safetensors``, ``vae/``, tokenizer files;
                loaded by :func:`unix_cxr.checkpoint.release.load_release`, no hub access), ``"demo"`` (the
                demo model shipped in the package, :func:`demo_model_path`), or a name of
                :data:`RANDOM_PRESETS` (``"tiny"``): that configuration with random weights, for tests -- it
                says so in the log and its outputs mean nothing. An existing folder wins over a preset of the same
                name.
            device: where the model runs.
            dtype: ``"auto"`` (the one policy, :mod:`unix_cxr.utils.dtype_policy`: bfloat16 on CUDA with bf16
                arithmetic, and on a CPU with native bf16 when the weights are stored in bfloat16; float32
                otherwise, with bf16-stored weights kept in bfloat16 and upcast on the fly
                (:mod:`unix_cxr.infer.upcast`) under ``quantize`` or when float32 weights would take more than half
                of the available memory; the choice and its reason are logged, :func:`unix_cxr.infer.loading.
                load_for_inference`), ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype.
            tokenizer: overrides the folder's tokenizer; required for a preset (it has none).
            special_tokens: ``SpecialTokens`` or ``(bos, eos, boi, eoi)`` ids, for a model with another vocabulary
                than the released one (the folder's files don't say).
            init_seed: seed of a preset's random weights (the global RNG is left untouched).
            quantize: ``"none"``, ``"int8"`` or ``"int4"`` (CPU): weight-only int8 / int4 for report decoding
                (:func:`unix_cxr.infer.quantize.quantize_decoding`; the generation expert keeps its weights).
            pack: on CPU, hold the linear layers in oneDNN's packed layout where that pays
                (:mod:`unix_cxr.infer.packed`; bf16: the same numbers, float32: the same to rounding); False keeps
                the plain weights (a release folder only; presets are never packed).
            settings: the keyword arguments of the constructor (``decoding``, ``sampling``, ``image_size``,
                ``batch_size``, ``labeler``, ...).

        Raises ValueError for a folder without weights, an unknown dtype or bad settings.
        """
        choose_dtype(dtype, device)  # a bad dtype or quantize mode fails before any file is read
        if quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
        if quantize == "int4" and torch.device(device).type != "cpu":
            raise ValueError(f"quantize='int4' runs on CPU only (PyTorch's CPU int4 kernel), not on {device}; use "
                             "'int8' or no quantization there")
        if special_tokens is not None and not isinstance(special_tokens, SpecialTokens):
            special_tokens = SpecialTokens(*special_tokens)
        path = Path(path_or_preset)
        if path_or_preset == DEMO_MODEL and not path.exists():
            path = demo_model_path()
            if not (path / "model.safetensors").is_file():
                raise ValueError(f"the demo model is not installed ({path} has no model.safetensors); reinstall "
                                 "unix-cxr, or pass a release folder")
            settings.setdefault("name", "UniX phantom demo (synthetic training data)")
        if isinstance(path_or_preset, str) and path_or_preset in RANDOM_PRESETS and not path.exists():
            torch_dtype = choose_dtype(dtype, device).dtype
            model, vae = _random_preset(path_or_preset, torch_dtype, device, special_tokens, init_seed)
            quantize_decoding(model, quantize)
            log.warning("UniX preset %r with RANDOM weights (init seed %d): for tests only, its reports and images "
                        "mean nothing", path_or_preset, init_seed)
            settings.setdefault("name", f"UniX {path_or_preset} (random weights)")
            if tokenizer is None:
                raise ValueError(f"preset {path_or_preset!r} has no tokenizer: pass tokenizer=...")
            return cls(model, vae, tokenizer, **settings)
        from .loading import load_for_inference

        release = load_for_inference(path, dtype, device, quantize, tokens=special_tokens, pack=pack)
        return cls(release.model, release.vae, tokenizer if tokenizer is not None else release.tokenizer, **settings)

    @staticmethod
    def _strip_image_tag(prompt: str) -> str:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        return prompt[len(IMAGE_TOKEN):] if prompt.startswith(IMAGE_TOKEN) else prompt

    def describe(self) -> dict[str, Any]:
        """Settings for a results card."""
        return {"name": self.name, "report_prompt": self.report_prompt, "decoding_overrides": dict(self.decoding),
                "sampling_overrides": dict(self.sampling), "image_size": self.image_size, "pad": self.pad,
                "batch_size": self.batch_size, "read_seed": self.read_seed,
                "t2i_prompt": "FINDINGS text without the 'FINDINGS:' prefix"}

    def _batches(self, n: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(range(0, n, self.batch_size), desc=desc, unit="batch", disable=not self.progress)

    def _label(self, texts: list[str]) -> list[dict[str, int | None]]:
        label_many = getattr(self.labeler, "label_many", None)
        label_one = getattr(self.labeler, "label", None)
        if callable(label_many):
            labels = list(label_many(texts))
        elif callable(label_one):
            labels = [label_one(t) for t in texts]
        else:
            raise ValueError("report(..., labels=True) needs a labeler with label_many(texts) or label(text): "
                             "UniXPipeline(..., labeler=unix_cxr.eval.labeler.Labeler()), say")
        if len(labels) != len(texts):
            raise RuntimeError(f"labeler returned {len(labels)} label sets for {len(texts)} reports")
        return [dict(lab) for lab in labels]

    # ---- reports ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def report(self, images: Any, prompt: str | None = None, labels: bool = False,
               on_token: Callable[[dict[int, int]], None] | None = None) -> list[Report]:
        """A :class:`Report` for each image (greedy decoding unless the ``decoding`` settings sample).

        Args:
            images: one image or a list: file paths (PNG, JPEG, DICOM), PIL images or numpy arrays (uint8 or float in
                [0, 1] grey (H, W), uint8 (H, W, 3) RGB; a numpy array is always one image: pass several as a list).
            prompt: the instruction (default: the pipeline's ``report_prompt``; a leading ``<image>`` is dropped).
            labels: also label each text with the pipeline's ``labeler`` (ValueError when it has none).
            on_token: called at each decoding step with ``{image index: token id}`` of the images still writing;
                the ids streamed for an image are exactly its ``Report.token_ids`` (EOS is not sent).

        Raises ValueError (naming the image) for an input that is not an image, FileNotFoundError for a missing file.
        """
        from ..data.transforms import siglip_transform

        items = _as_list(images, "images", (str, os.PathLike, PILImage.Image, np.ndarray))
        if labels and self.labeler is None:
            raise ValueError("labels=True needs a labeler: UniXPipeline(..., labeler=...) or from_pretrained(..., "
                             "labeler=...), e.g. unix_cxr.eval.labeler.Labeler()")
        prompt_ids = self.prompt_ids if prompt is None else self._encode(self._strip_image_tag(prompt))
        vision = self.model.cfg.vision
        pixels = [siglip_transform(_grey_input(img, i), vision, pad=self.pad) for i, img in enumerate(items)]
        decoding = replace(self.reporter.decoding, **self.decoding)
        steps = decoding.max_new_tokens
        device = self.model.device
        generator = torch.Generator(device=device).manual_seed(self.read_seed) if decoding.do_sample else None
        out: list[Report] = []
        for start in self._batches(len(pixels), f"{self.name}: reading"):
            batch = torch.stack(pixels[start:start + self.batch_size])
            rows = batch.shape[0]
            began = time.perf_counter()
            blocks = [self.reporter.prompt_block(prompt_ids, decoding.double_bos)] * rows
            state = self.reporter.prefill(batch, blocks, steps)
            stream = None if on_token is None else _TokenStream(on_token, start, rows, self.reporter.tokens.eos)
            result = self.reporter.decode(state, steps, generator, decoding=decoding, on_token=stream)
            seconds = (time.perf_counter() - began) / rows
            out += [Report(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), list(ids), bool(done), None,
                           seconds) for ids, done in zip(result.token_ids, result.finished, strict=True)]
        unfinished = sum(not r.finished for r in out)
        if unfinished:
            log.info("%s: %d of %d reports stopped at max_new_tokens before EOS", self.name, unfinished, len(out))
        if labels and out:
            for rep, lab in zip(out, self._label([r.text for r in out]), strict=True):
                rep.labels = lab
        return out

    def read(self, images: Sequence[np.ndarray]) -> list[str]:
        """Report text of each image (the ``UnifiedPipeline`` protocol): ``[r.text for r in report(images)]``."""
        return [r.text for r in self.report(list(images))]

    # ---- images -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, reports: str | Sequence[str], n: int = 1, seed: int | None = None, steps: int | None = None,
                 cfg: float | None = None, size: int | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> list[Image]:
        """``n`` :class:`Image` for each report (report-major order), drawn from its :func:`t2i_prompt`.

        Args:
            reports: one report text or a list.
            n: images per report.
            seed: the seed of one CPU generator that draws the initial noise of every image in order: the same
                reports, ``n``, settings and seed give the same images, whatever ``batch_size``. None: a random
                seed (recorded in each ``Image.seed``).
            steps: points of the sampling time grid (the authors' ``num_timesteps``, default the model's or the
                pipeline's ``sampling`` setting): ``steps - 1`` Euler updates.
            cfg: text classifier-free-guidance scale (``cfg_text_scale``; 1 turns guidance off).
            size: side of the images (a multiple of the VAE factor, 16; default the pipeline's ``image_size``).
            on_step: called after each Euler update with ``(done, total)``, counted over the whole call: ``total`` =
                ``(steps - 1)`` x the number of sampler calls (images; batches when not ``batch_invariant``).

        Raises ValueError for a report that is not a string, ``n < 1``, a bad seed, ``steps < 2``, a size the VAE or
        the latent table cannot take, or a pipeline without VAE.
        """
        from ..data.transforms import vae_size
        from ..model.vae import to_uint8_hwc

        if self.vae is None:
            raise ValueError(f"{self.name}: drawing images needs the VAE (the release folder has no vae/?)")
        texts = _as_list(reports, "reports", (str,))
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"report {i}: expected a string, got {type(text).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if seed is None:
            seed = secrets.randbits(63)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        overrides = dict(self.sampling)
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
            overrides["num_timesteps"] = steps
        if cfg is not None:
            overrides["cfg_text_scale"] = float(cfg)
        settings = replace(self.drawer.sampling, **overrides)
        settings.validate()
        side = self.image_size if size is None else vae_size(size, self.model.cfg)
        if not texts:
            return []
        prompts = [t2i_prompt(r) for r in texts]
        if any(not p for p in prompts):
            log.warning("%s: %d empty text-to-image prompt(s): those images are drawn from [BOS][EOS] alone",
                        self.name, sum(not p for p in prompts))
        encoded = [self._encode(p) for p in prompts]
        ids = [e for e in encoded for _ in range(n)]
        prompt_of = [p for p in prompts for _ in range(n)]
        generator = torch.Generator().manual_seed(int(seed))
        updates = settings.num_timesteps - 1
        calls = len(ids) if self.batch_invariant else len(range(0, len(ids), self.batch_size))
        total, done = updates * calls, 0
        out: list[Image] = []
        for start in self._batches(len(ids), f"{self.name}: drawing"):
            chunk = ids[start:start + self.batch_size]
            began = time.perf_counter()
            parts = []
            for rows in ([[row] for row in chunk] if self.batch_invariant else [chunk]):
                callback = None
                if on_step is not None:
                    def callback(step: int, _total: int, before: int = done) -> None:
                        on_step(before + step, total)
                latents = self.drawer.sample(rows, side, side, generator=generator, on_step=callback, **overrides)
                parts.append(to_uint8_hwc(self.vae.decode(latents.to(self.vae.dtype))).cpu().numpy())
                done += updates
            pixels = np.concatenate(parts)
            seconds = (time.perf_counter() - began) / len(chunk)
            out += [Image(np.ascontiguousarray(a), int(seed), prompt_of[start + k], seconds)
                    for k, a in enumerate(pixels)]
        return out

    def draw(self, reports: Sequence[str], seed: int = 0) -> list[np.ndarray]:
        """An (S, S, 3) uint8 image for each report (the ``UnifiedPipeline`` protocol), from its :func:`t2i_prompt`:
        ``[i.pixels for i in generate(reports, seed=seed)]``."""
        return [img.pixels for img in self.generate(list(reports), seed=int(seed))]
