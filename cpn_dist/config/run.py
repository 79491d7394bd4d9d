"""Run configuration: a typed, validated tree of plain data.

A run is described by one YAML file (a path, or the name of a packaged config: ``cpn_dist/configs/``,
linked as ``configs/`` in the repository) plus dotted command-line overrides
(``optim.lr=0.02 data.crop=320``). Every key is declared below with its type, default and range;
an unknown key, a wrong type or an out-of-range value is a :class:`~cpn_dist.errors.ConfigError`
whose message names the dotted key (and, for a typo, the nearest valid key).

The sections and keys here are a stable interface: later versions add keys; a renamed key
(:data:`~cpn_dist.config.renames.RENAMED_KEYS`) fails with a message naming its new name.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from cpn_dist.config.base import Section
from cpn_dist.config.renames import RENAMED_KEYS
from cpn_dist.config.sections import (
    BatchConfig,
    DataConfig,
    LogConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    PatchConfig,
    TrainConfig,
)
from cpn_dist.config.stages import AffinityConfig, CrfConfig, SegmentationConfig, SegmentationCrfConfig
from cpn_dist.config.yaml_io import dump_yaml, parse_yaml
from cpn_dist.errors import ConfigError

S = TypeVar("S", bound=Section)

__all__ = [
    "AffinityConfig", "BatchConfig", "Config", "ConfigError", "CrfConfig", "DataConfig", "LogConfig", "LossConfig",
    "ModelConfig", "OptimConfig", "OutputConfig", "PatchConfig", "RENAMED_KEYS", "SegmentationConfig",
    "SegmentationCrfConfig", "TrainConfig", "all_keys", "apply_override", "describe_error", "key_docs",
    "parse_yaml", "suggest_key", "to_yaml", "validate",
]  # fmt: skip


class Config(Section):
    """The whole run configuration."""

    stage: Literal["cpn", "affinity", "segmentation"] = Field(
        "cpn",
        description="what `cpn train` trains: the CPN classifier, AffinityNet (stage 2) or the segmentation model "
        "(stage 3)",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)

    @model_validator(mode="after")
    def _baseline_has_no_head(self) -> Config:
        if self.loss.recipe == "cam" and self.model.head != "none":
            raise ValueError("loss.recipe: 'cam' trains the plain CAM only and leaves a refinement head "
                             f"untrained; set model.head: none (got '{self.model.head}')")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")


# --------------------------------------------------------------------------------------------
# Key introspection, used for suggestions, `cpn config keys` and docs/configuration.md.
def _section_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every leaf key of the schema as a dotted path, in declaration order."""
    keys: list[str] = []
    for name, field in _section_fields(model).items():
        sub = _sub_model(field.annotation)
        if sub is not None:
            keys += all_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def key_docs() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf key, for documentation."""
    rows = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in _section_fields(model).items():
            sub = _sub_model(field.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
            else:
                rows.append((prefix + name, repr(field.get_default(call_default_factory=True)),
                             field.description or ""))

    walk(Config, "")
    return rows


def _model_at(path: tuple[str, ...], root: type[BaseModel] = Config) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in path:
        if model is None:
            return None
        field = _section_fields(model).get(part)
        model = _sub_model(field.annotation) if field is not None else None
    return model


def suggest_key(path: tuple[str, ...], root: type[BaseModel] = Config) -> str | None:
    """The nearest valid dotted key for an unknown key at ``path`` of the schema ``root`` (None if nothing
    is close)."""
    parent, name = path[:-1], path[-1]
    model = _model_at(parent, root)
    if model is not None:
        close = difflib.get_close_matches(name, list(_section_fields(model)), n=1, cutoff=0.6)
        if close:
            return ".".join((*parent, close[0]))
    # A right key in the wrong section (`lr` at the top level): match on the last component,
    # then on the whole dotted path.
    keys = all_keys(root)
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == name]
    if same_leaf:
        return same_leaf[0]
    close = difflib.get_close_matches(".".join(path), keys, n=1, cutoff=0.7)
    return close[0] if close else None


# --------------------------------------------------------------------------------------------
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
}


def describe_error(err: dict[str, Any], root: type[BaseModel] = Config) -> str:
    """One line for one pydantic error of the schema ``root``, naming the dotted key (and, for an unknown key,
    its new name if it was renamed, else the nearest valid one)."""
    loc = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
    index = [p for p in err["loc"] if isinstance(p, int)]
    key = ".".join(loc) or "<config>"
    if index:
        key += "[" + "][".join(map(str, index)) + "]"
    kind = err["type"]
    ctx = err.get("ctx", {})
    got = err.get("input")
    if kind == "extra_forbidden":
        renamed = RENAMED_KEYS if root is Config else {}
        if key in renamed:
            return f"unknown key '{key}': it was renamed to '{renamed[key]}'"
        old = difflib.get_close_matches(key, list(renamed), n=1, cutoff=0.85)  # a typo of an old name
        hint = renamed[old[0]] if old else suggest_key(loc, root)
        return f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else "")
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        close = difflib.get_close_matches(str(got), re.findall(r"'([^']*)'", expected), n=1, cutoff=0.6)
        return f"{key}: expected one of {expected}, got {got!r}" + (f" (did you mean '{close[0]}'?)" if close else "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"{key}: must be {op} {bound}, got {got!r}"
    if kind in ("too_short", "too_long"):
        return f"{key}: {err['msg'].lower()}"
    if kind == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        field = re.match(r"^(\w+): (.*)$", msg)  # a section validator naming one of its fields
        if field:
            return f"{key}.{field[1]}: {field[2]}" if key != "<config>" else msg
        return f"{key}: {msg}" if key != "<config>" else msg
    type_name = kind.split("_")[0]
    if type_name in _TYPE_NAMES and kind.endswith(("_type", "_parsing")):
        return f"{key}: expected {_TYPE_NAMES[type_name]}, got {type(got).__name__} {got!r}"
    if kind == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {err['msg']}"


def validate(raw: dict[str, Any] | None, source: str = "config", model: type[S] = Config) -> S:
    """Validate a raw mapping into ``model`` (a :class:`Config` unless told); errors name the dotted key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(e, model) for e in exc.errors()]
        # Whole-section errors repeat what a leaf error already says; keep the most specific.
        raise ConfigError(f"{source}: " + "; ".join(dict.fromkeys(lines))) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}': expected KEY=VALUE, e.g. optim.lr=0.02")
    key, _, text = override.partition("=")
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override '{override}': empty key component")
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{'.'.join(path[: i + 1])}' is not a section")
        node = child
    node[path[-1]] = parse_yaml(text, source=f"override {key}")


def to_yaml(config: Config) -> str:
    """The fully resolved config as YAML (defaults filled in), loadable by :func:`load_config`."""
    return dump_yaml(config.to_dict())
