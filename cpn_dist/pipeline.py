"""``cpn pipeline``: every step from a VOC folder to the scored segmentation model, as named steps in
the spirit of IRN's ``run_sample.py``.

Steps, in order (each one a call into the library, nothing shells out to ``cpn``):

==================  ===========================================================================
``pack``            :func:`~cpn_dist.data.pack.pack_split` of the training split into shards
``train_cpn``       stage 1: :func:`cpn_dist.train.train` of the CPN run config
``cams``            multi-scale + flip CAMs (:func:`cpn_dist.cpn.infer.infer_samples`) of the training
                    and evaluation images
``eval_cams``       the β sweep (:func:`cpn_dist.labels.evaluate.sweep`) on the evaluation split → best β
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

Resuming: a finished step leaves a stamp ``{work_dir}/steps/NAME.json`` (its scores and the settings and
inputs it depended on, :mod:`cpn_dist.pipeline_steps`) and is skipped on the next run — unless those
settings changed since: then it and every later step run again, and the log says which and why. An
interrupted step resumes where it stopped — training from its latest checkpoint, inference and label
steps image by image. ``redo`` reruns a step and every step after it (their outputs are overwritten);
``skip``/``only`` leave steps out (their outputs, or configured ``weights``, must then exist for the
steps that need them). Under ``accelerate launch -m
cpn_dist.pipeline`` training is distributed, inference steps give each process every world-th image,
and the CPU steps (packing, scoring, CRF labels) run on the main process while the others wait. One
pipeline per ``work_dir``: the main process holds its lock (:mod:`cpn_dist.runlock`) for the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from cpn_dist.config import ConfigError, load_config
from cpn_dist.errors import CpnError
from cpn_dist.pipeline_config import (  # noqa: F401  (the pipeline config's names, importable from here)
    CamSettings,
    PackSettings,
    PipelineConfig,
    PseudoSettings,
    RunConfigs,
    RunOverrides,
    RunWeights,
    SplitsConfig,
    load_pipeline_config,
)
from cpn_dist.pipeline_stages import LaterSteps
from cpn_dist.pipeline_steps import (
    STAGE2,
    STEPS,
    PipelineResult,
    StageScore,
    StepReport,
    other_run,
    read_stamp,
    stage_score,
    stale_reasons,
    step_settings,
    write_json,
)
from cpn_dist.runlock import lock_on_main, share_from_main
from cpn_dist.yaml_io import find_config, packaged_config_names

log = logging.getLogger(__name__)


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


class Pipeline(LaterSteps):
    """The steps of one pipeline config; :meth:`run` runs them."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.voc = Path(cfg.voc_root)
        self.shards = Path(cfg.shards) if cfg.shards else self.work / "shards"
        self.gt = self.voc / "SegmentationClass"
        for name in ("cpn", "segmentation") + (("affinity",) if cfg.configs.affinity else ()):
            path = getattr(cfg.configs, name)
            try:
                find_config(path)
            except ConfigError:
                names = ", ".join(n.removesuffix(".yaml") for n in packaged_config_names())
                raise CpnError(f"configs.{name}: {path} not found (packaged configs, by name: {names})") from None
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

    def train_config(self, stage: str):
        """The run config of a training step: the stage's config with the pipeline's data and outputs."""
        extra = {"cpn": [], "affinity": [f"affinity.labels={self.work / 'affinity_labels'}"],
                 "segmentation": [f"segmentation.labels={self.segmentation_labels()}"]}[stage]  # fmt: skip
        return self.run_config(stage, [f"data.shards={self.shards}", f"data.split={self.cfg.splits.train}", *extra,
                                       f"output.dir={self.work / stage}"])  # fmt: skip

    def list_path(self, split: str) -> Path:
        return self.voc / "ImageSets" / "Segmentation" / f"{split}.txt"

    def names(self, split: str) -> list[str]:
        from cpn_dist.data.voc import read_split

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
        lock = lock_on_main(self.work, "work_dir", self.dist.main, self.dist.world)
        try:
            return self._run(only, skip, redo, on_step, started)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, only, skip, redo, on_step, started) -> PipelineResult:
        if self.dist.main:
            (self.work / "steps").mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        skipped = set(skip) | set(self.cfg.skip)
        first_redo = STEPS.index(redo) if redo else len(STEPS)
        tell = on_step or (lambda name, event: None)
        reports: list[StepReport] = []
        ids: dict[str, str | None] = {}  # the stamp id of every earlier step: part of each step's settings
        for index, name in enumerate(STEPS):
            if name in STAGE2 and not self.stage2:
                reports.append(StepReport(name, "not configured"))
                tell(name, "not configured")
                continue
            old = read_stamp(self._stamp(name))
            if (only is not None and name not in only) or name in skipped or self._given(name):
                ids[name] = (old or {}).get("id")
                reports.append(StepReport(name, "skipped", scores=self._old_scores(name)))
                tell(name, "skipped")
                continue
            self.overwrite = index >= first_redo
            settings = {**step_settings(self, name), "after": dict(ids)}
            if old is not None and not self.overwrite:
                if "settings" not in old:
                    log.warning("%s: its stamp records no settings (an older cpn-dist): reused; --redo %s reruns "
                                "it", name, name)  # fmt: skip
                    why = []
                else:
                    why = stale_reasons(old["settings"], settings)
                why = share_from_main(why, self.dist.world)  # one decision for every process
                if not why:
                    ids[name] = old.get("id")
                    reports.append(StepReport(name, "done before", scores=self._old_scores(name)))
                    tell(name, "done before")
                    continue
                log.warning("%s: settings changed since it ran (%s): it and every later step run again", name,
                            "; ".join(why))  # fmt: skip
                tell(name, "stale: " + "; ".join(why))
                first_redo, self.overwrite = index, True
            tell(name, "start")
            t0 = time.perf_counter()
            scores = getattr(self, f"step_{name}")() or []
            self.dist.barrier()
            seconds = time.perf_counter() - t0
            ids[name] = share_from_main(uuid.uuid4().hex, self.dist.world)
            if self.dist.main:
                write_json(self._stamp(name), {"step": name, "seconds": seconds, "id": ids[name],
                                               "settings": settings, "scores": [s.to_json() for s in scores]})
            self.dist.barrier()
            reports.append(StepReport(name, "ran", seconds, scores))
            tell(name, "ran")
        result = PipelineResult(reports, [s for r in reports for s in r.scores], time.perf_counter() - started)
        if self.dist.main:
            write_json(self.work / "summary.json", result.to_json())
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

    def _train(self, stage: str) -> None:
        """Train ``stage`` into ``work/stage``: resumed from its checkpoints when they are of this config,
        started afresh when they are not (or when the step reruns)."""
        from cpn_dist.train import train

        out = self.work / stage
        cfg = self.train_config(stage)
        if self.dist.main and out.exists() and (self.overwrite or other_run(out, cfg)):
            shutil.rmtree(out)
        self.dist.barrier()
        if (out / "model_final.pth").is_file():
            return
        train(cfg)

    def step_train_cpn(self):
        self._train("cpn")

    def _slice(self, names: Sequence[str], done: Callable[[str], bool]):
        """This process's share of the images not done yet, as samples of the VOC folder."""
        from cpn_dist.data.inputs import VocSource

        todo = [n for n in names if self.overwrite or not done(n)]
        self.dist.barrier()  # every process has listed what is done before any of them writes
        return VocSource(self.voc, todo)

    def step_cams(self):
        import torch

        from cpn_dist.cpn.infer import InferSettings, infer_samples
        from cpn_dist.cpn.model import build_model
        from cpn_dist.models import load_weights

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
        from cpn_dist.labels.evaluate import parse_betas, sweep

        names = self.names(self.cfg.splits.eval)
        result = sweep(self.work / "cams", self.gt, names, parse_betas(self.cfg.cams.betas), workers=self.cfg.workers)
        write_json(self.work / "scores" / "cams.json", result.to_json())
        best = result.summary()
        edge = ""
        if len(result.betas) > 1 and best["beta"] in (min(result.betas), max(result.betas)):
            edge = " (on the edge of the sweep)"
            log.warning("eval_cams: the best β %g lies on the edge of the sweep (cams.betas %s): a better one may lie "
                        "outside; widen cams.betas", best["beta"], self.cfg.cams.betas)  # fmt: skip
        return [stage_score("CAM", self.cfg.splits.eval, len(names), best, f"best β {best['beta']:.2f}{edge}")]

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
        from cpn_dist.config import CrfConfig
        from cpn_dist.labels.pseudo import Job, pending, run_folder

        beta = self.best_beta()
        out = self.work / "pseudo"
        crf = CrfConfig() if self.cfg.pseudo.crf else None
        job = Job(str(self.work / "cams"), str(out), (beta,), crf, str(self.voc), output="png")
        names = self.names(self.cfg.splits.train)
        run_folder(job, pending(names, out, ".png", self.overwrite), workers=self.cfg.workers)
        if not self.cfg.pseudo.crf:
            return []  # the CAM row at this β already scores these labels
        return [self._score_labels("CAM pseudo labels + CRF", out, self.cfg.splits.eval, f"β = {beta:.2f}")]

    def _score_labels(self, stage: str, folder: Path, split: str, note: str = "") -> StageScore:
        from cpn_dist.labels.evaluate import score_labels

        names = self.names(split)
        result = score_labels(folder, self.gt, names, workers=self.cfg.workers)
        key = stage.lower().replace(" + ", "_").replace(" ", "_")
        write_json(self.work / "scores" / f"{key}_{split}.json", result.to_json())
        return stage_score(stage, split, len(names), result.summary(), note)

def run_pipeline(cfg: PipelineConfig, **kwargs) -> PipelineResult:
    """Run the pipeline of ``cfg`` (see :meth:`Pipeline.run` for the arguments)."""
    return Pipeline(cfg).run(**kwargs)


if __name__ == "__main__":  # `accelerate launch -m cpn_dist.pipeline --config ...` runs `cpn pipeline`
    import sys

    from cpn_dist.cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))
