"""The input of ``cpn pack``: a split's image keys, where their files are, their image-level labels and
ground truth — from a VOC folder (XML annotations or a labels file, mask PNGs) or a COCO folder (the
instances file, by a protocol of :mod:`cpn_dist.data.datasets.coco`).

Both sources give the packer the same things: ``split``, ``ids`` (the sample keys in pack order),
``dataset`` (the classes, recorded in ``meta.json``), ``root`` (named in errors), :meth:`settings` (what
decides the shards' bytes besides SLIC: compared by ``--resume``), :meth:`source_entry` and
:meth:`entry_extras` (meta.json's description of the source) and :meth:`sample_inputs` (one image's
files and labels for :class:`~cpn_dist.data.shards.pack_sample.SampleTask`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpn_dist.data.datasets.coco import PROTOCOLS, CocoImage, CocoProtocol, annotation_path, read_coco_split
from cpn_dist.data.datasets.info import DatasetInfo, voc
from cpn_dist.data.datasets.voc import read_labels_file, read_split, voc_folder
from cpn_dist.errors import CpnError


@dataclass(frozen=True)
class PackSource:
    """What to pack from a VOC folder: the split's image ids and where their files are."""

    voc_root: Path
    split: str
    list_path: Path
    ids: list[str]
    images: Path
    annotations: Path | None  # XML folder, when labels come from the annotations
    labels: dict[str, list[int]] | None  # labels given by a file
    labels_source: str
    masks: Path | None  # SegmentationClassAug or SegmentationClass, when present
    dataset: DatasetInfo = field(default_factory=voc)

    @property
    def root(self) -> Path:
        return self.voc_root

    def settings(self) -> dict[str, Any]:
        return {"labels": self.labels_source, "masks": self.masks.name if self.masks else None}

    def source_entry(self) -> dict[str, Any]:
        return {"voc_root": str(self.voc_root), "list": str(self.list_path), "listed": len(self.ids),
                "labels": self.labels_source, "masks": self.masks.name if self.masks else None}  # fmt: skip

    def entry_extras(self) -> dict[str, Any]:
        return {}

    def sample_inputs(self, position: int, key: str) -> tuple[dict[str, Any], str | None]:
        """(the SampleTask fields of image ``key``, why it is skipped or None)."""
        labels = None if self.labels is None else self.labels.get(key)
        missing = self.labels is not None and labels is None
        reason = f"no labels for this id in {self.labels_source}" if missing else None
        return {"jpg": self.images / f"{key}.jpg", "xml": self.annotations / f"{key}.xml" if self.annotations else None,
                "labels": labels, "mask": self.masks / f"{key}.png" if self.masks else None}, reason  # fmt: skip


def find_source(voc_root: str | Path, split: str, labels_file: str | Path | None = None) -> PackSource:
    """Check the VOC folder and read the split list; a missing folder or list fails at once.

    ``split`` is a split name (``ImageSets/Segmentation/{split}.txt``) or the path of any list file
    (then the split is named after the file's stem)."""
    root = voc_folder(voc_root, ("JPEGImages",))
    images = root / "JPEGImages"
    as_path = Path(split)
    if as_path.suffix == ".txt" or as_path.is_file():
        list_path, name = as_path, as_path.stem
    else:
        list_path, name = root / "ImageSets" / "Segmentation" / f"{split}.txt", split
    ids = read_split(list_path)  # CpnError naming the list when missing
    if not ids:
        raise CpnError(f"{list_path}: the split list is empty")
    annotations = None
    labels = None
    if labels_file is not None:
        labels = pack_labels(labels_file)
        labels_source = str(labels_file)
    else:
        annotations = root / "Annotations"
        if not annotations.is_dir():
            raise CpnError(f"{annotations}: VOC folder not found (or give a labels file with --labels)")
        labels_source = "Annotations/*.xml"
    masks = next((root / d for d in ("SegmentationClassAug", "SegmentationClass") if (root / d).is_dir()), None)
    return PackSource(root, name, list_path, ids, images, annotations, labels, labels_source, masks)


def pack_labels(path: str | Path, dataset: DatasetInfo | None = None) -> dict[str, list[int]]:
    """The labels of a labels file (:func:`~cpn_dist.data.datasets.voc.read_labels_file`, for ``dataset``: VOC when
    None) as shards store them: C-1 × 0/1 per image id; any other value is a CpnError."""
    dataset = dataset or voc()
    out: dict[str, list[int]] = {}
    for key, labels in read_labels_file(path, dataset).items():
        if not np.isin(labels, (0, 1)).all():
            raise CpnError(f"{path}: {key}: expected {dataset.num_foreground} values in {{0, 1}} or a list of class "
                           "names")  # fmt: skip
        out[key] = [int(v) for v in labels]
    return out


def protocol_name(protocol: CocoProtocol) -> str:
    """The published protocol ``protocol`` is (``recam``, ``sipe``, ``toco``), or ``custom``."""
    return next((name for name, known in PROTOCOLS.items() if known == protocol), "custom")


@dataclass(frozen=True)
class CocoPackSource:
    """What to pack from a COCO folder: the images of ``ROOT/annotations/instances_{split}.json`` that the
    protocol keeps, in file order (key: the file name's stem), their labels by the protocol, and their
    annotations, from which each worker builds the image's mask (:func:`~cpn_dist.data.datasets.coco.class_mask`)."""

    coco_root: Path
    split: str
    annotation_file: Path
    images: Path  # ROOT/{split}/
    kept: list[CocoImage]
    listed: int  # images in the annotation file
    protocol: CocoProtocol
    dataset: DatasetInfo
    ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", [image.key for image in self.kept])

    @property
    def root(self) -> Path:
        return self.coco_root

    @property
    def labels_source(self) -> str:
        return f"annotations/{self.annotation_file.name}"

    def settings(self) -> dict[str, Any]:
        return {"labels": self.labels_source, "masks": "annotations", **self.protocol.to_json()}

    def source_entry(self) -> dict[str, Any]:
        return {"coco_root": str(self.coco_root), "annotations": str(self.annotation_file),
                "images": str(self.images), "listed": self.listed, "dropped": self.listed - len(self.kept),
                "labels": self.labels_source, "masks": "annotations"}  # fmt: skip

    def entry_extras(self) -> dict[str, Any]:
        return {"protocol": {"name": protocol_name(self.protocol), **self.protocol.to_json()}}

    def sample_inputs(self, position: int, key: str) -> tuple[dict[str, Any], str | None]:
        image = self.kept[position]
        return {"jpg": self.images / image.file_name, "xml": None, "mask": None, "coco": image,
                "protocol": self.protocol, "labels": image.labels(self.protocol, self.dataset.num_foreground)}, None


def find_coco_source(coco_root: str | Path, split: str, protocol: CocoProtocol | None = None) -> CocoPackSource:
    """Read and check ``ROOT/annotations/instances_{split}.json`` (one line for a missing or malformed file,
    :func:`~cpn_dist.data.datasets.coco.read_coco_split`) and find the image folder ``ROOT/{split}/``."""
    protocol = protocol or PROTOCOLS["recam"]
    parsed = read_coco_split(coco_root, split)
    images = Path(coco_root) / split
    if not images.is_dir():
        raise CpnError(f"{images}: COCO image folder not found (expected ROOT/{split}/*.jpg beside "
                       f"{annotation_path('ROOT', split)})")  # fmt: skip
    kept = parsed.kept(protocol)
    if not kept:
        raise CpnError(f"{parsed.path}: the protocol keeps none of its {len(parsed.images)} images")
    dataset = DatasetInfo("coco", parsed.classes)  # the file's categories (COCO 2014: datasets.coco()'s 80)
    return CocoPackSource(Path(coco_root), split, parsed.path, images, kept, len(parsed.images), protocol, dataset)
