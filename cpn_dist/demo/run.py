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
4. ``infer``: multi-scale + flip CAMs (:func:`cpn_dist.cpn.infer.infer_samples`) of the evaluation
   split's images into ``OUT/cams/NAME``;
5. ``eval``: the β sweep (:func:`cpn_dist.labels.evaluate.sweep`) and, where the folder has part maps, at each
   model's best β body and marker recall and CAM magnitude (:func:`cpn_dist.demo.parts.part_scores`) and
   CPN's premise (:func:`cpn_dist.demo.parts.premise_share`) into ``OUT/scores/NAME.json``;
6. ``figure``: image, ground truth and each model's CAM for a few images, ``OUT/demo.png``;
7. ``OUT/results.json``: ``{"models": {name: {"miou": percent, "best_beta": …, …}}, "data": …, …}``.

The same functions run the quality ablation (``benchmarks/bench_quality.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from cpn_dist.demo.settings import DEMO_CONFIG, DEMO_MODELS, DemoSettings, ModelScores
from cpn_dist.demo.steps import (
    DemoData,
    comparison_figure,
    infer_cams,
    initial_weights,
    make_data,
    premise,
    score_cams,
    train_model,
    warm_up,
)
from cpn_dist.errors import CpnError


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
