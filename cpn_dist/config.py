"""Run configuration: a typed, validated tree of plain data.

A run is described by one YAML file (a path, or the name of a packaged config: ``cpn_dist/configs/``,
linked as ``configs/`` in the repository) plus dotted command-line overrides
(``optim.lr=0.02 data.crop=320``). Every key is declared below with its type, default and range;
an unknown key, a wrong type or an out-of-range value is a :class:`~cpn_dist.errors.ConfigError`
whose message names the dotted key (and, for a typo, the nearest valid key).

The sections and keys here are a stable interface: later versions add keys, never rename them.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from cpn_dist.config_base import _Section
from cpn_dist.config_stages import AffinityConfig, CrfConfig, SegmentationConfig, SegmentationCrfConfig
from cpn_dist.errors import ConfigError
from cpn_dist.yaml_io import dump_yaml, find_config, parse_yaml

__all__ = [
    "AffinityConfig", "BatchConfig", "Config", "ConfigError", "CrfConfig", "DataConfig", "LogConfig", "LossConfig",
    "ModelConfig", "OptimConfig", "OutputConfig", "PatchConfig", "SegmentationConfig", "SegmentationCrfConfig",
    "TrainConfig", "all_keys", "apply_override", "key_docs", "load_config", "parse_yaml", "suggest_key", "to_yaml",
    "validate",
]  # fmt: skip


class PatchConfig(_Section):
    """How the complementary patch (CP) pair is drawn (paper Sec. 3.2)."""

    kind: Literal["superpixel", "grid"] = Field(
        "superpixel", description="patch template: SLIC superpixels or square grid cells"
    )
    segments: int = Field(
        200, ge=2, le=100_000, description="S_N, the SLIC segment count (must be packed in the shards)"
    )
    grid_sizes: list[int] = Field(
        [56, 112], min_length=1, description="K, the grid cell sizes S drawn from evenly (pixels)"
    )
    hide_prob: float = Field(0.5, gt=0.0, lt=1.0, description="p_h, probability that a patch is hidden in I_h")
    lambda_mode: Literal["pixels", "patches"] = Field(
        "pixels", description="lambda = visible pixel fraction (released code) or 1 - N_h/N (paper)"
    )
    sampling: Literal["bernoulli", "released"] = Field(
        "bernoulli",
        description="bernoulli: each patch hidden with p_h (paper); "
        "released: floor((K+1)/2) ids drawn with replacement",
    )

    @model_validator(mode="after")
    def _positive_grid(self) -> PatchConfig:
        if any(s < 1 for s in self.grid_sizes):
            raise ValueError("grid_sizes: every cell size must be >= 1 pixel")
        return self


class DataConfig(_Section):
    shards: str = Field(
        "shards/voc", description="a folder written by `cpn pack`, or a webdataset URL/brace pattern"
    )
    split: str = Field("train_aug", description="which split's shards to read from a folder")
    crop: int = Field(448, ge=16, le=4096, description="square training crop (pixels)")
    scale_range: list[int] = Field(
        [448, 768], min_length=2, max_length=2, description="random long-side resize range (pixels)"
    )
    mean: list[float] = Field(
        [0.485, 0.456, 0.406], min_length=3, max_length=3, description="RGB normalisation mean (0..1)"
    )
    std: list[float] = Field(
        [0.229, 0.224, 0.225], min_length=3, max_length=3, description="RGB normalisation std (0..1)"
    )
    color_jitter: list[float] = Field(
        [0.3, 0.3, 0.3, 0.1], min_length=4, max_length=4,
        description="brightness, contrast, saturation, hue jitter of the image only (0 = off)",
    )
    workers: int = Field(2, ge=0, le=256, description="data loader worker processes per rank")
    deterministic: bool = Field(
        False,
        description="elastic determinism: the global batches (samples, augmentation, CP masks) depend only on "
        "(seed, epoch, shards), not on world size, micro-batch or workers; needs local tar shards",
    )
    shuffle_buffer: int = Field(
        1000, ge=0, le=1_000_000, description="samples in each worker's shuffle buffer (streaming mode; 0 = off)"
    )
    meta: str | None = Field(
        None, description="the meta.json of the shards (path or http(s) URL); null = beside the shards"
    )
    patch: PatchConfig = Field(default_factory=PatchConfig)

    @model_validator(mode="after")
    def _ordered_scale_range(self) -> DataConfig:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: need 0 < low <= high, got [{lo}, {hi}]")
        if self.crop > hi:  # every image is resized to a long side <= hi: each crop would be mostly padding
            raise ValueError(f"crop: {self.crop} is larger than every training image (data.scale_range resizes "
                             f"the long side to at most {hi} pixels); lower data.crop or raise data.scale_range")
        if any(s <= 0 for s in self.std):
            raise ValueError("std: every value must be > 0")
        if any(j < 0 for j in self.color_jitter) or self.color_jitter[3] > 0.5:
            raise ValueError("color_jitter: values must be >= 0 and the hue jitter <= 0.5")
        return self


class ModelConfig(_Section):
    backbone: Literal["resnet38d", "efficientnet_lite0", "tiny"] = Field(
        "resnet38d", description="feature extractor: resnet38d (the paper's), efficientnet_lite0 (ImageNet weights "
        "packaged: model.weights=imagenet; its input normalisation is mean 0.498, std 0.502), tiny (tests, demo)"
    )
    head: Literal["official", "paper", "pcm", "none"] = Field(
        "paper", description="CAM refinement head: official (the released PCM+PRCM), paper (eqs. 7-12), pcm (the "
        "paper's PCM without PRCM: Table 2's '+ PCM' rows), none (plain CAM)"
    )
    weights: str | None = Field(
        None, description="initial weights (.pth: released ResNet38 init, released CPN, ours; imagenet: the packaged "
        "ImageNet weights of efficientnet_lite0)"
    )
    dropout: float = Field(
        1.0, ge=0.0, le=1.0,
        description="scale of the released dropout rates (0.5 before fc8, 0.3/0.5 in b6/b7); 0 = no dropout",
    )


class LossConfig(_Section):
    recipe: Literal["paper", "official", "cam"] = Field(
        "paper", description="paper: eqs. 13-17; official: the released train_cpn.py; cam: L_cls on I only (baseline)"
    )
    ohem_ratio: float = Field(0.2, gt=0.0, le=1.0, description="fraction of CPCR elements kept by OHEM (1 = no OHEM)")
    ohem_scope: Literal["batch", "image"] = Field(
        "batch", description="top-k over the whole global batch, or per image"
    )
    weights: list[float] = Field(
        [1.0, 1.0, 1.0], min_length=3, max_length=3, description="w1, w2, w3 of L_cls, L_tcp, L_cpcr (eq. 17)"
    )
    alpha: float = Field(
        1.0, gt=0.0, le=10.0, description="paper recipe: background exponent, Y^0 = (1 - max_c Y^c)^alpha (eq. 16)"
    )
    cpcr_stop_gradient: bool = Field(
        True, description="paper recipe: L_cpcr sends no gradient into the raw CAMs Y_o, Y_h, Y_hbar, only into the "
        "refined CAMs (Sec. 3.1's stop-gradient, SEAM's ECR, the released code); false = eq. 15 read literally",
    )
    tcp_background: bool = Field(
        True, description="paper recipe: L_tcp averages over the background channel of eq. 16 too (21 channels); "
        "false = the 20 foreground channels, as the released code",
    )
    global_ohem_pass: Literal["auto", "full"] = Field(
        "auto", description="global OHEM with gradient accumulation: auto = when L_cpcr trains only the head, "
        "each micro-step backpropagates L_cls + L_tcp at once and the head alone is re-run for L_cpcr after the "
        "selection (+0.5 % FLOPs at ResNet38d, crop 448); full = a no-grad forward over the window first (+36 %; "
        "always for the literal recipe)",
    )

    @model_validator(mode="after")
    def _non_negative_weights(self) -> LossConfig:
        if any(w < 0 for w in self.weights):
            raise ValueError("weights: every loss weight must be >= 0")
        if self.recipe == "official" and not (self.cpcr_stop_gradient and self.tcp_background):
            raise ValueError("recipe: 'official' reproduces the released loss block; cpcr_stop_gradient and "
                             "tcp_background apply to recipe 'paper' only")
        return self


class BatchConfig(_Section):
    global_size: int = Field(4, ge=1, description="images per optimizer step over all ranks (the paper: 4)")
    micro_size: int = Field(4, ge=1, description="images per forward on one device")

    @model_validator(mode="after")
    def _micro_divides_global(self) -> BatchConfig:
        if self.global_size % self.micro_size:
            raise ValueError(
                f"micro_size: {self.micro_size} does not divide batch.global_size {self.global_size}"
            )
        return self


class OptimConfig(_Section):
    lr: float = Field(0.01, gt=0.0, description="base learning rate (backbone weights)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0, description="weight decay of weight tensors (biases get none)")
    poly_power: float = Field(0.9, ge=0.0, description="lr = base * (1 - step/total)^power")
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm (null = no clipping)")


class TrainConfig(_Section):
    epochs: int = Field(8, ge=1, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    seed: int = Field(0, ge=0, description="seed of every random choice (data order, augmentation, CP masks, init)")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision through Accelerate")
    checkpoint_every: int = Field(1000, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(3, ge=1, description="checkpoints kept on disk")
    on_nonfinite: Literal["skip", "stop"] = Field(
        "skip", description="a non-finite loss: skip that optimizer step (and report it), or stop the run"
    )
    compile: bool = Field(False, description="wrap the model in torch.compile")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels-last memory format for the model and its inputs (auto: on CUDA, off on CPU)"
    )


class OutputConfig(_Section):
    dir: str = Field("runs/cpn", description="checkpoints, TensorBoard logs and final weights go here")


class LogConfig(_Section):
    every: int = Field(20, ge=1, description="optimizer steps between scalar logs")
    image_every: int = Field(500, ge=1, description="optimizer steps between TensorBoard image panels")
    peak_flops: float | None = Field(
        None, gt=0, description="peak FLOP/s of one device for MFU (null: known GPUs from a table, none on CPU)"
    )


class Config(_Section):
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


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in path:
        if model is None:
            return None
        field = _section_fields(model).get(part)
        model = _sub_model(field.annotation) if field is not None else None
    return model


def suggest_key(path: tuple[str, ...]) -> str | None:
    """The nearest valid dotted key for an unknown key at ``path`` (None if nothing is close)."""
    parent, name = path[:-1], path[-1]
    model = _model_at(parent)
    if model is not None:
        close = difflib.get_close_matches(name, list(_section_fields(model)), n=1, cutoff=0.6)
        if close:
            return ".".join((*parent, close[0]))
    # A right key in the wrong section (`lr` at the top level): match on the last component,
    # then on the whole dotted path.
    keys = all_keys()
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


def _describe_error(err: dict[str, Any]) -> str:
    loc = tuple(str(p) for p in err["loc"] if not isinstance(p, int))
    index = [p for p in err["loc"] if isinstance(p, int)]
    key = ".".join(loc) or "<config>"
    if index:
        key += "[" + "][".join(map(str, index)) + "]"
    kind = err["type"]
    ctx = err.get("ctx", {})
    got = err.get("input")
    if kind == "extra_forbidden":
        hint = suggest_key(loc)
        return f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else "")
    if kind == "literal_error":
        return f"{key}: expected one of {ctx.get('expected')}, got {got!r}"
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


def validate(raw: dict[str, Any] | None, source: str = "config") -> Config:
    """Validate a raw mapping into a :class:`Config`; errors name the dotted key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(e) for e in exc.errors()]
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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (a path, or a packaged config's name: see :func:`cpn_dist.yaml_io.find_config`;
    defaults when ``path`` is None), apply dotted overrides, and validate. Raises :class:`ConfigError`
    with a one-line message on any problem."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = find_config(path)
        source = str(p)
        raw = parse_yaml(p.read_text(), source=source)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for override in overrides:
        apply_override(raw, override)
    return validate(raw, source=source)


def to_yaml(config: Config) -> str:
    """The fully resolved config as YAML (defaults filled in), loadable by :func:`load_config`."""
    return dump_yaml(config.to_dict())
