"""Synthetic PASCAL VOC: the project's built-in data for the demo and the tests.

``synthesize_voc`` writes a folder in the exact VOC 2012 layout::

    JPEGImages/{id}.jpg            RGB images of varied sizes (long side = ``size``)
    Annotations/{id}.xml           one <object> per visible object, VOC class names, bounding boxes
    SegmentationClass/{id}.png     palette PNG: 0 background, 1..20 classes, 255 void on object borders
    ImageSets/Segmentation/{train,val,train_aug}.txt

Each of the 20 classes has its own look (hue, shape, stripe texture) so that image-level labels are
learnable and CAMs mean something; backgrounds are cluttered with desaturated blobs and noise.
Image ``i`` depends only on ``(seed, i)``, so a dataset is byte-identical for a seed whatever its
size or the number of worker processes. The object classes named in each XML are exactly the
classes present (outside the void border) in its mask.

``task="parts"`` (and ``"parts-reliable"``) draws another kind of object instead — a large, weakly
textured body with a small, perfectly discriminative marker (see :mod:`cpn_dist.data.synth.parts`) — and
also writes ``SegmentationPart/{id}.png`` (0 none, 1 body, 2 marker, 255 void; not part of VOC).
"""

from __future__ import annotations

import colorsys
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cpn_dist.data.datasets.voc import CLASSES, IGNORE, NUM_FOREGROUND, save_label_png
from cpn_dist.data.synth.draw import SynthObject, check_synth_request, clutter_background, shape_mask, void_border
from cpn_dist.errors import CpnError
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

SHAPES = ("ellipse", "box", "diamond", "triangle", "ring", "star")
JPEG_QUALITY = 92
# shapes: the default task; parts, parts-reliable: see cpn_dist.data.synth.parts
TASKS = ("shapes", "parts", "parts-reliable")
PART_FOLDER = "SegmentationPart"


def image_id(index: int) -> str:
    return f"2012_{index:06d}"


def class_colour(cls: int) -> np.ndarray:
    """Base RGB (0..255 float) of a class: 20 hues around the colour wheel."""
    return np.array(colorsys.hsv_to_rgb(cls / NUM_FOREGROUND, 0.8, 0.9)) * 255.0


def _draw_object(canvas: np.ndarray, labels: np.ndarray, ids: np.ndarray, obj_id: int,
                 cls: int, rng: np.random.Generator) -> None:
    """Paint one object of class ``cls`` onto ``canvas`` (H×W×3 float) and its id into ``ids``."""
    h, w = labels.shape
    short = min(h, w)
    radius = rng.uniform(0.18, 0.34) * short
    aspect = rng.uniform(0.75, 1.3)
    cx = rng.uniform(0.1, 0.9) * w
    cy = rng.uniform(0.1, 0.9) * h
    theta = rng.uniform(0, 2 * np.pi)
    rx, ry = radius * aspect, radius / aspect
    ext = int(np.ceil(max(rx, ry))) + 2
    x0, x1 = max(0, int(cx) - ext), min(w, int(cx) + ext + 1)
    y0, y1 = max(0, int(cy) - ext), min(h, int(cy) + ext + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * dx + sin * dy) / rx
    v = (-sin * dx + cos * dy) / ry
    inside = shape_mask(SHAPES[cls % len(SHAPES)], u, v)

    # Class texture: stripes whose angle and frequency are fixed per class, on a class hue.
    angle = np.deg2rad((cls * 47) % 180)
    freq = 2.0 + (cls // len(SHAPES)) * 1.5
    stripes = 0.5 + 0.5 * np.sin(np.pi * freq * (u * np.cos(angle) + v * np.sin(angle)))
    base = class_colour(cls) * rng.uniform(0.85, 1.1)
    dark = base * 0.45
    colour = dark + (base - dark) * stripes[..., None]
    region = canvas[y0:y1, x0:x1]
    region[inside] = colour[inside]
    labels[y0:y1, x0:x1][inside] = cls + 1
    ids[y0:y1, x0:x1][inside] = obj_id


def render_image(index: int, size: int, seed: int, max_tries: int = 50):
    """Render image ``index``: returns (rgb uint8 H×W×3, mask uint8 H×W with void, objects)."""
    rng = np.random.default_rng([seed, index])
    long_side, short_side = size, max(16, int(round(size * rng.uniform(0.6, 1.0))))
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    width = max(1, int(round(min(h, w) / 100)))
    min_visible = 0.015 * h * w
    background = clutter_background(h, w, rng)
    n_objects = int(rng.integers(1, 4))
    for _ in range(max_tries):
        canvas = background.copy()
        labels = np.zeros((h, w), dtype=np.uint8)
        ids = np.zeros((h, w), dtype=np.int32)
        classes = rng.choice(NUM_FOREGROUND, size=n_objects, replace=False)
        for k, cls in enumerate(classes, start=1):
            _draw_object(canvas, labels, ids, k, int(cls), rng)
        void = void_border(labels, width)
        visible = [np.count_nonzero((ids == k) & ~void) for k in range(1, n_objects + 1)]
        if min(visible) >= min_visible:
            break
    else:  # pragma: no cover - would need an absurdly small image
        raise RuntimeError(f"could not place {n_objects} visible objects in image {index}")
    canvas += rng.normal(0.0, 6.0, canvas.shape)
    rgb = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    mask = labels.copy()
    mask[void] = IGNORE
    objects = []
    for k, cls in enumerate(classes, start=1):
        ys, xs = np.nonzero(ids == k)
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        truncated = box[0] == 1 or box[1] == 1 or box[2] == w or box[3] == h
        objects.append(SynthObject(int(cls), box, truncated))
    return rgb, mask, objects


def annotation_xml(name: str, width: int, height: int, objects: list[SynthObject]) -> bytes:
    """A VOC annotation XML for one image."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "cpn-dist synthetic VOC"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = CLASSES[obj.cls]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_one(args: tuple[Path, int, int, int, str]) -> str:
    root, index, size, seed, task = args
    name = image_id(index)
    if task.startswith("parts"):
        from cpn_dist.data.synth.parts import render_parts_image

        rgb, mask, part_map, objects = render_parts_image(index, size, seed, task=task)
        save_label_png(part_map, root / PART_FOLDER / f"{name}.png")
    else:
        rgb, mask, objects = render_image(index, size, seed)
    Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}.jpg", quality=JPEG_QUALITY)
    save_label_png(mask, root / "SegmentationClass" / f"{name}.png")
    (root / "Annotations" / f"{name}.xml").write_bytes(annotation_xml(name, rgb.shape[1], rgb.shape[0], objects))
    return name


def split_of(index: int) -> str:
    """Every fifth image is val; of the rest (train_aug), every other one is also in train."""
    if index % 5 == 4:
        return "val"
    return "train" if (index - index // 5) % 2 == 0 else "aug"


def synthesize_voc(out: str | Path, images: int, size: int = 128, seed: int = 0, workers: int = 1,
                   overwrite: bool = False, on_image: Callable[[str], None] | None = None,
                   task: str = "shapes") -> Path:  # fmt: skip
    """Write a synthetic VOC 2012 folder with ``images`` images of ``task`` (:data:`TASKS`); returns its path.

    ``on_image`` is called with each image id as it is written (for progress display).
    """
    root = Path(out)
    if task not in TASKS:
        raise CpnError(f"--task: unknown task '{task}' (choose from {', '.join(TASKS)})")
    check_synth_request(root, images, size, overwrite)
    subs = ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation")
    for sub in subs + ((PART_FOLDER,) if task.startswith("parts") else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(root, i, size, seed, task) for i in range(images)]
    for name in parallel_map(_write_one, jobs, workers if workers > 1 else 0):
        if on_image:
            on_image(name)
    splits: dict[str, list[str]] = {"train": [], "val": [], "train_aug": []}
    for i in range(images):
        which = split_of(i)
        if which == "val":
            splits["val"].append(image_id(i))
        else:
            splits["train_aug"].append(image_id(i))
            if which == "train":
                splits["train"].append(image_id(i))
    for split, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in ids))
    log.info("wrote %d synthetic VOC images (task %s) to %s", images, task, root)
    return root
