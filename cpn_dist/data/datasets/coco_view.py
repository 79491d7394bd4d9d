"""A VOC-layout view of COCO 2014 splits, on which ``cpn pipeline`` and ``cpn demo --coco-root`` run every
step they run on a VOC folder.

``write_view(plan_view(ROOT, splits, VIEW, protocol))`` makes::

    VIEW/JPEGImages/{key}.jpg                  symbolic links to ROOT/{split}/{file name} (no copy)
    VIEW/SegmentationClass/{key}.png           the protocol's class masks (:mod:`cpn_dist.data.datasets.coco_masks`:
                                               the seg.png ``cpn pack --coco-root`` packs), and dataset.json
    VIEW/ImageSets/Segmentation/{split}.txt    the keys the protocol keeps whose image exists, in file order
    VIEW/cls_labels.json                       {key: C-1 labels 0/1}: image labels by the protocol
    VIEW/dataset.json                          the classes (the annotation file's categories)
    VIEW/coco_view.json                        what made it: the COCO folder, the splits, the protocol

:class:`cpn_dist.data.inputs.VocSource` reads such a folder's labels from ``cls_labels.json`` with its
classes, so CAM inference, the CRF, affinity labels, the random walk and segmentation read it as they read
VOC, and the scores take the 81 classes from ``SegmentationClass/dataset.json``. A view is derived data:
re-made by other settings (another protocol, COCO folder or set of splits) it is emptied and rebuilt; a
stopped one finishes (existing links and masks are kept). An image listed in the annotations whose file
is missing is left out of the lists (with a warning), as ``cpn pack`` skips it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cpn_dist.atomic import write_atomic, write_json
from cpn_dist.data.datasets.coco import CocoImage, CocoProtocol, annotation_path, read_coco_split
from cpn_dist.data.datasets.coco_masks import MasksPlan, write_masks
from cpn_dist.data.datasets.info import DatasetInfo, write_folder_dataset
from cpn_dist.data.inputs import VIEW_LABELS
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)

RECORD = "coco_view.json"


@dataclass
class ViewPlan:
    """What :func:`write_view` does: per split the masks to write
    (:class:`~cpn_dist.data.datasets.coco_masks.MasksPlan`)."""

    out: Path
    splits: list[MasksPlan]
    dataset: DatasetInfo
    protocol: CocoProtocol

    @property
    def todo(self) -> int:
        return sum(len(p.todo) for p in self.splits)


def _present(root: Path, split: str, kept: list[CocoImage]) -> list[CocoImage]:
    """The images of ``kept`` whose file exists under ``ROOT/{split}/``; a warning names the others."""
    present = [im for im in kept if (root / split / im.file_name).is_file()]
    missing = len(kept) - len(present)
    if missing:
        first = next(im for im in kept if not (root / split / im.file_name).is_file())
        log.warning("%s: %d image(s) of the annotations not found (e.g. %s): left out of the view, as cpn pack "
                    "skips them", root / split, missing, first.file_name)  # fmt: skip
    return present


def plan_view(coco_root: str | Path, splits: Sequence[str], out: str | Path, protocol: CocoProtocol,
              overwrite: bool = False) -> ViewPlan:  # fmt: skip
    """Read the splits' annotation files (one line for a missing or malformed one), empty ``out`` when it holds a
    view made otherwise (or ``overwrite``), record what makes it, and list the masks still to write."""
    root = Path(coco_root).resolve()
    out = Path(out)
    splits = list(dict.fromkeys(splits))
    parsed = {split: read_coco_split(root, split) for split in splits}  # every file checked before any write
    classes = {p.classes for p in parsed.values()}
    if len(classes) > 1:
        raise CpnError(f"{root}: the annotation files of {', '.join(splits)} have different categories")
    made_by = {"coco_root": str(root), "splits": splits, **protocol.to_json()}
    record = out / RECORD
    same = record.is_file() and json.loads(record.read_text()) == made_by
    if out.exists() and (overwrite or not same):
        shutil.rmtree(out)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_json(record, made_by, indent=1)
    dataset = DatasetInfo("coco", classes.pop())
    masks = out / "SegmentationClass"
    plans = []
    for split, data in parsed.items():
        kept = _present(root, split, data.kept(protocol))
        jobs = [(im, protocol, masks / f"{im.key}.png") for im in kept]
        plans.append(MasksPlan(masks, split, kept, [job for job in jobs if not job[2].is_file()]))
    return ViewPlan(out, plans, dataset, protocol)


def _link_images(root: Path, plan: MasksPlan, images: Path) -> None:
    for im in plan.kept:
        link = images / f"{im.key}.jpg"
        if not link.is_symlink():
            os.symlink(root / plan.split / im.file_name, link)


def write_view(plan: ViewPlan, coco_root: str | Path, workers: int = 1,
               progress: Callable[[int], None] | None = None) -> dict[str, int]:  # fmt: skip
    """Make the view of ``plan`` (see the module docstring); returns the images listed per split."""
    root = Path(coco_root).resolve()
    rows = []
    for split in plan.splits:
        _link_images(root, split, plan.out / "JPEGImages")
        write_masks(split, workers, progress, list_dir=plan.out / "ImageSets" / "Segmentation")
        rows += [f"{json.dumps(im.key)}: {json.dumps(im.labels(plan.protocol, plan.dataset.num_foreground))}"
                 for im in split.kept]  # fmt: skip
    text = "{\n" + ",\n".join(rows) + "\n}\n"  # one image per line
    write_atomic(plan.out / VIEW_LABELS, lambda tmp: tmp.write_text(text))
    write_folder_dataset(plan.out, plan.dataset)
    write_folder_dataset(plan.out / "SegmentationClass", plan.dataset)
    return {split.split: len(split.kept) for split in plan.splits}


def check_coco_split(root: Path, split: str) -> Path:
    """``root``, checked (without parsing anything) to hold ``split``: its annotation file and image folder.
    Each missing part is a one-line CpnError naming it, as :func:`~cpn_dist.data.datasets.coco.read_coco_split` and
    ``cpn pack --coco-root`` say it."""
    if not root.is_dir():
        raise CpnError(f"{root}: COCO folder not found")
    path = annotation_path(root, split)
    if not path.is_file():
        raise CpnError(f"{path}: COCO annotation file not found (a COCO 2014 folder holds {split}/*.jpg and "
                       f"annotations/instances_{split}.json)")  # fmt: skip
    if not (root / split).is_dir():
        raise CpnError(f"{root / split}: COCO image folder not found (expected ROOT/{split}/*.jpg beside "
                       f"{annotation_path('ROOT', split)})")  # fmt: skip
    return root
