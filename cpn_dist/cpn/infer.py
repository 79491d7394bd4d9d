"""Multi-scale, flipped CAM inference, as the released ``infer_cam.py`` computes it.

Per image (original size H×W, image-level labels y):

1. for each scale s: size = Python ``round(W·s)`` × ``round(H·s)`` (banker's rounding), PIL bicubic
   resize of the uint8 image, ImageNet normalisation in float64 stored as float32; the flipped
   input is the width-flip of that normalised array;
2. the network's refined CAM (or the raw CAM), channels 1..C-1 (C the model's classes with background:
   21 for VOC, 81 for COCO), already at the input size, is
   resized to H×W (bilinear, align_corners=False), multiplied by y, and un-flipped;
3. the 2·|scales| maps are summed in float32 in the released order (s₁, s₁ flipped, s₂, …);
4. :func:`cpn_dist.labels.cams.normalise_released` (negatives → 0, min/max with the 1e-5 epsilons, arg-min
   pixels negative, halved); only labelled classes are kept.

The image-level labels y are (C-1)-vectors (a sample whose labels have another length is refused in one
line). Files: ``NAME.npy`` in the released format (``fmt="released"``) or IRN's (``"irn"``), or the
compact ``NAME.npz`` (``"compact"``: :mod:`cpn_dist.labels.cam_store`, at ``compact_stride`` in
``compact_dtype``), which every reader opens as it opens the released format.

Unlike the released script (whose thread pool silently keeps the first 12 inputs), every scale is
used. Inputs of the same size — the two flips of a scale, and equal-sized images — go through the
network together in one batch; each class map is only computed for the image's labelled classes.
A model with a head can write its refined and its raw CAMs from the same forward passes
(``raw_cam_dir``): the network computes both in every pass.
Distributed runs (``accelerate launch``) give each process every world-th image.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cpn_dist.data.inputs import Sample
from cpn_dist.devices import autocast, to_device
from cpn_dist.errors import CpnError
from cpn_dist.labels import cam_store
from cpn_dist.labels.cams import save_cams
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InferSettings:
    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    flip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    use: str = "refined"  # "refined" (Ỹ, as released) or "cam" (the raw CAM Y)
    batch_size: int = 8  # most inputs of one size per forward
    fmt: str = "released"  # "released" | "irn" | "compact" (NAME.npz, cpn_dist.labels.cam_store)
    compact_stride: int = cam_store.DEFAULT_STRIDE  # the compact store's block size, pixels
    compact_dtype: str = cam_store.DEFAULT_DTYPE  # the compact store's codes: uint8 | float16
    save_raw: bool = False  # also write the unnormalised sum under out/raw/
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast of the network; the sums stay float32)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of a scale, with Python's round (half to even) as the released code."""
    return round(width * scale), round(height * scale)


def normalise_image(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """H×W×3 uint8 → 3×H×W float32: (x/255 − mean)/std computed in float64, as the released Normalize."""
    x = rgb.astype(np.float64) / 255.0
    x = (x - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return np.ascontiguousarray(x.astype(np.float32).transpose(2, 0, 1))


def scale_inputs(image: Image.Image, settings: InferSettings) -> list[np.ndarray]:
    """The network inputs of one image in the released order: (scale 1, scale 1 flipped, scale 2, …)."""
    image = image.convert("RGB")
    inputs = []
    for s in settings.scales:
        size = scaled_size(*image.size, s)
        if min(size) < 1:
            raise ValueError(f"scale {s} shrinks a {image.size[0]}×{image.size[1]} image to nothing")
        arr = normalise_image(np.asarray(image.resize(size, resample=Image.BICUBIC)), settings.mean, settings.std)
        inputs.append(arr)
        if settings.flip:
            inputs.append(np.ascontiguousarray(arr[:, :, ::-1]))
    return inputs


@dataclass
class _Pending:
    """One image on its way through the network."""

    sample: Sample
    inputs: list[np.ndarray]
    classes: list[int]  # labelled class indices 0..C-2
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # input index → U×K×h×w (U: the maps written)

    def map_of(self, k: int) -> _Pending:
        """This image with only its k-th map of every input (K×h×w): what one output folder receives."""
        return _Pending(self.sample, self.inputs, self.classes, {i: out[k] for i, out in self.outputs.items()})


def _prepare(sample: Sample, settings: InferSettings, num_foreground: int | None = None) -> _Pending:
    labels = np.asarray(sample.labels, dtype=np.float32).reshape(-1)
    if num_foreground is not None and labels.shape[0] != num_foreground:
        raise CpnError(f"{sample.name}: {labels.shape[0]} image-level labels, but the model scores {num_foreground} "
                       f"object classes (labels of another dataset?)")  # fmt: skip
    classes = [int(c) for c in np.flatnonzero(labels > 1e-5)]
    inputs = scale_inputs(sample.image, settings) if classes else []
    return _Pending(sample, inputs, classes)


def _forward(model: torch.nn.Module, batch: torch.Tensor, uses: Sequence[str], precision: str = "fp32") -> torch.Tensor:
    """One forward pass of ``batch``, the maps ``uses`` names stacked, object classes only: B×U×(C-1)×h×w
    float32. A use "refined" is the refined CAM (the raw CAM for a model without a head), any other the raw
    CAM: the network computes both in every pass, so writing both costs no second pass."""
    with autocast(batch.device, precision):
        cam, refined = model(batch)
    maps = [refined if use == "refined" and refined is not None else cam for use in uses]
    return torch.stack([m[:, 1:] for m in maps], dim=1).float()


def sum_cams(pending: _Pending, settings: InferSettings) -> torch.Tensor:
    """Step 2–3: the float32 sum (K×H×W, labelled classes) over every input of one image, on the device
    the outputs are on."""
    width, height = pending.sample.image.size
    first = pending.outputs[0]
    labels = torch.as_tensor(np.asarray(pending.sample.labels, dtype=np.float32)[pending.classes]).to(first.device)
    total = None
    per_scale = 2 if settings.flip else 1
    for i in range(len(pending.inputs)):
        out = pending.outputs[i]
        cam = F.interpolate(out[None], (height, width), mode="bilinear", align_corners=False)[0]
        cam = cam * labels.view(-1, 1, 1)
        if settings.flip and i % per_scale == 1:
            cam = torch.flip(cam, dims=(-1,))
        total = cam if total is None else total.add_(cam)
    return total


def normalise_released_torch(total: torch.Tensor) -> torch.Tensor:
    """:func:`cpn_dist.labels.cams.normalise_released` in torch (on any device), bit-identical in float32."""
    x = total.float().clamp_min(0)
    high = x.amax(dim=(-2, -1), keepdim=True)
    low = x.amin(dim=(-2, -1), keepdim=True)
    eps = torch.tensor(1e-5, dtype=torch.float32, device=x.device)
    x = torch.where(x < low + eps, torch.zeros_like(x), x)
    return ((x - low - eps) / (high - low + eps)) / 2


def _save_normalised(out_dir: Path, name: str, cams: dict[int, np.ndarray], settings: InferSettings) -> None:
    """One image's normalised CAM dict as ``NAME.npy`` (released format) or ``NAME.npz`` (compact); a file of
    the other format left by an earlier run is removed (readers take ``NAME.npy`` first)."""
    compact = settings.fmt == "compact"
    path, other = out_dir / f"{name}.npy", out_dir / f"{name}{cam_store.SUFFIX}"
    if compact:
        path, other = other, path
        cam_store.save_compact(path, cams, settings.compact_stride, settings.compact_dtype)
    else:
        save_cams(path, cams)
    other.unlink(missing_ok=True)


def _finish(pending: _Pending, settings: InferSettings, out_dir: Path) -> None:
    name = pending.sample.name
    if not pending.classes:
        if settings.fmt == "irn":
            save_cams(out_dir / f"{name}.npy", _irn({}, [], None))
        else:
            _save_normalised(out_dir, name, {}, settings)
        return
    total = sum_cams(pending, settings)
    if settings.save_raw or settings.fmt == "irn":
        raw = total.cpu().numpy()
        if settings.save_raw:
            save_cams(out_dir / "raw" / f"{name}.npy", {c: raw[k] for k, c in enumerate(pending.classes)})
        if settings.fmt == "irn":
            save_cams(out_dir / f"{name}.npy", _irn(pending.sample, pending.classes, raw))
            return
    norm = normalise_released_torch(total).cpu().numpy()  # one copy to the host per image
    _save_normalised(out_dir, name, {c: norm[k] for k, c in enumerate(pending.classes)}, settings)


def _irn(sample, classes: list[int], total: np.ndarray | None) -> dict:
    """IRN's layout (keys / cam / high_res) and normalisation: relu, divided by the per-class max + 1e-5;
    ``cam`` is the sum resized to IRN's stride-4 grid ⌈H/4⌉×⌈W/4⌉."""
    if total is None:
        empty = np.zeros((0, 1, 1), np.float32)
        return {"keys": np.zeros(0, np.int64), "cam": empty, "high_res": empty}
    t = torch.from_numpy(total).clamp_min(0)
    h, w = t.shape[-2:]
    strided = F.interpolate(t[None], ((h + 3) // 4, (w + 3) // 4), mode="bilinear", align_corners=False)[0]

    def norm(x: torch.Tensor) -> np.ndarray:
        return (x / (x.amax(dim=(-2, -1), keepdim=True) + 1e-5)).numpy().astype(np.float32)

    return {"keys": np.asarray(classes, dtype=np.int64), "cam": norm(strided), "high_res": norm(t)}


@torch.inference_mode()
def infer_samples(model: torch.nn.Module, samples: Iterable[Sample], out_dir: str | Path,
                  settings: InferSettings = InferSettings(), device: torch.device | str = "cpu",
                  images_per_step: int = 4, loader_threads: int = 2,
                  on_image: Callable[[str], None] | None = None,
                  raw_cam_dir: str | Path | None = None) -> list[str]:  # fmt: skip
    """Write one CAM file per sample into ``out_dir``; returns the names written, in order.

    ``images_per_step`` images are prepared together so that equal-sized inputs of different images
    share a forward; inputs of one size go in batches of at most ``settings.batch_size``. Each sample's
    labels must be as many as the model's object classes (``model.num_classes`` − 1). ``raw_cam_dir``
    (a model with a head): also the raw CAM's file of each sample there, from the same forward passes —
    the same files a ``use="cam"`` run would write."""
    if raw_cam_dir is not None and getattr(model, "head", None) == "none":
        raise ValueError("raw_cam_dir: a model without a head has only its raw CAM")
    if settings.fmt == "compact":  # a bad stride or dtype fails before the work
        cam_store.encode_cams({}, settings.compact_stride, settings.compact_dtype)
    num_classes = getattr(model, "num_classes", None)
    num_foreground = None if num_classes is None else num_classes - 1
    targets = [(settings.use, Path(out_dir))] + ([("cam", Path(raw_cam_dir))] if raw_cam_dir is not None else [])
    for _, folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        if settings.save_raw:
            (folder / "raw").mkdir(exist_ok=True)
    model.eval()
    written: list[str] = []
    prepared = parallel_map(lambda s: _prepare(s, settings, num_foreground), samples, loader_threads,
                            depth=2 * images_per_step, threads=True)  # fmt: skip
    step: list[_Pending] = []
    for pending in prepared:
        step.append(pending)
        if len(step) == images_per_step:
            _run_step(model, step, settings, device, targets, written, on_image)
            step = []
    if step:
        _run_step(model, step, settings, device, targets, written, on_image)
    return written


def forward_by_shape(step: Sequence, forward: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device,
                     keep: Callable = lambda item, row: row) -> None:  # fmt: skip
    """Run every input of the images in ``step`` (objects with ``inputs``, a list of 3×h×w arrays, and
    an ``outputs`` dict) through ``forward``: equal-sized inputs, of any image, go together in batches of
    at most ``batch_size``; ``item.outputs[i] = keep(item, output row of input i)``."""
    by_shape: dict[tuple[int, ...], list[tuple[object, int]]] = {}
    for p in step:
        for i, x in enumerate(p.inputs):
            by_shape.setdefault(x.shape, []).append((p, i))
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            part = group[start:start + batch_size]
            batch = to_device(np.stack([p.inputs[i] for p, i in part]), device)
            out = forward(batch)
            for row, (p, i) in enumerate(part):
                p.outputs[i] = keep(p, out[row])


def _run_step(model, step: list[_Pending], settings: InferSettings, device, targets: list[tuple[str, Path]],
              written: list[str], on_image) -> None:  # fmt: skip
    """One forward of the step's images for every (use, folder) of ``targets``; each image's files written."""
    uses = [use for use, _ in targets]
    forward_by_shape(step, lambda batch: _forward(model, batch, uses, settings.precision), settings.batch_size,
                     device, keep=lambda p, row: row[:, p.classes])  # only the labelled classes are kept
    for p in step:
        for k, (_, folder) in enumerate(targets):
            _finish(p.map_of(k), settings, folder)
        p.outputs.clear()
        written.append(p.sample.name)
        if on_image:
            on_image(p.sample.name)


if __name__ == "__main__":  # `accelerate launch -m cpn_dist.cpn.infer ...` runs the `cpn infer` command
    from cpn_dist.cli import main

    sys.exit(main(["infer", *sys.argv[1:]]))
