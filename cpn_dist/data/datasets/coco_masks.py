"""``cpn coco-masks``: every kept image's ground-truth mask of a COCO split as a VOC-palette PNG, so that
``cpn eval --gt OUT --list OUT/{split}.txt`` scores COCO from PNGs as it does VOC.

``OUT`` receives ``{key}.png`` (0 background, 1..C-1 the classes, 255 ignored; :func:`~cpn_dist.data.datasets.coco.
class_mask` under the protocol — the masks ``cpn pack --coco-root`` puts in ``seg.png``), ``dataset.json``
(the dataset, :func:`~cpn_dist.data.datasets.info.write_folder_dataset`), ``{split}.txt`` (the kept keys, in
file order) and ``coco_masks.json`` (the split and protocol they were made by). A re-run keeps the PNGs
already written (a run that was stopped finishes) unless ``overwrite``; a re-run by another protocol is
refused, naming the flags that differ."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpn_dist.atomic import write_atomic, write_json
from cpn_dist.data.datasets.coco import CocoImage, CocoProtocol, class_mask, read_coco_split
from cpn_dist.data.datasets.info import DatasetInfo, write_folder_dataset
from cpn_dist.data.datasets.voc import save_label_png
from cpn_dist.data.shards.pack_check import settings_changes
from cpn_dist.errors import CpnError
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

RECORD = "coco_masks.json"


@dataclass
class MasksReport:
    out: Path
    split: str
    images: int  # kept by the protocol (the list's length)
    written: int
    kept: int  # already there, not rewritten
    list_path: Path


def _write_mask(job: tuple[CocoImage, CocoProtocol, Path]) -> None:
    image, protocol, path = job
    mask = class_mask(image, protocol)
    write_atomic(path, lambda tmp: save_label_png(mask, tmp), path.with_name(f".{path.stem}.tmp.png"))


@dataclass
class MasksPlan:
    """What :func:`write_masks` does: every kept image's job, and which of them to (re)write."""

    out: Path
    split: str
    kept: list[CocoImage]
    todo: list[tuple[CocoImage, CocoProtocol, Path]]


def plan_coco_masks(root: str | Path, split: str, out: str | Path, protocol: CocoProtocol,
                    overwrite: bool = False) -> MasksPlan:  # fmt: skip
    """Read the split, check ``out`` (masks of another protocol there are refused without ``overwrite``),
    record the dataset and protocol in it and list the masks to write."""
    parsed = read_coco_split(root, split)
    kept = parsed.kept(protocol)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CpnError(f"{out}: exists and is not a folder")
    made_by = {"split": split, **protocol.to_json()}
    record = out / RECORD
    if record.is_file() and not overwrite:
        old = json.loads(record.read_text())
        changes = settings_changes({k: old.get(k) for k in made_by}, made_by)
        if changes:
            raise CpnError(f"{out}: holds masks made otherwise ({'; '.join(changes)}); use --overwrite or another "
                           "--out")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, {**made_by, "annotations": str(parsed.path)}, indent=1)
    write_folder_dataset(out, DatasetInfo("coco", parsed.classes))
    jobs = [(im, protocol, out / f"{im.key}.png") for im in kept]
    return MasksPlan(out, split, kept, [job for job in jobs if overwrite or not job[2].is_file()])


def write_masks(plan: MasksPlan, workers: int = 1, progress: Callable[[int], None] | None = None,
                list_dir: Path | None = None) -> MasksReport:  # fmt: skip
    """Write the plan's masks (in ``workers`` processes) and the list of kept keys (into ``list_dir``; None:
    beside the masks)."""
    for _ in parallel_map(_write_mask, plan.todo, workers if workers > 1 else 0):
        if progress:
            progress(1)
    list_path = (list_dir or plan.out) / f"{plan.split}.txt"
    write_atomic(list_path, lambda tmp: tmp.write_text("".join(f"{im.key}\n" for im in plan.kept)))
    kept = len(plan.kept) - len(plan.todo)
    log.info("%s: %d masks of %s (%d written, %d kept)", plan.out, len(plan.kept), plan.split, len(plan.todo), kept)
    return MasksReport(plan.out, plan.split, len(plan.kept), len(plan.todo), kept, list_path)


def write_coco_masks(root: str | Path, split: str, out: str | Path, protocol: CocoProtocol, workers: int = 1,
                     overwrite: bool = False) -> MasksReport:  # fmt: skip
    """Write the masks of ``split`` into ``out`` (see the module docstring)."""
    return write_masks(plan_coco_masks(root, split, out, protocol, overwrite), workers)
