"""How a training run starts in its ``output.dir``: fresh, resumed, or refused — never a silent restart.

Every checkpoint records the resolved run config (``trainer_state.json``: ``"config"``), and so does
``model_final.pth`` (:func:`weights_metadata`). When a run starts:

- ``--restart``: the folder's checkpoints and final weights are deleted (after the lock is held), and
  the run starts at step 0;
- ``--resume latest`` / ``--resume DIR``: the checkpoint's config must equal this one apart from
  :data:`ALLOWED_TO_DIFFER`; otherwise it is refused, listing the keys that differ;
- neither: a folder without checkpoints starts fresh. One with checkpoints of the same config
  (apart from :data:`ALLOWED_TO_DIFFER`) resumes from the latest automatically — re-running the
  command after a crash or a pre-emption continues the run. Checkpoints of another config, or a
  ``model_final.pth`` without checkpoints, refuse the start in one line naming ``--resume latest`` and
  ``--restart``.

A run is **finished** when its latest checkpoint reached this config's length (:func:`run_length`) and
``model_final.pth`` exists: the same command, with or without ``--resume latest``, says so and how to
train longer or again, and changes no file. A longer ``train.max_steps`` / ``train.epochs`` continues it.

The decision is taken by the main process (under its lock, :mod:`cpn_dist.training.runlock`) and shared with
the others.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpn_dist.config.renames import renamed_flat
from cpn_dist.errors import CpnError, MirroredError
from cpn_dist.training.checkpoint import complete_checkpoints, read_state, resolve_resume

log = logging.getLogger(__name__)

# Keys that do not change a run's result (how often it logs and checkpoints, where it writes, how
# many loader processes read the data, whether files that need full unpickling may load, how the
# global batch is split into micro-batches: the distributed invariant, docs/design.md) ...
NO_EFFECT = ("train.checkpoint_every", "train.keep_last", "log.", "data.workers", "output.", "model.allow_pickle",
             "batch.micro_size")
# ... and the length of the run, which a resume may extend or shorten.
RUN_LENGTH = ("train.epochs", "train.max_steps")
ALLOWED_TO_DIFFER = RUN_LENGTH + NO_EFFECT


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in ignore)


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = ALLOWED_TO_DIFFER) -> list[str]:
    """``key: old → new`` for every leaf key that differs between two config dicts, minus ``ignore``. A key
    added since ``old`` was recorded counts as holding its default there."""
    a, b = renamed_flat(flatten(old)), flatten(new)  # a recorded config may hold keys renamed since
    for key, value in _defaults_of(new).items():
        a.setdefault(key, value)
    keys = [k for k in dict.fromkeys([*a, *b]) if not _ignored(k, ignore) and a.get(k) != b.get(k)]
    return [f"{k}: {_short(a.get(k))} → {_short(b.get(k))}" for k in keys]


def _defaults_of(config: dict) -> dict[str, Any]:
    """The flat defaults of the run config schema (empty for a config that is not a run config's dict)."""
    from pydantic import ValidationError

    from cpn_dist.config.run import Config

    try:
        return flatten(Config.model_validate({"stage": config.get("stage", "cpn")}).to_dict())
    except (ValidationError, TypeError, ValueError):
        return {}


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def weights_metadata(cfg, dataset=None) -> dict[str, Any]:
    """What ``model_final.pth`` records about its model (read back by ``cpn infer``, ``segment``, ``rw``
    and ``weights check``): the stage, backbone, head, the dataset whose classes it scores (``dataset``, a
    :class:`~cpn_dist.data.datasets.info.DatasetInfo`; None: the one of the run's shards, left out when they
    cannot be read — the classifier's width then says it) and the whole resolved config."""
    from cpn_dist import __version__
    from cpn_dist.data.datasets.recorded import run_dataset

    head = {"cpn": cfg.model.head, "segmentation": cfg.segmentation.head}.get(cfg.stage)
    if dataset is None:
        try:
            dataset = run_dataset(cfg.data)
        except CpnError:
            log.info("%s: no readable meta.json; the weights record no dataset", cfg.data.shards)
    recorded = {} if dataset is None else {"dataset": dataset.to_json()}
    return {"stage": cfg.stage, "backbone": cfg.model.backbone, "head": head, **recorded, "config": cfg.to_dict(),
            "version": __version__}  # fmt: skip


def run_length(train, steps_per_epoch: int) -> int:
    """The optimizer steps of a run: ``train.max_steps`` when set (the run goes on into further epochs
    as needed, and ``train.epochs`` is ignored), else ``train.epochs`` × ``steps_per_epoch``."""
    return train.max_steps or train.epochs * steps_per_epoch


def run_length_source(train, steps_per_epoch: int) -> str:
    """Which limit decides the run's length, for the start-of-run log line."""
    by_epochs = train.epochs * steps_per_epoch
    if train.max_steps and train.max_steps != by_epochs:
        return f"train.max_steps {train.max_steps} overrides train.epochs {train.epochs} ({by_epochs} steps)"
    return f"train.epochs {train.epochs} × {steps_per_epoch} steps per epoch"


@dataclass(frozen=True)
class StartPlan:
    checkpoint: str | None  # the checkpoint folder to resume from, or None: step 0
    note: str | None = None  # what to tell the user (logged by every run that has something to say)
    finished: bool = False  # the run is finished: train nothing, change nothing


def plan_start(out_dir: str | Path, cfg, resume: str | None, restart: bool,
               world: tuple[int, str] | None = None) -> StartPlan:  # fmt: skip
    """Decide how the run of ``cfg`` starts in ``out_dir`` (see the module docstring); raises a one-line
    CpnError when it must not. ``world``: (processes, Accelerate's distributed type) of this run, for
    :func:`check_world`. Call on the main process only, holding the folder's lock."""
    out = Path(out_dir)
    final = out / "model_final.pth"
    if restart:
        if resume is not None:
            raise CpnError("--restart and --resume: choose one (--restart deletes the checkpoints --resume reads)")
        done = complete_checkpoints(out)
        if not done and not final.exists():
            return StartPlan(None)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        final.unlink(missing_ok=True)
        return StartPlan(None, f"--restart: deleted {len(done)} checkpoint(s) and the final weights in {out}")
    if resume is not None:
        ckpt = resolve_resume(out, resume)
        if ckpt is None:
            if final.exists():
                raise CpnError(f"{out}: holds model_final.pth but no checkpoint to resume; --restart starts over "
                               "(replacing it), or choose another output.dir")  # fmt: skip
            return StartPlan(None, f"--resume {resume}: no checkpoint in {out} yet, starting at step 0")
        check_resumable(ckpt, cfg, f"--resume {resume}")
        finished = finished_plan(out, ckpt, cfg)
        if finished:
            return finished
        check_world(ckpt, world)
        return StartPlan(str(ckpt))
    done = complete_checkpoints(out)
    if done:
        ckpt = done[-1]
        state = read_state(ckpt)
        step = state.get("global_step", "?")
        if "config" not in state:
            raise CpnError(f"{out}: holds checkpoints (up to step {step}) of an earlier run that record no config; "
                           "continue it with --resume latest, or start over with --restart (deletes them)")
        changes = config_changes(state["config"], cfg.to_dict())
        if changes:
            raise CpnError(f"{out}: holds checkpoints (up to step {step}) of a run with another config "
                           f"({'; '.join(changes)}); continue that run with its config and --resume latest, or "
                           "start over with --restart (deletes them), or choose another output.dir")  # fmt: skip
        finished = finished_plan(out, ckpt, cfg)
        if finished:
            return finished
        check_world(ckpt, world)
        return StartPlan(str(ckpt), f"{out} holds checkpoints of this config: resuming from step {step} "
                                    "(--restart starts over)")  # fmt: skip
    if final.exists():
        raise CpnError(f"{final}: the weights of a finished run; --restart trains again (replacing them), or "
                       "choose another output.dir")  # fmt: skip
    return StartPlan(None)


def finished_plan(out: Path, ckpt: Path, cfg) -> StartPlan | None:
    """The plan of a finished run — ``ckpt`` (the checkpoint it would resume) reached this config's
    length and ``model_final.pth`` exists — saying how to train longer or again; None if not finished."""
    state = read_state(ckpt)
    step, per_epoch = state.get("global_step", 0), state.get("steps_per_epoch")
    if not per_epoch or not (out / "model_final.pth").is_file():
        return None
    total = run_length(cfg.train, per_epoch)
    if step < total:
        return None
    where = f"step {step} of {total}" if step == total else f"step {step}, past this config's {total} steps"
    longer = "train.max_steps" if cfg.train.max_steps else "train.epochs (or set train.max_steps)"
    return StartPlan(str(ckpt), f"{out}: finished ({where}, model_final.pth); to train longer raise {longer} (it "
                                f"continues from step {step}), --restart trains again from step 0", finished=True)


def check_resumable(ckpt: Path, cfg, how: str) -> None:
    """Refuse to resume ``ckpt`` with ``cfg`` when they differ in anything that changes the result."""
    state = read_state(ckpt)
    old = state.get("config")
    if old is None:  # an older checkpoint: at least the global batch must agree
        recorded = state.get("world_size", 1) * state.get("micro_size", 0) * state.get("accumulation", 1)
        if recorded and recorded != cfg.batch.global_size:
            raise CpnError(f"{how}: {ckpt} was trained with a global batch of {recorded}, this config has "
                           f"batch.global_size {cfg.batch.global_size}; resuming would change the run")  # fmt: skip
        log.warning("%s records no config (an older checkpoint): only its global batch was checked", ckpt)
        return
    changes = config_changes(old, cfg.to_dict())
    if changes:
        allowed = ", ".join(k + ("*" if k.endswith(".") else "") for k in ALLOWED_TO_DIFFER)
        raise CpnError(f"{how}: this config differs from {ckpt}'s in what changes the result ({'; '.join(changes)});"
                       f" only {allowed} may differ on resume. Use that run's config, or --restart")  # fmt: skip


def check_world(ckpt: Path, world: tuple[int, str] | None) -> None:
    """Refuse to resume a DeepSpeed checkpoint on another number of processes: ZeRO partitions the optimizer
    state per rank, and DeepSpeed cannot re-partition it when loading. (DDP checkpoints hold the whole
    state and resume on any number of processes with the same global batch.)"""
    state = read_state(ckpt)
    written, kind = state.get("world_size"), state.get("distributed_type")
    if world is None or kind != "DEEPSPEED" or written in (None, world[0]):
        return
    raise CpnError(f"{ckpt}: written by {written} DeepSpeed processes, whose ZeRO optimizer state is partitioned "
                   f"per rank; this run has {world[0]}. Resume on {written} processes, or start a new run from its "
                   "weights (zero_to_fp32.py in that folder writes them; give them as model.weights: the optimizer "
                   "state starts anew). DDP checkpoints resume on any number of processes")  # fmt: skip


def start_plan(acc, cfg, resume: str | None, restart: bool) -> StartPlan:
    """How the run starts (:func:`plan_start`), decided by the main process for every process; a
    checkpoint whose files would run code when loaded is refused (:mod:`cpn_dist.safe_torch`)."""
    from cpn_dist.safe_torch import check_checkpoint_folder
    from cpn_dist.training.runlock import share_from_main

    decision = None
    if acc.is_main_process:
        try:
            plan = plan_start(cfg.output.dir, cfg, resume, restart, (acc.num_processes, acc.distributed_type.value))
            if plan.checkpoint and not plan.finished:  # before Accelerate or DeepSpeed unpickles its files
                check_checkpoint_folder(plan.checkpoint, cfg.model.allow_pickle)
            if plan.note:
                (log.info if plan.finished else log.warning)("%s", plan.note)
            decision = ("ok", plan)
        except CpnError as exc:
            decision = ("error", str(exc), exc.exit_code)
    decision = share_from_main(decision, acc.num_processes)
    if decision[0] == "error":
        error = CpnError(decision[1]) if acc.is_main_process else MirroredError(decision[1])
        error.exit_code = decision[2]
        raise error
    return decision[1]


def layout_change(state: dict, world_size: int, micro: int, accumulation: int) -> str:
    """``"on 2 processes, was 1: micro 2 × accumulation 1 (was 2 × 2)"`` when a checkpoint written on
    another layout of the same global batch is resumed; ``""`` when the layout is the same."""
    was = (state.get("world_size"), state.get("micro_size"), state.get("accumulation"))
    if None in was or was == (world_size, micro, accumulation):
        return ""
    plural = "es" if world_size > 1 else ""
    return (f"on {world_size} process{plural}, was {was[0]}: micro {micro} × accumulation {accumulation} "
            f"(was {was[1]} × {was[2]})")
