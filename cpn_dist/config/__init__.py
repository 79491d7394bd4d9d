"""Configuration: the run config (:mod:`~cpn_dist.config.run`: its sections in :mod:`~cpn_dist.config.sections`
and :mod:`~cpn_dist.config.stages` on :mod:`~cpn_dist.config.base`), reading a config file of either kind
(:mod:`~cpn_dist.config.load`), YAML and packaged configs (:mod:`~cpn_dist.config.yaml_io`), renamed keys
(:mod:`~cpn_dist.config.renames`), the config recorded with weights (:mod:`~cpn_dist.config.weights`) and
the generated key reference (:mod:`~cpn_dist.config.docs`). The pipeline's config is
:mod:`cpn_dist.pipeline.config`.

The names ``cpn_dist.config`` has always offered (``Config``, ``load_config``, the sections …) are
importable from here; they load lazily.
"""

from __future__ import annotations

from cpn_dist import lazy_exports

# module → the names it defines (or re-exports: the sections, ConfigError, parse_yaml), importable from here
_EXPORTS = {
    "cpn_dist.config.run": (
        "AffinityConfig", "all_keys", "apply_override", "BatchConfig", "Config", "ConfigError", "CrfConfig",
        "DataConfig", "describe_error", "key_docs", "LogConfig", "LossConfig", "ModelConfig", "OptimConfig",
        "OutputConfig", "parse_yaml", "PatchConfig", "RENAMED_KEYS", "SegmentationConfig", "SegmentationCrfConfig",
        "suggest_key", "to_yaml", "TrainConfig", "validate",
    ),
    "cpn_dist.config.load": ("load_config", "load_pipeline_config"),
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
