"""The built-in demo (``cpn demo``, ``make demo``): CPN against the plain CAM, on a synthetic parts task or
on any VOC-layout folder.

The steps are a table run by :class:`cpn_dist.pipeline.runner.StepRunner`, as ``cpn pipeline``'s are: a finished
step leaves a stamp ``OUT/steps/NAME.json`` and is kept on a re-run unless its settings changed (then it
and every later step run again); an interrupted step resumes (training from its checkpoint, inference
image by image); ``overwrite=True`` redoes them all.

1. ``data``: :func:`~cpn_dist.data.synth.voc.synthesize_voc` of ``settings.task`` into ``OUT/VOC2012`` — or,
   with ``voc_root``, the user's folder as it is — then :func:`~cpn_dist.data.shards.pack.pack_split` of its
   training split (``train_aug`` when listed, else ``train``) into ``OUT/shards``; with ``coco_root``, its
   train2014 packed and viewed as a VOC folder in ``OUT/coco_view`` (:mod:`cpn_dist.data.datasets.coco_view`): the
   models train on it and their CAMs are scored on it over the dataset's 81 classes;
2. the shared start of every model: the config's ``model.weights`` when it names any (``imagenet`` for
   the EfficientNet-Lite0 backbone: the paper's setting); otherwise (the tiny backbone) ``init`` and
   ``warmup``: data-dependent initial weights ``OUT/init.pth`` (:func:`initial_weights`), then the plain
   CAM trained from them (:func:`warm_up`, ``OUT/runs/warmup``), standing in for the ImageNet start;
3. ``train_NAME``: one :func:`cpn_dist.train.train` per model (:data:`DEMO_MODELS`: the baseline CAM,
   hiding as augmentation only, CPN) from the warm-up weights into ``OUT/runs/NAME``;
4. ``infer_NAME``: multi-scale + flip CAMs (:func:`cpn_dist.cpn.infer.infer_samples`) of the evaluation
   split's images into ``OUT/cams/NAME`` — the refined CAM of a model with a head (CPN), and from the same
   forward passes its raw CAM (the backbone's, before the head) into ``OUT/cams_raw/NAME``;
5. ``eval_NAME``: the β sweep (:func:`cpn_dist.labels.evaluate.sweep`) and, where the folder has part maps, at each
   model's best β body and marker recall and CAM magnitude (:func:`cpn_dist.demo.parts.part_scores`) and
   CPN's premise (:func:`cpn_dist.demo.parts.premise_share`) into ``OUT/scores/NAME.json``; a model with a
   head gets the same scores of its raw CAM (at the raw CAM's own best β) under ``raw``;
6. ``start_premise`` (parts tasks): CPN's premise at the shared start, ``OUT/scores/start.json``;
7. ``figure``: image, ground truth and each model's CAM (a model with a head: refined, then raw) for a few
   images, ``OUT/demo.png``;
8. ``results``: ``OUT/results.json``, ``{"models": {name: {"miou": percent, "best_beta": …, …, "raw": {…} or
   null}}, "data": …, …}``.

The same functions run the quality ablation (``benchmarks/bench_quality.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from cpn_dist.atomic import write_json
from cpn_dist.demo.settings import DEMO_CONFIG, DEMO_MODELS, REFERENCE_SIZE, DemoSettings, ModelScores, size_overrides
from cpn_dist.demo.steps import (
    DemoData,
    comparison_figure,
    describe_data,
    infer_cams,
    initial_weights,
    make_data,
    premise,
    score_cams,
    train_model,
    warm_up,
)
from cpn_dist.errors import CpnError
from cpn_dist.pipeline.runner import Step, StepRunner, relative_to


def eval_names(voc: Path, settings: DemoSettings) -> list[str]:
    from cpn_dist.data.datasets.voc import read_split

    names = read_split(voc / "ImageSets" / "Segmentation" / f"{settings.eval_split}.txt")
    return names[: settings.eval_images] if settings.eval_images else names


@dataclass
class Demo:
    """What every step of one demo run reads (its folder, settings, config and models); ``overwrite`` is
    set by the runner before each step."""

    out: Path
    settings: DemoSettings
    config: str | Path
    models: dict[str, tuple[str, ...]]
    overrides: tuple[str, ...]
    data: DemoData
    warm: bool  # a random start (the config names no weights): init + warm-up make the shared start
    overwrite: bool = False

    @property
    def base(self) -> tuple[str, ...]:
        """The overrides of every run: the data's, the synthetic task's size (:func:`size_overrides`), then the
        user's."""
        sized = size_overrides(self.config, self.settings.size) if self.data.task else ()
        return (*self.data.overrides(self.settings), *sized, *self.overrides)

    @property
    def start(self) -> Path | None:
        """The warm-up's final weights: the shared start of every model (None: the config's weights)."""
        return self.out / "runs" / "warmup" / "model_final.pth" if self.warm else None

    def run_overrides(self, name: str) -> tuple[str, ...]:
        start = (f"model.weights={self.start}",) if self.start is not None else ()
        return (*self.base, *start, *self.models[name])

    def has_head(self, name: str) -> bool:
        """Whether the model trains a refinement head: then its raw CAM is inferred and scored beside the refined."""
        from cpn_dist.config.load import load_config

        return load_config(self.config, list(self.run_overrides(name))).model.head != "none"

    def raw_cams(self, name: str) -> Path | None:
        """The folder of a model's raw CAMs (None for a model without a head: its CAMs are raw)."""
        return self.out / "cams_raw" / name if self.has_head(name) else None

    def names(self) -> list[str]:
        return eval_names(self.data.voc, self.settings)

    def settings_of(self, step: Step) -> dict:
        """What a step's stamp records (paths inside OUT relative to it)."""
        model = step.name.split("_", 1)[1] if step.stage == "model" else None
        s = self.settings
        record = {
            "data": lambda: {"voc_root": None if self.data.task else str(self.data.voc), "task": s.task,
                             "images": s.images, "size": s.size, "data_seed": s.data_seed, "segments": s.segments,
                             **({"coco_root": str(self.data.coco)} if self.data.coco else {})},
            "init": lambda: {"config": str(self.config), "overrides": list(self.base)},
            "warmup": lambda: {"config": str(self.config), "overrides": list(self.base),
                               "warmup_epochs": s.warmup_epochs},
            "train": lambda: {"config": str(self.config), "overrides": list(self.run_overrides(model))},
            # raw_cam only for a model with a head (a headless model's older stamp stays valid)
            "infer": lambda: {"eval": [s.eval_split, s.eval_images], "scales": list(s.scales),
                              **({"raw_cam": True} if self.has_head(model) else {})},
            # the mean counts only away from its default (an older stamp, without it, stays valid)
            "eval": lambda: {"betas": list(s.betas), "premise_images": s.premise_images,
                             **({"mean": s.mean} if s.mean != "present" else {})},
            "start_premise": lambda: {"premise_images": s.premise_images},
            "figure": lambda: {"figure_images": s.figure_images},
            "results": lambda: {},
        }[step.name.split("_", 1)[0] if step.stage == "model" else step.name]()  # fmt: skip
        return relative_to(record, self.out)

    def configured(self, step: Step) -> bool:
        if step.name in ("init", "warmup"):
            return self.warm
        if step.name == "start_premise":
            return self.data.has_parts and (self.warm or bool(self.start_weights()))
        return True

    def start_weights(self) -> Path | str | None:
        """The shared start: the warm-up's weights, else the config's ``model.weights``."""
        from cpn_dist.config.load import load_config

        return self.start if self.warm else load_config(self.config, list(self.base)).model.weights


# ---- the steps -----------------------------------------------------------------------------------
def data_step(d: Demo):
    make_data(d.out, d.settings, d.overwrite, d.data.user_voc, d.data.coco)


def init_step(d: Demo):
    initial_weights(d.out / "init.pth", d.config, d.base, overwrite=d.overwrite)


def warmup_step(d: Demo):
    warm_up(d.out / "runs" / "warmup", d.config, (*d.base, f"model.weights={d.out / 'init.pth'}"),
            d.settings.warmup_epochs, d.overwrite)  # fmt: skip


def train_step(name: str, d: Demo):
    train_model(d.config, d.run_overrides(name), d.out / "runs" / name, d.overwrite)


def infer_step(name: str, d: Demo):
    infer_cams(d.out / "runs" / name / "model_final.pth", d.config, d.run_overrides(name), d.data.voc, d.names(),
               d.out / "cams" / name, d.settings, d.overwrite, raw_dir=d.raw_cams(name))  # fmt: skip


def raw_label(name: str) -> str:
    """How the table and the figure name a model's raw CAM."""
    return f"{name} raw CAM"


def eval_step(name: str, d: Demo):
    """The β sweep and part scores of a model's CAMs (and of its raw CAMs, for a model with a head), and its
    premise, into ``OUT/scores/NAME.json``."""
    names = d.names()
    scores = score_cams(name, d.out / "cams" / name, d.data.voc, names, d.settings.betas, d.settings.mean)
    raw_dir = d.raw_cams(name)
    if raw_dir is not None:
        raw = score_cams(raw_label(name), raw_dir, d.data.voc, names, d.settings.betas, d.settings.mean)
        scores = replace(scores, raw=raw)
    if d.data.has_parts:
        found = premise(d.out / "runs" / name / "model_final.pth", d.config, d.run_overrides(name), d.data.voc,
                        names[: d.settings.premise_images])  # fmt: skip
        # the premise is measured on the model's raw CAM: the same for its refined and its raw row
        raw = None if scores.raw is None else replace(scores.raw, premise=found)
        scores = replace(scores, premise=found, raw=raw)
    write_json(d.out / "scores" / f"{name}.json", scores.to_json())


def start_premise_step(d: Demo):
    start = (f"model.weights={d.start}",) if d.start is not None else ()
    found = premise(d.start_weights(), d.config, (*d.base, *start), d.data.voc, d.names()[: d.settings.premise_images])
    write_json(d.out / "scores" / "start.json", found)


def figure_step(d: Demo):
    comparison_figure(d.data.voc, figure_cams(d), d.names()[: d.settings.figure_images], d.out / "demo.png")


def figure_cams(d: Demo) -> dict[str, Path]:
    """The figure's CAM columns, title → folder: each model's CAM; a model with a head's refined CAM, then its
    raw CAM beside it."""
    cams = {}
    for name in d.models:
        raw = d.raw_cams(name)
        if raw is None:
            cams[f"{name} CAM"] = d.out / "cams" / name
        else:
            cams |= {f"{name} refined CAM": d.out / "cams" / name, raw_label(name): raw}
    return cams


def results_step(d: Demo):
    start = d.out / "scores" / "start.json"
    write_results(d.out / "results.json", read_scores(d), d.data, d.settings, d.config, d.overrides, d.names(),
                  d.start, json.loads(start.read_text()) if start.is_file() else None, d.out / "demo.png")  # fmt: skip


def read_scores(d: Demo) -> dict[str, ModelScores]:
    return {n: ModelScores.from_json(json.loads((d.out / "scores" / f"{n}.json").read_text())) for n in d.models}


def demo_table(models: Sequence[str]) -> list[Step]:
    """The demo's steps, in order, for these models."""
    per_model = [Step(f"{kind}_{name}", partial(fn, name), "model")
                 for name in models for kind, fn in (("train", train_step), ("infer", infer_step), ("eval", eval_step))]
    return [Step("data", data_step, "data"), Step("init", init_step, "start"), Step("warmup", warmup_step, "start"),
            *per_model, Step("start_premise", start_premise_step, "report"), Step("figure", figure_step, "report"),
            Step("results", results_step, "report")]  # fmt: skip


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), config: str | Path = DEMO_CONFIG,
             models: dict[str, tuple[str, ...]] | None = None, overrides: Sequence[str] = (),
             overwrite: bool = False, on_step: Callable[[str, str], None] | None = None,
             voc_root: str | Path | None = None,
             coco_root: str | Path | None = None) -> dict[str, ModelScores]:  # fmt: skip
    """Run every step (see the module docstring) into ``out``; returns each model's scores and writes
    ``out/results.json``.

    ``models``: name → dotted overrides of ``config`` (default :data:`DEMO_MODELS`); ``overrides``
    apply to every run, the warm-up included (e.g. ``train.max_steps=2`` for a smoke test);
    ``voc_root``: a VOC-layout folder to use instead of the synthetic task; ``coco_root``: a COCO 2014 folder
    instead (its train2014, trained on and scored over its 81 classes); ``on_step(name, event)`` hears
    what :meth:`cpn_dist.pipeline.runner.StepRunner.run` tells."""
    from cpn_dist.config.load import load_config

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CpnError(f"{out}: exists and is not a folder")
    models = DEMO_MODELS if models is None else models
    if voc_root is not None and coco_root is not None:
        raise CpnError("--voc-root and --coco-root: give one of them")
    if (voc_root is not None or coco_root is not None) and settings.size != REFERENCE_SIZE:
        raise CpnError(f"--size {settings.size}: the size the synthetic task is drawn at; a VOC or COCO folder's "
                       "images keep theirs")  # fmt: skip
    data = describe_data(out, settings, voc_root, coco_root)  # checks the folder before anything is written
    if data.coco is not None:
        settings = replace(settings, eval_split=data.split)  # COCO's CAMs are scored on train2014
    warm = not load_config(config, [*data.overrides(settings), *overrides]).model.weights
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, settings, config, dict(models), tuple(overrides), data, warm)
    table = demo_table(list(models))
    runner = StepRunner(table, demo, out / "steps", settings=demo.settings_of, configured=demo.configured)
    runner.run(redo=table[0].name if overwrite else None, on_step=on_step)
    return read_scores(demo)


RESULT_PERCENT = ("miou", "foreground", "background", "body_recall", "marker_recall")


def result_row(s: ModelScores) -> dict:
    """One CAM's numbers in ``results.json``: the β sweep's best point (IoU and recall in percent), the CAM
    magnitudes on the parts, the premise."""
    row = {k: (None if getattr(s, k) is None else 100.0 * getattr(s, k)) for k in RESULT_PERCENT}
    return row | {"best_beta": s.best_beta, "beta_inside": s.beta_inside, "body_cam": s.body_magnitude,
                  "marker_cam": s.marker_magnitude, "premise": s.premise}  # fmt: skip


def _coco_record(data: DemoData) -> dict:
    """What results.json adds on a COCO folder: the folder, and the classes (81: every mIoU averages those
    present in the ground truth or the prediction, as ``mean`` says)."""
    if data.coco is None:
        return {}
    from cpn_dist.data.datasets.info import read_folder_dataset

    dataset = read_folder_dataset(data.voc / "SegmentationClass")
    return {"coco_root": str(data.coco), "dataset": dataset.name, "classes": dataset.num_classes}


def write_results(path: Path, scores: dict[str, ModelScores], data: DemoData, settings: DemoSettings,
                  config: str | Path, overrides: Sequence[str], names: Sequence[str], start: Path | None,
                  start_premise: dict | None, figure: Path) -> None:  # fmt: skip
    """``results.json``: per model the β sweep's best point (IoU and recall in percent), the CAM magnitudes on
    the parts, and CPN's premise, and under ``raw`` the same of a model's raw CAM (null for a model without a
    head); and what was run on which data."""
    models = {name: {**result_row(s), "raw": None if s.raw is None else result_row(s.raw)}
              for name, s in scores.items()}  # fmt: skip
    record = {
        "models": models,
        "data": {"voc_root": str(data.voc), "synthetic_task": data.task, "train_split": data.split,
                 "eval_split": settings.eval_split, "eval_images": len(names),
                 "part_maps": data.has_parts, **_coco_record(data)},
        "start": {"weights": str(start) if start is not None else "config's model.weights",
                  "warmup_epochs": settings.warmup_epochs, "premise": start_premise},
        "config": str(config), "overrides": list(overrides), "betas": [settings.betas[0], settings.betas[-1]],
        "scales": list(settings.scales), "figure": str(figure),
    }  # fmt: skip
    write_json(path, record)
