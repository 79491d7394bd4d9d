"""The package works outside the repository: a wheel installed into a fresh environment finds its
configs by name from an empty folder (what `pip install cpn-dist` on a cluster gives)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _sh(*cmd, cwd=None, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel of this source tree; the test environment's packages (torch, …)
    are reachable through a .pth file, but not its copy of cpn_dist (an editable install is not)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: the build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "cpn_dist", src / "cpn_dist", ignore=shutil.ignore_patterns("__pycache__"))
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src)
    wheel = next((tmp / "dist").glob("cpn_dist-*.whl"))
    venv = tmp / "venv"
    _sh(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    site = Path(_sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())  # fmt: skip
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", "--no-index",
        wheel)  # fmt: skip
    return {"venv": venv, "wheel": wheel, "empty": tmp_path_factory.mktemp("empty")}


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"COLUMNS": "200"}


def test_the_wheel_ships_every_config(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {f"cpn_dist/configs/{p.name}" for p in (ROOT / "cpn_dist" / "configs").glob("*.yaml")}
    assert shipped and shipped <= names


def test_the_installed_cli_finds_its_configs_from_an_empty_folder(installed):
    venv, empty = installed["venv"], installed["empty"]
    where = _sh(venv / "bin" / "python", "-c", "import cpn_dist; print(cpn_dist.__file__)", cwd=empty, env=_env())
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not the source tree
    shown = _sh(venv / "bin" / "cpn", "config", "show", "demo", cwd=empty, env=_env())
    assert yaml.safe_load(shown.stdout)["model"]["backbone"] == "tiny"
    helped = _sh(venv / "bin" / "cpn", "demo", "--help", cwd=empty, env=_env())
    assert "usage" in helped.stdout.lower()
    pipeline = _sh(venv / "bin" / "python", "-c", "from cpn_dist.pipeline import load_pipeline_config as l; "
                   "c = l('pipeline_demo'); from cpn_dist.config import load_config; load_config(c.configs.cpn); "
                   "print(c.configs.cpn)", cwd=empty, env=_env())  # fmt: skip
    assert pipeline.stdout.strip() == "demo.yaml"
    assert list(empty.iterdir()) == []
