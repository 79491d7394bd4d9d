"""How much of an object a CAM covers, part by part (the synthetic parts task, ``cpn synth-voc --task parts``).

The parts task writes ``SegmentationPart/{id}.png`` beside the VOC masks: 1 = body, 2 = marker (the
small, perfectly discriminative part), 0 = neither, 255 = void. For CAM files in the released
format and a background score β, per part (pixel counts summed over all images, void ignored):

* **recall** = pixels of that part whose class map at β (the released evaluator's rule,
  :func:`cpn_dist.labels.cams.class_map`) is the object's class, over the part's pixels;
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
from scipy import ndimage

from cpn_dist.data.datasets.voc import IGNORE, read_label_png
from cpn_dist.data.synth.parts import PART_BODY, PART_MARKER
from cpn_dist.data.synth.voc import PART_FOLDER
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import class_map, read_cams

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
        cams = read_cams(cams_dir, name)
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


# ------------------------------------------------------------------------------------------------
# CPN's premise on a parts task


@dataclass(frozen=True)
class PremiseScores:
    """How often the marker-less branch of a CP pair still finds the object (paper eq. 4, Fig. 1).

    Over CP pairs of whole images and each object in them whose marker lies (≥ 90 % of its pixels) in
    one branch's hidden patches: ``share`` = the fraction whose marker-less branch has a positive raw
    CAM of the object's class somewhere on the object's visible body (body pixels more than
    :data:`MARKER_RING` pixels from the marker, which JPEG's chroma bleeds into); ``body_lift`` = the mean, over
    those pairs, of the marker-less branch's max-normalised CAM on the visible body (what TCP's target
    offers the body). ``skipped`` objects had their marker split between the two branches."""

    share: float
    body_lift: float
    pairs: int
    skipped: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


MARKER_RING = 2  # body pixels this close to the marker carry its colour (JPEG chroma subsampling)


def _patch_ids(rgb: np.ndarray, size: int, patch, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Patch ids of an image placed top-left on a size×size canvas (padding = id n, as the loader)."""
    from cpn_dist.data.loading.cp_pair import grid_ids
    from cpn_dist.data.shards.pack_sample import superpixels

    h, w = rgb.shape[:2]
    if patch.kind == "superpixel":
        ids = np.full((size, size), 0, np.intp)
        sp = superpixels(rgb, patch.segments, 10.0).astype(np.intp)
        n = int(sp.max()) + 1
        ids[:] = n
        ids[:h, :w] = sp
        return ids, n
    cell = patch.grid_sizes[int(rng.integers(len(patch.grid_sizes)))]
    grid, n = grid_ids(size, cell)
    ids = np.full((size, size), n, np.intp)
    ids[:h, :w] = grid[:h, :w]
    return ids, n


def premise_share(model, voc_root: str | Path, names: Sequence[str], patch, mean: Sequence[float],
                  std: Sequence[float], seed: int = 0, batch: int = 16) -> PremiseScores:  # fmt: skip
    """CPN's premise on a parts task, measured with ``model``'s raw CAM (see :class:`PremiseScores`).

    Each image gets one CP pair drawn as in training (``patch``: a :class:`~cpn_dist.config.PatchConfig`;
    superpixels from SLIC of the whole image with the packed compactness 10) with the generator
    ``(seed, image index)``; no other augmentation."""
    import torch

    from cpn_dist.cpn.infer import normalise_image
    from cpn_dist.data.inputs import read_image
    from cpn_dist.data.loading.cp_pair import hidden_patches, visible_mask

    voc_root = Path(voc_root)
    part_dir = voc_root / PART_FOLDER
    if not part_dir.is_dir():
        raise CpnError(f"{part_dir}: no part maps (make the data with `cpn synth-voc --task parts-reliable`)")
    items = []
    for index, name in enumerate(names):
        rgb = np.asarray(read_image(voc_root / "JPEGImages" / f"{name}.jpg"))
        gt = read_label_png(voc_root / "SegmentationClass" / f"{name}.png")
        parts = read_label_png(part_dir / f"{name}.png")
        items.append((index, rgb, gt, parts))
    size = max(max(rgb.shape[:2]) for _, rgb, _, _ in items)
    found = lifted = 0.0
    pairs = skipped = 0
    model.eval()
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        inputs, masks = [], []
        for index, rgb, _, _ in chunk:
            rng = np.random.default_rng([seed, index])
            ids, n = _patch_ids(rgb, size, patch, rng)
            pm = visible_mask(ids, n, hidden_patches(rng, n, patch.hide_prob, patch.sampling), patch.lambda_mode)
            image = np.zeros((3, size, size), np.float32)
            h, w = rgb.shape[:2]
            image[:, :h, :w] = normalise_image(rgb, mean, std)
            m = pm.mask.astype(np.float32)
            inputs += [image * m, image - image * m]
            masks.append(pm.mask)
        with torch.inference_mode():
            cams = model(torch.from_numpy(np.stack(inputs)))[0].float().numpy()
        for j, (_, rgb, gt, parts) in enumerate(chunk):
            h, w = rgb.shape[:2]
            visible = masks[j][:h, :w]
            for cls in set(np.unique(gt).tolist()) - {0, IGNORE}:
                marker = (gt == cls) & (parts == PART_MARKER)
                if not marker.any():  # an object without a marker (parts-reliable): nothing to hide
                    continue
                hidden_in_h = 1.0 - visible[marker].mean()
                if hidden_in_h >= 0.9:
                    branch, seen = 0, visible  # I_h hides the marker
                elif hidden_in_h <= 0.1:
                    branch, seen = 1, ~visible  # I_hbar hides it
                else:
                    skipped += 1
                    continue
                near = ndimage.binary_dilation(marker, iterations=MARKER_RING)
                body = (gt == cls) & (parts == PART_BODY) & seen & ~near
                if not body.any():
                    skipped += 1
                    continue
                cam = cams[2 * j + branch, cls, :h, :w]
                q = np.maximum(cams[2 * j + branch, cls], 0)
                norm = np.maximum(q[:h, :w] - q.min() - 1e-5, 0) / (q.max() - q.min() + 1e-5)
                pairs += 1
                found += float((cam[body] > 0).any())
                lifted += float(norm[body].mean())
    return PremiseScores(found / pairs if pairs else 0.0, lifted / pairs if pairs else 0.0, pairs, skipped)
