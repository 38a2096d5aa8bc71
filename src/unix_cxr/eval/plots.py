"""PNG plots of the results cards (matplotlib's object API, no pyplot state): per-class F1 bars, image grids."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..chexpert import CHEXPERT_LABELS
from . import image_metrics as im
from .runner import MODE_SHORT

GRID_IMAGES = 8
"""Images per row of :func:`image_grid_png`."""


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W) or (H, W, 3) array as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def per_class_f1_png(card: Mapping[str, Any]) -> bytes:
    """Horizontal bars of the per-class F1 (x100), UaN and UaP, titled with the labeler name."""
    f1 = card["chexpert_f1"]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        pos = np.arange(len(CHEXPERT_LABELS))
        for offset, mode, colour in ((-0.2, "uncertain_as_negative", "#4c72b0"),
                                     (0.2, "uncertain_as_positive", "#dd8452")):
            values = [100 * c["f1"] for c in f1[mode]["per_class"]]
            ax.barh(pos + offset, values, height=0.4, label=MODE_SHORT[mode], color=colour)
        support = {c["label"]: c["support"] for c in f1["uncertain_as_negative"]["per_class"]}
        ax.set_yticks(pos, [f"{name} (n={support[name]})" for name in CHEXPERT_LABELS])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("F1 (x100)")
        ax.set_title(f"{f1['metric_name']}: per-class F1 ({card['n_reports']} reports)")
        ax.legend(loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()

    return _figure_png(draw, (8.0, 6.0))


def _spread(paths: Sequence[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return list(paths)
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def image_grid_png(real: Sequence[Path], fake: Sequence[Path], n: int = GRID_IMAGES) -> bytes:
    """Two rows, up to ``n`` real images (evenly spaced in the sorted list) over ``n`` generated ones, each as the
    encoder sees it (299 x 299, squashed), titled with its file name."""
    real, fake = _spread(real, n), _spread(fake, n)
    cols = max(len(real), len(fake))

    def draw(fig: Any) -> None:
        axes = fig.subplots(2, cols, squeeze=False)
        for row, (label, paths) in enumerate((("real", real), ("generated", fake))):
            for col in range(cols):
                ax = axes[row][col]
                ax.set_axis_off()
                if col < len(paths):
                    ax.imshow(im.load_image(paths[col]))
                    ax.set_title(paths[col].name[:24], fontsize=6)
            axes[row][0].text(-0.08, 0.5, label, transform=axes[row][0].transAxes, rotation=90, va="center",
                              ha="right", fontsize=10)
        fig.suptitle("real (top) vs generated (bottom), 299 x 299 as measured")
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.02, top=0.84, wspace=0.05, hspace=0.2)

    return _figure_png(draw, (1.5 * cols + 0.5, 3.6))
