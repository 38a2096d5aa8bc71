"""`unix-cxr data cache-latents INPUT --vae PATH --out DIR`: encode a data set's images with the VAE once.

INPUT is a caption JSONL (``{"id"?: ..., "image": PATH, "caption": ...}`` per line; relative paths against
``--image-root``, default the JSONL's folder) or a folder of images (PNG, JPEG, DICOM; searched recursively; id =
relative path without the suffix). Writes ``DIR/shard_NNNNN.safetensors`` and ``DIR/index.json``
(`unix_cxr.data.latent_cache`). Running the same command again resumes an interrupted run: completed shards are
kept, the rest is encoded. Each image that fails (missing, unreadable, not an image, bad JSONL line, duplicate id,
a latent with NaN or infinite values) is logged, recorded in the index, and listed at the end; the exit status is
then 1 (0 when all were cached). A bad --device, a VAE file that is not safetensors and (without
--allow-non-finite) VAE weights with NaN or infinity end the run before any image is read: one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

# the choices of unix_cxr.data.latent_cache (STORES, CACHE_DTYPES), written out so that --help needs no torch
STORES = ("moments", "mean", "sample")
CACHE_DTYPES = ("bfloat16", "float32")

log = logging.getLogger(__name__)

MAX_LISTED = 20


def _cmd_cache_latents(args: argparse.Namespace) -> int:
    from ..checkpoint.vae import load_vae
    from ..data.latent_cache import cache_latents, read_items
    from ..utils.devices import resolve_device

    device = resolve_device(args.device)  # before any work: `--device cuda` on a CPU-only machine is one line
    if args.shard_size < 1 or args.batch_size < 1:
        raise ValueError(f"--shard-size and --batch-size must be positive, got {args.shard_size}, {args.batch_size}")
    items = read_items(args.input, args.image_root)
    if not items:
        raise ValueError(f"{args.input}: no images or records found")
    vae = load_vae(args.vae, allow_non_finite=args.allow_non_finite).to(device)
    log.info("caching %d records from %s with the VAE %s on %s -> %s (size %d, store %s, %s, %d per shard)",
             len(items), args.input, args.vae, device, args.out, args.size, args.store, args.dtype, args.shard_size)
    start = time.perf_counter()
    summary = cache_latents(items, vae, args.out, size=args.size, shard_size=args.shard_size, dtype=args.dtype,
                            store=args.store, batch_size=args.batch_size, pad=args.pad, seed=args.seed,
                            overwrite=args.overwrite, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    log.info("cached %d of %d records in %s: %d image(s) encoded now in %.1f s, %d shard(s) written, %d kept",
             summary.cached, summary.total, summary.out, summary.encoded, seconds, summary.shards_done,
             summary.shards_skipped)
    if summary.failed:
        log.error("%d record(s) failed:", len(summary.failed))
        for failure in summary.failed[:MAX_LISTED]:
            log.error("  %s (%s): %s", failure["id"], failure["image"], failure["error"])
        if len(summary.failed) > MAX_LISTED:
            log.error("  ... and %d more (all listed under 'failed' in %s/index.json)",
                      len(summary.failed) - MAX_LISTED, summary.out)
        return 1
    return 0


def add_cli(subparsers: Any) -> None:
    """Add ``cache-latents`` to the ``unix-cxr data`` subcommands."""
    p = subparsers.add_parser(
        "cache-latents", help="encode a data set's images with the VAE once, into sharded safetensors (resumable)",
        description="Encode every image of a caption JSONL or an image folder with the VAE into sharded safetensors "
                    "for generation training (stages 2-3). Re-running resumes an interrupted run.")
    p.add_argument("input", help="caption JSONL ({'id'?, 'image', 'caption'} per line) or a folder of images")
    p.add_argument("--vae", required=True, help="VAE weights: a .safetensors file or a folder holding one")
    p.add_argument("--out", required=True, help="output folder (shards + index.json)")
    p.add_argument("--size", type=int, choices=[256, 512], default=256,
                   help="image side before encoding: 256 (stage 2) or 512 (stage 3); default 256")
    p.add_argument("--shard-size", type=int, default=1024, help="records per shard file (default 1024)")
    p.add_argument("--dtype", choices=sorted(CACHE_DTYPES), default="float32", help="storage dtype (default float32)")
    p.add_argument("--batch-size", type=int, default=8, help="images per VAE forward (default 8)")
    p.add_argument("--store", choices=STORES, default="moments",
                   help="moments: posterior mean and log-variance, so training can sample the posterior as the "
                        "authors do (default); mean: the mean only; sample: one fixed posterior sample (--seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of --store sample (default 0)")
    p.add_argument("--pad", choices=["white", "black", "crop", "squash"], default="white",
                   help="how non-square images are squared (unix_cxr.data.transforms.vae_transform; default white)")
    p.add_argument("--image-root", default=None, help="folder that relative image paths of a JSONL start from")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu); checked "
                   "before any work")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="load a VAE whose weights hold NaN or infinity (refused by default); latents with non-finite "
                        "values are still never cached (each such image is recorded as failed)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing cache in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cache_latents)
