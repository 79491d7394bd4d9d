"""Affinity labels: what AffinityNet trains on, made from CPN's CAMs (PSA's ``infer_cls.py`` la/ha
CRF maps and the label rule of its ``VOC12AffDataset``).

Per image, two dense-CRF label maps of the CAMs (:func:`cpn_dist.labels.pseudo.pseudo_label`), each with
AffinityNet's background score ``(1 − max_c CAM_c)^α`` of a background power α (max over the zero-filled
classes, clipped to [0, 1]), the CAMs first divided by their maxima (``cam_norm="max"``: PSA's CAMs peak
at 1 and its α were chosen for that scale; the released CPN format peaks at 0.5):

- the *la* map, low α (default 4): the background score is high, so its foreground is confident;
- the *ha* map, high α (default 32): the background score is low, so its background is confident;

combined by PSA's rule (:func:`cpn_dist.labels.pseudo.confident_label`): the la map's class where la says
foreground; 0 where ha says background (this wins); 255 (ignore) elsewhere. ``betas=(low, high)``
replaces the two background powers by two constant background scores β (IRN's way; ``cpn pseudo --betas``
is the same rule).

PSA keeps the two CRF probability maps and combines them after augmentation and 8× average pooling;
we combine at full resolution and store one palette PNG per image, ``{out}/{image id}.png`` (uint8:
0 background, 1..C-1 class, 255 ignore, the size of the image; C of the CAMs' dataset, recorded in
``{out}/dataset.json``) — the side folder that
:class:`cpn_dist.data.loading.labelled.LabelledSampleMaker` reads beside the shards. The trainer reduces the
augmented crop to the stride-8 grid by a block vote (:func:`cpn_dist.affinity.pairs.reduce_labels`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpn_dist.atomic import write_atomic
from cpn_dist.config.run import AffinityConfig, CrfConfig
from cpn_dist.data.datasets.info import DatasetInfo, voc
from cpn_dist.data.datasets.recorded import record_dataset
from cpn_dist.data.datasets.voc import NUM_FOREGROUND, save_label_png
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import CAM_NORMS, cam_file, load_cams, normalise_cams
from cpn_dist.labels.pseudo import confident_label, pseudo_label
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

_DEFAULTS = AffinityConfig.model_fields  # the defaults of AffinityLabelParams


@dataclass(frozen=True)
class AffinityLabelParams:
    """How the two maps are made: background powers ``bg_powers`` (low, high) — PSA — or constant background
    scores ``betas`` (low, high); refined by the dense CRF unless ``crf`` is None. Defaults: those of
    :class:`cpn_dist.config.AffinityConfig` (PSA's); :meth:`from_config` reads a run config's."""

    bg_powers: tuple[float, float] | None = (_DEFAULTS["low_bg_power"].default, _DEFAULTS["high_bg_power"].default)
    betas: tuple[float, float] | None = None
    crf: CrfConfig | None = field(default_factory=CrfConfig)
    cam_norm: str = _DEFAULTS["cam_norm"].default  # see cpn_dist.labels.cams.normalise_cams

    @classmethod
    def from_config(cls, affinity: AffinityConfig, crf: bool = True) -> AffinityLabelParams:
        """PSA's background power pair of a run config's ``affinity`` section (``low_bg_power``,
        ``high_bg_power``, ``cam_norm``) and its CRF (``affinity.crf.*``; none with ``crf=False``)."""
        return cls(bg_powers=(affinity.low_bg_power, affinity.high_bg_power), crf=affinity.crf if crf else None,
                   cam_norm=affinity.cam_norm)  # fmt: skip

    def __post_init__(self) -> None:
        pair = self.bg_powers if self.betas is None else self.betas
        if (self.bg_powers is None) == (self.betas is None) or len(pair) != 2:
            raise CpnError("affinity labels need exactly one pair: bg_powers (low, high) or betas (low, high)")
        if self.cam_norm not in CAM_NORMS:
            raise CpnError(f"CAM normalisation '{self.cam_norm}': choose from {', '.join(CAM_NORMS)}")
        if not 0 < pair[0] < pair[1]:
            which = "α" if self.betas is None else "β"
            raise CpnError(f"affinity labels: need 0 < low {which} < high {which}, got {pair[0]}, {pair[1]}")


def affinity_label(cams: dict[int, np.ndarray], image: np.ndarray, params: AffinityLabelParams,
                   num_foreground: int = NUM_FOREGROUND) -> np.ndarray:  # fmt: skip
    """H×W uint8 affinity label (0 background, 1..C-1 class, 255 ignore; C-1 = ``num_foreground``) of one
    image (H×W×3 uint8) and its CAM dict."""
    shape = image.shape[:2]
    cams = normalise_cams(cams, params.cam_norm)
    crf, n = params.crf, num_foreground
    if params.betas is None:
        low, high = params.bg_powers
        fg_map = pseudo_label(cams, None, shape, image, crf, bg_power=low, num_foreground=n)  # la: confident fg
        bg_map = pseudo_label(cams, None, shape, image, crf, bg_power=high, num_foreground=n)  # ha: confident bg
    else:
        low, high = params.betas
        fg_map = pseudo_label(cams, high, shape, image, crf, num_foreground=n)
        bg_map = pseudo_label(cams, low, shape, image, crf, num_foreground=n)
    return confident_label(fg_map, bg_map)


def write_label(out_dir: str | Path, name: str, label: np.ndarray) -> None:
    """``{out_dir}/{name}.png`` (VOC palette), written under a temporary name and renamed."""
    out = Path(out_dir)
    # PIL picks the format from the suffix of the temporary name
    write_atomic(out / f"{name}.png", lambda tmp: save_label_png(label, tmp), out / f".{name}.tmp.png")


def _label_one(job: tuple[str, str, str, np.ndarray, AffinityLabelParams, int]) -> str:
    """(CAM folder, output folder, image id, H×W×3 image, params, C-1) → the image id, its label written."""
    cams_dir, out_dir, name, image, params, num_foreground = job
    path = cam_file(cams_dir, name)
    cams = load_cams(path, num_foreground)
    if cams and next(iter(cams.values())).shape != image.shape[:2]:
        shape = next(iter(cams.values())).shape
        raise CpnError(f"{path}: CAMs are {shape[1]}×{shape[0]}, the image is {image.shape[1]}×{image.shape[0]}")
    write_label(out_dir, name, affinity_label(cams, image, params, num_foreground))
    return name


def done_names(names: Iterable[str], out_dir: str | Path, overwrite: bool = False) -> frozenset[str]:
    """The names whose ``{out_dir}/{name}.png`` exists (none with ``overwrite``)."""
    out = Path(out_dir)
    return frozenset() if overwrite else frozenset(n for n in names if (out / f"{n}.png").is_file())


def write_affinity_labels(source, cams_dir: str | Path, out_dir: str | Path, params: AffinityLabelParams,
                          names: list[str], workers: int = 1, overwrite: bool = False,
                          on_image: Callable[[str], None] | None = None,
                          dataset: DatasetInfo | None = None) -> list[str]:  # fmt: skip
    """Write the affinity label of every image of ``names`` (read from ``source``, a
    :class:`~cpn_dist.data.inputs.VocSource` or :class:`~cpn_dist.data.inputs.ShardSource` restricted to
    ``names``) into ``out_dir``, with ``workers`` processes; images already done are skipped unless
    ``overwrite``. ``dataset``: the CAMs' classes (None: VOC; given, it is recorded in ``out_dir``).
    Returns the names written; a listed image the source does not hold is a CpnError."""
    cams_dir, out_dir = str(cams_dir), str(out_dir)
    if not Path(cams_dir).is_dir():
        raise CpnError(f"{cams_dir}: CAM folder not found")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if dataset is not None:
        record_dataset(out_dir, dataset)
    num_foreground = (dataset or voc()).num_foreground
    done = done_names(names, out_dir, overwrite)
    samples = source.samples(skip=done, image=True, labels=False)
    written: list[str] = []

    def finished(name: str) -> None:
        written.append(name)
        if on_image:
            on_image(name)

    # images are decoded here, CAMs read and CRFs run in the workers
    jobs = ((cams_dir, out_dir, sample.name, np.asarray(sample.image), params, num_foreground) for sample in samples)
    for name in parallel_map(_label_one, jobs, workers if workers > 1 else 0):
        finished(name)
    missing = sorted(set(names) - done - set(written))
    if missing:
        raise CpnError(f"{len(missing)} listed image(s) not found in the image source, e.g. '{missing[0]}'")
    log.info("wrote %d affinity labels to %s (%d already there)", len(written), out_dir, len(done))
    return written
