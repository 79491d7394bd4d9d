"""Multi-scale, flipped segmentation inference, with an optional dense CRF.

Per image (original size H×W):

1. the network inputs of :func:`cpn_dist.cpn.infer.scale_inputs` — for each scale s, the PIL bicubic
   resize to ``round(W·s)`` × ``round(H·s)``, normalised, and (``flip``) its width-flip;
2. for each input the stride-8 class scores, resized to H×W (bilinear, align_corners=False), softmax
   over the C classes (the model's: the dataset's), un-flipped;
3. the mean of those probability maps; the label map is its argmax (ties: lowest class);
4. optionally the dense CRF (:func:`cpn_dist.labels.crf.dense_crf`, unary −log of the mean probabilities,
   on the original RGB image) and the argmax of its marginals.

Equal-sized inputs — the two flips of a scale, and equal-sized images — share a forward
(:func:`cpn_dist.cpn.infer.forward_by_shape`). Label maps are VOC-palette PNGs ``NAME.png``; for the VOC
evaluation server the final maps (CRF-refined when there is a CRF) are also written as
``{test_server}/results/VOC2012/Segmentation/comp5_test_cls/NAME.png``. Distributed runs
(``accelerate launch -m cpn_dist.segmentation.infer``) give each process every world-th image; with
``crf_workers`` > 0 the CRF runs in a process pool while the network goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cpn_dist.atomic import write_atomic
from cpn_dist.config.run import CrfConfig
from cpn_dist.cpn.infer import IMAGENET_MEAN, IMAGENET_STD, forward_by_shape, scale_inputs
from cpn_dist.data.datasets.info import DatasetInfo
from cpn_dist.data.datasets.recorded import record_dataset
from cpn_dist.data.datasets.voc import save_label_png
from cpn_dist.data.inputs import Sample
from cpn_dist.devices import autocast
from cpn_dist.labels.crf import dense_crf
from cpn_dist.parallel import parallel_map

SERVER_LAYOUT = Path("results") / "VOC2012" / "Segmentation" / "comp5_test_cls"
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class SegmentSettings:
    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 8  # most inputs of one size per forward
    crf: CrfConfig | None = None  # None: no CRF
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the network (probabilities stay float32)


@dataclass(frozen=True)
class Outputs:
    """Where the label maps of one run go (None: not written)."""

    labels: Path | None  # NAME.png without CRF
    crf: Path | None = None  # NAME.png after the CRF
    test_server: Path | None = None  # a root that receives results/VOC2012/Segmentation/comp5_test_cls/

    def final_dir(self) -> Path | None:
        """The folder of the final (CRF-refined if any) maps in the server layout, or None."""
        return self.test_server / SERVER_LAYOUT if self.test_server is not None else None

    def paths(self, name: str) -> list[Path]:
        """Every file written for image ``name``."""
        dirs = [self.labels, self.crf, self.final_dir()]
        return [d / f"{name}.png" for d in dirs if d is not None]

    def done(self, name: str) -> bool:
        return all(p.is_file() for p in self.paths(name))


def segment_settings(cfg, **overrides) -> SegmentSettings:
    """Settings of a run config (``segmentation.test_scales``, ``test_flip``, ``crf.*``, ``data.mean/std``)."""
    seg = cfg.segmentation
    values = dict(scales=tuple(seg.test_scales), flip=seg.test_flip, mean=tuple(cfg.data.mean),
                  std=tuple(cfg.data.std), crf=seg.crf if seg.crf.enabled else None)  # fmt: skip
    values.update(overrides)
    return SegmentSettings(**values)


def mean_probabilities(outputs: list[torch.Tensor], size: tuple[int, int], flip: bool) -> torch.Tensor:
    """Steps 2–3: the mean over the inputs (in :func:`scale_inputs` order; with ``flip`` every second
    one is flipped) of softmax(class scores resized to ``size``), C×H×W float32."""
    total = None
    for i, scores in enumerate(outputs):
        prob = F.interpolate(scores[None].float(), size, mode="bilinear", align_corners=False)[0].softmax(0)
        if flip and i % 2 == 1:
            prob = torch.flip(prob, dims=(-1,))
        total = prob if total is None else total.add_(prob)
    return total.div_(len(outputs))


def to_labels(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """H×W uint8 class map: the most probable class of every pixel (the first one on ties).

    numpy, not torch: the CRF workers run this in processes forked from one whose intra-op thread pool
    is running, and a torch op in such a child can deadlock on the pool's inherited locks."""
    probs = probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    return probs.argmax(0).astype(np.uint8)


def _save(label: np.ndarray, path: Path) -> None:
    """Write a label PNG atomically (PIL picks the format from the suffix of the temporary name)."""
    write_atomic(path, lambda tmp: save_label_png(label, tmp), path.with_name(f".{path.stem}.tmp.png"))


def _crf_and_save(job: tuple[np.ndarray, np.ndarray, CrfConfig, list[Path]]) -> None:
    """(RGB image, C×H×W probabilities, CRF config, paths) → the CRF label map written to every path."""
    image, probs, params, paths = job
    label = to_labels(dense_crf(image, probs, params))
    for path in paths:
        _save(label, path)


@dataclass
class _Image:
    """One image on its way through the network."""

    sample: Sample
    inputs: list[np.ndarray]
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # input index → C×h×w scores


def _finish(item: _Image, settings: SegmentSettings, outputs: Outputs) -> Iterator[tuple]:
    """Write the maps of one image that need no CRF; yields its CRF job, if any."""
    width, height = item.sample.image.size
    probs = mean_probabilities([item.outputs[i] for i in range(len(item.inputs))], (height, width), settings.flip)
    probs = probs.cpu()  # averaged on the device: one copy to the host per image
    name = item.sample.name
    if outputs.labels is not None:
        _save(to_labels(probs), outputs.labels / f"{name}.png")
    final = outputs.final_dir()
    if settings.crf is None:
        if final is not None:
            _save(to_labels(probs), final / f"{name}.png")
        return
    paths = [d / f"{name}.png" for d in (outputs.crf, final) if d is not None]
    if paths:
        image = np.asarray(item.sample.image.convert("RGB"))
        yield image, probs.numpy(), settings.crf, paths


@torch.inference_mode()
def segment_samples(model: torch.nn.Module, samples: Iterable[Sample], outputs: Outputs,
                    settings: SegmentSettings = SegmentSettings(), device: torch.device | str = "cpu",
                    images_per_step: int = 4, loader_threads: int = 2, crf_workers: int = 0,
                    on_image: Callable[[str], None] | None = None,
                    dataset: DatasetInfo | None = None) -> list[str]:  # fmt: skip
    """Write the label maps of every sample (see :class:`Outputs`); returns the names done, in order.
    ``model.score(x)`` gives the stride-8 class scores of a batch. With ``crf_workers`` > 0 the CRF runs
    in that many processes, at most ``2 × crf_workers`` images in flight; with 0, inline. ``dataset`` (a
    :class:`~cpn_dist.data.datasets.info.DatasetInfo`, the model's classes) is recorded in the label folders
    (not in the test-server layout, which holds only the server's PNGs)."""
    for folder in (outputs.labels, outputs.crf, outputs.final_dir()):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            if dataset is not None and folder != outputs.final_dir():
                record_dataset(folder, dataset)
    model.eval()
    written: list[str] = []

    def prepare(sample: Sample) -> _Image:
        return _Image(sample, scale_inputs(sample.image, settings))

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with autocast(batch.device, settings.precision):
            return model.score(batch).float()

    def crf_jobs() -> Iterator[tuple]:
        step: list[_Image] = []
        prepared = parallel_map(prepare, samples, loader_threads, depth=2 * images_per_step, threads=True)
        for item in prepared:
            step.append(item)
            if len(step) < images_per_step:
                continue
            yield from _run_step(step, forward, settings, device, outputs, written, on_image)
            step = []
        if step:
            yield from _run_step(step, forward, settings, device, outputs, written, on_image)

    workers = crf_workers if settings.crf is not None else 0
    for _ in parallel_map(_crf_and_save, crf_jobs(), workers, depth=2 * max(workers, 1)):
        pass
    return written


def _run_step(step, forward, settings, device, outputs, written, on_image) -> Iterator[tuple]:
    forward_by_shape(step, forward, settings.batch_size, device)
    for item in step:
        yield from _finish(item, settings, outputs)
        item.outputs.clear()
        written.append(item.sample.name)
        if on_image:
            on_image(item.sample.name)


if __name__ == "__main__":  # `accelerate launch -m cpn_dist.segmentation.infer ...` runs `cpn segment`
    from cpn_dist.cli import main

    sys.exit(main(["segment", *sys.argv[1:]]))
