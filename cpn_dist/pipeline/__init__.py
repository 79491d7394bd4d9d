"""``cpn pipeline``: every step from a VOC folder to the scored segmentation model — the pipeline's config
(:mod:`~cpn_dist.pipeline.config`), its step table (:mod:`~cpn_dist.pipeline.stages`), what each step depends
on and its scores (:mod:`~cpn_dist.pipeline.steps`), the runner of step tables (:mod:`~cpn_dist.pipeline.runner`,
also the demo's) and the run itself (:mod:`~cpn_dist.pipeline.run`). ``python -m cpn_dist.pipeline`` runs
``cpn pipeline`` (under ``accelerate launch``: distributed).

The main names are importable from here; they load lazily, so that ``cpn --help`` (which lists the steps)
imports neither torch nor pydantic.
"""

from __future__ import annotations

from importlib import import_module

# name → the module that defines it
_EXPORTS = {
    "Pipeline": "cpn_dist.pipeline.run",
    "run_pipeline": "cpn_dist.pipeline.run",
    "load_pipeline_config": "cpn_dist.config.load",
    "PipelineConfig": "cpn_dist.pipeline.config",
    "CamSettings": "cpn_dist.pipeline.config",
    "PackSettings": "cpn_dist.pipeline.config",
    "PseudoSettings": "cpn_dist.pipeline.config",
    "RunConfigs": "cpn_dist.pipeline.config",
    "RunOverrides": "cpn_dist.pipeline.config",
    "RunWeights": "cpn_dist.pipeline.config",
    "SplitsConfig": "cpn_dist.pipeline.config",
    "STEPS": "cpn_dist.pipeline.stages",
    "STAGE2": "cpn_dist.pipeline.stages",
    "TABLE": "cpn_dist.pipeline.stages",
    "PipelineResult": "cpn_dist.pipeline.steps",
    "StageScore": "cpn_dist.pipeline.steps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
