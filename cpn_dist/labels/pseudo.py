"""Pseudo labels from CAMs: class maps at a background score, optionally CRF-refined, optionally
the confident/ignore labels that AffinityNet training uses.

The background score is a constant β (the released evaluator) or AffinityNet's ``(1 − max_c CAM_c)^α``
(see :func:`cpn_dist.labels.cams.background_score`).

- One β without CRF: the released evaluator's class map (background where β ≥ every class score),
  so a pseudo-label PNG scores exactly what ``cpn eval`` reported at that β.
- One β (or α) with CRF: the most probable class after :func:`cpn_dist.labels.crf.dense_crf`.
- Confident labels (:func:`confident_label`) from two maps of one image: a *foreground-confident*
  map, whose background score is high (a high β, or a low α), and a *background-confident* map, whose
  background score is low (a low β, or a high α). The rule is PSA's (``VOC12AffDataset``): the
  foreground-confident map's label where it says foreground; 0 where the background-confident map
  says background (this wins); 255 (ignore) elsewhere. ``cpn pseudo --betas LOW HIGH`` pairs two β;
  ``cpn affinity-labels`` pairs two background powers α, as PSA's la/ha CRF maps (α = 4 and 32).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpn_dist.atomic import write_atomic
from cpn_dist.config.run import CrfConfig
from cpn_dist.data.datasets.info import DatasetInfo, voc
from cpn_dist.data.datasets.recorded import record_dataset
from cpn_dist.data.datasets.voc import IGNORE, NUM_FOREGROUND, save_label_png
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import class_map, read_cams
from cpn_dist.labels.crf import crf_dict, crf_probabilities, to_label_map
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)


def pseudo_label(cams: dict[int, np.ndarray], beta: float | None, shape: tuple[int, int],
                 image: np.ndarray | None = None, crf: CrfConfig | None = None,
                 bg_power: float | None = None, num_foreground: int = NUM_FOREGROUND) -> np.ndarray:  # fmt: skip
    """H×W uint8 class map of a CAM dict at background score ``beta`` (or ``(1 − max)^α`` with the
    background power α = ``bg_power`` and ``beta=None``); CRF-refined on ``image`` when ``crf`` is given.
    ``num_foreground``: C-1 of the dataset (VOC's 20 by default)."""
    if crf is None or not cams:
        return class_map(cams, beta, shape, bg_power, num_foreground)
    if image is None:
        raise CpnError("the CRF needs the image")
    probs, classes = crf_probabilities(image, cams, beta, crf, bg_power)
    return to_label_map(probs, classes)


def confident_label(fg_map: np.ndarray, bg_map: np.ndarray) -> np.ndarray:
    """PSA's confident labels: ``fg_map``'s class where it is foreground, 0 where ``bg_map`` is
    background (this wins over the first), 255 elsewhere. ``fg_map`` is the map whose background
    score is high (foreground there is confident), ``bg_map`` the one whose background score is low."""
    label = fg_map.copy()
    label[fg_map == 0] = IGNORE
    label[bg_map == 0] = 0
    return label


def paired_pseudo_label(cams: dict[int, np.ndarray], low: float, high: float, shape: tuple[int, int],
                        image: np.ndarray | None = None, crf: CrfConfig | None = None,
                        num_foreground: int = NUM_FOREGROUND) -> np.ndarray:  # fmt: skip
    """Confident labels from a β pair: the class at ``high`` where it is foreground, background
    where ``low`` says background, 255 elsewhere (:func:`confident_label`)."""
    if not low < high:
        raise CpnError(f"the low β ({low}) must be below the high β ({high})")
    return confident_label(pseudo_label(cams, high, shape, image, crf, num_foreground=num_foreground),
                           pseudo_label(cams, low, shape, image, crf, num_foreground=num_foreground))  # fmt: skip


# --------------------------------------------------------------------------------------------
# folders, in parallel


@dataclass(frozen=True)
class Job:
    """What to write for a list of images (picklable, handed to worker processes)."""

    cams_dir: str
    out_dir: str
    betas: tuple[float, ...]  # one β, or (low, high)
    crf: CrfConfig | None
    voc_root: str | None  # images, needed by the CRF
    output: str = "png"  # "png": label PNGs; "npy": CRF probabilities in the AffinityNet layout
    dataset: DatasetInfo | None = None  # the CAMs' classes (None: VOC), recorded in out_dir

    @property
    def num_foreground(self) -> int:
        return (self.dataset or voc()).num_foreground


def _image(job: Job, name: str) -> np.ndarray | None:
    if job.crf is None:
        return None
    from cpn_dist.data.inputs import read_image

    return np.asarray(read_image(Path(job.voc_root) / "JPEGImages" / f"{name}.jpg"))


def _shape(cams: dict[int, np.ndarray], image: np.ndarray | None, name: str) -> tuple[int, int]:
    if cams:
        return next(iter(cams.values())).shape
    if image is not None:
        return image.shape[:2]
    raise CpnError(f"{name}: its CAM dict is empty, so its size is unknown")


def _one(job: Job, name: str) -> None:
    cams = read_cams(job.cams_dir, name, job.num_foreground)
    image = _image(job, name)
    shape = _shape(cams, image, name)
    out = Path(job.out_dir)
    if job.output == "npy":
        from cpn_dist.labels.cams import save_cams

        probs, classes = crf_probabilities(image, cams, job.betas[0], job.crf)
        save_cams(out / f"{name}.npy", crf_dict(probs, classes))
        return
    if len(job.betas) == 2:
        label = paired_pseudo_label(cams, job.betas[0], job.betas[1], shape, image, job.crf, job.num_foreground)
    else:
        label = pseudo_label(cams, job.betas[0], shape, image, job.crf, num_foreground=job.num_foreground)
    # PIL picks the format from the suffix of the temporary name
    write_atomic(out / f"{name}.png", lambda tmp: save_label_png(label, tmp), out / f".{name}.tmp.png")


def _run_chunk(args: tuple[Job, tuple[str, ...]]) -> int:
    job, names = args
    for name in names:
        _one(job, name)
    return len(names)


def pending(names: Sequence[str], out_dir: str | Path, suffix: str, overwrite: bool) -> list[str]:
    """The names whose output file does not exist yet (all of them with ``overwrite``)."""
    out = Path(out_dir)
    return list(names) if overwrite else [n for n in names if not (out / f"{n}{suffix}").is_file()]


def run_folder(job: Job, names: Sequence[str], workers: int = 1,
               on_images: Callable[[int], None] | None = None) -> int:
    """Write one output per image of ``names`` into ``job.out_dir`` using ``workers`` processes;
    returns the number written."""
    if not Path(job.cams_dir).is_dir():
        raise CpnError(f"{job.cams_dir}: CAM folder not found")
    if job.crf is not None and (job.voc_root is None or not (Path(job.voc_root) / "JPEGImages").is_dir()):
        raise CpnError(f"{job.voc_root}/JPEGImages: the CRF needs the images (--voc-root)")
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    if job.dataset is not None:
        record_dataset(job.out_dir, job.dataset)
    size = max(1, min(16, math.ceil(len(names) / max(1, 4 * workers))))
    chunks = [(job, tuple(names[i:i + size])) for i in range(0, len(names), size)]
    done = 0
    for n in parallel_map(_run_chunk, chunks, workers if workers > 1 and len(chunks) > 1 else 0):
        done += n
        if on_images:
            on_images(n)
    log.info("wrote %d files to %s", done, job.out_dir)
    return done
