"""A phantom-finding classifier: which findings a (real or generated) phantom radiograph shows.

It measures whether generated images show the findings of the reports they were drawn from (docs/training.md,
`benchmarks/phantom_quality.py`). A small CNN (a full-size conv, 4 blocks that halve the side, global average
pool, one logit per finding) is trained on real phantoms drawn on the fly (`unix_cxr.data.phantom`), with the
truth taken from the phantom specs, not the reports: an uncertain finding is still drawn, so it is a positive here.

    clf = train_classifier(n=3000, seed=11, size=64)         # draws its own phantoms, trains on this CPU
    scores = evaluate(clf, images, targets)                  # per-finding and micro / macro F1, accuracy
    clf.save(folder); clf = PhantomClassifier.load(folder)  # classifier.safetensors + classifier.json

Images are (N, H, W) or (N, H, W, 3) uint8 (a generated RGB image is read through its luma); they are resized to
the classifier's side. Training is deterministic for a seed on one machine (seeded initialisation and order).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

FINDING_LABELS: tuple[str, ...] = ("Cardiomegaly", "Lung Opacity", "Edema", "Consolidation", "Atelectasis",
                                   "Pneumothorax", "Pleural Effusion", "Support Devices")
"""The CheXpert labels a phantom finding can make positive (CheXpert order); the classifier's outputs."""

WEIGHTS, META = "classifier.safetensors", "classifier.json"


def finding_targets(spec: Any) -> np.ndarray:
    """(len(FINDING_LABELS),) bool: the labels of the findings drawn in a `PhantomSpec` (or its dict form)."""
    from ..data.phantom import PhantomSpec

    if isinstance(spec, dict):
        spec = PhantomSpec.from_dict(spec)
    present = {f.label for f in spec.findings}
    return np.array([name in present for name in FINDING_LABELS], dtype=bool)


def read_specs(path: str | Path) -> dict[str, np.ndarray]:
    """id -> finding targets of a phantom folder's `specs.jsonl`."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = finding_targets(row["spec"])
    return out


def as_grey(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(N, H, W) uint8 from (N, H, W) / (N, H, W, 1) / (N, H, W, 3) uint8 (RGB through ITU-R 601 luma)."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 4 and arr.shape[-1] == 3:
        arr = np.rint(arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114).clip(0, 255)
    if arr.ndim != 3:
        raise ValueError(f"expected (N, H, W) or (N, H, W, 3) images, got shape {arr.shape}")
    return arr.astype(np.uint8)


class PhantomClassifier(nn.Module):
    """Grey (N, 1, S, S) in [0, 1] -> one logit per finding of FINDING_LABELS."""

    def __init__(self, size: int = 64, width: int = 32) -> None:
        super().__init__()
        self.size, self.width = size, width
        chans = [width, width, 2 * width, 4 * width, 4 * width]
        blocks: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU()]
        for cin, cout in itertools.pairwise(chans):  # halve the side, then one more conv at that side
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU()]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], len(FINDING_LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 images -> (N, 1, size, size) float in [0, 1] (bilinear resize when the side differs)."""
        x = torch.from_numpy(as_grey(images)).float()[:, None] / 255.0
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """(N, len(FINDING_LABELS)) probabilities."""
        self.eval()
        x = self.prepare(images)
        return torch.cat([torch.sigmoid(self(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, len(FINDING_LABELS)) bool: probability >= 0.5."""
        return self.predict_proba(images) >= 0.5

    def save(self, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
        from ..checkpoint.safetensors_io import write_safetensors_atomic
        from ..utils.atomic import write_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                                 folder / WEIGHTS, {"format": "pt"})
        meta = {"size": self.size, "width": self.width, "labels": list(FINDING_LABELS), **(info or {})}
        write_atomic(folder / META, json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PhantomClassifier:
        from ..checkpoint.safetensors_io import read_safetensors

        folder = Path(folder)
        meta = json.loads((folder / META).read_text())
        if tuple(meta["labels"]) != FINDING_LABELS:
            raise ValueError(f"{folder}: a classifier of other labels ({meta['labels']})")
        model = cls(meta["size"], meta["width"])
        model.load_state_dict(read_safetensors(folder / WEIGHTS))
        return model.eval()


def draw_phantoms(n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n phantoms of the default case mix (case i from default_rng([seed, i]), as `write_dataset`): (N, S, S) uint8
    images and (N, len(FINDING_LABELS)) bool targets."""
    from ..data.phantom import render
    from ..data.phantom.dataset import generate

    images, targets = [], []
    for _, spec, _ in generate(n, seed, size):
        images.append(render(spec))
        targets.append(finding_targets(spec))
    return np.stack(images), np.stack(targets)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (N, 1, S, S) with its own Gaussian sigma (pixels; 0 leaves it as it is)."""
    taps = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, 7); sigma -> 0 gives the identity kernel
    n, _, s, _ = x.shape
    y = F.pad(x, (3, 3, 3, 3), mode="replicate").reshape(1, n, s + 6, s + 6)
    y = F.conv2d(y, k[:, None, None, :], groups=n)
    y = F.conv2d(y, k[:, None, :, None], groups=n)
    return y.reshape(n, 1, s, s)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random shifts (up to 1/16 of the side, edges replicated), a Gaussian blur of random width (sigma up to
    1.5 px for 3 images in 4) and brightness / contrast jitter: the classifier should judge findings, not the
    sharpness or exposure of the real phantoms (a generated image is decoded by a small VAE, so it is softer)."""
    n, _, s, _ = x.shape
    pad = max(1, s // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    x = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])
    sigma = torch.rand(n, generator=gen) * 1.5 * (torch.rand(n, generator=gen) < 0.75)
    x = _gaussian_blur(x, sigma)
    scale = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)
    shift = 0.05 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)
    return ((x - 0.5) * scale + 0.5 + shift).clamp(0, 1)


def train_classifier(images: np.ndarray | None = None, targets: np.ndarray | None = None, *, n: int = 3000,
                     seed: int = 11, size: int = 64, width: int = 32, epochs: int = 12, batch_size: int = 64,
                     lr: float = 3e-3, progress: bool = False) -> PhantomClassifier:
    """Train a classifier on `images` / `targets`, or on `n` phantoms drawn from `seed` at `size` px."""
    from tqdm import tqdm

    if images is None or targets is None:
        images, targets = draw_phantoms(n, seed, size)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = PhantomClassifier(size, width)
    x, y = model.prepare(images), torch.from_numpy(np.asarray(targets, dtype=np.float32))
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    began, step = time.perf_counter(), 0
    bar = tqdm(total=steps, desc="phantom classifier", unit="step", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(_augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    log.info("phantom classifier: %d images, %d steps in %.0f s", len(x), steps, time.perf_counter() - began)
    return model.eval()


@dataclass(frozen=True)
class FindingScores:
    """Per-finding F1 (and support), micro / macro F1 over FINDING_LABELS, exact-match and per-label accuracy."""

    n: int
    micro_f1: float
    macro_f1: float
    accuracy: float  # per (image, finding) decision
    exact_match: float  # every finding of the image right
    per_label: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _f1(tp: float, fp: float, fn: float) -> float:
    return float(tp / (tp + 0.5 * (fp + fn))) if tp + fp + fn else 0.0


def finding_scores(pred: np.ndarray, truth: np.ndarray) -> FindingScores:
    """Scores of predicted against true (N, len(FINDING_LABELS)) bool findings."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 2 or pred.shape[1] != len(FINDING_LABELS):
        raise ValueError(f"expected two (N, {len(FINDING_LABELS)}) arrays, got {pred.shape} and {truth.shape}")
    tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
    per = {name: {"f1": _f1(tp[i], fp[i], fn[i]), "support": int(truth[:, i].sum()),
                  "accuracy": float((pred[:, i] == truth[:, i]).mean())} for i, name in enumerate(FINDING_LABELS)}
    return FindingScores(n=len(pred), micro_f1=_f1(tp.sum(), fp.sum(), fn.sum()),
                         macro_f1=float(np.mean([p["f1"] for p in per.values()])),
                         accuracy=float((pred == truth).mean()), exact_match=float((pred == truth).all(1).mean()),
                         per_label=per)


def evaluate(model: PhantomClassifier, images: np.ndarray | Iterable[np.ndarray], truth: np.ndarray) -> FindingScores:
    """`finding_scores` of the classifier's predictions on `images`."""
    return finding_scores(model.predict(np.asarray(list(images) if not isinstance(images, np.ndarray) else images)),
                          truth)


__all__ = ["FINDING_LABELS", "FindingScores", "PhantomClassifier", "as_grey", "draw_phantoms", "evaluate",
           "finding_scores", "finding_targets", "read_specs", "train_classifier"]
