"""``cpn pipeline``: every step from a VOC folder to the scored segmentation model, as named steps in
the spirit of IRN's ``run_sample.py``.

Steps, in order (each one a call into the library, nothing shells out to ``cpn``):

==================  ===========================================================================
``pack``            :func:`~cpn_dist.data.pack.pack_split` of the training split into shards
``train_cpn``       stage 1: :func:`cpn_dist.train.train` of the CPN run config
``cams``            multi-scale + flip CAMs (:func:`cpn_dist.infer.infer_samples`) of the training
                    and evaluation images
``eval_cams``       the β sweep (:func:`cpn_dist.evaluate.sweep`) on the evaluation split → best β
``pseudo``          CAM pseudo labels of the training images at that β (optionally CRF-refined)
``affinity_labels`` stage 2: confident fg / bg / ignore labels (:mod:`cpn_dist.affinity.labels`)
``train_affinity``  AffinityNet: :func:`cpn_dist.train.train` of the affinity run config
``rw``              the random walk of the CAMs (:func:`cpn_dist.affinity.random_walk.walk_samples`)
``eval_rw``         score of the RW labels on the evaluation split
``train_segmentation``  stage 3: DeepLab on the RW labels (the CAM pseudo labels without stage 2)
``segment``         multi-scale + flip inference and the dense CRF (one pass: the CRF needs the mean
                    probabilities, too large to keep on disk) on the val and evaluation splits; the
                    test split, if any, in the VOC test-server layout
``eval_segmentation``  scores with and without CRF
==================  ===========================================================================

Resuming: a finished step leaves a stamp ``{work_dir}/steps/NAME.json`` (with its scores) and is
skipped on the next run; an interrupted step resumes where it stopped — training from its latest
checkpoint, inference and label steps image by image. ``redo`` reruns a step and every step after it
(their outputs are overwritten); ``skip``/``only`` leave steps out (their outputs, or configured
``weights``, must then exist for the steps that need them). Under ``accelerate launch -m
cpn_dist.pipeline`` training is distributed, inference steps give each process every world-th image,
and the CPU steps (packing, scoring, CRF labels) run on the main process while the others wait.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from cpn_dist.config import ConfigError, _describe_error, _Section, load_config, parse_yaml
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)

STEPS = ("pack", "train_cpn", "cams", "eval_cams", "pseudo", "affinity_labels", "train_affinity", "rw", "eval_rw",
         "train_segmentation", "segment", "eval_segmentation")  # fmt: skip
STAGE2 = ("affinity_labels", "train_affinity", "rw", "eval_rw")


# --------------------------------------------------------------------------------------------
# the pipeline config


class SplitsConfig(_Section):
    train: str = Field("train_aug", description="images CPN, AffinityNet and DeepLab train on (and get pseudo labels)")
    eval: str = Field("train", description="images the pseudo labels are scored on (the paper: VOC train)")
    val: str = Field("val", description="images the segmentation model is scored on")
    test: str | None = Field(None, description="images segmented into the VOC test-server layout (no ground truth)")


class RunConfigs(_Section):
    cpn: str = Field("configs/voc_cpn_paper.yaml", description="run config of stage 1 (`stage: cpn`)")
    affinity: str | None = Field(None, description="run config of stage 2 (`stage: affinity`); null: no stage 2")
    segmentation: str = Field("configs/voc_segmentation.yaml", description="run config of stage 3")


class RunOverrides(_Section):
    cpn: list[str] = Field([], description="dotted overrides of the CPN run config")
    affinity: list[str] = Field([], description="dotted overrides of the affinity run config")
    segmentation: list[str] = Field([], description="dotted overrides of the segmentation run config")


class RunWeights(_Section):
    cpn: str | None = Field(None, description="trained CPN weights to use instead of `train_cpn` (e.g. CPN.pth)")
    affinity: str | None = Field(None, description="trained AffinityNet weights instead of `train_affinity`")
    segmentation: str | None = Field(None, description="trained segmentation weights instead of `train_segmentation`")


class PackSettings(_Section):
    segments: list[int] = Field(
        [200], min_length=1, description="SLIC segment counts packed (`cpn pack`), besides the CPN config's"
    )
    shard_size: int = Field(1000, ge=1, description="samples per shard")


class CamSettings(_Section):
    scales: list[float] = Field([0.5, 1.0, 1.5, 2.0], min_length=1, description="CAM inference scales (+ flips)")
    betas: str = Field("0.20:0.60:0.01", description="β sweep of `eval_cams` (START:STOP:STEP or a comma list)")


class PseudoSettings(_Section):
    beta: float | None = Field(None, description="background score of the CAM pseudo labels; null: the best β")
    crf: bool = Field(False, description="refine the CAM pseudo labels with the dense CRF (PSA's settings)")


class PipelineConfig(_Section):
    """``cpn pipeline --config FILE``: where the data is, which run config each stage uses, what to run."""

    voc_root: str = Field(description="VOC folder: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/")
    work_dir: str = Field("runs/pipeline", description="every step writes under this folder")
    shards: str | None = Field(None, description="packed shards of the training split; null: {work_dir}/shards")
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    configs: RunConfigs = Field(default_factory=RunConfigs)
    overrides: RunOverrides = Field(default_factory=RunOverrides)
    weights: RunWeights = Field(default_factory=RunWeights)
    pack: PackSettings = Field(default_factory=PackSettings)
    cams: CamSettings = Field(default_factory=CamSettings)
    pseudo: PseudoSettings = Field(default_factory=PseudoSettings)
    segmentation_labels: str = Field(
        "auto", description="what DeepLab trains on: rw, cam (the CAM pseudo labels), or auto (rw with stage 2)"
    )
    workers: int = Field(2, ge=1, le=256, description="processes of the CPU steps (scoring, CRF, labels)")
    skip: list[str] = Field([], description="steps not to run")

    @model_validator(mode="after")
    def _known_names(self) -> PipelineConfig:
        unknown = [s for s in self.skip if s not in STEPS]
        if unknown:
            raise ValueError(f"skip: unknown step '{unknown[0]}' (steps: {', '.join(STEPS)})")
        if self.segmentation_labels not in ("auto", "rw", "cam"):
            raise ValueError(f"segmentation_labels: expected auto, rw or cam, got '{self.segmentation_labels}'")
        if self.segmentation_labels == "rw" and self.configs.affinity is None:
            raise ValueError("segmentation_labels: 'rw' needs configs.affinity (stage 2)")
        return self


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read and validate a pipeline config; relative paths in it are relative to the working directory.
    Errors are one line naming the file and the dotted key."""
    from cpn_dist.config import apply_override

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: pipeline config not found")
    raw = parse_yaml(p.read_text(), source=str(p)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    for override in overrides:
        apply_override(raw, override)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(e) for e in exc.errors()]
        raise ConfigError(f"{p}: " + "; ".join(dict.fromkeys(lines))) from None


# --------------------------------------------------------------------------------------------
# results


@dataclass
class StageScore:
    """One row of the summary: which labels, scored on which split."""

    stage: str
    split: str
    images: int
    miou: float
    background: float
    foreground: float
    note: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class StepReport:
    name: str
    status: str  # "ran", "done before", "skipped", "not configured"
    seconds: float = 0.0
    scores: list[StageScore] = field(default_factory=list)


@dataclass
class PipelineResult:
    steps: list[StepReport]
    scores: list[StageScore]
    seconds: float

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds}
                                                   for s in self.steps],
                "scores": [s.to_json() for s in self.scores]}  # fmt: skip


# --------------------------------------------------------------------------------------------
# the run


class _Dist:
    """The processes of the run (one, or those of `accelerate launch`)."""

    def __init__(self):
        import torch
        from accelerate import PartialState

        # Without CUDA, PartialState needs cpu=True to join the gloo group of `accelerate launch --multi_gpu`.
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.main = self.state.is_main_process
        self.device = self.state.device

    def barrier(self) -> None:
        self.state.wait_for_everyone()


class Pipeline:
    """The steps of one pipeline config; :meth:`run` runs them."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.voc = Path(cfg.voc_root)
        self.shards = Path(cfg.shards) if cfg.shards else self.work / "shards"
        self.gt = self.voc / "SegmentationClass"
        for name in ("cpn", "segmentation") + (("affinity",) if cfg.configs.affinity else ()):
            path = getattr(cfg.configs, name)
            if not Path(path).is_file():
                raise CpnError(f"configs.{name}: {path} not found")
        self._check_precision()
        self.overwrite = False
        self.dist: _Dist | None = None

    # ---- paths and shared pieces ---------------------------------------------------------------
    def run_config(self, stage: str, extra: Sequence[str] = ()):
        path = getattr(self.cfg.configs, stage)
        return load_config(path, [*getattr(self.cfg.overrides, stage), *extra])

    def _check_precision(self) -> None:
        stages = ["cpn", "segmentation"] + (["affinity"] if self.cfg.configs.affinity else [])
        precision = {s: self.run_config(s).train.precision for s in stages}
        if len(set(precision.values())) > 1:
            shown = ", ".join(f"{s}: {p}" for s, p in precision.items())
            raise CpnError(f"train.precision differs between the run configs ({shown}); one pipeline process "
                           f"trains every stage with one precision")  # fmt: skip

    def names(self, split: str) -> list[str]:
        from cpn_dist.data.voc import read_split

        return read_split(self.voc / "ImageSets" / "Segmentation" / f"{split}.txt")

    def weights(self, stage: str) -> Path:
        given = getattr(self.cfg.weights, stage)
        path = Path(given) if given else self.work / stage / "model_final.pth"
        if not path.is_file():
            raise CpnError(f"{path}: no {stage} weights (run the train_{stage} step, or set weights.{stage})")
        return path

    @property
    def stage2(self) -> bool:
        return self.cfg.configs.affinity is not None

    def segmentation_labels(self) -> Path:
        which = self.cfg.segmentation_labels
        if which == "auto":
            which = "rw" if self.stage2 else "cam"
        return self.work / ("rw" if which == "rw" else "pseudo")

    def _stamp(self, name: str) -> Path:
        return self.work / "steps" / f"{name}.json"

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, only: Sequence[str] | None = None, skip: Sequence[str] = (), redo: str | None = None,
            on_step: Callable[[str, str], None] | None = None) -> PipelineResult:  # fmt: skip
        """Run the steps (all, or ``only``) minus ``skip`` and the config's ``skip``; ``redo``: that step
        and every later one run afresh. ``on_step(name, event)`` hears "start", "ran", "done before",
        "skipped" and "not configured"."""
        for name in [*(only or ()), *skip, *([redo] if redo else [])]:
            if name not in STEPS:
                raise CpnError(f"unknown step '{name}' (steps: {', '.join(STEPS)})")
        started = time.perf_counter()
        self.dist = _Dist()
        if self.dist.main:
            self.work.mkdir(parents=True, exist_ok=True)
            (self.work / "steps").mkdir(exist_ok=True)
        self.dist.barrier()
        skipped = set(skip) | set(self.cfg.skip)
        first_redo = STEPS.index(redo) if redo else len(STEPS)
        tell = on_step or (lambda name, event: None)
        reports: list[StepReport] = []
        for index, name in enumerate(STEPS):
            if name in STAGE2 and not self.stage2:
                reports.append(StepReport(name, "not configured"))
                tell(name, "not configured")
                continue
            if (only is not None and name not in only) or name in skipped or self._given(name):
                reports.append(StepReport(name, "skipped", scores=self._old_scores(name)))
                tell(name, "skipped")
                continue
            self.overwrite = index >= first_redo
            stamp = self._stamp(name)
            if stamp.is_file() and not self.overwrite:
                reports.append(StepReport(name, "done before", scores=self._old_scores(name)))
                tell(name, "done before")
                continue
            tell(name, "start")
            t0 = time.perf_counter()
            scores = getattr(self, f"step_{name}")() or []
            self.dist.barrier()
            seconds = time.perf_counter() - t0
            if self.dist.main:
                _write_json(stamp, {"step": name, "seconds": seconds, "scores": [s.to_json() for s in scores]})
            self.dist.barrier()
            reports.append(StepReport(name, "ran", seconds, scores))
            tell(name, "ran")
        result = PipelineResult(reports, [s for r in reports for s in r.scores], time.perf_counter() - started)
        if self.dist.main:
            _write_json(self.work / "summary.json", result.to_json())
        return result

    def _given(self, name: str) -> bool:
        """A training step whose weights the config gives."""
        stage = name.removeprefix("train_")
        return name.startswith("train_") and getattr(self.cfg.weights, stage, None) is not None

    def _old_scores(self, name: str) -> list[StageScore]:
        stamp = self._stamp(name)
        if not stamp.is_file():
            return []
        return [StageScore(**s) for s in json.loads(stamp.read_text()).get("scores", [])]

    # ---- steps ---------------------------------------------------------------------------------
    def step_pack(self):
        if self.dist.main:
            from cpn_dist.data.pack import pack_split

            patch = self.run_config("cpn").data.patch  # CPN's superpixels must be among those packed
            segments = set(self.cfg.pack.segments) | ({patch.segments} if patch.kind == "superpixel" else set())
            pack_split(self.voc, self.cfg.splits.train, self.shards, segments=tuple(sorted(segments)),
                       shard_size=self.cfg.pack.shard_size, workers=self.cfg.workers,
                       overwrite=self.overwrite, resume=not self.overwrite)  # fmt: skip

    def _train(self, stage: str, extra: Sequence[str]) -> None:
        from cpn_dist.checkpoint import complete_checkpoints
        from cpn_dist.train import train

        out = self.work / stage
        if self.overwrite and self.dist.main and out.exists():
            shutil.rmtree(out)
        self.dist.barrier()
        if (out / "model_final.pth").is_file():
            return
        cfg = self.run_config(stage, [f"data.shards={self.shards}", f"data.split={self.cfg.splits.train}", *extra,
                                      f"output.dir={out}"])  # fmt: skip
        train(cfg, resume="latest" if complete_checkpoints(out) else None)

    def step_train_cpn(self):
        self._train("cpn", [])

    def _slice(self, names: Sequence[str], done: Callable[[str], bool]):
        """This process's share of the images not done yet, as samples of the VOC folder."""
        from cpn_dist.data.inputs import VocSource

        todo = [n for n in names if self.overwrite or not done(n)]
        self.dist.barrier()  # every process has listed what is done before any of them writes
        return VocSource(self.voc, todo)

    def step_cams(self):
        import torch

        from cpn_dist.infer import InferSettings, infer_samples
        from cpn_dist.models import build_model, load_weights

        cfg = self.run_config("cpn")
        names = list(dict.fromkeys(self.names(self.cfg.splits.train) + self.names(self.cfg.splits.eval)))
        out = self.work / "cams"
        source = self._slice(names, lambda n: (out / f"{n}.npy").is_file())
        model = build_model(cfg.model.backbone, cfg.model.head, dropout=0.0)
        load_weights(model, self.weights("cpn"))
        settings = InferSettings(scales=tuple(self.cfg.cams.scales), mean=tuple(cfg.data.mean),
                                 std=tuple(cfg.data.std), use="cam" if cfg.model.head == "none" else "refined")
        with torch.inference_mode():
            infer_samples(model.to(self.dist.device), source.samples(self.dist.rank, self.dist.world), out, settings,
                          device=self.dist.device)  # fmt: skip

    def step_eval_cams(self):
        if not self.dist.main:
            return []
        from cpn_dist.evaluate import parse_betas, sweep

        names = self.names(self.cfg.splits.eval)
        result = sweep(self.work / "cams", self.gt, names, parse_betas(self.cfg.cams.betas), workers=self.cfg.workers)
        _write_json(self.work / "scores" / "cams.json", result.to_json())
        best = result.summary()
        edge = " (on the edge of the sweep)" if best["beta"] in (result.betas[0], result.betas[-1]) else ""
        return [_score("CAM", self.cfg.splits.eval, len(names), best, f"best β {best['beta']:.2f}{edge}")]

    def best_beta(self) -> float:
        if self.cfg.pseudo.beta is not None:
            return self.cfg.pseudo.beta
        path = self.work / "scores" / "cams.json"
        if not path.is_file():
            raise CpnError(f"{path}: no β sweep (run the eval_cams step, or set pseudo.beta)")
        return float(json.loads(path.read_text())["best"]["beta"])

    def step_pseudo(self):
        if not self.dist.main:
            return []
        from cpn_dist.crf import CrfParams
        from cpn_dist.pseudo import Job, pending, run_folder

        beta = self.best_beta()
        out = self.work / "pseudo"
        crf = CrfParams() if self.cfg.pseudo.crf else None
        job = Job(str(self.work / "cams"), str(out), (beta,), crf, str(self.voc), output="png")
        names = self.names(self.cfg.splits.train)
        run_folder(job, pending(names, out, ".png", self.overwrite), workers=self.cfg.workers)
        if not self.cfg.pseudo.crf:
            return []  # the CAM row at this β already scores these labels
        return [self._score_labels("CAM pseudo labels + CRF", out, self.cfg.splits.eval, f"β = {beta:.2f}")]

    def _score_labels(self, stage: str, folder: Path, split: str, note: str = "") -> StageScore:
        from cpn_dist.evaluate import score_labels

        names = self.names(split)
        result = score_labels(folder, self.gt, names, workers=self.cfg.workers)
        key = stage.lower().replace(" + ", "_").replace(" ", "_")
        _write_json(self.work / "scores" / f"{key}_{split}.json", result.to_json())
        return _score(stage, split, len(names), result.summary(), note)

    def step_affinity_labels(self):
        if not self.dist.main:
            return
        from cpn_dist.affinity.labels import AffinityLabelParams, write_affinity_labels
        from cpn_dist.data.inputs import VocSource

        cfg = self.run_config("affinity")
        names = self.names(self.cfg.splits.train)
        write_affinity_labels(VocSource(self.voc, names), self.work / "cams", self.work / "affinity_labels",
                              AffinityLabelParams.from_config(cfg.affinity), names, workers=self.cfg.workers,
                              overwrite=self.overwrite)  # fmt: skip

    def step_train_affinity(self):
        self._train("affinity", [f"affinity.labels={self.work / 'affinity_labels'}"])

    def step_rw(self):
        from cpn_dist.affinity.random_walk import WalkParams, load_affinity_model, walk_samples

        cfg = self.run_config("affinity")
        out = self.work / "rw"
        names = self.names(self.cfg.splits.train)
        source = self._slice(names, lambda n: (out / f"{n}.png").is_file())
        model, _ = load_affinity_model(self.weights("affinity"), cfg.model.backbone, self.dist.device)
        walk_samples(model, source.samples(self.dist.rank, self.dist.world, labels=False), self.work / "cams", out,
                     WalkParams.from_config(cfg.affinity), device=self.dist.device, mean=tuple(cfg.data.mean),
                     std=tuple(cfg.data.std))  # fmt: skip

    def step_eval_rw(self):
        if not self.dist.main:
            return []
        return [self._score_labels("RW", self.work / "rw", self.cfg.splits.eval)]

    def step_train_segmentation(self):
        labels = self.segmentation_labels()
        if not labels.is_dir():
            raise CpnError(f"{labels}: no pseudo labels to train the segmentation model on")
        self._train("segmentation", [f"segmentation.labels={labels}"])

    def _segment_splits(self) -> list[tuple[str, bool]]:
        """(split, has ground truth) of the segment step: val, the evaluation split, and test."""
        splits = [(self.cfg.splits.val, True)]
        if self.cfg.splits.eval != self.cfg.splits.val:
            splits.append((self.cfg.splits.eval, True))
        if self.cfg.splits.test:
            splits.append((self.cfg.splits.test, False))
        return splits

    def step_segment(self):
        from cpn_dist.models import load_weights
        from cpn_dist.segmentation.infer import Outputs, segment_samples, segment_settings
        from cpn_dist.segmentation.model import model_from_config

        cfg = self.run_config("segmentation")
        settings = segment_settings(cfg)
        model = model_from_config(cfg, dropout=False)
        load_weights(model, self.weights("segmentation"))
        model.to(self.dist.device)
        crf = settings.crf is not None
        for split, scored in self._segment_splits():
            base = self.work / "segmentation_out"
            if scored:
                outputs = Outputs(base / split, base / f"{split}_crf" if crf else None)
            else:
                outputs = Outputs(None, None, self.work / "test_server")
            source = self._slice(self.names(split), outputs.done)
            segment_samples(model, source.samples(self.dist.rank, self.dist.world, labels=False), outputs, settings,
                            device=self.dist.device, crf_workers=self.cfg.workers if crf else 0)  # fmt: skip

    def step_eval_segmentation(self):
        if not self.dist.main:
            return []
        crf = self.run_config("segmentation").segmentation.crf.enabled
        base = self.work / "segmentation_out"
        scores = []
        for split, scored in self._segment_splits():
            if not scored:
                continue
            scores.append(self._score_labels("segmentation", base / split, split))
            if crf:
                scores.append(self._score_labels("segmentation + CRF", base / f"{split}_crf", split))
        return scores


def _score(stage: str, split: str, images: int, summary: dict, note: str = "") -> StageScore:
    return StageScore(stage, split, images, summary["miou"], summary["background"], summary["foreground"], note)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_pipeline(cfg: PipelineConfig, **kwargs) -> PipelineResult:
    """Run the pipeline of ``cfg`` (see :meth:`Pipeline.run` for the arguments)."""
    return Pipeline(cfg).run(**kwargs)


if __name__ == "__main__":  # `accelerate launch -m cpn_dist.pipeline --config ...` runs `cpn pipeline`
    import sys

    from cpn_dist.cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))
