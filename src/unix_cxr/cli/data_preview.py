"""`unix-cxr data preview FILE -o out.png`: write exactly what the model will see for one image.

The image is read (PNG, JPEG or DICOM), put through the SigLIP or the VAE transform, and the model input
tensor is de-normalised back to 8 bits (`siglip_to_uint8` / `vae_to_uint8`) and saved as an RGB PNG: its pixels
are the transform's output, not a separate rendering.
"""

from __future__ import annotations

import argparse
import logging

from ..config import PRESETS
from ..data.imageio import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


def _cmd_preview(args: argparse.Namespace) -> int:
    from ..data.preview import preview

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
