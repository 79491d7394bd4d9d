"""``cpn check-coco``: check a COCO 2014 folder before packing it, as ``cpn check-voc`` checks a VOC one —
the annotation files parse (:func:`~cpn_dist.data.datasets.coco.read_coco_split`), every listed image exists and
decodes with the size the file records; empty segmentations are warnings (they label their image but
draw nothing)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cpn_dist.data.datasets.coco import annotation_path, read_coco_split
from cpn_dist.errors import CpnError
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train2014", "val2014")


@dataclass
class CocoSplitCheck:
    """One split's counts, ``problems`` (what packing would skip or refuse) and ``warnings``."""

    split: str
    images: int = 0
    annotations: int = 0
    crowd: int = 0
    without_annotations: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, what)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def coco_splits(root: Path, splits: tuple[str, ...] | None) -> tuple[str, ...]:
    """The splits to check: ``splits``, or those of :data:`DEFAULT_SPLITS` whose annotation file exists
    (a warning names the absent ones; none at all is a CpnError)."""
    if splits is not None:
        return splits
    found = tuple(s for s in DEFAULT_SPLITS if annotation_path(root, s).is_file())
    if not found:
        files = ", ".join(annotation_path(root, s).name for s in DEFAULT_SPLITS)
        raise CpnError(f"{root / 'annotations'}: none of {files}; name the splits to check with --splits")
    absent = [s for s in DEFAULT_SPLITS if s not in found]
    if absent:
        log.warning("%s: no %s (not checked)", root / "annotations", ", ".join(annotation_path(root, s).name
                                                                                for s in absent))  # fmt: skip
    return found


def image_problem(job: tuple[Path, int, int]) -> str | None:
    """What is wrong with an image file against the size its annotation file records, or None."""
    path, height, width = job
    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
    except FileNotFoundError:
        return "image not found"
    except OSError as exc:
        return f"unreadable image ({exc})"
    if size != (width, height):
        return f"image is {size[0]}×{size[1]}, the annotations say {width}×{height}"
    return None


def read_split_check(root: Path, split: str) -> tuple[CocoSplitCheck, list[tuple[Path, int, int, str]]]:
    """Parse one split's annotation file: its counts and warnings (a file that does not parse, or a missing
    image folder, is its problem), and the images to check (path, recorded height, width, file name)."""
    check = CocoSplitCheck(split)
    try:
        parsed = read_coco_split(root, split)
    except CpnError as exc:
        check.problems.append((annotation_path(root, split).name, str(exc)))
        return check, []
    check.images = len(parsed.images)
    check.annotations = sum(len(im.instances) for im in parsed.images)
    check.crowd = sum(inst.crowd for im in parsed.images for inst in im.instances)
    check.without_annotations = sum(not im.instances for im in parsed.images)
    for ann_id, key in parsed.empty_segmentations:
        check.warnings.append((f"annotation {ann_id}", f"{key}: empty segmentation (labels its image, draws nothing)"))
    folder = root / split
    if not folder.is_dir():
        check.problems.append((f"{split}/", f"{folder}: image folder not found"))
        return check, []
    return check, [(folder / im.file_name, im.height, im.width, im.file_name) for im in parsed.images]


def check_images(check: CocoSplitCheck, images: list[tuple[Path, int, int, str]], workers: int = 1,
                 progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """Add to ``check`` the images that are missing, do not decode or differ from their recorded size."""
    jobs = [job[:3] for job in images]
    for job, problem in zip(images, parallel_map(image_problem, jobs, workers if workers > 1 else 0)):
        if problem:
            check.problems.append((job[3], problem))
        if progress:
            progress(1)


def check_coco(root: str | Path, splits: tuple[str, ...] | None = None, workers: int = 1) -> list[CocoSplitCheck]:
    """Check the ``splits`` of a COCO folder (None: those of train2014, val2014 that exist); a missing
    folder is a one-line CpnError, everything else is reported per split."""
    checks = []
    for split in coco_splits(coco_folder(root), splits):
        check, images = read_split_check(Path(root), split)
        check_images(check, images, workers)
        checks.append(check)
    return checks


def coco_folder(root: str | Path) -> Path:
    """``root``, which must be a folder (else a one-line CpnError)."""
    root = Path(root)
    if not root.is_dir():
        raise CpnError(f"{root}: COCO folder not found")
    return root
