"""Where inference, refinement and evaluation read their images: a VOC root or packed shards.

Both sources yield :class:`Sample` records — image id, the original RGB image, its C-1 image-level
labels and (when there is one) the ground-truth mask — so the steps after training do not care
where the data lives; each has a ``dataset`` (:class:`~cpn_dist.data.datasets.info.DatasetInfo`: VOC for a
VOC root, what ``meta.json`` records for shards). A VOC root is read by image id (random access); shards are streamed in
order, each process of a distributed run decoding only its own slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cpn_dist.data.datasets.info import DatasetInfo, read_folder_dataset, voc
from cpn_dist.data.datasets.voc import labels_from_names, read_label_png, read_labels_file, read_xml_objects, voc_folder
from cpn_dist.errors import CpnError

VIEW_LABELS = "cls_labels.json"  # the image labels of a VOC-layout view of another dataset: {id: C-1 × 0/1}


@dataclass
class Sample:
    name: str
    image: Image.Image  # RGB, original size
    labels: np.ndarray | None  # float32 [C-1]
    gt: np.ndarray | None  # H×W uint8, 0..C-1 and 255


def read_image(path: str | Path) -> Image.Image:
    """An image file as a fully loaded RGB PIL image."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise CpnError(f"{path}: image not found") from None
    except OSError as exc:
        raise CpnError(f"{path}: unreadable image ({exc})") from None


class VocSource:
    """Images ``JPEGImages/ID.jpg`` of a VOC root, labels from ``Annotations/ID.xml`` (or a labels
    file), ground truth ``SegmentationClass/ID.png`` where present.

    A VOC-layout folder of another dataset — one that records it in ``dataset.json``, as the COCO view of
    :mod:`cpn_dist.data.datasets.coco_view` does — gives its labels from its :data:`VIEW_LABELS` file, over its
    classes. A VOC folder records none: VOC's 20 classes, labels from the XMLs."""

    def __init__(self, root: str | Path, names: Sequence[str], labels_file: str | Path | None = None):
        self.root = voc_folder(root, ("JPEGImages",))
        self.dataset: DatasetInfo = read_folder_dataset(self.root) or voc()
        if labels_file is None and self.dataset != voc() and (self.root / VIEW_LABELS).is_file():
            labels_file = self.root / VIEW_LABELS
        self.names = list(names)
        self.labels_file = Path(labels_file) if labels_file else None
        self._labels = read_labels_file(labels_file, self.dataset) if labels_file else None

    def labels(self, name: str) -> np.ndarray:
        if self._labels is not None:
            if name not in self._labels:
                raise CpnError(f"{self.labels_file}: no labels for image '{name}'")
            return self._labels[name]
        return labels_from_names(read_xml_objects(self.root / "Annotations" / f"{name}.xml"))

    def image(self, name: str) -> Image.Image:
        return read_image(self.root / "JPEGImages" / f"{name}.jpg")

    def gt(self, name: str) -> np.ndarray | None:
        path = self.root / "SegmentationClass" / f"{name}.png"
        return read_label_png(path) if path.is_file() else None

    def load(self, name: str, image: bool = True, labels: bool = True, gt: bool = False) -> Sample:
        return Sample(
            name, self.image(name) if image else None, self.labels(name) if labels else None,
            self.gt(name) if gt else None,
        )  # fmt: skip

    def samples(self, rank: int = 0, world: int = 1, skip: frozenset[str] = frozenset(), **want) -> Iterator[Sample]:
        """This rank's share (every ``world``-th listed image, from ``rank``), minus ``skip``."""
        for name in self.names[rank::world]:
            if name not in skip:
                yield self.load(name, **want)


class ShardSource:
    """Samples of packed shards (``cpn pack``): a folder + split, one ``.tar``, or a webdataset pattern.
    ``names`` restricts (and orders the check of) the images read; ``None`` = every sample."""

    def __init__(self, source: str | Path, split: str | None = None, names: Sequence[str] | None = None):
        from cpn_dist.data.shards import reader as shards

        self.source = str(source)
        if not shards.is_remote(self.source) and Path(self.source).is_file():
            self.urls, self.dataset = [self.source], shards.shards_dataset(self.source)
        else:
            resolved = shards.resolve_shards(self.source, split)
            self.urls, self.dataset = resolved.urls, resolved.dataset
        self.names = list(names) if names is not None else None
        self._wanted = frozenset(self.names) if self.names is not None else None

    def samples(self, rank: int = 0, world: int = 1, skip: frozenset[str] = frozenset(),
                image: bool = True, labels: bool = True, gt: bool = False) -> Iterator[Sample]:  # fmt: skip
        """This rank's share of the wanted samples (every ``world``-th in shard order, from
        ``rank``), minus ``skip``; only the members asked for are decoded."""
        from cpn_dist.data.shards import reader as shards
        from cpn_dist.data.shards.members import decode_members

        members = {"jpg"} if image else set()
        if labels:
            members.add("cls.json")
        if gt:
            members.add("seg.png")

        def select(fname: str) -> bool:
            return fname.split(".", 1)[-1] in members if "." in fname else False

        index = -1
        for raw in shards.iter_raw_samples(self.urls, select=select):
            key = raw["__key__"]
            if self._wanted is not None and key not in self._wanted:
                continue
            index += 1
            if index % world != rank or key in skip:
                continue
            wanted = [name for name, want in (("jpg", image), ("cls.json", labels), ("seg.png", gt)) if want]
            got = decode_members(raw, wanted, where=raw.get("__url__", self.source),
                                 num_foreground=self.dataset.num_foreground)  # fmt: skip
            yield Sample(key, got.get("jpg"), got.get("cls.json"), got.get("seg.png"))


def is_shard_source(source: str | Path) -> bool:
    """Whether ``source`` names shards (a packed folder, a .tar, or a URL/pattern) rather than a folder
    of files."""
    text = str(source)
    if "://" in text or text.startswith("pipe:") or text.endswith(".tar") or "{" in text:
        return True
    path = Path(text)
    return path.is_dir() and (path / "meta.json").is_file()

