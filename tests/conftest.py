import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cpn(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the `cpn` CLI in a fresh process, as a user would."""
    cmd = [sys.executable, "-m", "cpn_dist", *args]
    # one torch thread per CLI process: tests run many small ones, often beside each other
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory) -> Path:
    """A 40-image synthetic VOC made through the CLI, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("voc") / "VOC2012"
    run_cpn("synth-voc", "--out", str(out), "--images", "40", "--seed", "3", check=True)
    return out


def cams_from_ground_truth(voc: Path, split: str, out: Path, inside: float = 0.5, outside: float = 0.3) -> list[str]:
    """CAM files whose class maps are ``inside`` on the class's ground-truth pixels and ``outside`` elsewhere:
    every β in [outside, inside) labels them perfectly."""
    from cpn_dist.data.datasets.voc import read_label_png, read_split
    from cpn_dist.labels.cams import save_cams

    names = read_split(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        gt = read_label_png(voc / "SegmentationClass" / f"{name}.png")
        classes = sorted(set(np.unique(gt).tolist()) - {0, 255})
        save_cams(out / f"{name}.npy", {c - 1: np.where(gt == c, inside, outside).astype(np.float32) for c in classes})
    return names
