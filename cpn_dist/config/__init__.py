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

from importlib import import_module

# name → the module that defines it (or re-exports it: the sections, ConfigError, parse_yaml)
_EXPORTS = {
    "AffinityConfig": "cpn_dist.config.run",
    "all_keys": "cpn_dist.config.run",
    "apply_override": "cpn_dist.config.run",
    "BatchConfig": "cpn_dist.config.run",
    "Config": "cpn_dist.config.run",
    "ConfigError": "cpn_dist.config.run",
    "CrfConfig": "cpn_dist.config.run",
    "DataConfig": "cpn_dist.config.run",
    "describe_error": "cpn_dist.config.run",
    "key_docs": "cpn_dist.config.run",
    "load_config": "cpn_dist.config.load",
    "LogConfig": "cpn_dist.config.run",
    "LossConfig": "cpn_dist.config.run",
    "ModelConfig": "cpn_dist.config.run",
    "OptimConfig": "cpn_dist.config.run",
    "OutputConfig": "cpn_dist.config.run",
    "parse_yaml": "cpn_dist.config.run",
    "PatchConfig": "cpn_dist.config.run",
    "RENAMED_KEYS": "cpn_dist.config.run",
    "SegmentationConfig": "cpn_dist.config.run",
    "SegmentationCrfConfig": "cpn_dist.config.run",
    "suggest_key": "cpn_dist.config.run",
    "to_yaml": "cpn_dist.config.run",
    "TrainConfig": "cpn_dist.config.run",
    "validate": "cpn_dist.config.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
