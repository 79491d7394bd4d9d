"""``cpn pipeline``: every step from a VOC folder to the scored segmentation model — the pipeline's config
(:mod:`~cpn_dist.pipeline.config`), its step table (:mod:`~cpn_dist.pipeline.stages`), what each step depends
on and its scores (:mod:`~cpn_dist.pipeline.steps`), the runner of step tables (:mod:`~cpn_dist.pipeline.runner`,
also the demo's) and the run itself (:mod:`~cpn_dist.pipeline.run`). ``python -m cpn_dist.pipeline`` runs
``cpn pipeline`` (under ``accelerate launch``: distributed).

The main names are importable from here; they load lazily, so that ``cpn --help`` (which lists the steps)
imports neither torch nor pydantic.
"""

from __future__ import annotations

from cpn_dist import lazy_exports

# module → the names it defines, importable from here
_EXPORTS = {
    "cpn_dist.pipeline.run": ("Pipeline", "run_pipeline"),
    "cpn_dist.config.load": ("load_pipeline_config",),
    "cpn_dist.pipeline.config": (
        "PipelineConfig", "CamSettings", "PackSettings", "PseudoSettings", "RunConfigs", "RunOverrides",
        "RunWeights", "SplitsConfig",
    ),
    "cpn_dist.pipeline.stages": ("STEPS", "STAGE2", "TABLE", "COCO_TABLE", "ALL_STEPS"),
    "cpn_dist.pipeline.steps": ("PipelineResult", "StageScore"),
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
