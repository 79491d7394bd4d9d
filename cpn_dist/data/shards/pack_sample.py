"""One image of ``cpn pack``, prepared in a worker process: the JPEG bytes as they are, the labels, the
SLIC superpixel maps and the ground-truth mask (a VOC mask PNG, or a COCO image's mask built from its
annotations here, in the worker), checked and encoded as shard members."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cpn_dist.data.shards.members import encode_labels, encode_png, slic_member
from cpn_dist.data.datasets.voc import IGNORE, labels_from_names, read_xml_objects
from cpn_dist.errors import CpnError, without_addresses

if TYPE_CHECKING:
    from cpn_dist.data.datasets.coco import CocoImage, CocoProtocol

MAX_SEGMENTS = 65535  # ids are stored as uint16


@dataclass(frozen=True)
class SampleTask:
    """One image to prepare: its position in the split list, its files, the SLIC settings and C, the
    dataset's classes (mask values must be 0..C-1 or 255). A COCO image carries its annotations
    (``coco``) and the ``protocol`` its mask is made by; its labels come made (``labels``)."""

    position: int
    key: str
    segments: tuple[int, ...]
    compactness: float
    jpg: Path
    xml: Path | None
    labels: list[int] | None
    mask: Path | None
    num_classes: int
    skip: str | None = None  # decided in the parent (duplicate id, bad key)
    coco: CocoImage | None = None
    protocol: CocoProtocol | None = None


@dataclass
class Prepared:
    """One packed sample, or the reason it was skipped."""

    position: int
    key: str
    skipped: str | None = None
    members: list[tuple[str, bytes]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    has_seg: bool = False
    pixel_sum: list[int] = field(default_factory=list)
    pixels: int = 0
    superpixels: dict[int, int] = field(default_factory=dict)
    slic_seconds: float = 0.0


def superpixels(image: np.ndarray, segments: int, compactness: float) -> np.ndarray:
    """The SLIC map (ids 0..K-1, consecutive) of an H×W×3 uint8 image for ``segments`` requested segments."""
    from skimage.segmentation import slic

    ids = slic(image, n_segments=segments, compactness=compactness, start_label=0)
    if not np.bincount(ids.ravel()).all():  # make ids consecutive so K = max + 1
        ids = np.unique(ids, return_inverse=True)[1].reshape(ids.shape)
    if ids.max() >= MAX_SEGMENTS:
        raise ValueError(f"{ids.max() + 1} superpixels do not fit uint16")
    return ids.astype(np.uint16)


def prepare_sample(task: SampleTask) -> Prepared:
    """Read, check and encode one image: JPEG bytes (kept as they are), labels, SLIC maps, GT mask."""
    out = Prepared(task.position, task.key)
    if task.skip:
        out.skipped = task.skip
        return out
    try:
        data = task.jpg.read_bytes()
    except FileNotFoundError:
        out.skipped = "image not found"
        return out
    except OSError as exc:
        out.skipped = f"unreadable image ({exc.strerror or exc})"
        return out
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
            image = np.asarray(im.convert("RGB"))
    except OSError as exc:  # no object addresses in reasons: two packs of one input write the same meta.json
        reason = without_addresses(str(exc))
        out.skipped = "empty file" if not data else "truncated JPEG" if "truncated" in reason else \
            f"unreadable JPEG ({reason})"
        return out
    if fmt != "JPEG":
        out.skipped = f"not a JPEG ({fmt})"
        return out
    if task.labels is not None:
        labels = task.labels
    else:
        try:
            labels = [int(v) for v in labels_from_names(read_xml_objects(task.xml))]
        except CpnError as exc:
            msg = str(exc)
            out.skipped = "annotation not found" if msg.endswith("annotation not found") else msg.split(": ", 1)[-1]
            return out
    seg, reason = _ground_truth(task, image)
    if reason is not None:
        out.skipped = reason
        return out
    seg_png = encode_png(seg) if seg is not None else None

    out.members.append(("jpg", data))
    out.members.append(("cls.json", encode_labels(np.asarray(labels))))
    start = time.perf_counter()
    for n in task.segments:
        ids = superpixels(image, n, task.compactness)
        out.superpixels[n] = int(ids.max()) + 1
        out.members.append((slic_member(n), encode_png(ids)))
    out.slic_seconds = time.perf_counter() - start
    if seg_png is not None:
        out.members.append(("seg.png", seg_png))
        out.has_seg = True
    out.labels = labels
    out.pixel_sum = [int(v) for v in image.reshape(-1, 3).sum(axis=0, dtype=np.int64)]
    out.pixels = int(image.shape[0] * image.shape[1])
    return out


def _ground_truth(task: SampleTask, image: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """(the image's H×W uint8 ground truth or None, None) — or (None, why the image is skipped)."""
    if task.coco is not None:
        from cpn_dist.data.datasets.coco import class_mask

        if (task.coco.height, task.coco.width) != image.shape[:2]:
            return None, (f"image is {image.shape[1]}×{image.shape[0]}, the annotations say "
                          f"{task.coco.width}×{task.coco.height}")  # fmt: skip
        seg = class_mask(task.coco, task.protocol)
    elif task.mask is not None and task.mask.is_file():
        try:
            with Image.open(task.mask) as m:
                if m.mode not in ("P", "L"):
                    raise OSError(f"mode {m.mode}, expected a palette or 8-bit PNG")
                seg = np.array(m, dtype=np.uint8)
        except OSError as exc:
            empty = not task.mask.stat().st_size
            return None, "empty mask file" if empty else f"unreadable mask ({without_addresses(str(exc))})"
        if seg.shape != image.shape[:2]:
            return None, f"mask is {seg.shape[1]}×{seg.shape[0]}, image is {image.shape[1]}×{image.shape[0]}"
    else:
        return None, None
    bad = set(np.unique(seg).tolist()) - set(range(task.num_classes)) - {IGNORE}
    if bad:
        return None, f"mask holds values outside 0..{task.num_classes - 1} and {IGNORE}: {sorted(bad)}"
    return seg, None
