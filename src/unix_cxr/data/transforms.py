"""The two image transforms of UniX: what the SigLIP tower and what the VAE see.

Both start from a greyscale radiograph (a path, read with `unix_cxr.data.imageio.read_image`, or a 2-D array:
float in [0, 1] or uint8) and first quantise it to 8 bits, as the authors' pipelines see 8-bit JPEGs
(MIMIC-CXR-JPG) through PIL: for an 8-bit source every step below is bit-identical to theirs. The grey image is
replicated to three channels at the end.

SigLIP (spec 1.3, 4.1), `siglip_transform(image, cfg, pad=...)` -> float32 (3, S, S), S = VisionConfig.image_size:
  * pad="white" (default; the authors' evaluation, `eval/base/worker.py`): `thumbnail((S, S), LANCZOS)` keeping
    the aspect ratio, pasted at ((S - w) // 2, (S - h) // 2) on a white S x S canvas. PIL's thumbnail never
    enlarges: an image smaller than S stays small inside a white frame, exactly as in their code. Pass
    `upscale=True` to scale such an image up (aspect kept, LANCZOS) instead; larger images are unaffected.
  * pad="black": the same on a black canvas.
  * pad="squash": `resize((S, S), LANCZOS)` ignoring the aspect ratio (the authors' gradio demo).
  Then (x / 255 - pixel_mean) / pixel_std with the CXR statistics (`unix_cxr.model.vision.normalize_pixels`).

VAE (spec 1.5, 5.3), `vae_transform(image, size, cfg, pad=...)` -> float32 (3, size, size) in [-1, 1]:
  size defaults to SamplingConfig.image_size (512, the released generation size; stage 2 used 256) and must be
  a multiple of the VAE downsampling (16) with size / 16 <= max_latent_size. The authors' training images are
  squared offline ("aspect ratios are preserved by padding", the colour is not stated), so the default is
  resize-with-pad: the longer side is scaled (up or down) to `size` with LANCZOS and the image is centred on a
  WHITE canvas, the same padding the SigLIP branch sees. pad="black" pads black, pad="crop" scales the shorter
  side to `size` and crops the centre (loses the lateral or basal lung edges of non-square films), pad="squash"
  resizes to size x size. Then x / 255 * 2 - 1 (the authors' VAEImageTransform: mean 0.5, std 0.5).

`siglip_to_uint8` / `vae_to_uint8` invert the normalisations: (3, H, W) model input -> (H, W, 3) uint8, exactly
the 8-bit image the transform produced (`unix-cxr data preview` writes it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from unix_cxr.config import UniXConfig, VisionConfig
from unix_cxr.data.imageio import DEFAULT_MAX_PIXELS, read_image

log = logging.getLogger(__name__)

__all__ = ["SIGLIP_PADS", "VAE_PADS", "as_uint8_grey", "siglip_image", "siglip_to_uint8", "siglip_transform",
           "vae_image", "vae_size", "vae_to_uint8", "vae_transform"]

ImageLike = str | Path | np.ndarray
SiglipPad = Literal["white", "black", "squash"]
VaePad = Literal["white", "black", "crop", "squash"]
SIGLIP_PADS: tuple[str, ...] = ("white", "black", "squash")
VAE_PADS: tuple[str, ...] = ("white", "black", "crop", "squash")
_FILL = {"white": 255, "black": 0}
_LANCZOS = Image.Resampling.LANCZOS


def as_uint8_grey(image: ImageLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path or a 2-D grey array (float in [0, 1] or uint8) -> (H, W) uint8, round(x * 255)."""
    if isinstance(image, (str, Path)):
        image = read_image(image, max_pixels=max_pixels)
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D greyscale image (H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("empty image")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind != "f":
        raise ValueError(f"expected a float image in [0, 1] or uint8, got dtype {arr.dtype}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"float images must lie in [0, 1], got range [{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]")
    return np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)


def _centre_on_canvas(img: Image.Image, size: int, fill: int) -> Image.Image:
    canvas = Image.new("L", (size, size), fill)
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _contain_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Aspect-preserving size whose longer side is `size` (up- or down-scaling)."""
    scale = size / max(width, height)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def siglip_image(image: ImageLike, cfg: VisionConfig | None = None, *, pad: SiglipPad = "white",
                 upscale: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The 8-bit grey S x S image that the SigLIP transform normalises (see the module doc)."""
    cfg = cfg or VisionConfig()
    if pad not in SIGLIP_PADS:
        raise ValueError(f"SigLIP pad must be one of {SIGLIP_PADS}, got {pad!r}")
    size = cfg.image_size
    img = Image.fromarray(as_uint8_grey(image, max_pixels=max_pixels))
    if pad == "squash":
        return img.resize((size, size), _LANCZOS)
    if img.width <= size and img.height <= size:
        if upscale and max(img.size) < size:
            img = img.resize(_contain_size(img.width, img.height, size), _LANCZOS)
        elif max(img.size) < size:
            log.debug("image %dx%d is smaller than %d: kept at its size inside the %s frame (upscale=False, as "
                      "the authors' thumbnail)", img.width, img.height, size, pad)
    else:
        img.thumbnail((size, size), _LANCZOS)  # the authors' call (default reducing_gap) -> same pixels
    return _centre_on_canvas(img, size, _FILL[pad])


def siglip_transform(image: ImageLike, cfg: VisionConfig | None = None, *, pad: SiglipPad = "white",
                     upscale: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Radiograph -> float32 (3, S, S) SigLIP input, normalised with the CXR mean/std."""
    from unix_cxr.model.vision import normalize_grey  # imported here: it pulls in transformers

    cfg = cfg or VisionConfig()
    grey = np.asarray(siglip_image(image, cfg, pad=pad, upscale=upscale, max_pixels=max_pixels))
    return normalize_grey(grey, cfg)[0]


def vae_size(size: int | None, cfg: UniXConfig | None = None) -> int:
    """Check (or default) the VAE image side: a multiple of the VAE downsampling within the latent table."""
    cfg = cfg or UniXConfig()
    size = cfg.sampling.image_size if size is None else int(size)
    down = cfg.vae.downsample
    if size <= 0 or size % down:
        raise ValueError(f"VAE image size must be a positive multiple of {down}, got {size}")
    if size // down > cfg.max_latent_size:
        raise ValueError(f"VAE image size {size} exceeds the latent table: at most "
                         f"{cfg.max_latent_size * down} px ({cfg.max_latent_size} latents x {down})")
    return size


def vae_image(image: ImageLike, size: int | None = None, cfg: UniXConfig | None = None, *, pad: VaePad = "white",
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The 8-bit grey size x size image that the VAE transform normalises (see the module doc)."""
    size = vae_size(size, cfg)
    if pad not in VAE_PADS:
        raise ValueError(f"VAE pad must be one of {VAE_PADS}, got {pad!r}")
    img = Image.fromarray(as_uint8_grey(image, max_pixels=max_pixels))
    w, h = img.size
    if pad == "squash":
        return img.resize((size, size), _LANCZOS)
    if pad == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), _LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    if (w, h) != _contain_size(w, h, size):
        img = img.resize(_contain_size(w, h, size), _LANCZOS)
    return _centre_on_canvas(img, size, _FILL[pad])


def vae_transform(image: ImageLike, size: int | None = None, cfg: UniXConfig | None = None, *,
                  pad: VaePad = "white", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Radiograph -> float32 (C, size, size) in [-1, 1] (C = VAE in_channels, 3) for the VAE encoder."""
    cfg = cfg or UniXConfig()
    grey = torch.from_numpy(np.asarray(vae_image(image, size, cfg, pad=pad, max_pixels=max_pixels)).copy())
    x = (grey.to(torch.float32) / 255.0 - 0.5) / 0.5
    return x.unsqueeze(0).repeat(cfg.vae.in_channels, 1, 1).contiguous()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _check_chw(pixels: torch.Tensor) -> torch.Tensor:
    pixels = torch.as_tensor(pixels).detach().to("cpu", torch.float32)
    if pixels.dim() == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.dim() != 3:
        raise ValueError(f"expected one (C, H, W) image, got shape {tuple(pixels.shape)}")
    return pixels


def siglip_to_uint8(pixels: torch.Tensor, cfg: VisionConfig | None = None) -> np.ndarray:
    """Invert the SigLIP normalisation: (3, S, S) -> (S, S, 3) uint8 (x * std + mean, then * 255, rounded)."""
    cfg = cfg or VisionConfig()
    return _to_uint8(_check_chw(pixels) * cfg.pixel_std + cfg.pixel_mean)


def vae_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Invert the VAE normalisation: (C, H, W) in [-1, 1] -> (H, W, C) uint8."""
    return _to_uint8(_check_chw(pixels) * 0.5 + 0.5)
