"""Synthetic MS COCO: a folder in the official COCO 2014 layout, for the tests and ``cpn demo --coco-root``.

``synthesize_coco`` writes::

    ROOT/{split}/COCO_{split}_{id:012d}.jpg          images of varied sizes (long side = ``size``)
    ROOT/annotations/instances_{split}.json          images, annotations, the real 80 categories

for the splits ``train2014`` and ``val2014`` (every fifth image is val). The annotation file has what
real COCO files have and what the protocols disagree on (:mod:`cpn_dist.data.datasets.coco`): the 80 official
category ids with their gaps; objects as polygons (some in two parts), a few as compressed RLE;
crowd annotations (a group of small blobs of one class, one uncompressed RLE with ``iscrowd: 1``);
overlapping instances (each annotation covers its whole shape, including what a later object hides,
so "last wins" and "smallest on top" give different masks); and images without any annotation.

A class looks like its index: one of 20 hues (class mod 20) and one of 4 stripe angles (class div 20),
so image labels are learnable. Image ``i`` of a split depends only on ``(seed, split, i)``. The pixels
of an object are exactly its mask as pycocotools decodes the annotation (so they need
``pip install 'cpn-dist[coco]'``).
"""

from __future__ import annotations

import colorsys
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cpn_dist.data.datasets.coco import COCO_CATEGORIES, instance_mask
from cpn_dist.data.synth.draw import check_synth_request, clutter_background
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

SPLITS = ("train2014", "val2014")
JPEG_QUALITY = 92
EMPTY_IMAGE_PROB = 0.1  # images without any annotation
CROWD_PROB = 0.15  # images with a crowd annotation
RLE_PROB = 0.15  # non-crowd objects stored as compressed RLE instead of polygons
TWO_PART_PROB = 0.15  # objects made of two polygons


def file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def split_of(index: int) -> str:
    return "val2014" if index % 5 == 4 else "train2014"


def class_look(cls: int) -> tuple[np.ndarray, float]:
    """(base RGB 0..255, stripe angle in radians) of class ``cls`` (1..80)."""
    hue = ((cls - 1) % 20) / 20
    return np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255.0, np.deg2rad(45.0 * ((cls - 1) // 20))


def _polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[float]:
    """A star-convex polygon around (cx, cy): 8-14 vertices, as COCO's flat [x1, y1, x2, y2, …]."""
    n = int(rng.integers(8, 15))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.6, 1.0, n)
    xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


def _paint(canvas: np.ndarray, mask: np.ndarray, cls: int, rng: np.random.Generator) -> None:
    base, angle = class_look(cls)
    yy, xx = np.nonzero(mask)
    stripes = 0.5 + 0.5 * np.sin(0.5 * (xx * np.cos(angle) + yy * np.sin(angle)))
    base = base * rng.uniform(0.85, 1.1)
    canvas[yy, xx] = base * 0.45 + base * 0.55 * stripes[:, None]


def render_coco_image(split: str, index: int, size: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of ``split``: (RGB uint8 H×W×3, annotations without ids: category_id, segmentation,
    iscrowd, area, bbox), in the order they were painted."""
    from pycocotools import mask as mask_api

    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    long_side = size
    short_side = max(16, int(round(size * 0.75)))
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    canvas = clutter_background(h, w, rng)
    anns: list[dict] = []
    category_ids = [cid for cid, _ in COCO_CATEGORIES]

    def add(cls: int, segmentation, crowd: bool, mask: np.ndarray) -> None:
        rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, bw, bh = (float(v) for v in mask_api.toBbox(rle))
        anns.append({"category_id": category_ids[cls - 1], "segmentation": segmentation, "iscrowd": int(crowd),
                     "area": float(mask_api.area(rle)), "bbox": [x, y, bw, bh]})  # fmt: skip

    if rng.random() >= EMPTY_IMAGE_PROB:
        n_objects = int(rng.integers(1, 4))
        classes = rng.choice(len(category_ids), size=n_objects, replace=False) + 1
        for k, cls in enumerate(classes.tolist()):
            radius = rng.uniform(0.15, 0.32) * min(h, w)
            if k and rng.random() < 0.5:  # near the previous object: an overlap
                cx, cy = anns[-1]["bbox"][0] + anns[-1]["bbox"][2] / 2, anns[-1]["bbox"][1] + anns[-1]["bbox"][3] / 2
            else:
                cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
            polygons = [_polygon(rng, cx, cy, radius)]
            if rng.random() < TWO_PART_PROB:
                polygons.append(_polygon(rng, cx + radius * 1.2, cy, radius * 0.4))
            mask = instance_mask(polygons, h, w)
            if not mask.any():
                continue
            segmentation: object = polygons
            if rng.random() < RLE_PROB:
                rle = mask_api.encode(np.asfortranarray(mask))
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            _paint(canvas, mask.astype(bool), cls, rng)
            add(cls, segmentation, False, mask)
        if rng.random() < CROWD_PROB:
            cls = int(rng.integers(1, len(category_ids) + 1))
            yy, xx = np.mgrid[0:h, 0:w]
            crowd = np.zeros((h, w), bool)
            y0 = rng.uniform(0.6, 0.85) * h
            for _ in range(int(rng.integers(4, 8))):
                cx, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.03, 0.06) * min(h, w)
                crowd |= (xx - cx) ** 2 + (yy - y0 - rng.uniform(-r, r)) ** 2 <= r * r
            _paint(canvas, crowd, cls, rng)
            add(cls, {"size": [h, w], "counts": _uncompressed_rle(crowd)}, True, crowd)
    canvas += rng.normal(0.0, 6.0, canvas.shape)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), anns


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a mask: run lengths in column-major order, starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _write_one(args: tuple[Path, str, int, int, int, int]) -> dict:
    root, split, index, image_id, size, seed = args
    rgb, anns = render_coco_image(split, index, size, seed)
    name = file_name(split, image_id)
    Image.fromarray(rgb).save(root / split / name, quality=JPEG_QUALITY)
    return {"image": {"id": image_id, "file_name": name, "height": rgb.shape[0], "width": rgb.shape[1]},
            "annotations": anns}  # fmt: skip


def synthesize_coco(out: str | Path, images: int, size: int = 160, seed: int = 0, workers: int = 1,
                    overwrite: bool = False, on_image: Callable[[str], None] | None = None) -> Path:  # fmt: skip
    """Write a synthetic COCO 2014 folder with ``images`` images over both splits; returns its path."""
    root = Path(out)
    check_synth_request(root, images, size, overwrite)
    for sub in (*SPLITS, "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs, counters = [], dict.fromkeys(SPLITS, 0)
    for i in range(images):
        split = split_of(i)
        jobs.append((root, split, i, (SPLITS.index(split) + 1) * 100000 + counters[split] + 1, size, seed))
        counters[split] += 1
    per_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for job, result in zip(jobs, parallel_map(_write_one, jobs, workers if workers > 1 else 0)):
        per_split[job[1]].append(result)
        if on_image:
            on_image(result["image"]["file_name"])
    categories = [{"id": cid, "name": name, "supercategory": "synthetic"} for cid, name in COCO_CATEGORIES]
    for split, results in per_split.items():
        annotations, next_id = [], 1
        for result in results:
            for ann in result["annotations"]:
                annotations.append({"id": next_id, "image_id": result["image"]["id"], **ann})
                next_id += 1
        data = {"info": {"description": f"cpn-dist synthetic COCO ({split}, seed {seed})"},
                "images": [r["image"] for r in results], "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    log.info("wrote %d synthetic COCO images to %s", images, root)
    return root
