"""The random walk of AffinityNet (Ahn & Kwak, CVPR 2018, Sec. 3.3; the released ``infer_aff.py``):
CAMs propagated along the learned affinities, at stride 8.

Per image (H×W):

1. the image, normalised, is padded right/bottom with zeros to a multiple of 8 and run through
   AffinityNet; the affinities of every pair within the radius (:mod:`cpn_dist.affinity.pairs`) fill a
   symmetric n×n matrix ``A`` over the n = ⌈H/8⌉·⌈W/8⌉ positions, with 1 on the diagonal;
2. the transition matrix ``T = A^∘p D⁻¹`` (the affinity power p = 8, PSA's exponent; elementwise power;
   D = diag of its column sums): every column of T is a probability distribution;
3. the scores — background ``(1 − max_c CAM_c)^α`` (background power α = 16) and the CAMs of the labelled classes
   (each divided by its maximum first, ``cam_norm="max"``, PSA's CAM scale), zero-padded like the image
   and 8×8 average-pooled — are walked ``t = 2^logt`` steps (logt = 8):
   ``s ← s · T^t``, where ``T^t`` comes from ``logt`` repeated squarings;
4. the walked scores are upsampled (bilinear, align_corners=False) to the padded size and cropped;
   the label is their argmax (0 = background, c + 1 for CAM key c: 1..C-1, C the CAMs' dataset's class
   count, which the label folder's ``dataset.json`` records).

Since every column of ``T^t`` sums to 1, each walked score is a convex combination of the input
scores: a constant background β stays β. So the walked class scores, written as CAM files
(``save_cams``, on the normalised scale), give under ``cpn eval``'s β sweep exactly the labels of a
walk with a constant background β — the same β-selection rule as for the CAMs themselves.

**Memory and method.** ``dense``: A and T as n×n float32 matrices (a 500×500 image: n = 63² = 3969,
63 MB each; about three alive at once) and ``logt`` matrix products, batched over equal-sized images
(PSA's method; fast on a GPU). ``sparse``: ``2^logt`` products of the sparse transition (about 69
entries per column for radius 5) with the K score rows — ~100× fewer FLOPs and O(n) memory, the fast
choice on a CPU and for big images. Both compute ``s · T^t``; they agree to float32 rounding.
``auto`` takes dense on a GPU while n ≤ 8192 positions, sparse otherwise.

``python -m cpn_dist.affinity.random_walk ARGS`` runs ``cpn rw ARGS`` (so ``accelerate launch -m
cpn_dist.affinity.random_walk`` gives each process every N-th image).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpn_dist.affinity import METHODS  # auto, dense, sparse
from cpn_dist.affinity.pairs import STRIDE, pair_affinities, pair_index
from cpn_dist.config.run import AffinityConfig
from cpn_dist.data.datasets.info import DatasetInfo, voc
from cpn_dist.data.datasets.recorded import record_dataset
from cpn_dist.data.inputs import Sample
from cpn_dist.devices import autocast, to_device
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import (
    CAM_NORMS,
    cam_file,
    foreground_max,
    load_cams,
    normalise_cams,
    powered_background,
    save_cams,
)

log = logging.getLogger(__name__)

DENSE_LIMIT = 8192  # most positions for `auto` to pick the dense method (a 256 MiB float32 matrix)

_DEFAULTS = AffinityConfig.model_fields  # the defaults of WalkParams


@dataclass(frozen=True)
class WalkParams:
    """The random walk's settings: the ``rw_*``, ``radius`` and ``cam_norm`` keys of a run config's
    ``affinity`` section (:meth:`from_config`; defaults: :class:`cpn_dist.config.AffinityConfig`'s, PSA's
    ``infer_aff.py``), and the ``method``, which is no config key."""

    bg_power: float = _DEFAULTS["rw_bg_power"].default  # α: background score (1 - max CAM)^α
    affinity_power: float = _DEFAULTS["rw_affinity_power"].default  # the affinities raised to it
    logt: int = _DEFAULTS["rw_logt"].default  # 2^logt steps
    radius: int = _DEFAULTS["radius"].default
    method: str = "auto"
    cam_norm: str = _DEFAULTS["cam_norm"].default  # see cpn_dist.labels.cams.normalise_cams

    @classmethod
    def from_config(cls, affinity: AffinityConfig, method: str = "auto") -> WalkParams:
        """The walk of a run config's ``affinity`` section (``rw_bg_power``, ``rw_affinity_power``, ``rw_logt``,
        ``radius``, ``cam_norm``)."""
        return cls(affinity.rw_bg_power, affinity.rw_affinity_power, affinity.rw_logt, affinity.radius, method,
                   affinity.cam_norm)  # fmt: skip

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CpnError(f"random walk method '{self.method}': choose from {', '.join(METHODS)}")
        if self.cam_norm not in CAM_NORMS:
            raise CpnError(f"CAM normalisation '{self.cam_norm}': choose from {', '.join(CAM_NORMS)}")
        if not (self.bg_power > 0 and self.affinity_power > 0 and 0 <= self.logt <= 16 and self.radius >= 2):
            raise CpnError("random walk: need bg_power > 0, affinity_power > 0, 0 <= logt <= 16, radius >= 2; "
                           f"got {self}")


# --------------------------------------------------------------------------------------------
# the walk on one grid


def dense_affinity(aff: torch.Tensor, h: int, w: int, radius: int) -> torch.Tensor:
    """The symmetric N×n×n affinity matrix of an h×w grid from the pair affinities (N×P), 1 on the
    diagonal, 0 between positions farther apart than the radius."""
    start, end = (i.to(aff.device) for i in pair_index(h, w, radius))
    n = h * w
    mat = torch.zeros(aff.shape[0], n, n, dtype=aff.dtype, device=aff.device)
    mat[:, start, end] = aff
    mat[:, end, start] = aff
    idx = torch.arange(n, device=aff.device)
    mat[:, idx, idx] = 1.0
    return mat


def transition_matrix(affinity: torch.Tensor, power: float) -> torch.Tensor:
    """``A^∘power`` divided by its column sums: every column a probability distribution (… × n × n)."""
    powered = affinity.pow(power)
    return powered / powered.sum(dim=-2, keepdim=True)


def walk_dense(scores: torch.Tensor, transition: torch.Tensor, logt: int) -> torch.Tensor:
    """``scores · T^(2^logt)`` (N×K×n) with ``T^(2^logt)`` from ``logt`` repeated squarings."""
    for _ in range(logt):
        transition = transition @ transition
    return scores @ transition


def walk_sparse(scores: torch.Tensor, aff: torch.Tensor, h: int, w: int, radius: int, power: float,
                logt: int) -> torch.Tensor:  # fmt: skip
    """``scores · T^(2^logt)`` (K×n) for ONE image, as ``2^logt`` products with the sparse transition
    built from the pair affinities ``aff`` (P)."""
    start, end = (i.to(aff.device) for i in pair_index(h, w, radius))
    n = h * w
    powered = aff.pow(power)
    column = torch.ones(n, dtype=aff.dtype, device=aff.device)
    column.index_add_(0, start, powered).index_add_(0, end, powered)  # A is symmetric: column sums
    diag = torch.arange(n, device=aff.device)
    # (s·T)_j = Σ_i s_i A_ij / column_j: the rows of M = Tᵀ are the columns of T
    rows = torch.cat([end, start, diag])
    cols = torch.cat([start, end, diag])
    values = torch.cat([powered, powered, torch.ones(n, dtype=aff.dtype, device=aff.device)]) / column[rows]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        m = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()
        if aff.device.type == "cpu":
            m = m.to_sparse_csr()  # CSR × dense is the fast kernel on the CPU
    state = scores.t().contiguous()  # n×K
    for _ in range(2**logt):
        state = m @ state
    return state.t()


def random_walk(scores: torch.Tensor, aff: torch.Tensor, h: int, w: int, params: WalkParams) -> torch.Tensor:
    """Walk N×K×(h·w) scores along N×P pair affinities of an h×w grid; returns N×K×(h·w)."""
    method = params.method
    if method == "auto":
        method = "dense" if aff.device.type == "cuda" and h * w <= DENSE_LIMIT else "sparse"
    if method == "dense":
        trans = transition_matrix(dense_affinity(aff, h, w, params.radius), params.affinity_power)
        return walk_dense(scores, trans, params.logt)
    return torch.stack([walk_sparse(s, a, h, w, params.radius, params.affinity_power, params.logt)
                        for s, a in zip(scores, aff)])  # fmt: skip


# --------------------------------------------------------------------------------------------
# images


def padded_size(height: int, width: int) -> tuple[int, int]:
    return -(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE


def walk_scores(cams: dict[int, np.ndarray], shape: tuple[int, int],
                bg_power: float) -> tuple[torch.Tensor, list[int]]:  # fmt: skip
    """The scores to walk, (1+K)×h×w float32 at stride 8: background ``(1 − max_c CAM_c)^α`` and the K
    labelled classes' CAMs, zero-padded to a multiple of 8 and 8×8 average-pooled; and the VOC class
    index of each row (0, then key + 1)."""
    keys = sorted(cams)
    fg_max, _ = foreground_max(cams, shape)
    full = np.stack([powered_background(fg_max, bg_power)] + [np.asarray(cams[k], np.float32) for k in keys])
    ph, pw = padded_size(*shape)
    padded = F.pad(torch.from_numpy(full), (0, pw - shape[1], 0, ph - shape[0]))
    return F.avg_pool2d(padded[None], STRIDE)[0], [0] + [k + 1 for k in keys]


def upsample_walked(walked: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """K×h×w stride-8 scores → K×H×W: bilinear to the padded size, then the image's part."""
    ph, pw = padded_size(*shape)
    up = F.interpolate(walked[None].float(), (ph, pw), mode="bilinear", align_corners=False)[0]
    return up[:, : shape[0], : shape[1]]


@dataclass
class _Item:
    sample: Sample
    cams: dict[int, np.ndarray]
    scores: torch.Tensor  # (1+K)×h×w
    classes: list[int]
    image: np.ndarray  # 3×Hp×Wp normalised, padded
    shape: tuple[int, int]  # H, W


def _prepare(sample: Sample, cams_dir: Path, params: WalkParams, mean, std, num_foreground: int) -> _Item:
    from cpn_dist.cpn.infer import normalise_image

    path = cam_file(cams_dir, sample.name)
    cams = load_cams(path, num_foreground)
    rgb = np.asarray(sample.image.convert("RGB"))
    shape = rgb.shape[:2]
    if cams and next(iter(cams.values())).shape != shape:
        got = next(iter(cams.values())).shape
        raise CpnError(f"{path}: CAMs are {got[1]}×{got[0]}, the image is {shape[1]}×{shape[0]}")
    scores, classes = walk_scores(normalise_cams(cams, params.cam_norm), shape, params.bg_power)
    ph, pw = padded_size(*shape)
    image = np.zeros((3, ph, pw), np.float32)
    image[:, : shape[0], : shape[1]] = normalise_image(rgb, mean, std)
    return _Item(sample, cams, scores, classes, image, shape)


def _finish(item: _Item, walked: torch.Tensor, out_dir: Path, save_cams_dir: Path | None) -> None:
    from cpn_dist.affinity.labels import write_label

    up = upsample_walked(walked, item.shape).cpu()  # upsampled on the device: one copy per image
    label = np.asarray(item.classes, dtype=np.uint8)[up.argmax(dim=0).numpy()]
    write_label(out_dir, item.sample.name, label)
    if save_cams_dir is not None:
        keys = sorted(item.cams)
        save_cams(save_cams_dir / f"{item.sample.name}.npy", {k: up[i + 1].numpy() for i, k in enumerate(keys)})


def load_affinity_model(checkpoint: str | Path, backbone: str = "resnet38d", device: torch.device | str = "cpu",
                        allow_pickle: bool = False):  # fmt: skip
    """An AffinityNet with the weights of ``checkpoint`` (ours or PSA's ``resnet38_aff``), in eval mode
    on ``device``; returns ``(model, LoadReport)``. ``allow_pickle``: see
    :func:`cpn_dist.models.weights.read_state_dict`."""
    from cpn_dist.affinity.model import build_affinity_model
    from cpn_dist.models import load_weights

    model = build_affinity_model(backbone, dropout=0.0)
    report = load_weights(model, checkpoint, allow_pickle)
    return model.to(device).eval(), report


@torch.inference_mode()
def walk_samples(model: torch.nn.Module, samples: Iterable[Sample], cams_dir: str | Path, out_dir: str | Path,
                 params: WalkParams = WalkParams(), *, device: torch.device | str = "cpu",
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), batch_size: int = 1,
                 save_cams_dir: str | Path | None = None, precision: str = "fp32",
                 on_image: Callable[[str], None] | None = None,
                 dataset: DatasetInfo | None = None) -> list[str]:  # fmt: skip
    """Write the random-walk label (``{out_dir}/{name}.png``, VOC palette) of every sample, reading
    its CAMs from ``{cams_dir}/{name}.npy`` (or ``.npz``); with ``save_cams_dir`` also the walked class
    scores in the released CAM format. ``dataset``: the CAMs' classes (None: VOC; given, it is recorded in
    both output folders). Consecutive images of the same padded size go through the network, and the
    dense walk, together (at most ``batch_size``). ``precision`` autocasts AffinityNet (the walk itself
    runs in float32). Returns the names written, in order."""
    cams_dir, out_dir = Path(cams_dir), Path(out_dir)
    if not cams_dir.is_dir():
        raise CpnError(f"{cams_dir}: CAM folder not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_cams_dir is not None:
        save_cams_dir = Path(save_cams_dir)
        save_cams_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, save_cams_dir):
        if dataset is not None and folder is not None:
            record_dataset(folder, dataset)
    num_foreground = (dataset or voc()).num_foreground
    device = torch.device(device)
    model.eval()
    written: list[str] = []
    group: list[_Item] = []

    def flush() -> None:
        if not group:
            return
        x = to_device(np.stack([it.image for it in group]), device)
        with autocast(device, precision):
            embedding = model(x)
        embedding = embedding.float()
        h, w = embedding.shape[-2:]
        aff = pair_affinities(embedding, params.radius)
        k = max(it.scores.shape[0] for it in group)
        scores = torch.zeros(len(group), k, h * w, device=device)
        for row, it in enumerate(group):
            scores[row, : it.scores.shape[0]] = to_device(it.scores.reshape(it.scores.shape[0], -1), device)
        walked = random_walk(scores, aff, h, w, params).view(len(group), k, h, w)
        for row, it in enumerate(group):
            _finish(it, walked[row, : it.scores.shape[0]], out_dir, save_cams_dir)
            written.append(it.sample.name)
            if on_image:
                on_image(it.sample.name)
        group.clear()

    for sample in samples:
        item = _prepare(sample, cams_dir, params, mean, std, num_foreground)
        if group and (group[0].image.shape != item.image.shape or len(group) >= batch_size):
            flush()
        group.append(item)
    flush()
    return written


if __name__ == "__main__":  # `accelerate launch -m cpn_dist.affinity.random_walk ...` runs `cpn rw`
    from cpn_dist.cli import main

    sys.exit(main(["rw", *sys.argv[1:]]))
