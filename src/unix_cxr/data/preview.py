"""`unix-cxr data preview FILE -o out.png`: write exactly what the model will see for one image.

The image is read (PNG, JPEG or DICOM), put through the SigLIP or the VAE transform, and the model input
tensor is de-normalised back to 8 bits (`siglip_to_uint8` / `vae_to_uint8`) and saved as an RGB PNG: its pixels
are the transform's output, not a separate rendering.
"""

from __future__ import annotations

import logging
from pathlib import Path

from unix_cxr.data.imageio import DEFAULT_MAX_PIXELS
from unix_cxr.utils.atomic import atomic_path

log = logging.getLogger(__name__)

MAX_PREVIEW_SIZE = 4096  # px: far above any model input (SigLIP 384, VAE 512)

__all__ = ["preview"]


def preview(file: str | Path, output: str | Path, *, kind: str = "siglip", size: int | None = None,
            pad: str = "white", upscale: bool = False, preset_name: str = "unix-full",
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Path:
    """Write the de-normalised model input for `file` to `output` (PNG); returns the output path."""
    import dataclasses

    from PIL import Image

    from unix_cxr.config import load_config
    from unix_cxr.data.imageio import read_image
    from unix_cxr.data.transforms import siglip_to_uint8, siglip_transform, vae_size, vae_to_uint8, vae_transform

    if size is not None and not 0 < size <= MAX_PREVIEW_SIZE:
        raise ValueError(f"--size must be between 1 and {MAX_PREVIEW_SIZE} px, got {size}")
    cfg = load_config(preset_name)
    grey = read_image(file, max_pixels=max_pixels)
    if kind == "siglip":
        if pad == "crop":
            raise ValueError("--pad crop is for --kind vae; the SigLIP transform pads (white/black) or squashes")
        vision = cfg.vision if size is None else dataclasses.replace(cfg.vision, image_size=size)
        vision.validate()
        pixels = siglip_transform(grey, vision, pad=pad, upscale=upscale)  # type: ignore[arg-type]
        rgb = siglip_to_uint8(pixels, vision)
    elif kind == "vae":
        if upscale:
            log.info("--upscale has no effect for --kind vae (the VAE transform always scales to the size)")
        pixels = vae_transform(grey, vae_size(size, cfg), cfg, pad=pad)  # type: ignore[arg-type]
        rgb = vae_to_uint8(pixels)
    else:
        raise ValueError(f"unknown preview kind {kind!r}; choose siglip or vae")
    output = Path(output)
    with atomic_path(output) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    log.info("wrote %s: %s input %dx%d (pad=%s) from a %dx%d image", output, kind, rgb.shape[1], rgb.shape[0],
             pad, grey.shape[1], grey.shape[0])
    return output
