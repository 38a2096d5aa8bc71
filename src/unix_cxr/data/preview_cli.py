"""`unix-cxr data preview FILE -o out.png`: write exactly what the model will see for one image.

The image is read (PNG, JPEG or DICOM), put through the SigLIP or the VAE transform, and the model input
tensor is de-normalised back to 8 bits (`siglip_to_uint8` / `vae_to_uint8`) and saved as an RGB PNG: its pixels
are the transform's output, not a separate rendering.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unix_cxr.config import PRESETS
from unix_cxr.data.imageio import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

__all__ = ["add_cli", "preview"]


def preview(file: str | Path, output: str | Path, *, kind: str = "siglip", size: int | None = None,
            pad: str = "white", upscale: bool = False, preset_name: str = "unix-full",
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Path:
    """Write the de-normalised model input for `file` to `output` (PNG); returns the output path."""
    import dataclasses

    from PIL import Image

    from unix_cxr.config import preset
    from unix_cxr.data.imageio import read_image
    from unix_cxr.data.transforms import siglip_to_uint8, siglip_transform, vae_size, vae_to_uint8, vae_transform

    cfg = preset(preset_name)
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
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(output, format="PNG")
    log.info("wrote %s: %s input %dx%d (pad=%s) from a %dx%d image", output, kind, rgb.shape[1], rgb.shape[0],
             pad, grey.shape[1], grey.shape[0])
    return output


def _cmd_preview(args: argparse.Namespace) -> int:
    preview(args.file, args.output, kind=args.kind, size=args.size, pad=args.pad, upscale=args.upscale,
            preset_name=args.preset, max_pixels=args.max_pixels or None)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `preview` under `unix-cxr data`."""
    p = subparsers.add_parser("preview", help="write exactly what the model will see for one image (PNG)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="PNG, JPEG or DICOM radiograph")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--kind", choices=["siglip", "vae"], default="siglip",
                   help="siglip: the report model's vision input; vae: the image generator's VAE input")
    p.add_argument("--size", type=int, default=None,
                   help="side in px (default: the preset's vision image_size, or sampling image_size for vae)")
    p.add_argument("--pad", choices=["white", "black", "squash", "crop"], default="white",
                   help="white: the authors' evaluation (default); squash: their gradio demo; crop: vae only")
    p.add_argument("--upscale", action="store_true",
                   help="siglip: scale images smaller than the size up instead of framing them (not the authors')")
    p.add_argument("--preset", choices=sorted(PRESETS), default="unix-full", help="model configuration")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images (decompression-bomb guard; 0: Pillow's limit only)")
    p.set_defaults(func=_cmd_preview)
