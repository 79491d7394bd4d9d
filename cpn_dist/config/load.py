"""Reading a config file of either kind — a run config (:class:`~cpn_dist.config.run.Config`) or a
pipeline config (:class:`~cpn_dist.pipeline.config.PipelineConfig`): find it (a path or a packaged name),
apply dotted overrides, refuse a file of the other kind in one line, validate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cpn_dist.config.run import Config, S, apply_override, validate
from cpn_dist.config.yaml_io import find_config, packaged_config_names, parse_yaml
from cpn_dist.errors import ConfigError
from cpn_dist.pipeline.config import PipelineConfig

# The two kinds of config file: what each is called and the command that takes it.
KIND_NAMES = {"run": "a run config", "pipeline": "a pipeline config"}
KIND_COMMANDS = {"run": "`cpn train --config {name}` trains it", "pipeline": "`cpn pipeline --config {name}` runs it"}


def _kinds() -> dict[type[BaseModel], str]:
    return {Config: "run", PipelineConfig: "pipeline"}


def check_kind(raw: dict[str, Any], source: str, name: str | Path, model: type[BaseModel]) -> None:
    """Refuse, in one line, a file of the other kind of config than ``model`` (a run config given to
    ``cpn pipeline``, a pipeline config given to ``cpn train``): every top-level key of ``raw`` is foreign
    to ``model`` and some belong to the other kind. The line names the command that takes the file and
    the packaged configs of the kind expected."""
    kinds = _kinds()
    if model not in kinds or any(k in model.model_fields for k in raw):
        return
    for other, kind in kinds.items():
        theirs = [k for k in raw if k in other.model_fields]
        if other is model or not theirs:
            continue
        shown = ", ".join(f"{k}:" for k in theirs[:3]) + (" …" if len(theirs) > 3 else "")
        expected = kinds[model]
        raise ConfigError(f"{source}: {KIND_NAMES[kind]} (it has {shown}), not {KIND_NAMES[expected]}; "
                          f"{KIND_COMMANDS[kind].format(name=name)}. Packaged {expected} configs: "
                          f"{', '.join(packaged_config_names(expected))}")  # fmt: skip


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                model: type[S] = Config, what: str = "config file") -> S:  # fmt: skip
    """Read a YAML config (a path, or a packaged config's name: see :func:`cpn_dist.config.yaml_io.find_config`;
    defaults when ``path`` is None), apply dotted overrides, and validate it as ``model`` (a run
    :class:`Config` unless told; :func:`cpn_dist.config.load.load_pipeline_config` reads pipeline
    configs through here). Raises :class:`ConfigError` with a one-line message on any problem."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = find_config(path, what, _kinds().get(model))
        source = str(p)
        raw = parse_yaml(p.read_text(), source=source)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        check_kind(raw, source, path, model)
    for override in overrides:
        apply_override(raw, override)
    return validate(raw, source=source, model=model)


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read and validate a pipeline config (a path or a packaged name, e.g. ``pipeline_demo``) with dotted
    overrides, through the loader of run configs (:func:`load_config`); relative paths in it
    are relative to the working directory, run configs are paths or packaged names. Errors are one line
    naming the file and the dotted key."""
    return load_config(path, overrides, model=PipelineConfig, what="pipeline config")
