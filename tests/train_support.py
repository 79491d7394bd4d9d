"""Shared pieces of the trainer tests: packed synthetic shards, a tiny config, launch helpers."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from tests.conftest import ROOT, run_cpn

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def pack_shards(voc: Path, out: Path) -> Path:
    run_cpn("pack", "--voc-root", str(voc), "--split", "train_aug", "--out", str(out), "--slic-segments", "30",
            "--shard-size", "8", "--workers", "2", check=True)  # fmt: skip
    return out


def tiny_config(path: Path, shards: Path, **sections) -> Path:
    """A 3-step tiny-backbone config on ``shards`` with dropout off and deterministic data."""
    cfg = {
        "data": {"shards": str(shards), "split": "train_aug", "crop": 48, "scale_range": [48, 64], "workers": 0,
                 "deterministic": True, "patch": {"kind": "superpixel", "segments": 30}},
        "model": {"backbone": "tiny", "head": "official", "dropout": 0.0},
        "loss": {"recipe": "official", "ohem_scope": "image"},
        "batch": {"global_size": 4, "micro_size": 4},
        "optim": {"lr": 0.05},
        "train": {"epochs": 1, "max_steps": 3, "checkpoint_every": 100, "seed": 7},
        "log": {"every": 1, "image_every": 2},
    }  # fmt: skip
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (an `accelerate launch …` or a python script) and fail with its output if it fails."""
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000", **(env or {})})  # fmt: skip
    if proc.returncode != 0:
        tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return proc


def accelerate_cpu(num_processes: int, *extra: str) -> list[str]:
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *extra]


def load_final(run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of a run's model_final.pth (which also records the model: cpn_dist.models.weights)."""
    from cpn_dist.models.weights import read_state_dict

    return read_state_dict(run_dir / "model_final.pth")


def run_layout(run_dir: Path) -> tuple[int, int, int, str]:
    """(world size, micro batch, accumulation, distributed type) recorded in the run's last checkpoint."""
    import json

    last = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    return state["world_size"], state["micro_size"], state["accumulation"], state["distributed_type"]


def assert_same_weights(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}")


def tensorboard_scalars(folder: Path, tag: str) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard run under ``folder`` (each folder holding event files) → the (step, value) of
    ``tag`` in it, as TensorBoard shows them (events a resumed writer purged are left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for run in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []
        runs[str(run.relative_to(folder))] = [(e.step, e.value) for e in scalars]
    return runs
