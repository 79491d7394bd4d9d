"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``{output.dir}/checkpoints/step_{N:08d}/`` holding Accelerate's
``save_state`` (model, optimizer, gradient scaler, every process's RNG states; a DeepSpeed engine
checkpoint under DeepSpeed) plus ``trainer_state.json`` (global step, epoch and position in it, the
batch layout, and the resolved run config that a resume is checked against).
It is written under a temporary name and renamed only when every process has finished writing, so
a process killed mid-write never leaves a folder that looks complete, and never replaces the last
good checkpoint. Checkpoints live on a filesystem shared by all nodes (as on any cluster).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from cpn_dist.atomic import write_atomic
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts once renamed and holding its state file)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name)[1]))


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``latest`` (None if there is none yet) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        done = complete_checkpoints(output_dir)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CpnError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    return path


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(accelerator, output_dir: str | Path, state: dict, keep_last: int) -> Path:
    """Write a checkpoint of the prepared objects and ``state`` atomically; prune old ones.

    Collective: every process must call it.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{state['global_step']:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # re-saving the same step (e.g. pre-emption right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def save_weights(state_dict: dict, path: str | Path, metadata: dict | None = None) -> None:
    """Save weights atomically, loadable by ``cpn_dist.models.load_weights``: a plain state dict, or with
    ``metadata`` ``{"model": state dict, "cpn_dist": metadata}`` (a self-describing file: stage,
    backbone, head, resolved config; the released scripts read ``torch.load(path)["model"]``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in state_dict.items()}
    saved = weights if metadata is None else {"model": weights, "cpn_dist": metadata}
    write_atomic(path, lambda tmp: torch.save(saved, tmp), path.with_name(f".tmp-{path.name}"))
