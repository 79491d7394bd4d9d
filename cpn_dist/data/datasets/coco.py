"""MS COCO 2014 instances annotations → image-level labels and ground-truth class masks, by the rules
of the published WSSS protocols.

A COCO folder is ``ROOT/{split}/*.jpg`` with ``ROOT/annotations/instances_{split}.json`` (the official
layout of train2014 / val2014). The file's categories, sorted by id, are the classes 1..C-1 of the
dataset (the official 80 ids 1..90 with their gaps → 1..80: 1→1 … 11→11, 13→12 … 90→80, the order of
ReCAM's ``category_map`` and SIPE's ``labels_coco.txt``); 0 is background, 255 ignored.

The published protocols differ in four choices, each a field of :class:`CocoProtocol`:

============  ==============================  =========================  ====================
choice        ReCAM (CLIMS, LPCAM, BECO, AMN)  SIPE                       ToCo (coco2voc masks)
============  ==============================  =========================  ====================
crowd labels  counted                         counted                    counted
crowd pixels  background (not drawn)          background (ReCAM masks)   drawn with their class
overlaps      the annotation written last     the annotation written     the smallest area on
              wins                            last wins                  top
no-annotation kept (82,783 / 40,504)          dropped (82,081 / 40,137)  dropped
============  ==============================  =========================  ====================

The default is ReCAM's, the family with the most published numbers. (coco2voc also writes the raw
category ids 1..90 — a 91-class ground truth no evaluator of the field expects; we always map to
1..80.) Instance masks are decoded with ``pycocotools`` exactly as ``COCO.annToMask`` decodes them
(polygons through ``frPyObjects`` + ``merge``, uncompressed RLE through ``frPyObjects``, compressed RLE
as it is); ``pip install 'cpn-dist[coco]'`` installs it.

Reading the file needs no pycocotools: it is plain JSON, checked here so that a bad file is one line
(:class:`~cpn_dist.errors.CpnError`) naming the file and the annotation, never a traceback later.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpn_dist.data.datasets.coco_protocol import CROWD_MASKS, EMPTY_IMAGES, OVERLAPS, PROTOCOLS, CocoProtocol
from cpn_dist.data.datasets.voc import IGNORE
from cpn_dist.errors import CpnError

__all__ = ["COCO_CATEGORIES", "CROWD_MASKS", "EMPTY_IMAGES", "OVERLAPS", "PROTOCOLS", "CocoImage", "CocoProtocol",
           "CocoSplit", "Instance", "annotation_path", "class_mask", "instance_mask", "pycocotools_mask",
           "read_coco_split"]

log = logging.getLogger(__name__)

# The 80 categories of instances_{train,val}2014.json: (COCO id, name), in id order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip



@dataclass(frozen=True)
class Instance:
    """One annotation: its class (1..C-1), segmentation as stored, crowd flag, area and id."""

    cls: int
    segmentation: Any
    crowd: bool
    area: float
    ann_id: int


@dataclass
class CocoImage:
    """One image of the file: its key (the file name's stem), file, size, and annotations in file order."""

    image_id: int
    key: str
    file_name: str
    height: int
    width: int
    instances: list[Instance] = field(default_factory=list)

    def labels(self, protocol: CocoProtocol, num_foreground: int) -> list[int]:
        """The image-level label vector (0/1 per class 1..C-1)."""
        y = [0] * num_foreground
        for inst in self.instances:
            if protocol.crowd_labels or not inst.crowd:
                y[inst.cls - 1] = 1
        return y


@dataclass
class CocoSplit:
    """The parsed annotation file of a split: class names (background first), images in file order, and
    the annotations that draw nothing (empty segmentations: ``[(ann id, image key)]``)."""

    path: Path
    classes: tuple[str, ...]
    images: list[CocoImage]
    empty_segmentations: list[tuple[int, str]]

    def kept(self, protocol: CocoProtocol) -> list[CocoImage]:
        """The images a protocol keeps (``empty: drop`` leaves out those without any annotation)."""
        if protocol.empty == "keep":
            return list(self.images)
        return [im for im in self.images if im.instances]


def annotation_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def read_coco_split(root: str | Path, split: str) -> CocoSplit:
    """Parse and check ``ROOT/annotations/instances_{split}.json``; raises a one-line CpnError naming the
    file (and the annotation) for a missing or malformed file, an annotation whose image is not in the
    file, a category id outside the file's categories, or a malformed segmentation. Empty
    segmentations are kept (the annotation still labels its image) and listed."""
    path = annotation_path(root, split)
    if not Path(root).is_dir():
        raise CpnError(f"{root}: COCO folder not found")
    if not path.is_file():
        raise CpnError(f"{path}: COCO annotation file not found (expected ROOT/annotations/instances_{split}.json)")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise CpnError(f"{path}: not a COCO annotation file (JSON error at line {exc.lineno}, column {exc.colno})") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CpnError(f"{path}: unreadable COCO annotation file ({exc})") from None
    if not isinstance(data, dict):
        raise CpnError(f"{path}: not a COCO instances file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CpnError(f"{path}: not a COCO instances file (no '{key}' list)")
    try:
        category_ids = sorted({int(c["id"]) for c in data["categories"]})
        names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError):
        raise CpnError(f"{path}: a category without an integer 'id' and a 'name'") from None
    if not category_ids:
        raise CpnError(f"{path}: no categories")
    class_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    images: dict[int, CocoImage] = {}
    for entry in data["images"]:
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
            height, width = int(entry["height"]), int(entry["width"])
        except (KeyError, TypeError, ValueError):
            raise CpnError(f"{path}: an image entry without integer id/height/width and a file_name "
                           f"({_short(entry)})") from None  # fmt: skip
        if image_id in images:
            raise CpnError(f"{path}: image id {image_id} is listed twice")
        images[image_id] = CocoImage(image_id, Path(file_name).stem, file_name, height, width)
    empty: list[tuple[int, str]] = []
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = f"{path}: annotation {ann_id}"
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise CpnError(f"{where}: no integer image_id and category_id") from None
        image = images.get(image_id)
        if image is None:
            raise CpnError(f"{where}: its image_id {image_id} is not among the file's images")
        if category_id not in class_of:
            raise CpnError(f"{where}: category_id {category_id} is not among the file's categories "
                           f"({category_ids[0]}..{category_ids[-1]})")  # fmt: skip
        segmentation = ann.get("segmentation")
        crowd = bool(ann.get("iscrowd", 0))
        if _empty_segmentation(segmentation):
            empty.append((ann_id, image.key))
            segmentation = None
        else:
            _check_segmentation(segmentation, image, where)
        area = float(ann.get("area", 0.0))
        image.instances.append(Instance(class_of[category_id], segmentation, crowd, area, ann_id))
    if empty:
        log.warning("%s: %d annotation(s) with an empty segmentation label their image but draw no pixels "
                    "(e.g. annotation %s of %s)", path, len(empty), *empty[0])  # fmt: skip
    classes = ("background", *(names[c] for c in category_ids))
    return CocoSplit(path, classes, list(images.values()), empty)


def _short(obj: Any, n: int = 60) -> str:
    text = json.dumps(obj)[:n]
    return text


def _empty_segmentation(seg: Any) -> bool:
    return seg is None or (isinstance(seg, list) and all(isinstance(p, list) and not p for p in seg))


def _check_segmentation(seg: Any, image: CocoImage, where: str) -> None:
    """A polygon list (each polygon an even number of ≥ 4 coordinates) or an RLE of the image's size."""
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2 or not all(isinstance(v, int | float) for v in poly):
                raise CpnError(f"{where}: a polygon must be a list of x, y coordinates")
        return
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list | str) and isinstance(seg.get("size"), list):
        if [int(v) for v in seg["size"]] != [image.height, image.width]:
            raise CpnError(f"{where}: RLE size {seg['size']} differs from its image's "
                           f"{[image.height, image.width]} ({image.file_name})")  # fmt: skip
        return
    raise CpnError(f"{where}: segmentation is neither polygons nor an RLE")


def pycocotools_mask():
    """``pycocotools.mask``, or a one-line CpnError saying how to install it."""
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        raise CpnError("COCO masks need pycocotools: pip install 'cpn-dist[coco]'") from None
    return mask_api


def instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The H×W uint8 {0, 1} mask of one annotation's segmentation, as ``COCO.annToMask`` decodes it."""
    mask_api = pycocotools_mask()
    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_api.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a DeprecationWarning per decode
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_api.decode(rle)


def class_mask(image: CocoImage, protocol: CocoProtocol) -> np.ndarray:
    """The H×W uint8 ground truth of an image under ``protocol``: 0 background, 1..C-1 classes, 255 crowd
    pixels under ``crowd_mask: ignore``. ``overlap: last`` paints in file order (the last wins);
    ``smallest`` puts the smallest area on top, coco2voc's rule (it sorts by area, stable, and a pixel keeps
    the first mask that covers it: of equal areas, the one written first wins)."""
    out = np.zeros((image.height, image.width), np.uint8)
    drawn = [inst for inst in image.instances if inst.segmentation is not None
             and not (inst.crowd and protocol.crowd_mask == "background")]  # fmt: skip
    if protocol.overlap == "smallest":
        drawn = sorted(drawn, key=lambda inst: inst.area)[::-1]  # painted last = first in coco2voc's order
    for inst in drawn:
        value = IGNORE if inst.crowd and protocol.crowd_mask == "ignore" else inst.cls
        out[instance_mask(inst.segmentation, image.height, image.width).astype(bool)] = value
    return out
