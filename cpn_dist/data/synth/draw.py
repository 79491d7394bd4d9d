"""Drawing primitives both synthetic tasks use (:mod:`cpn_dist.data.synth.voc` for the shapes task,
:mod:`cpn_dist.data.synth.parts` for the parts tasks): the VOC object record, unit shapes, the
cluttered background, VOC's void band, and the checks of a synthetic folder's request (VOC's and COCO's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cpn_dist.errors import CpnError


@dataclass(frozen=True)
class SynthObject:
    cls: int  # 0..19
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (1-based, inclusive, as VOC)
    truncated: bool


def shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a unit shape in object coordinates (u, v) ∈ [-1, 1]²."""
    r = np.hypot(u, v)
    if kind == "ellipse":
        return r <= 1.0
    if kind == "box":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.7)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if kind == "triangle":
        return (v <= 0.8) & (v >= 2.0 * np.abs(u) - 1.0)
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.45)
    if kind == "star":
        return r <= 0.65 + 0.35 * np.cos(5.0 * np.arctan2(v, u))
    raise ValueError(kind)


def clutter_background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Cluttered, desaturated background: a gradient, blobs and bars of muted colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    start = rng.uniform(60, 200) + rng.uniform(-30, 30, 3)
    end = rng.uniform(60, 200) + rng.uniform(-30, 30, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / max(h, w)
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    canvas = start + (end - start) * t[..., None]
    for _ in range(rng.integers(10, 25)):
        grey = rng.uniform(40, 220)
        tint = rng.uniform(-25, 25, 3)  # muted: far less saturated than any object class
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.25) * w, rng.uniform(0.03, 0.25) * h
        if rng.random() < 0.5:
            m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        else:
            m = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry * 0.3)
        canvas[m] = 0.6 * canvas[m] + 0.4 * (grey + tint)
    return canvas


def void_border(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a boundary between two different labels (VOC's void band)."""
    size = 2 * width + 1
    return ndimage.maximum_filter(labels, size=size, mode="nearest") != ndimage.minimum_filter(
        labels, size=size, mode="nearest"
    )


def check_synth_request(root: Path, images: int, size: int, overwrite: bool) -> None:
    """The one-line refusals every synthetic folder shares: no image, images under 32 pixels, a folder that
    holds something (unless ``overwrite``)."""
    if images < 1:
        raise CpnError("--images must be at least 1")
    if size < 32:
        raise CpnError(f"--size must be at least 32 pixels, got {size}")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise CpnError(f"{root}: folder exists and is not empty (use --overwrite to replace it)")
