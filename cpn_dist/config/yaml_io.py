"""YAML for configs and overrides, and where a config named on the command line is found.

Two departures from PyYAML's YAML 1.1, both what YAML 1.2 (and every user) expects:

- ``5e-4`` (an exponent without a dot) is a float, not a string;
- only ``true``/``false`` (any case pattern YAML 1.2 allows: ``true``, ``True``, ``TRUE``) are
  booleans. ``no``, ``yes``, ``on``, ``off``, ``y`` and ``n`` stay strings, so
  ``train.precision=no`` — the README's own value — is the string ``'no'``.

Config files ship inside the package (``cpn_dist/configs/*.yaml``; the repository's ``configs/`` is
a link to that folder). :func:`find_config` resolves what a user typed: an existing path first, then
a packaged config by name (``demo``, ``demo.yaml`` or ``configs/demo.yaml``), so ``--config demo``
works from any folder after ``pip install cpn-dist``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cpn_dist.errors import ConfigError

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and booleans (see the module docstring)."""


# Drop YAML 1.1's boolean resolver (yes/no/on/off/y/n); keep every other implicit type.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with the rules above; a syntax error is a one-line ConfigError naming ``source``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML ({problem})") from None


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists (``crop: 448``, ``weights: [1.0, 1.0, 1.0]``)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


# Packaged pipeline configs are named pipeline_*.yaml; every other packaged config is a run config.
PIPELINE_PREFIX = "pipeline_"


def packaged_config_names(kind: str | None = None) -> list[str]:
    """The names (without ``.yaml``) of the configs shipped with the package: every one, or only those of
    ``kind`` ``"run"`` or ``"pipeline"``."""
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    if kind is None:
        return names
    return [n for n in names if n.startswith(PIPELINE_PREFIX) == (kind == "pipeline")]


def find_config(name: str | Path, what: str = "config file", kind: str | None = None) -> Path:
    """The file ``name`` means: an existing path, else a packaged config (``demo``, ``demo.yaml``,
    ``configs/demo.yaml``). A name that is neither is a ConfigError listing the packaged configs (of
    ``kind``, when given: see :func:`packaged_config_names`)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    bare = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs")
    packaged = PACKAGED_CONFIGS / stem
    if bare and packaged.is_file():
        return packaged
    known = ", ".join(packaged_config_names(kind))
    raise ConfigError(f"{path}: {what} not found (packaged configs, usable by name: {known})")
