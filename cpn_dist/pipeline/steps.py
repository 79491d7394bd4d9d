"""What each step of ``cpn pipeline`` depends on, and what the pipeline reports.

A finished step's stamp (:mod:`cpn_dist.pipeline.runner`) records its ``settings`` — every setting it depends on
(the pipeline config's keys it reads, the run config of its stage minus the keys that change
nothing) and fingerprints of its inputs from outside the work folder (split lists by content; given
weights files by size and modification time); :func:`step_settings` computes them. Nothing here
imports torch or pydantic.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpn_dist.pipeline.runner import StepReport, relative_to

log = logging.getLogger(__name__)


def list_fingerprint(path: str | Path) -> str | None:
    """A split list by content (sha256; None if missing): rewriting the same ids changes nothing."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def file_fingerprint(path: str | Path | None) -> list | None:
    """A large input file (weights) by [path, size, mtime_ns]; None when there is none."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return [str(p), None, None]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


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
class PipelineResult:
    steps: list[StepReport]
    scores: list[StageScore]
    seconds: float

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds}
                                                   for s in self.steps],
                "scores": [s.to_json() for s in self.scores]}  # fmt: skip


def stage_score(stage: str, split: str, images: int, summary: dict, note: str = "") -> StageScore:
    return StageScore(stage, split, images, summary["miou"], summary["background"], summary["foreground"], note)


def step_settings(p, name: str) -> dict[str, Any]:
    """What step ``name`` of pipeline ``p`` depends on besides the steps before it: the settings it reads and
    fingerprints of its inputs from outside the work folder (see :mod:`cpn_dist.pipeline.steps`)."""
    from cpn_dist.training.run_start import NO_EFFECT, flatten

    c = p.cfg

    def run(stage: str, *sections: str) -> dict:  # a run config minus what changes nothing
        flat = flatten(p.train_config(stage).to_dict())
        return {k: v for k, v in flat.items() if not any(k == n or (n.endswith(".") and k.startswith(n))
                                                         for n in NO_EFFECT)
                and (not sections or k.split(".")[0] in sections)}  # fmt: skip

    lists = lambda *splits: {s: list_fingerprint(p.list_path(s)) for s in splits if s}  # noqa: E731
    given = lambda stage: file_fingerprint(getattr(c.weights, stage))  # noqa: E731
    # keys added since stamps were first written count only away from their defaults, so that a stamp of an
    # older version stays valid (an absent key is read as a change)
    cam_format = {"cams.format": c.cams.format, "cams.compact_stride": c.cams.compact_stride,
                  "cams.compact_dtype": c.cams.compact_dtype} if c.cams.format != "released" else {}
    mean = {"mean_iou": c.mean_iou} if c.mean_iou != "present" else {}
    # the data folder: a VOC run's stamps keep their one key; a COCO run's name the folder and protocol
    data = {"voc_root": c.voc_root} if c.coco_root is None else {"coco_root": c.coco_root,
                                                                 "coco_protocol": c.coco_protocol}
    seg_splits = [s for s, _ in p.segment_splits()]
    settings = {  # keys as the user writes them: the pipeline config's, then the stage's run config's
        "coco_view": lambda: {**data, "splits": p.split_names()},
        "pack": lambda: {**data, "shards": str(p.shards), "lists": lists(c.splits.train),
                         "pack.segments": c.pack.segments, "pack.shard_size": c.pack.shard_size,
                         "data.patch.segments": run("cpn", "data").get("data.patch.segments")},
        "train_cpn": lambda: run("cpn"),
        "cams": lambda: {"cams.scales": c.cams.scales, "weights.cpn": given("cpn"), **cam_format,
                         "lists": lists(c.splits.train, c.splits.eval), **run("cpn", "model", "data")},
        "eval_cams": lambda: {"cams.betas": c.cams.betas, "lists": lists(c.splits.eval), "gt": str(p.gt), **mean},
        "pseudo": lambda: {"pseudo.beta": c.pseudo.beta, "pseudo.crf": c.pseudo.crf, "lists": lists(c.splits.train),
                           **mean},
        "affinity_labels": lambda: {"lists": lists(c.splits.train), **run("affinity", "affinity")},
        "train_affinity": lambda: run("affinity"),
        "rw": lambda: {"weights.affinity": given("affinity"), **run("affinity", "affinity", "model", "data")},
        "eval_rw": lambda: {"lists": lists(c.splits.eval), **mean},
        "train_segmentation": lambda: {"segmentation_labels": c.segmentation_labels, **run("segmentation")},
        "segment": lambda: {"weights.segmentation": given("segmentation"), "lists": lists(*seg_splits),
                            **run("segmentation", "segmentation", "model", "data")},
        "eval_segmentation": lambda: {"lists": lists(*seg_splits), **mean},
    }[name]()  # fmt: skip
    return relative_to(settings, p.work)


def other_run(out: Path, cfg) -> bool:
    """Whether ``out`` holds the checkpoints or final weights of a run whose config differs from ``cfg`` in
    what changes its result (run length included: the pipeline's step must then run again), or checkpoints
    that record no config (an older version's: nothing says they are of this run)."""
    from cpn_dist.models.weights import read_weights_metadata
    from cpn_dist.training.checkpoint import complete_checkpoints, read_state
    from cpn_dist.training.run_start import NO_EFFECT, config_changes

    done = complete_checkpoints(out)
    recorded = read_state(done[-1]).get("config") if done else None
    if done and recorded is None:
        log.warning("%s: holds checkpoints that record no config: training afresh", out)
        return True
    if recorded is None and (out / "model_final.pth").is_file():
        recorded = (read_weights_metadata(out / "model_final.pth") or {}).get("config")
    changes = config_changes(recorded, cfg.to_dict(), ignore=NO_EFFECT) if recorded is not None else []
    if changes:
        log.warning("%s: holds a run of another config (%s): training afresh", out, "; ".join(changes))
    return bool(changes)


def train_owned(cfg, redo: str, afresh: bool = False, procs=None) -> Path:
    """Train ``cfg`` into its ``output.dir``, a folder that a step of ``cpn pipeline`` or ``cpn demo`` owns;
    returns its final weights. Final weights already there are kept; the folder is emptied first when
    ``afresh`` or when it holds another run (:func:`other_run`); checkpoints of this config are resumed,
    and the log says so naming ``redo``, how that command starts the step over (``--redo train_cpn``,
    ``--overwrite``) — not the flags of ``cpn train``. ``procs``: the processes of the run (the main one
    clears the folder, then all meet at a barrier); None: this process alone."""
    import shutil

    from cpn_dist.training.checkpoint import complete_checkpoints, read_state
    from cpn_dist.training.tasks import train

    out = Path(cfg.output.dir)
    if (procs is None or procs.main) and out.exists() and (afresh or other_run(out, cfg)):
        shutil.rmtree(out)
    if procs is not None:
        procs.barrier()
    final = out / "model_final.pth"
    if final.is_file():
        log.info("%s exists: kept", final)
        return final
    done = complete_checkpoints(out)
    if not done:
        return train(cfg)
    step = read_state(done[-1]).get("global_step", "?")
    log.warning("%s holds checkpoints of this config: resuming from step %s (%s starts over)", out, step, redo)
    return train(cfg, resume="latest")
