"""Which model a weights file needs: from what the file records, or from the user's flags.

Our ``model_final.pth`` and checkpoint folders record their stage, backbone, head and resolved run
config (:func:`cpn_dist.models.weights.read_weights`). ``cpn infer``, ``segment``, ``rw`` and
``weights check`` build the model from that record when no model flag is given; a flag or a
``--config`` that contradicts it is an error naming both values. Files that record nothing (released
weights, runs of older versions) are built from ``--config`` (or the defaults) and the flags, as
before; a shape mismatch then says which model was built and which flags choose another.
"""

from __future__ import annotations

from pathlib import Path

from cpn_dist.errors import CpnError

# The keys that define the model of each stage (and the input normalisation it was trained with).
MODEL_KEYS = {
    "cpn": ("model.backbone", "model.head", "data.mean", "data.std"),
    "affinity": ("model.backbone", "data.mean", "data.std"),
    "segmentation": ("model.backbone", "segmentation.head", "segmentation.head_channels",
                     "segmentation.fov_dilation", "segmentation.aspp_rates", "data.mean", "data.std"),
}  # fmt: skip
KIND = {"cpn": "a CPN (stage: cpn)", "affinity": "an AffinityNet (stage: affinity)",
        "segmentation": "a segmentation model (stage: segmentation)"}  # fmt: skip


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


def weights_config(path: str | Path, meta: dict | None, stage: str, config: str | None = None,
                   flags: dict[str, tuple[str, object]] | None = None):  # fmt: skip
    """The run config to build the model of weights file ``path`` (with metadata ``meta``) from, for a
    command that needs a model of ``stage``. ``flags``: ``{dotted key: (flag name, value or None)}``,
    e.g. ``{"model.head": ("--head", "paper")}``."""
    from cpn_dist.config.load import load_config
    from cpn_dist.config.renames import renamed_tree
    from cpn_dist.config.run import apply_override, validate

    flags = {k: v for k, v in (flags or {}).items() if v[1] is not None}
    if meta is None or not isinstance(meta.get("config"), dict):
        cfg = load_config(config)
        raw = cfg.to_dict()
        for key, (_, value) in flags.items():
            apply_override(raw, f"{key}={value}")
        return validate(raw, source=str(config or "defaults"))
    recorded = renamed_tree(meta["config"])  # weights of older versions record keys renamed since
    if meta.get("stage", recorded.get("stage")) != stage:
        raise CpnError(f"{path}: the weights of {KIND.get(meta.get('stage'), meta.get('stage'))}; this command needs "
                       f"{KIND[stage]}")  # fmt: skip
    for key, (flag, value) in flags.items():
        if _get(recorded, key) != value:
            raise CpnError(f"{flag} {value} contradicts {path}, whose model has {key} {_get(recorded, key)!r} "
                           f"(leave {flag} out: the weights say which model they need)")  # fmt: skip
    if config is None:
        return validate(recorded, source=f"{path} (its recorded config)")
    cfg = load_config(config)
    given = cfg.to_dict()
    differ = [f"{k}: {_get(given, k)!r} there, {_get(recorded, k)!r} in the weights" for k in MODEL_KEYS[stage]
              if _get(given, k) != _get(recorded, k)]  # fmt: skip
    if differ:
        raise CpnError(f"--config {config} contradicts {path} ({'; '.join(differ)}); leave --config out to use "
                       "the config the weights record")  # fmt: skip
    return cfg


def built_as(cfg, stage: str) -> str:
    """A short description of the model built from ``cfg``, for messages."""
    return ", ".join(f"{k} {_get(cfg.to_dict(), k)}" for k in MODEL_KEYS[stage] if not k.startswith("data."))


def load_checked(model, state: dict, path: str | Path, meta: dict | None, cfg, stage: str, hint: str):
    """Load ``state`` (read from ``path``) into ``model``; a shape mismatch in weights that record no model
    says which model was built and which flags (``hint``) choose another."""
    from cpn_dist.models.weights import load_state

    try:
        return load_state(model, state, path)
    except CpnError as exc:
        if meta is not None:
            raise
        raise CpnError(f"{exc}. The model was built as {built_as(cfg, stage)}: give {hint} the weights were "
                       "trained with") from None



# How messages name each stage, and a packaged config whose model.weights shows where a run of it starts.
STAGE_NAMES = {"cpn": "stage-1 CPN", "affinity": "stage-2 AffinityNet", "segmentation": "stage-3 segmentation"}
START_EXAMPLES = {"cpn": "configs/voc_cpn_paper.yaml", "affinity": "configs/voc_affinity.yaml",
                  "segmentation": "configs/voc_segmentation.yaml"}  # fmt: skip


def check_start(path: str | Path, meta: dict | None, stage: str) -> None:
    """Refuse, in one line, weights ``path`` (with metadata ``meta``) as ``model.weights`` of a ``stage`` run
    when they record a trained model of another stage: a run starts from backbone weights — ImageNet
    weights, or a CPN trained without a head (a plain CAM classifier, as ``cpn demo``'s warm-up). Weights
    that record nothing (ImageNet, released files) are not judged here."""
    recorded = (meta or {}).get("stage")
    classifier = recorded == "cpn" and meta.get("head") in (None, "none")
    if recorded is None or recorded == stage or classifier:
        return
    head = f", head {meta['head']}" if meta.get("head") else ""
    raise CpnError(f"{path}: {STAGE_NAMES.get(recorded, recorded)} weights (recorded stage {recorded}{head}), not "
                   f"a start for a {STAGE_NAMES[stage]} run; its model.weights are backbone weights: the backbone's "
                   f"ImageNet weights (as in {START_EXAMPLES[stage]}) or a CPN trained without a head (model.head: "
                   "none, like `cpn demo`'s warm-up)")  # fmt: skip


def load_start_weights(model, path: str | Path, stage: str, allow_pickle: bool = False):
    """Load ``model.weights`` (``path``) into the freshly built ``model`` of a ``stage`` run, as
    :func:`cpn_dist.models.weights.load_weights` does (returns its report), after :func:`check_start`.
    ``allow_pickle``: ``model.allow_pickle`` (see :func:`cpn_dist.models.weights.read_state_dict`)."""
    from cpn_dist.models.weights import load_state, read_weights, resolve_weights

    path = resolve_weights(path, getattr(model, "backbone_name", None))
    state, meta = read_weights(path, allow_pickle)
    check_start(path, meta, stage)
    return load_state(model, state, path)
