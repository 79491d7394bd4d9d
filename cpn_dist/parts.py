"""How much of an object a CAM covers, part by part (the synthetic parts task, ``cpn synth-voc --task parts``).

The parts task writes ``SegmentationPart/{id}.png`` beside the VOC masks: 1 = body, 2 = marker (the
small, perfectly discriminative part), 0 = neither, 255 = void. For CAM files in the released
format and a background score β, per part (pixel counts summed over all images, void ignored):

* **recall** = pixels of that part whose class map at β (the released evaluator's rule,
  :func:`cpn_dist.cams.class_map`) is the object's class, over the part's pixels;
* **magnitude** = mean over the part's pixels of the CAM of the object's class, relative to that
  CAM's peak: ``clip(2 × CAM, 0, 1)`` (released CAMs peak at 0.5; a class missing from a file
  scores 0).

A plain CAM that fires on the marker only has a high marker recall and a low body recall; the
point of CPN is to raise the body's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpn_dist.cams import class_map, load_cams
from cpn_dist.data.synth import PART_FOLDER
from cpn_dist.data.synth_parts import PART_BODY, PART_MARKER
from cpn_dist.data.voc import IGNORE, read_label_png
from cpn_dist.errors import CpnError

PARTS = {"body": PART_BODY, "marker": PART_MARKER}


@dataclass(frozen=True)
class PartScores:
    """Recall and magnitude per part (fractions in [0, 1]), and the pixel counts behind them."""

    beta: float
    recall: dict[str, float]
    magnitude: dict[str, float]
    pixels: dict[str, int]

    def to_json(self) -> dict:
        return {"beta": self.beta, "recall": self.recall, "magnitude": self.magnitude, "pixels": self.pixels}


def object_cam(cams: dict[int, np.ndarray], gt: np.ndarray) -> np.ndarray:
    """Per pixel, the CAM of the ground-truth class relative to its peak, ``clip(2·CAM, 0, 1)``
    (0 on background, void, and classes the file does not hold)."""
    out = np.zeros(gt.shape, dtype=np.float32)
    for key, cam in cams.items():
        where = gt == key + 1
        out[where] = np.clip(2.0 * cam[where], 0.0, 1.0)
    return out


def part_scores(cams_dir: str | Path, voc_root: str | Path, names: Sequence[str], beta: float) -> PartScores:
    """Recall and magnitude of the body and the marker (see the module docstring) at background score β."""
    cams_dir, voc_root = Path(cams_dir), Path(voc_root)
    part_dir = voc_root / PART_FOLDER
    if not part_dir.is_dir():
        raise CpnError(f"{part_dir}: no part maps (make the data with `cpn synth-voc --task parts`)")
    if not names:
        raise CpnError("the image list is empty")
    hits = dict.fromkeys(PARTS, 0)
    total = dict.fromkeys(PARTS, 0)
    mass = dict.fromkeys(PARTS, 0.0)
    for name in names:
        gt = read_label_png(voc_root / "SegmentationClass" / f"{name}.png")
        parts = read_label_png(part_dir / f"{name}.png")
        if parts.shape != gt.shape:
            raise CpnError(f"{part_dir / f'{name}.png'}: size {parts.shape} differs from the class mask {gt.shape}")
        cams = load_cams(cams_dir / f"{name}.npy")
        correct = class_map(cams, beta, gt.shape) == gt
        magnitude = object_cam(cams, gt)
        for part, value in PARTS.items():
            where = (parts == value) & (gt != IGNORE)
            total[part] += int(np.count_nonzero(where))
            hits[part] += int(np.count_nonzero(correct & where))
            mass[part] += float(magnitude[where].sum(dtype=np.float64))
    recall = {p: hits[p] / total[p] if total[p] else 0.0 for p in PARTS}
    magnitude = {p: mass[p] / total[p] if total[p] else 0.0 for p in PARTS}
    return PartScores(float(beta), recall, magnitude, total)
