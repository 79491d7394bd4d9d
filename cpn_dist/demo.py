"""The built-in demo (``cpn demo``, ``make demo``): CPN against the plain CAM, on a synthetic parts task or
on any VOC-layout folder.

Steps, each skipped on a re-run when its output is complete (``overwrite=True`` redoes them all):

1. ``data``: :func:`~cpn_dist.data.synth.synthesize_voc` of ``settings.task`` into ``OUT/VOC2012`` — or,
   with ``voc_root``, the user's folder as it is — then :func:`~cpn_dist.data.pack.pack_split` of its
   training split (``train_aug`` when listed, else ``train``) into ``OUT/shards``;
2. the shared start of every model: the config's ``model.weights`` when it names any (``imagenet`` for
   the EfficientNet-Lite0 backbone: the paper's setting); otherwise (the tiny backbone) ``init`` and
   ``warmup``: data-dependent initial weights ``OUT/init.pth`` (:func:`initial_weights`), then the plain
   CAM trained from them (:func:`warm_up`, ``OUT/runs/warmup``), standing in for the ImageNet start;
3. ``train``: one :func:`cpn_dist.train.train` per model (:data:`DEMO_MODELS`: the baseline CAM,
   hiding as augmentation only, CPN) from the warm-up weights into ``OUT/runs/NAME``;
4. ``infer``: multi-scale + flip CAMs (:func:`cpn_dist.infer.infer_samples`) of the evaluation
   split's images into ``OUT/cams/NAME``;
5. ``eval``: the β sweep (:func:`cpn_dist.evaluate.sweep`) and, where the folder has part maps, at each
   model's best β body and marker recall and CAM magnitude (:func:`cpn_dist.parts.part_scores`) and
   CPN's premise (:func:`cpn_dist.parts.premise_share`) into ``OUT/scores/NAME.json``;
6. ``figure``: image, ground truth and each model's CAM for a few images, ``OUT/demo.png``;
7. ``OUT/results.json``: ``{"models": {name: {"miou": percent, "best_beta": …, …}}, "data": …, …}``.

The same functions run the quality ablation (``benchmarks/bench_quality.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cpn_dist.errors import CpnError
from cpn_dist.yaml_io import PACKAGED_CONFIGS

log = logging.getLogger(__name__)

DEMO_CONFIG = PACKAGED_CONFIGS / "demo.yaml"  # shipped with the package: found from any folder
# The models of the demo: name → dotted overrides of configs/demo.yaml.
DEMO_MODELS: dict[str, tuple[str, ...]] = {
    "baseline": ("loss.recipe=cam", "model.head=none"),  # L_cls on I only, the plain CAM
    # L_cls on I, I_h and I_hbar. (ohem_ratio 1: there is no CPCR without a head, and the trainer's
    # global OHEM selection would ask for refined CAMs that head none does not make.)
    "hiding": ("model.head=none", "loss.weights=[1.0, 0.0, 0.0]", "loss.ohem_ratio=1.0"),
    "cpn": (),  # the paper's recipe: L_cls + L_tcp + L_cpcr (OHEM), PCM + PRCM
}


@dataclass(frozen=True)
class DemoSettings:
    """What the demo makes and how it scores it."""

    task: str = "parts-reliable"  # the synthetic task (cpn_dist.data.synth_parts.PART_STYLES): CPN's premise holds
    images: int = 1000  # synthetic images (80 % train_aug, of which half is `train`; 20 % val)
    size: int = 64  # long side of every image
    data_seed: int = 0
    segments: int = 30  # SLIC segment count packed (configs/demo.yaml: data.patch.segments)
    warmup_epochs: int = 12  # the shared plain-CAM start of every model (see warm_up)
    eval_split: str = "train"  # CAMs are scored on training images, as the paper's Tables 1-4
    premise_images: int = 200  # images of the eval split on which CPN's premise is measured (parts tasks)
    eval_images: int | None = None  # score only the first N images of the split
    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    # 0, 0.0005, 0.001, 0.002 … 0.004, then 0.005 … 0.600 by 0.005: released CAMs of a plain CAM are low on
    # most of the object, so the best β can lie far below the usual 0.20 … 0.60 (β = 0 marks every pixel
    # where the CAM is positive)
    betas: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.002, 0.003, 0.004,
                                *(round(0.005 * i, 3) for i in range(1, 121)))  # fmt: skip
    figure_images: int = 4


@dataclass(frozen=True)
class ModelScores:
    """One model's scores: the β sweep's best point, its whole curve, and the part scores at the best β."""

    name: str
    best_beta: float
    miou: float
    foreground: float
    background: float
    body_recall: float | None = None  # the part columns: only on a folder with SegmentationPart/
    marker_recall: float | None = None
    body_magnitude: float | None = None
    marker_magnitude: float | None = None
    betas: list[float] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)
    premise: dict | None = None  # premise_share of the model's raw CAM, per patch kind (parts tasks)

    @property
    def beta_inside(self) -> bool:
        """Whether the best β lies strictly inside the swept range (not on its edge)."""
        return min(self.betas) < self.best_beta < max(self.betas)

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict) -> ModelScores:
        return cls(**data)


# ------------------------------------------------------------------------------------------------
# steps


@dataclass(frozen=True)
class DemoData:
    """Where the demo's data lives: the VOC folder, its packed training split, and whether it has part maps."""

    voc: Path
    shards: Path
    split: str  # the packed training split: train_aug, or train when the folder lists no train_aug
    task: str | None  # the synthetic task, None for a user's folder

    @property
    def has_parts(self) -> bool:
        from cpn_dist.data.synth import PART_FOLDER

        return (self.voc / PART_FOLDER).is_dir()

    def overrides(self, settings: DemoSettings) -> tuple[str, ...]:
        """The run-config overrides that point training at these shards."""
        return (f"data.shards={self.shards}", f"data.split={self.split}", f"data.patch.segments={settings.segments}")


def make_data(out: Path, settings: DemoSettings, overwrite: bool = False,
              voc_root: str | Path | None = None) -> DemoData:  # fmt: skip
    """Step 1: the VOC folder — ``settings.task`` synthesised into ``out/VOC2012``, or ``voc_root`` as it
    is — and its training split packed into ``out/shards``."""
    from cpn_dist.data.pack import pack_split
    from cpn_dist.data.shards import META_NAME
    from cpn_dist.data.synth import synthesize_voc

    shards, stamp = out / "shards", out / ".data.json"
    if voc_root is None:
        voc = out / "VOC2012"
        wanted = {"images": settings.images, "size": settings.size, "seed": settings.data_seed,
                  "segments": settings.segments, "task": settings.task}  # fmt: skip
    else:
        voc = Path(voc_root).resolve()
        lists = voc / "ImageSets" / "Segmentation"
        for needed in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
            if not (voc / needed).is_dir():
                raise CpnError(f"--voc-root {voc}: no {needed}/ (a VOC 2012 layout folder is needed)")
        if not (lists / "train.txt").is_file():
            raise CpnError(f"--voc-root {voc}: no ImageSets/Segmentation/train.txt (the split the CAMs are scored on)")
        wanted = {"voc_root": str(voc), "segments": settings.segments}
    listed = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()
    data = DemoData(voc, shards, "train_aug" if voc_root is None or listed else "train",
                    settings.task if voc_root is None else None)  # fmt: skip
    if not overwrite and stamp.is_file() and json.loads(stamp.read_text()) == wanted and (shards / META_NAME).is_file():
        log.info("data: %s and %s are complete", voc, shards)
        return data
    if voc_root is None:
        synthesize_voc(voc, settings.images, size=settings.size, seed=settings.data_seed, workers=2,
                       overwrite=True, task=settings.task)  # fmt: skip
    pack_split(voc, data.split, shards, segments=(settings.segments,), workers=2, overwrite=True)
    stamp.write_text(json.dumps(wanted) + "\n")
    return data


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

    from cpn_dist.config import load_config
    from cpn_dist.data import build_train_loader
    from cpn_dist.models import build_model

    if path.is_file() and not overwrite:
        return path
    cfg = load_config(config, list(overrides))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.backbone, "paper", dropout=0.0)
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
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
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
    its final weights. A finished run (``model_final.pth`` present) is kept unless ``overwrite``."""
    import shutil

    from cpn_dist.config import load_config
    from cpn_dist.train import train

    final = out_dir / "model_final.pth"
    if final.is_file() and not overwrite:
        log.info("train: %s exists", final)
        return final
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = load_config(config, [*overrides, f"output.dir={out_dir}"])
    return train(cfg)


def infer_cams(weights: Path, config: str | Path, overrides: Sequence[str], voc: Path, names: Sequence[str],
               out_dir: Path, settings: DemoSettings, overwrite: bool = False,
               use: str = "refined") -> Path:  # fmt: skip
    """Step 4: multi-scale + flip CAM files (released format) of ``names``; refined CAMs for a model
    with a head (``use="cam"``: its raw CAMs), raw CAMs for ``head: none``. Images whose file exists are
    skipped unless ``overwrite``."""
    import torch

    from cpn_dist.config import load_config
    from cpn_dist.data.inputs import VocSource
    from cpn_dist.infer import InferSettings, infer_samples
    from cpn_dist.models import build_model, load_weights

    cfg = load_config(config, list(overrides))
    done = set() if overwrite or not out_dir.is_dir() else {p.stem for p in out_dir.glob("*.npy")}
    todo = [n for n in names if n not in done]
    if not todo:
        return out_dir
    model = build_model(cfg.model.backbone, cfg.model.head, dropout=0.0)
    load_weights(model, weights)
    infer = InferSettings(scales=settings.scales, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std), use=use)
    with torch.inference_mode():
        infer_samples(model, VocSource(voc, todo).samples(), out_dir, infer, loader_threads=0)
    return out_dir


def score_cams(name: str, cams: Path, voc: Path, names: Sequence[str], betas: Sequence[float]) -> ModelScores:
    """Step 5: the β sweep over ``betas`` and, where ``voc`` has part maps, the part scores at the best β."""
    from cpn_dist.data.synth import PART_FOLDER
    from cpn_dist.evaluate import GroundTruth, sweep
    from cpn_dist.parts import part_scores

    result = sweep(cams, GroundTruth(voc / "SegmentationClass"), list(names), list(betas))
    best = result.summary()
    scores = ModelScores(name=name, best_beta=float(best["beta"]), miou=best["miou"], foreground=best["foreground"],
                         background=best["background"], betas=[float(b) for b in result.betas],
                         curve=[float(m) for m in result.miou])  # fmt: skip
    if not (voc / PART_FOLDER).is_dir():
        return scores
    parts = part_scores(cams, voc, names, best["beta"])
    return replace(scores, body_recall=parts.recall["body"], marker_recall=parts.recall["marker"],
                   body_magnitude=parts.magnitude["body"], marker_magnitude=parts.magnitude["marker"])  # fmt: skip


def premise(weights: Path | str, config: str | Path, overrides: Sequence[str], voc: Path, names: Sequence[str],
            kinds: Sequence[str] = ("superpixel", "grid")) -> dict[str, dict]:
    """CPN's premise (:func:`cpn_dist.parts.premise_share`) of a model's raw CAM, per patch kind: how often
    the marker-less branch of a CP pair still finds the object."""
    from cpn_dist.config import load_config
    from cpn_dist.data.cp_pair import PatchParams
    from cpn_dist.models import build_model, load_weights
    from cpn_dist.parts import premise_share

    cfg = load_config(config, list(overrides))
    model = build_model(cfg.model.backbone, "none", dropout=0.0)  # the raw CAM is all the premise needs
    load_weights(model, weights)
    patch = PatchParams.from_config(cfg.data.patch)
    return {kind: premise_share(model, voc, names, replace(patch, kind=kind), cfg.data.mean, cfg.data.std).to_json()
            for kind in kinds}  # fmt: skip


def comparison_figure(voc: Path, cams: dict[str, Path], names: Sequence[str], path: Path) -> Path:
    """Step 6: one row per image — the image, its ground truth, then each model's CAM of the image's
    classes (their per-pixel maximum) blended over the image."""
    from cpn_dist.cams import load_cams
    from cpn_dist.data.inputs import read_image
    from cpn_dist.data.voc import read_label_png
    from cpn_dist.show import _pyplot, colour_labels, heat

    plt = _pyplot()
    cols = 2 + len(cams)
    fig, axes = plt.subplots(len(names), cols, figsize=(2.2 * cols, 2.0 * len(names)), dpi=100, squeeze=False)
    for row, name in enumerate(names):
        image = np.asarray(read_image(voc / "JPEGImages" / f"{name}.jpg"))
        panels = [("image", image), ("ground truth", colour_labels(read_label_png(voc / "SegmentationClass"
                                                                                   / f"{name}.png")))]  # fmt: skip
        for model, folder in cams.items():
            maps = load_cams(folder / f"{name}.npy")
            cam = np.max(np.stack(list(maps.values())), axis=0) if maps else np.zeros(image.shape[:2], np.float32)
            panels.append((f"{model} CAM", (0.45 * image + 0.55 * heat(cam)).astype(np.uint8)))
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


# ------------------------------------------------------------------------------------------------
# the whole demo


def eval_names(voc: Path, settings: DemoSettings) -> list[str]:
    from cpn_dist.data.voc import read_split

    names = read_split(voc / "ImageSets" / "Segmentation" / f"{settings.eval_split}.txt")
    return names[: settings.eval_images] if settings.eval_images else names


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), config: str | Path = DEMO_CONFIG,
             models: dict[str, tuple[str, ...]] | None = None, overrides: Sequence[str] = (),
             overwrite: bool = False, on_step: Callable[[str], None] | None = None,
             voc_root: str | Path | None = None) -> dict[str, ModelScores]:  # fmt: skip
    """Run every step (see the module docstring) into ``out``; returns each model's scores and writes
    ``out/results.json``.

    ``models``: name → dotted overrides of ``config`` (default :data:`DEMO_MODELS`); ``overrides``
    apply to every run, the warm-up included (e.g. ``train.max_steps=2`` for a smoke test);
    ``voc_root``: a VOC-layout folder to use instead of the synthetic task."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CpnError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    models = DEMO_MODELS if models is None else models
    step = on_step or (lambda _: None)

    step("data")
    data = make_data(out, settings, overwrite, voc_root)
    base = (*data.overrides(settings), *overrides)
    from cpn_dist.config import load_config

    start: Path | None = None
    if not load_config(config, list(base)).model.weights:  # a random start: warm up first
        step("init")
        init = initial_weights(out / "init.pth", config, base, overwrite=overwrite)
        step("train warmup")
        start = warm_up(out / "runs" / "warmup", config, (*base, f"model.weights={init}"), settings.warmup_epochs,
                        overwrite)  # fmt: skip
    start_overrides = (f"model.weights={start}",) if start is not None else ()
    names = eval_names(data.voc, settings)
    scores: dict[str, ModelScores] = {}
    for name, extra in models.items():
        run_overrides = (*base, *start_overrides, *extra)
        step(f"train {name}")
        weights = train_model(config, run_overrides, out / "runs" / name, overwrite)
        step(f"infer {name}")
        cams = infer_cams(weights, config, run_overrides, data.voc, names, out / "cams" / name, settings, overwrite)
        step(f"eval {name}")
        scores[name] = score_cams(name, cams, data.voc, names, settings.betas)
        if data.has_parts:
            found = premise(weights, config, run_overrides, data.voc, names[: settings.premise_images])
            scores[name] = replace(scores[name], premise=found)
        path = out / "scores" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(scores[name].to_json(), indent=1) + "\n")
    step("figure")
    figure = comparison_figure(data.voc, {n: out / "cams" / n for n in models}, names[: settings.figure_images],
                               out / "demo.png")  # fmt: skip
    start_premise = None
    if data.has_parts:
        weights = start if start is not None else load_config(config, list(base)).model.weights
        if weights:
            start_premise = premise(weights, config, (*base, *start_overrides), data.voc,
                                    names[: settings.premise_images])  # fmt: skip
    write_results(out / "results.json", scores, data, settings, config, overrides, names, start, start_premise, figure)
    return scores


RESULT_PERCENT = ("miou", "foreground", "background", "body_recall", "marker_recall")


def write_results(path: Path, scores: dict[str, ModelScores], data: DemoData, settings: DemoSettings,
                  config: str | Path, overrides: Sequence[str], names: Sequence[str], start: Path | None,
                  start_premise: dict | None, figure: Path) -> None:  # fmt: skip
    """``results.json``: per model the β sweep's best point (IoU and recall in percent), the CAM magnitudes on
    the parts, and CPN's premise; and what was run on which data."""
    models = {}
    for name, s in scores.items():
        row = {k: (None if getattr(s, k) is None else 100.0 * getattr(s, k)) for k in RESULT_PERCENT}
        row |= {"best_beta": s.best_beta, "beta_inside": s.beta_inside, "body_cam": s.body_magnitude,
                "marker_cam": s.marker_magnitude, "premise": s.premise}  # fmt: skip
        models[name] = row
    record = {
        "models": models,
        "data": {"voc_root": str(data.voc), "synthetic_task": data.task, "train_split": data.split,
                 "eval_split": settings.eval_split, "eval_images": len(names),
                 "part_maps": data.has_parts},
        "start": {"weights": str(start) if start is not None else "config's model.weights",
                  "warmup_epochs": settings.warmup_epochs, "premise": start_premise},
        "config": str(config), "overrides": list(overrides), "betas": [settings.betas[0], settings.betas[-1]],
        "scales": list(settings.scales), "figure": str(figure),
    }  # fmt: skip
    path.write_text(json.dumps(record, indent=1) + "\n")
