"""Train any stage (``cpn train``, ``accelerate launch -m cpn_dist.train``: :mod:`cpn_dist.train`, and the
pipeline's and the demo's training steps). The config's ``stage`` picks the task — CPN (:mod:`cpn_dist.cpn.task`),
AffinityNet (:mod:`cpn_dist.affinity.task`) or segmentation (:mod:`cpn_dist.segmentation.task`); the loop
itself is :mod:`cpn_dist.training.engine`.
"""

from __future__ import annotations

from pathlib import Path

from cpn_dist.config.run import Config
from cpn_dist.training.engine import run_training

__all__ = ["STAGES", "train"]


# The stages `cpn train` can train, by the config's `stage` key: "module:Task class".
STAGES = {
    "cpn": "cpn_dist.cpn.task:CPNTask",
    "affinity": "cpn_dist.affinity.task:AffinityTask",
    "segmentation": "cpn_dist.segmentation.task:SegmentationTask",
}


def train(cfg: Config, resume: str | None = None, restart: bool = False) -> Path:
    """Train the configured stage; returns the path of the final weights ``{output.dir}/model_final.pth``.
    A folder holding checkpoints of the same config resumes from them; ``resume``/``restart``: see
    :func:`cpn_dist.training.run_start.plan_start`."""
    import importlib

    module, _, name = STAGES[cfg.stage].partition(":")
    task = getattr(importlib.import_module(module), name)(cfg)
    return run_training(cfg, task, resume=resume, restart=restart)
