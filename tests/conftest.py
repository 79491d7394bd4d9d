import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cpn(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the `cpn` CLI in a fresh process, as a user would."""
    cmd = [sys.executable, "-m", "cpn_dist", *args]
    proc = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory) -> Path:
    """A 40-image synthetic VOC made through the CLI, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("voc") / "VOC2012"
    run_cpn("synth-voc", "--out", str(out), "--images", "40", "--seed", "3", check=True)
    return out
