"""Pictures for people: the mIoU-against-β curve of a sweep, and a grid of images with their
ground truth, class activation maps and pseudo labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpn_dist.data.datasets.voc import CLASSES, PALETTE

log = logging.getLogger(__name__)



def save_figure(fig, path: str | Path) -> Path:
    """Lays out ``fig``, writes it to ``path`` (its folder made) and closes it."""
    plt = pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_plot(betas: Sequence[float], miou: Sequence[float], path: str | Path, title: str = "") -> Path:
    """Write a PNG of mIoU (%) against the background score β, the best β marked."""
    plt = pyplot()
    betas = np.asarray(betas, dtype=np.float64)
    miou = np.asarray(miou, dtype=np.float64) * 100
    order = np.argsort(betas)
    best = int(np.argmax(miou))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(betas[order], miou[order], marker="o", markersize=3)
    ax.axvline(betas[best], color="grey", linestyle=":")
    ax.annotate(f"β = {betas[best]:.2f}\nmIoU = {miou[best]:.2f}", (betas[best], miou[best]),
                textcoords="offset points", xytext=(8, -28))  # fmt: skip
    ax.set_xlabel("background score β")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title or "mIoU against β")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def colour_labels(label: np.ndarray) -> np.ndarray:
    """H×W class indices → H×W×3 uint8 in the VOC palette."""
    return PALETTE[np.asarray(label, dtype=np.uint8)]


def heat(cam: np.ndarray) -> np.ndarray:
    """A CAM in released normalisation (about −0.5..0.5) → H×W×3 uint8 heat map (jet)."""
    plt = pyplot()
    x = np.clip(np.asarray(cam, dtype=np.float64) * 2.0, 0.0, 1.0)
    return (plt.get_cmap("jet")(x)[..., :3] * 255).astype(np.uint8)


@dataclass
class GridRow:
    """One image's panels: the image, its ground truth (or None), CAMs {class index: map}, pseudo label."""

    name: str
    image: np.ndarray
    gt: np.ndarray | None
    cams: dict[int, np.ndarray]
    pseudo: np.ndarray | None


def image_grid(rows: Sequence[GridRow], path: str | Path, max_cams: int = 3,
               foreground: Sequence[str] = CLASSES) -> Path:  # fmt: skip
    """Write a PNG grid, one row per image: image, GT, a heat map per true class (CAM blended over
    the image; ``foreground``: the dataset's object class names, VOC's by default), pseudo label."""
    plt = pyplot()
    n_cams = min(max_cams, max((len(r.cams) for r in rows), default=0))
    cols = 1 + 1 + n_cams + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.2 * len(rows)), dpi=100, squeeze=False)
    for i, row in enumerate(rows):
        panels: list[tuple[str, np.ndarray | None]] = [(row.name, row.image)]
        panels.append(("ground truth", None if row.gt is None else colour_labels(row.gt)))
        for c in sorted(row.cams)[:n_cams]:
            blend = (0.5 * row.image + 0.5 * heat(row.cams[c])).astype(np.uint8)
            panels.append((f"CAM {foreground[c]}", blend))
        panels += [("", None)] * (1 + 1 + n_cams - len(panels))
        panels.append(("pseudo label", None if row.pseudo is None else colour_labels(row.pseudo)))
        for ax, (title, picture) in zip(axes[i], panels):
            ax.axis("off")
            if picture is not None:
                ax.imshow(picture)
                ax.set_title(title, fontsize=8)
    return save_figure(fig, path)
