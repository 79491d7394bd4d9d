"""The input of ``cpn pack``: a VOC split's image ids, where their files are, and their image-level
labels (from the XML annotations or a labels file)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpn_dist.data.voc import CLASSES, NUM_FOREGROUND, labels_from_names, read_split
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
    root = Path(voc_root)
    if not root.is_dir():
        raise CpnError(f"{root}: VOC folder not found")
    images = root / "JPEGImages"
    if not images.is_dir():
        raise CpnError(f"{images}: VOC folder not found")
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
        labels = load_labels_file(labels_file)
        labels_source = str(labels_file)
    else:
        annotations = root / "Annotations"
        if not annotations.is_dir():
            raise CpnError(f"{annotations}: VOC folder not found (or give a labels file with --labels)")
        labels_source = "Annotations/*.xml"
    masks = next((root / d for d in ("SegmentationClassAug", "SegmentationClass") if (root / d).is_dir()), None)
    return PackSource(root, name, list_path, ids, images, annotations, labels, labels_source, masks)


def load_labels_file(path: str | Path) -> dict[str, list[int]]:
    """Image-level labels from a file: JSON ``{id: [20 × 0/1] | [class names]}``, or the released
    ``cls_labels.npy`` (a pickled dict id → 20 floats)."""
    p = Path(path)
    if not p.is_file():
        raise CpnError(f"{p}: labels file not found")
    try:
        # the released cls_labels.npy is a pickled dict
        raw = np.load(p, allow_pickle=True).item() if p.suffix == ".npy" else json.loads(p.read_text())
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise CpnError(f"{p}: unreadable labels file ({exc})") from None
    if not isinstance(raw, dict):
        raise CpnError(f"{p}: labels file must map image ids to labels")
    out: dict[str, list[int]] = {}
    for key, value in raw.items():
        values = list(np.asarray(value).reshape(-1).tolist())
        if values and all(isinstance(v, str) for v in values):
            if not set(values) <= set(CLASSES):
                raise CpnError(f"{p}: {key}: unknown class names {sorted(set(values) - set(CLASSES))}")
            out[str(key)] = [int(v) for v in labels_from_names(values)]
        elif len(values) == NUM_FOREGROUND and all(v in (0, 1) for v in values):
            out[str(key)] = [int(v) for v in values]
        else:
            raise CpnError(f"{p}: {key}: expected {NUM_FOREGROUND} values in {{0, 1}} or a list of class names")
    return out
