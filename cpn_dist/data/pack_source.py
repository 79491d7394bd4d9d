"""The input of ``cpn pack``: a VOC split's image ids, where their files are, and their image-level
labels (from the XML annotations or a labels file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpn_dist.data.voc import NUM_FOREGROUND, read_labels_file, read_split, voc_folder
from cpn_dist.errors import CpnError


@dataclass(frozen=True)
class PackSource:
    """What to pack: the split's image ids and where their files are."""

    voc_root: Path
    split: str
    list_path: Path
    ids: list[str]
    images: Path
    annotations: Path | None  # XML folder, when labels come from the annotations
    labels: dict[str, list[int]] | None  # labels given by a file
    labels_source: str
    masks: Path | None  # SegmentationClassAug or SegmentationClass, when present


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


def pack_labels(path: str | Path) -> dict[str, list[int]]:
    """The labels of a labels file (:func:`~cpn_dist.data.voc.read_labels_file`) as shards store them:
    20 × 0/1 per image id; any other value is a CpnError."""
    out: dict[str, list[int]] = {}
    for key, labels in read_labels_file(path).items():
        if not np.isin(labels, (0, 1)).all():
            raise CpnError(f"{path}: {key}: expected {NUM_FOREGROUND} values in {{0, 1}} or a list of class names")
        out[key] = [int(v) for v in labels]
    return out
