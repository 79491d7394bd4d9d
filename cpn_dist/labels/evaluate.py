"""Scoring CAMs and label maps against ground truth: the background-score (β) sweep in one pass.

Definitions are those of the released ``evaluation_cam.py``: pixels whose ground truth is 255 are
ignored; at background score β a pixel is background when β ≥ every foreground score (see
:mod:`cpn_dist.labels.cams`); per class, IoU = TP / (T + P − TP + 1e-10). The dataset's C classes
(21 for PASCAL VOC, 81 for COCO; ``classes``, background first) are given per call.

The mean IoU (``mean``): ``"present"`` averages over the classes that occur in the ground truth or
the prediction (T + P > 0) — chainercv's ``nanmean``, which the COCO evaluators of WSSS use; ``"all"``
over all C classes, a class absent from both scoring 0, as the released evaluator does. On VOC's
train and val every class occurs, so both give the released number; on a folder of a few classes
(or COCO's 80 on a few images) only ``"present"`` is a mean of what was scored. The commands average
over the present classes by default; the library's default stays the released ``"all"``.

The released evaluator re-reads every file once per β. Here each image is read once: the
foreground maximum m and its class c are computed once, and each pixel falls into a histogram bin
(ground truth g, class c, k) where k = #{β : β < m} is the number of thresholds at which the pixel
is still foreground. Suffix sums over k then give the confusion matrix of every β — integer-exact.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpn_dist.data.datasets.info import DatasetInfo
from cpn_dist.data.datasets.voc import CLASSES, IGNORE, NUM_CLASSES, read_label_png  # VOC's: the defaults
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import cam_file, foreground_max, load_cams, released_class_map
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

N_LABELS = NUM_CLASSES  # VOC's background + 20 classes, the default class count
GT_ROWS = IGNORE  # ground-truth values 0..254 are scored (255 is ignored); only 0..C-1 are classes
CATEGORIES = ("background", *CLASSES)  # VOC's, the default class names
MEANS = ("present", "all")  # what the mIoU averages over (module docstring)


# --------------------------------------------------------------------------------------------
# per-image counting


def beta_histogram(score: np.ndarray, cls: np.ndarray, gt: np.ndarray, sorted_betas: np.ndarray,
                   num_classes: int = N_LABELS) -> np.ndarray:  # fmt: skip
    """Pixel counts per (ground truth g in 0..254, foreground class c in 0..C-1, k in 0..n), C =
    ``num_classes``, where k = number of the ascending float32 ``sorted_betas`` strictly below the
    foreground max score."""
    n = len(sorted_betas)
    valid = gt != IGNORE
    k = np.searchsorted(sorted_betas, score[valid], side="left")
    flat = (gt[valid].astype(np.int64) * num_classes + cls[valid]) * (n + 1) + k
    return np.bincount(flat, minlength=GT_ROWS * num_classes * (n + 1)).reshape(GT_ROWS, num_classes, n + 1)


def confusions_from_histogram(hist: np.ndarray) -> np.ndarray:
    """Confusion matrices (n × 255 × C; rows ground truth, columns prediction) of every β from a
    :func:`beta_histogram`: at β_j a pixel keeps its class when k > j, else it is background."""
    n = hist.shape[2] - 1
    # suffix[..., j] = pixels with k >= j; foreground at β_j needs k >= j + 1
    suffix = np.cumsum(hist[:, :, ::-1], axis=2)[:, :, ::-1]
    foreground = np.moveaxis(suffix[:, :, 1:], 2, 0).copy()  # n × g × c
    total = hist.sum(axis=(1, 2))  # per ground-truth row
    conf = foreground
    conf[:, :, 0] = total[None, :] - foreground[:, :, 1:].sum(axis=2)
    assert conf.shape == (n, GT_ROWS, hist.shape[1])
    return conf


def label_confusion(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Confusion matrix (255 × 256) of a class map against ground truth, GT 255 ignored."""
    valid = gt != IGNORE
    flat = gt[valid].astype(np.int64) * 256 + pred[valid]
    return np.bincount(flat, minlength=GT_ROWS * 256).reshape(GT_ROWS, 256)


def class_totals(conf: np.ndarray, num_classes: int = N_LABELS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TP, T, P) per class (… × C) of confusion matrices (… × rows × columns): T the ground-truth pixels
    of the class (every column, predictions outside the classes included), P its predicted pixels."""
    conf = np.asarray(conf, dtype=np.int64)
    idx = np.arange(num_classes)
    tp = conf[..., idx, idx]
    t = conf[..., :num_classes, :].sum(axis=-1)
    p = conf[..., :, :num_classes].sum(axis=-2)
    return tp, t, p


def iou_from_confusion(conf: np.ndarray, num_classes: int = N_LABELS,
                       mean: str = "all") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-class IoU (… × C) and mIoU (…) from confusion matrices (… × rows × columns), exactly as
    the released evaluator: TP / (T + P − TP + 1e-10); the mean over all C classes (``mean="all"``) or
    over those present in the ground truth or the prediction (``"present"``, see the module docstring;
    an absent class's IoU is 0 here and left out of that mean)."""
    tp, t, p = class_totals(conf, num_classes)
    iou = tp / (t + p - tp + 1e-10)
    return iou, mean_iou(iou, averaged_classes(t, p, mean))


def check_mean(mean: str) -> str:
    """``mean`` if it is one of :data:`MEANS`, else one line."""
    if mean not in MEANS:
        raise CpnError(f"mean IoU over '{mean}': choose from {', '.join(MEANS)}")
    return mean


def averaged_classes(t: np.ndarray, p: np.ndarray, mean: str = "all") -> np.ndarray:
    """Which classes the mean IoU averages over (… × C bool): all of them, or those with T + P > 0."""
    check_mean(mean)
    return np.ones(t.shape, bool) if mean == "all" else (t + p) > 0


def mean_iou(iou: np.ndarray, averaged: np.ndarray) -> np.ndarray:
    """The mean of ``iou`` over the ``averaged`` classes (… × C); an absent class's IoU is 0, so the sum over
    every class is the sum over the averaged ones, and with every class averaged this is ``np.mean``
    bit for bit. 0 where no class is averaged (no scored pixel)."""
    count = averaged.sum(axis=-1)
    return np.sum(np.where(averaged, iou, 0.0), axis=-1) / np.maximum(count, 1)


# --------------------------------------------------------------------------------------------
# ground truth: a folder of label PNGs (read by name), or shards (streamed, one chunk per shard)


class GroundTruth:
    """Ground-truth masks ``NAME.png`` in a folder (VOC ``SegmentationClass``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CpnError(f"{self.folder}: ground-truth folder not found")

    def read(self, name: str) -> np.ndarray:
        return read_label_png(self.folder / f"{name}.png")


@dataclass(frozen=True)
class ShardGroundTruth:
    """Ground-truth masks stored as the ``seg.png`` member of packed shards."""

    urls: tuple[str, ...]


def ground_truth(source: str | Path, split: str | None = None) -> GroundTruth | ShardGroundTruth:
    """The ground truth at ``source``: a folder of label PNGs, or shards (a ``cpn pack`` folder, a
    ``.tar`` or a webdataset pattern) whose samples hold ``seg.png``."""
    from cpn_dist.data.inputs import is_shard_source

    if not is_shard_source(source):
        return GroundTruth(source)
    from cpn_dist.data.shards import reader as shards

    text = str(source)
    if not shards.is_remote(text) and Path(text).is_file():
        return ShardGroundTruth((text,))
    return ShardGroundTruth(tuple(shards.resolve_shards(text, split).urls))


def _seg_member(fname: str) -> bool:
    return fname.endswith(".seg.png")


def _pairs(chunk: _Chunk) -> Iterable[tuple[str, np.ndarray]]:
    if isinstance(chunk.gt, GroundTruth):
        for name in chunk.names:
            yield name, chunk.gt.read(name)
        return
    from cpn_dist.data.shards import reader as shards
    from cpn_dist.data.shards.members import decode_members

    wanted = set(chunk.names)
    for raw in shards.iter_raw_samples([chunk.url], select=_seg_member):
        if raw["__key__"] not in wanted:
            continue
        yield raw["__key__"], decode_members(raw, ("seg.png",), where=chunk.url)["seg.png"]


# --------------------------------------------------------------------------------------------
# one worker's share


@dataclass(frozen=True)
class _Chunk:
    names: tuple[str, ...]  # the images to score (for shards: the wanted ones, wherever they are)
    predictions: str
    kind: str  # "cams" | "labels"
    gt: GroundTruth | ShardGroundTruth
    sorted_betas: np.ndarray | None
    num_classes: int = N_LABELS  # C of the dataset
    url: str | None = None  # the one shard this chunk streams


def _count_chunk(chunk: _Chunk) -> tuple[np.ndarray | None, list[str]]:
    """Summed histogram (cams) or confusion matrix (labels) of one chunk, and the images counted."""
    folder = Path(chunk.predictions)
    acc, seen = None, []
    for name, gt in _pairs(chunk):
        if chunk.kind == "cams":
            path = cam_file(folder, name)
            cams = load_cams(path, chunk.num_classes - 1)
            try:
                score, cls = foreground_max(cams, gt.shape, chunk.num_classes - 1)
            except CpnError as exc:
                raise CpnError(f"{path}: {exc}") from None
            counts = beta_histogram(score, cls, gt, chunk.sorted_betas, chunk.num_classes)
        else:
            pred = read_label_png(folder / f"{name}.png")
            if pred.shape != gt.shape:
                raise CpnError(f"{folder / f'{name}.png'}: size {pred.shape} differs from the ground truth {gt.shape}")
            counts = label_confusion(pred, gt)
        acc = counts if acc is None else acc + counts
        seen.append(name)
    return acc, seen


def _count(chunks: list[_Chunk], workers: int, on_images: Callable[[int], None] | None,
           names: Sequence[str]) -> np.ndarray:  # fmt: skip
    total = None
    seen: list[str] = []
    for counts, names_done in parallel_map(_count_chunk, chunks, workers if workers > 1 and len(chunks) > 1 else 0):
        if counts is not None:
            total = counts if total is None else total + counts
        seen += names_done
        if on_images:
            on_images(len(names_done))
    if len(seen) != len(set(seen)) or len(seen) != len(names):
        missing = sorted(set(names) - set(seen))
        if missing:
            raise CpnError(f"ground truth of {len(missing)} listed image(s) not found, e.g. '{missing[0]}'")
        raise CpnError("an image appears more than once in the list or the shards")
    return total


def _chunks(names: Sequence[str], workers: int, gt: GroundTruth | ShardGroundTruth, **kw) -> list[_Chunk]:
    if isinstance(gt, ShardGroundTruth):
        return [_Chunk(tuple(names), gt=gt, url=url, **kw) for url in gt.urls]
    # several chunks per worker keep the progress bar moving and the load balanced
    size = max(1, min(64, math.ceil(len(names) / max(1, 4 * workers))))
    return [_Chunk(tuple(names[i:i + size]), gt=gt, **kw) for i in range(0, len(names), size)]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# results


@dataclass
class SweepResult:
    """Scores of every β: ``confusion`` n × 255 × C (rows ground truth 0..254, columns predictions
    0..C-1; scores of label PNGs add a column counting predictions outside the classes), ``classes`` the
    C class names (background first), ``mean`` what the mIoU averages over (:data:`MEANS`);
    ``averaged`` (n × C bool) says which classes it averaged at each β."""

    betas: list[float]
    confusion: np.ndarray
    images: int
    classes: tuple[str, ...] = CATEGORIES
    mean: str = "all"

    def __post_init__(self) -> None:
        c = len(self.classes)
        _, t, p = class_totals(self.confusion, c)
        self.averaged = averaged_classes(t, p, self.mean)
        self.iou, self.miou = iou_from_confusion(self.confusion, c, self.mean)

    @property
    def best(self) -> int:
        """Index of the β with the highest mIoU (the lowest such β on a tie)."""
        return int(np.argmax(self.miou))

    def summary(self, index: int | None = None) -> dict:
        """Scores at one β as plain data: mIoU, per-class IoU, background and mean foreground IoU
        (the paper's Table 3 columns), all fractions in [0, 1]."""
        j = self.best if index is None else index
        iou, averaged = self.iou[j], self.averaged[j]
        return {
            "beta": self.betas[j],
            "miou": float(self.miou[j]),
            "background": float(iou[0]),
            "foreground": float(mean_iou(iou[1:], averaged[1:])),
            "iou": {name: float(v) for name, v in zip(self.classes, iou)},
            "averaged": [name for name, a in zip(self.classes, averaged) if a],
        }

    def to_json(self) -> dict:
        """Every β's scores (fractions in [0, 1]); ``mean`` and ``best.averaged`` say which classes the
        mIoU averaged (``averaged``: how many at each β)."""
        return {
            "images": self.images,
            "classes": list(self.classes),
            "mean": self.mean,
            "betas": list(self.betas),
            "miou": [float(m) for m in self.miou],
            "averaged": [int(a.sum()) for a in self.averaged],
            "iou": {name: [float(v) for v in self.iou[:, c]] for c, name in enumerate(self.classes)},
            "best": self.summary(),
        }


def _inputs(folder, gt, names: Sequence[str], what: str):
    """The folder as a Path and the ground truth opened, or one line saying what is missing."""
    if not names:
        raise CpnError("the image list is empty")
    folder = Path(folder)
    if not folder.is_dir():
        raise CpnError(f"{folder}: {what} not found")
    return folder, gt if isinstance(gt, (GroundTruth, ShardGroundTruth)) else ground_truth(gt)


def _classes(dataset: DatasetInfo | None) -> tuple[str, ...]:
    return CATEGORIES if dataset is None else dataset.classes


def sweep(cams_dir: str | Path, gt: GroundTruth | ShardGroundTruth | str | Path, names: Sequence[str],
          betas: Sequence[float], workers: int = 1, on_images: Callable[[int], None] | None = None,
          dataset: DatasetInfo | None = None, mean: str = "all") -> SweepResult:  # fmt: skip
    """Confusion matrices, IoU and mIoU of the CAMs in ``cams_dir`` (``NAME.npy`` or ``NAME.npz``) at every
    β, in one pass, over the classes of ``dataset`` (None: VOC); ``mean``: see :data:`MEANS`."""
    cams_dir, gt = _inputs(cams_dir, gt, names, "CAM folder")
    classes = _classes(dataset)
    check_mean(mean)  # before the work
    b32 = np.asarray(betas, dtype=np.float64).astype(np.float32)  # the released stores β in float32
    sorted_betas, inverse = np.unique(b32, return_inverse=True)
    chunks = _chunks(names, workers, predictions=str(cams_dir), kind="cams", gt=gt, sorted_betas=sorted_betas,
                     num_classes=len(classes))  # fmt: skip
    hist = _count(chunks, workers, on_images, names)
    conf = confusions_from_histogram(hist)[inverse]
    log.info("swept %d thresholds over %d images", len(betas), len(names))
    return SweepResult(list(betas), conf, len(names), classes, mean)


def score_labels(labels_dir: str | Path, gt: GroundTruth | ShardGroundTruth | str | Path, names: Sequence[str],
                 workers: int = 1, on_images: Callable[[int], None] | None = None,
                 dataset: DatasetInfo | None = None, mean: str = "all") -> SweepResult:  # fmt: skip
    """Scores of a folder of label PNGs (one "β", recorded as NaN) over the classes of ``dataset``."""
    labels_dir, gt = _inputs(labels_dir, gt, names, "label folder")
    classes = _classes(dataset)
    check_mean(mean)
    c = len(classes)
    chunks = _chunks(names, workers, predictions=str(labels_dir), kind="labels", gt=gt, sorted_betas=None)
    conf = _count(chunks, workers, on_images, names)
    # columns C..255 (predictions outside the classes) count in T, never in P or TP
    squeezed = np.zeros((1, GT_ROWS, c + 1), dtype=np.int64)
    squeezed[0, :, :c] = conf[:, :c]
    squeezed[0, :, c] = conf[:, c:].sum(axis=1)
    return SweepResult([float("nan")], squeezed, len(names), classes, mean)


def direct_confusion(cams: dict[int, np.ndarray], gt: np.ndarray, beta: float,
                     num_classes: int = N_LABELS) -> np.ndarray:  # fmt: skip
    """The released evaluator's counting for one image at one β (slow reference for tests)."""
    return label_confusion(released_class_map(cams, beta, gt.shape, num_classes), gt)[:, :num_classes]
