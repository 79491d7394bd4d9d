"""``cpn pipeline``: every step from a VOC (or COCO) folder to the scored segmentation model, as named steps
in the spirit of IRN's ``run_sample.py``.

The steps, in order, are the rows of :data:`cpn_dist.pipeline.stages.TABLE` (each one a call into the
library, nothing shells out to ``cpn``): ``pack`` → stage 1 ``train_cpn``, ``cams``, ``eval_cams`` (the β
sweep → best β), ``pseudo`` → stage 2 (when ``configs.affinity`` is set) ``affinity_labels``,
``train_affinity``, ``rw``, ``eval_rw`` → stage 3 ``train_segmentation``, ``segment`` (multi-scale + flip
and the dense CRF), ``eval_segmentation``. :class:`cpn_dist.pipeline.runner.StepRunner` runs the table. With
``coco_root`` instead of ``voc_root`` the table is :data:`~cpn_dist.pipeline.stages.COCO_TABLE`: the step
``coco_view`` first makes a VOC-layout view of the COCO splits (:mod:`cpn_dist.data.datasets.coco_view`), ``pack``
packs the COCO folder by ``coco_protocol``, and every later step runs on the view as on a VOC folder.

Resuming: a finished step leaves a stamp ``{work_dir}/steps/NAME.json`` (its scores and the settings and
inputs it depended on, :func:`cpn_dist.pipeline.steps.step_settings`) and is skipped on the next run — unless those
settings changed since: then it and every later step run again, and the log says which and why. An
interrupted step resumes where it stopped — training from its latest checkpoint, inference and label
steps image by image. ``redo`` reruns a step and every step after it (their outputs are overwritten);
``skip``/``only`` leave steps out (their outputs, or configured ``weights``, must then exist for the
steps that need them). Under ``accelerate launch -m
cpn_dist.pipeline`` training is distributed, inference steps give each process every world-th image,
and the CPU steps (packing, scoring, CRF labels) run on the main process while the others wait. One
pipeline per ``work_dir``: the main process holds its lock (:mod:`cpn_dist.training.runlock`) for the run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cpn_dist.atomic import write_json
from cpn_dist.config.load import load_config, load_pipeline_config  # noqa: F401  (importable from here)
from cpn_dist.config.renames import renamed_flat
from cpn_dist.config.run import ConfigError
from cpn_dist.config.yaml_io import find_config, packaged_config_names
from cpn_dist.errors import CpnError
from cpn_dist.pipeline.config import (  # noqa: F401  (the pipeline config's names, importable from here)
    CamSettings,
    PackSettings,
    PipelineConfig,
    PseudoSettings,
    RunConfigs,
    RunOverrides,
    RunWeights,
    SplitsConfig,
)
from cpn_dist.pipeline.runner import StepRunner
from cpn_dist.pipeline.stages import (  # noqa: F401  (STAGE2, STEPS, ALL_STEPS: importable from here)
    ALL_STEPS,
    COCO_TABLE,
    STAGE2,
    STEPS,
    TABLE,
)
from cpn_dist.pipeline.steps import PipelineResult, StageScore, stage_score, step_settings, train_owned
from cpn_dist.training.runlock import lock_on_main

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the run


class _Dist:
    """The processes of the run (one, or those of `accelerate launch`)."""

    def __init__(self):
        from accelerate import PartialState

        from cpn_dist.devices import use_cpu

        # Without CUDA, PartialState needs cpu=True to join the gloo group of `accelerate launch --multi_gpu`.
        self.state = PartialState(cpu=use_cpu())
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.main = self.state.is_main_process
        self.device = self.state.device

    def barrier(self) -> None:
        self.state.wait_for_everyone()


class Pipeline:
    """One pipeline config: its paths and shared pieces, which the steps (:data:`cpn_dist.pipeline.stages.TABLE`)
    use; :meth:`run` runs them."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        # the VOC folder the steps read: the user's, or the view of the COCO folder (the coco_view step)
        self.voc = Path(cfg.voc_root) if cfg.voc_root is not None else self.work / "coco_view"
        self.shards = Path(cfg.shards) if cfg.shards else self.work / "shards"
        self.gt = self.voc / "SegmentationClass"
        for name in ("cpn", "segmentation") + (("affinity",) if cfg.configs.affinity else ()):
            path = getattr(cfg.configs, name)
            try:
                find_config(path)
            except ConfigError:
                names = ", ".join(packaged_config_names("run"))
                raise CpnError(f"configs.{name}: {path} not found (packaged configs, by name: {names})") from None
        self._check_precision()
        if cfg.coco_root is not None:  # every split's annotation file and image folder, before any step runs
            from cpn_dist.data.datasets.coco_view import check_coco_split

            for split in self.split_names():
                check_coco_split(Path(cfg.coco_root), split)
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

    def train_config(self, stage: str):
        """The run config of a training step: the stage's config with the pipeline's data and outputs."""
        extra = {"cpn": [], "affinity": [f"affinity.labels={self.work / 'affinity_labels'}"],
                 "segmentation": [f"segmentation.labels={self.segmentation_labels()}"]}[stage]  # fmt: skip
        return self.run_config(stage, [f"data.shards={self.shards}", f"data.split={self.cfg.splits.train}", *extra,
                                       f"output.dir={self.work / stage}"])  # fmt: skip

    @property
    def protocol(self):
        """With ``coco_root``: the :class:`~cpn_dist.data.datasets.coco.CocoProtocol` of ``coco_protocol``."""
        from cpn_dist.data.datasets.coco_protocol import PROTOCOLS

        return PROTOCOLS[self.cfg.coco_protocol]

    def split_names(self) -> list[str]:
        """Every split the run reads (training, evaluation, val, test), once each."""
        s = self.cfg.splits
        return list(dict.fromkeys(x for x in (s.train, s.eval, s.val, s.test) if x))

    @property
    def table(self):
        """The steps of this config: with ``coco_root`` the view of the COCO folder comes first."""
        return COCO_TABLE if self.cfg.coco_root is not None else TABLE

    def list_path(self, split: str) -> Path:
        return self.voc / "ImageSets" / "Segmentation" / f"{split}.txt"

    def names(self, split: str) -> list[str]:
        from cpn_dist.data.datasets.voc import read_split

        return read_split(self.list_path(split))

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

    def segment_splits(self) -> list[tuple[str, bool]]:
        """(split, has ground truth) of the segment step: val, the evaluation split, and test."""
        splits = [(self.cfg.splits.val, True)]
        if self.cfg.splits.eval != self.cfg.splits.val:
            splits.append((self.cfg.splits.eval, True))
        if self.cfg.splits.test:
            splits.append((self.cfg.splits.test, False))
        return splits

    def best_beta(self) -> float:
        """The β of the pseudo labels: ``pseudo.beta``, else the best of the ``eval_cams`` sweep."""
        if self.cfg.pseudo.beta is not None:
            return self.cfg.pseudo.beta
        path = self.work / "scores" / "cams.json"
        if not path.is_file():
            raise CpnError(f"{path}: no β sweep (run the eval_cams step, or set pseudo.beta)")
        return float(json.loads(path.read_text())["best"]["beta"])

    def train_stage(self, stage: str) -> None:
        """Train ``stage`` into ``work/stage``: resumed from its checkpoints when they are of this config,
        started afresh when they are not (or when the step reruns)."""
        train_owned(self.train_config(stage), f"--redo train_{stage}", self.overwrite, self.dist)

    def progress(self, what: str, total: int):
        """The progress of a step's work on this process (:class:`cpn_dist.progress.Progress`, shown by the
        main process): ``total`` images."""
        from cpn_dist.progress import Progress

        world = self.dist.world
        return Progress(what if world == 1 else f"{what} (process {self.dist.rank + 1}/{world})", total,
                        shown=self.dist.main)  # fmt: skip

    def share(self, source) -> int:
        """How many of ``source``'s images are this process's (every world-th)."""
        return len(source.names[self.dist.rank::self.dist.world])

    def todo(self, names: Sequence[str], done: Callable[[str], bool]):
        """This process's share of the images not done yet, as samples of the VOC folder."""
        from cpn_dist.data.inputs import VocSource

        todo = [n for n in names if self.overwrite or not done(n)]
        self.dist.barrier()  # every process has listed what is done before any of them writes
        return VocSource(self.voc, todo)

    def dataset(self):
        """The classes of the run: those the ``cams`` step recorded in ``work/cams/dataset.json`` (the CPN
        weights' classes), else the ground truth's ``dataset.json``, else VOC."""
        from cpn_dist.data.datasets.recorded import folders_dataset

        return folders_dataset(None, self.work / "cams", self.gt)

    def score_labels(self, stage: str, folder: Path, split: str, note: str = "") -> StageScore:
        """The score of a label folder on ``split`` (written to ``work/scores/``) as a summary row."""
        from cpn_dist.labels.evaluate import score_labels

        names = self.names(split)
        key = stage.lower().replace(" + ", "_").replace(" ", "_")
        with self.progress(f"score {key} on {split}", len(names)) as bar:
            result = score_labels(folder, self.gt, names, workers=self.cfg.workers, on_images=bar.advance,
                                  dataset=self.dataset(), mean=self.cfg.mean_iou)  # fmt: skip
        write_json(self.work / "scores" / f"{key}_{split}.json", result.to_json())
        return stage_score(stage, split, len(names), result.summary(), note)

    def _given(self, step) -> bool:
        """A training step whose weights the config gives."""
        stage = step.name.removeprefix("train_")
        return step.name.startswith("train_") and getattr(self.cfg.weights, stage, None) is not None

    # ---- the run -------------------------------------------------------------------------------
    def run(self, only: Sequence[str] | None = None, skip: Sequence[str] = (), redo: str | None = None,
            on_step: Callable[[str, str], None] | None = None) -> PipelineResult:  # fmt: skip
        """Run the steps (all, or ``only``) minus ``skip`` and the config's ``skip``; ``redo``: that step
        and every later one run afresh (see :mod:`cpn_dist.pipeline.runner`). ``on_step(name, event)`` hears
        "start", "ran", "done before", "skipped", "not configured" and "stale: <why>"."""
        started = time.perf_counter()
        self.dist = _Dist()
        runner = StepRunner(self.table, self, self.work / "steps", self.dist,
                            settings=lambda s: step_settings(self, s.name),
                            configured=lambda s: s.stage != "2" or self.stage2, given=self._given,
                            revive=lambda score: StageScore(**score), upgrade=renamed_flat)  # fmt: skip
        runner.check([*(only or ()), *skip, *([redo] if redo else [])])
        lock = lock_on_main(self.work, "work_dir", self.dist.main, self.dist.world)
        try:
            reports = runner.run(only, [*skip, *self.cfg.skip], redo, on_step)
        finally:
            if lock is not None:
                lock.release()
        result = PipelineResult(reports, [s for r in reports for s in r.scores], time.perf_counter() - started)
        if self.dist.main:
            write_json(self.work / "summary.json", result.to_json())
        return result


def run_pipeline(cfg: PipelineConfig, **kwargs) -> PipelineResult:
    """Run the pipeline of ``cfg`` (see :meth:`Pipeline.run` for the arguments)."""
    return Pipeline(cfg).run(**kwargs)
