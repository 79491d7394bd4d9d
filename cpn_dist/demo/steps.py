"""The steps of the demo (:mod:`cpn_dist.demo.run`), each skipped on a re-run when its output is complete:
the data, the shared start of every model, training, CAM inference, scoring, the comparison figure."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cpn_dist.atomic import write_atomic
from cpn_dist.demo.settings import DemoSettings, ModelScores
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)


COCO_SPLIT = "train2014"  # --coco-root: the split the models train on and the CAMs are scored on


@dataclass(frozen=True)
class DemoData:
    """Where the demo's data lives: the VOC folder, its packed training split, and whether it has part maps."""

    voc: Path  # with --coco-root: the VOC-layout view of its train2014 (data.datasets.coco_view) in OUT/coco_view
    shards: Path
    split: str  # the packed training split: train_aug, or train when the folder lists no train_aug; train2014
    task: str | None  # the synthetic task, None for a user's folder
    coco: Path | None = None  # --coco-root: the COCO folder

    @property
    def user_voc(self) -> Path | None:
        """The user's VOC folder (None: synthetic data, or COCO)."""
        return None if self.task or self.coco else self.voc

    @property
    def has_parts(self) -> bool:
        from cpn_dist.data.synth.voc import PART_FOLDER

        return (self.voc / PART_FOLDER).is_dir()

    def overrides(self, settings: DemoSettings) -> tuple[str, ...]:
        """The run-config overrides that point training at these shards."""
        return (f"data.shards={self.shards}", f"data.split={self.split}", f"data.patch.segments={settings.segments}")


def describe_data(out: Path, settings: DemoSettings, voc_root: str | Path | None = None,
                  coco_root: str | Path | None = None) -> DemoData:  # fmt: skip
    """Where step 1 puts (or finds) the data, without making it: ``out/VOC2012`` and ``out/shards`` for the
    synthetic task; ``voc_root`` (checked to be a VOC layout folder) and ``out/shards`` for a user's folder;
    for a COCO folder (checked to hold train2014 and its annotations) its view ``out/coco_view``."""
    if coco_root is not None:
        from cpn_dist.data.datasets.coco_view import check_coco_split

        coco = check_coco_split(Path(coco_root).resolve(), COCO_SPLIT)
        return DemoData(out / "coco_view", out / "shards", COCO_SPLIT, None, coco)
    if voc_root is None:
        return DemoData(out / "VOC2012", out / "shards", "train_aug", settings.task)
    from cpn_dist.data.datasets.voc import voc_folder

    voc = voc_folder(Path(voc_root).resolve())
    lists = voc / "ImageSets" / "Segmentation"
    if not (lists / "train.txt").is_file():
        raise CpnError(f"--voc-root {voc}: no ImageSets/Segmentation/train.txt (the split the CAMs are scored on)")
    return DemoData(voc, out / "shards", "train_aug" if (lists / "train_aug.txt").is_file() else "train", None)


def make_data(out: Path, settings: DemoSettings, overwrite: bool = False,
              voc_root: str | Path | None = None, coco_root: str | Path | None = None) -> DemoData:  # fmt: skip
    """Step 1: the VOC folder — ``settings.task`` synthesised into ``out/VOC2012``, or ``voc_root`` as it
    is — and its training split packed into ``out/shards``; or ``coco_root``'s train2014 packed (ReCAM's
    protocol) with its VOC-layout view in ``out/coco_view``."""
    from cpn_dist.data.shards.reader import META_NAME

    data = describe_data(out, settings, voc_root, coco_root)
    stamp = out / ".data.json"
    if data.coco is not None:
        wanted = {"coco_root": str(data.coco), "segments": settings.segments}
    elif voc_root is None:
        wanted = {"images": settings.images, "size": settings.size, "seed": settings.data_seed,
                  "segments": settings.segments, "task": settings.task}  # fmt: skip
    else:
        wanted = {"voc_root": str(data.voc), "segments": settings.segments}
    if not overwrite and stamp.is_file() and json.loads(stamp.read_text()) == wanted and \
            (data.shards / META_NAME).is_file():  # fmt: skip
        log.info("data: %s and %s are complete", data.voc, data.shards)
        return data
    if data.coco is not None:
        _coco_data(data, settings)
    else:
        _voc_data(data, settings, voc_root is None)
    stamp.write_text(json.dumps(wanted) + "\n")
    return data


def _voc_data(data: DemoData, settings: DemoSettings, synthetic: bool) -> None:
    """The synthetic task synthesised (``synthetic``), and the VOC folder's training split packed."""
    from cpn_dist.data.shards.pack import pack_split
    from cpn_dist.data.shards.pack_source import find_source
    from cpn_dist.data.synth.voc import synthesize_voc
    from cpn_dist.progress import Progress

    if synthetic:
        with Progress("synth-voc", settings.images) as bar:
            synthesize_voc(data.voc, settings.images, size=settings.size, seed=settings.data_seed, workers=2,
                           overwrite=True, task=settings.task, on_image=bar.on_item)  # fmt: skip
    with Progress("pack", len(find_source(data.voc, data.split).ids)) as bar:
        pack_split(data.voc, data.split, data.shards, segments=(settings.segments,), workers=2, overwrite=True,
                   progress=bar.advance)  # fmt: skip


def _coco_data(data: DemoData, settings: DemoSettings) -> None:
    """The COCO folder's train2014: its VOC-layout view (the images, masks, list and labels the later steps
    read) and its shards, both by ReCAM's protocol (``cpn pack --coco-root``'s default)."""
    from cpn_dist.data.datasets.coco_protocol import PROTOCOLS
    from cpn_dist.data.datasets.coco_view import plan_view, write_view
    from cpn_dist.data.shards.pack import pack_source
    from cpn_dist.data.shards.pack_source import find_coco_source
    from cpn_dist.progress import Progress

    protocol = PROTOCOLS["recam"]
    plan = plan_view(data.coco, [data.split], data.voc, protocol, overwrite=True)
    with Progress("coco_view masks", plan.todo) as bar:
        write_view(plan, data.coco, workers=2, progress=bar.advance)
    source = find_coco_source(data.coco, data.split, protocol)
    with Progress("pack", len(source.ids)) as bar:
        pack_source(source, data.shards, segments=(settings.segments,), workers=2, overwrite=True,
                    progress=bar.advance)  # fmt: skip


def initial_weights(path: Path, config: str | Path, overrides: Sequence[str], batches: int = 8,
                    overwrite: bool = False) -> Path:  # fmt: skip
    """Step 2a: data-dependent initial weights of the tiny model, written to ``path``.

    The tiny backbone's BatchNorms are frozen (as the released code freezes ResNet38's ImageNet
    statistics) but here they hold their initial values — identity maps — so with PyTorch's default
    init each block shrinks the signal ~2.5× (the CAM starts near 1e-3) and SGD sits at the label
    prior for hundreds of steps. These weights are the seeded random init (``train.seed``) with every
    BatchNorm's running mean and variance measured on ``batches`` micro-batches of training crops:
    still nothing learnt, but each block's input normalised, as a pre-trained backbone's would be."""
    import torch
    from torch import nn

    from cpn_dist.config.load import load_config
    from cpn_dist.cpn.model import build_model
    from cpn_dist.data import build_train_loader
    from cpn_dist.data.datasets.recorded import run_dataset

    if path.is_file() and not overwrite:
        return path
    cfg = load_config(config, list(overrides))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.backbone, "paper", dropout=0.0, num_classes=run_dataset(cfg.data).num_classes)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the calibration batches
        bn.train()
    loader, _ = build_train_loader(cfg.data, micro_size=cfg.batch.micro_size, global_size=cfg.batch.micro_size,
                                   rank=0, world_size=1, seed=cfg.train.seed, epoch=0)  # fmt: skip
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == batches:
                break
            model.backbone(batch["image"])
    for bn in norms:
        bn.momentum = 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(model.state_dict(), tmp), path.with_suffix(".tmp"))
    return path


def warm_up(out_dir: Path, config: str | Path, overrides: Sequence[str], epochs: int,
            overwrite: bool = False) -> Path:  # fmt: skip
    """Step 2b: the shared start of every model — the plain CAM (L_cls on I, no head) trained for
    ``epochs`` from the initial weights. It plays the part of the paper's ImageNet initialisation (every
    model of Tables 1-4 starts from the same classifier), learnt here from the same images and
    image-level labels only. CPN's TCP and CPCR terms act on max-normalised CAMs, whose gradient
    scales as 1 / (CAM range): from a random start, with CAMs near zero, they dominate L_cls and the
    CAM collapses (every logit negative, every map zero)."""
    return train_model(config, (*overrides, "loss.recipe=cam", "model.head=none", f"train.epochs={epochs}"),
                       out_dir, overwrite)  # fmt: skip


def train_model(config: str | Path, overrides: Sequence[str], out_dir: Path, overwrite: bool = False) -> Path:
    """Step 3: train one model with :func:`cpn_dist.train.train` (``output.dir`` = ``out_dir``); returns
    its final weights. A finished run (``model_final.pth`` present) is kept unless ``overwrite``; an
    interrupted one resumes (:func:`cpn_dist.pipeline.steps.train_owned`)."""
    from cpn_dist.config.load import load_config
    from cpn_dist.pipeline.steps import train_owned

    final = out_dir / "model_final.pth"
    if final.is_file() and not overwrite:
        log.info("train: %s exists", final)
        return final
    return train_owned(load_config(config, [*overrides, f"output.dir={out_dir}"]), "cpn demo --overwrite", overwrite)


def infer_cams(weights: Path, config: str | Path, overrides: Sequence[str], voc: Path, names: Sequence[str],
               out_dir: Path, settings: DemoSettings, overwrite: bool = False,
               use: str = "refined", raw_dir: Path | None = None) -> Path:  # fmt: skip
    """Step 4: multi-scale + flip CAM files (released format) of ``names``, over the classes the weights
    score (recorded in the folder); refined CAMs for a model with a head (``use="cam"``: its raw CAMs), raw
    CAMs for ``head: none``; with ``raw_dir`` (a model with a head) its raw CAMs there too, from the same
    forward passes. Images whose files exist (in both folders) are skipped unless ``overwrite``."""
    import torch

    from cpn_dist.config.load import load_config
    from cpn_dist.cpn.infer import InferSettings, infer_samples
    from cpn_dist.cpn.model import model_for_weights
    from cpn_dist.data.datasets.recorded import record_dataset
    from cpn_dist.data.inputs import VocSource
    from cpn_dist.labels.cams import cam_names
    from cpn_dist.progress import Progress

    cfg = load_config(config, list(overrides))
    folders = [out_dir] if raw_dir is None else [out_dir, raw_dir]
    done = set() if overwrite else set.intersection(*(set(cam_names(f)) if f.is_dir() else set() for f in folders))
    todo = [n for n in names if n not in done]
    if not todo:
        return out_dir
    model, _, dataset = model_for_weights(weights, cfg.model.backbone, cfg.model.head)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        record_dataset(folder, dataset)
    infer = InferSettings(scales=settings.scales, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std), use=use)
    with torch.inference_mode(), Progress(f"infer {out_dir.name}", len(todo)) as bar:
        infer_samples(model, VocSource(voc, todo).samples(), out_dir, infer, loader_threads=0, on_image=bar.on_item,
                      raw_cam_dir=raw_dir)  # fmt: skip
    return out_dir


def score_cams(name: str, cams: Path, voc: Path, names: Sequence[str], betas: Sequence[float],
               mean: str = "present") -> ModelScores:  # fmt: skip
    """Step 5: the β sweep over ``betas`` (the mIoU over the classes ``mean`` says, of the dataset the CAM
    folder records) and, where ``voc`` has part maps, the part scores at the best β."""
    from cpn_dist.data.datasets.recorded import folders_dataset
    from cpn_dist.data.synth.voc import PART_FOLDER
    from cpn_dist.demo.parts import part_scores
    from cpn_dist.labels.evaluate import GroundTruth, sweep
    from cpn_dist.progress import Progress

    gt = voc / "SegmentationClass"
    with Progress(f"eval {name}", len(names)) as bar:
        result = sweep(cams, GroundTruth(gt), list(names), list(betas), on_images=bar.advance,
                       dataset=folders_dataset(None, cams, gt), mean=mean)  # fmt: skip
    best = result.summary()
    scores = ModelScores(name=name, best_beta=float(best["beta"]), miou=best["miou"], foreground=best["foreground"],
                         background=best["background"], betas=[float(b) for b in result.betas],
                         curve=[float(m) for m in result.miou])  # fmt: skip
    if not (voc / PART_FOLDER).is_dir():
        return scores
    parts = part_scores(cams, voc, names, best["beta"])
    return replace(scores, body_recall=parts.recall["body"], marker_recall=parts.recall["marker"],
                   body_magnitude=parts.magnitude["body"], marker_magnitude=parts.magnitude["marker"])  # fmt: skip


def raw_cam_model(weights: Path | str, cfg):
    """The CAM network without a head (the raw CAM), with ``weights`` loaded, over the classes they score
    (ImageNet weights: the run's shards'). Layers the weights do not hold (the fc8 on top of ImageNet
    weights) start as the trainer's do — drawn after seeding with ``cfg.train.seed`` — so a start's premise
    is that of the model its training starts from, the same on every call (unseeded, a new fc8 on each call
    moved an ImageNet start's share by up to 16 points)."""
    import torch

    from cpn_dist.cpn.model import model_for_weights
    from cpn_dist.data.datasets.recorded import run_dataset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)  # as the trainer's set_seed just before it builds its model
        model, _, _ = model_for_weights(weights, cfg.model.backbone, "none",
                                        fallback=lambda: run_dataset(cfg.data, missing_ok=True))  # fmt: skip
    return model


def premise(weights: Path | str, config: str | Path, overrides: Sequence[str], voc: Path, names: Sequence[str],
            kinds: Sequence[str] = ("superpixel", "grid")) -> dict[str, dict]:
    """CPN's premise (:func:`cpn_dist.demo.parts.premise_share`) of a model's raw CAM, per patch kind: how often
    the marker-less branch of a CP pair still finds the object."""
    from cpn_dist.config.load import load_config
    from cpn_dist.demo.parts import premise_share

    cfg = load_config(config, list(overrides))
    model = raw_cam_model(weights, cfg)
    patch = cfg.data.patch
    return {kind: premise_share(model, voc, names, patch.model_copy(update={"kind": kind}), cfg.data.mean,
                                cfg.data.std).to_json()
            for kind in kinds}  # fmt: skip


def comparison_figure(voc: Path, cams: dict[str, Path], names: Sequence[str], path: Path) -> Path:
    """Step 6: one row per image — the image, its ground truth, then the CAMs of ``cams`` (column title →
    CAM folder) of the image's classes (their per-pixel maximum) blended over the image."""
    from cpn_dist.data.datasets.recorded import folders_dataset
    from cpn_dist.data.datasets.voc import read_label_png
    from cpn_dist.data.inputs import read_image
    from cpn_dist.demo.show import colour_labels, heat, pyplot
    from cpn_dist.labels.cams import read_cams

    plt = pyplot()
    cols = 2 + len(cams)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.2 * cols, 2.0 * len(names)), dpi=100, squeeze=False)
    for row, name in enumerate(names):
        image = np.asarray(read_image(voc / "JPEGImages" / f"{name}.jpg"))
        panels = [("image", image), ("ground truth", colour_labels(read_label_png(voc / "SegmentationClass"
                                                                                   / f"{name}.png")))]  # fmt: skip
        for title, folder in cams.items():
            maps = read_cams(folder, name, folders_dataset(None, folder).num_foreground)
            cam = np.max(np.stack(list(maps.values())), axis=0) if maps else np.zeros(image.shape[:2], np.float32)
            panels.append((title, (0.45 * image + 0.55 * heat(cam)).astype(np.uint8)))
        for ax, (title, picture) in zip(axes[row], panels):
            ax.imshow(picture)
            ax.axis("off")
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
