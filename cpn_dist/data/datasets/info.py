"""What a dataset is to every stage: its name and class names (background first). The class count C
is a property of the data, never a constant: ``cpn pack`` records the description in ``meta.json``,
training records it in the weights, ``cpn infer`` in the CAM folder (:data:`FOLDER_FILE`), and every
reader takes C from there (PASCAL VOC when nothing records it, as for the released files).

Class index convention for every dataset: 0 is background, 1..C-1 the object classes in
:attr:`DatasetInfo.classes` order, 255 is ignored; image-level labels are (C-1)-vectors indexed by
``class index - 1``; a CAM file's keys are ``class index - 1``. The label palette is VOC's colour map
for every dataset (it gives 256 distinct colours).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpn_dist.errors import CpnError

FOLDER_FILE = "dataset.json"  # beside CAM files and label maps: the dataset they are of


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's name and its C class names, background first."""

    name: str
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """C: background + the object classes (masks and score maps use 0..C-1)."""
        return len(self.classes)

    @property
    def num_foreground(self) -> int:
        """C - 1: the object classes (image-level label vectors, CAM keys 0..C-2)."""
        return len(self.classes) - 1

    @property
    def foreground(self) -> tuple[str, ...]:
        return self.classes[1:]

    def to_json(self) -> dict[str, Any]:
        """As ``meta.json``, the weights and :data:`FOLDER_FILE` record it."""
        return {"name": self.name, "classes": list(self.foreground)}

    @classmethod
    def from_json(cls, data: Any, where: str = "dataset") -> DatasetInfo:
        if not (isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("classes"), list)
                and data["classes"] and all(isinstance(c, str) for c in data["classes"])):  # fmt: skip
            raise CpnError(f"{where}: expected {{'name': str, 'classes': [object class names]}}")
        return cls(data["name"], ("background", *data["classes"]))


def voc() -> DatasetInfo:
    from cpn_dist.data.datasets.voc import CLASSES

    return DatasetInfo("voc", ("background", *CLASSES))


def coco() -> DatasetInfo:
    from cpn_dist.data.datasets.coco import COCO_CATEGORIES

    return DatasetInfo("coco", ("background", *(name for _, name in COCO_CATEGORIES)))


BUILT_IN = {"voc": voc, "coco": coco}  # the names `--dataset` takes


def by_name(name: str) -> DatasetInfo:
    """The built-in description ``voc`` or ``coco`` (COCO 2014's 80 classes)."""
    if name not in BUILT_IN:
        raise CpnError(f"--dataset {name}: choose from {', '.join(BUILT_IN)}")
    return BUILT_IN[name]()


def from_meta(meta: dict) -> DatasetInfo:
    """The dataset a ``meta.json`` describes: ``{"dataset": name, "classes": [object classes]}``; a pack made
    before datasets were recorded is VOC (its ``classes`` are VOC's 20)."""
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        return voc()
    return DatasetInfo.from_json({"name": meta.get("dataset", "voc"), "classes": classes}, "meta.json")


def write_folder_dataset(folder: str | Path, dataset: DatasetInfo) -> None:
    """Record ``dataset`` in ``folder`` (CAM files, label maps) for the commands that read it next."""
    from cpn_dist.atomic import write_json

    path = Path(folder) / FOLDER_FILE
    if path.is_file() and read_folder_dataset(folder) == dataset:
        return
    write_json(path, dataset.to_json(), indent=1)


def read_folder_dataset(folder: str | Path) -> DatasetInfo | None:
    """The dataset recorded in ``folder`` (None: nothing recorded, e.g. released CAM files)."""
    path = Path(folder) / FOLDER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CpnError(f"{path}: unreadable ({exc})") from None
    return DatasetInfo.from_json(data, str(path))


def resolve_dataset(name: str | None = None, *folders: str | Path | None) -> DatasetInfo:
    """The dataset a command works on: ``name`` (``--dataset``) when given, else the first of ``folders``
    that records one, else VOC. A folder recording another dataset than ``name`` is refused."""
    recorded = next((d for d in (read_folder_dataset(f) for f in folders if f) if d is not None), None)
    if name is not None:
        chosen = by_name(name)
        if recorded is not None and recorded.num_classes != chosen.num_classes:
            where = next(Path(f) / FOLDER_FILE for f in folders if f and read_folder_dataset(f) is not None)
            raise CpnError(f"--dataset {name} ({chosen.num_classes} classes), but {where} records "
                           f"{recorded.name} ({recorded.num_classes} classes)")  # fmt: skip
        return chosen
    return recorded or voc()
