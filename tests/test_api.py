"""The package's top level: ``import cpn_dist`` imports no torch, and every name it lists resolves to
the object its module defines."""

import importlib
import subprocess
import sys

import pytest

import cpn_dist
from tests.conftest import ROOT

HOMES = {
    "Config": "cpn_dist.config",
    "load_config": "cpn_dist.config",
    "CPNet": "cpn_dist.cpn.model",
    "build_model": "cpn_dist.cpn.model",
    "load_weights": "cpn_dist.models",
    "cpn_loss": "cpn_dist.cpn.loss",
    "CPNTask": "cpn_dist.cpn.task",
    "InferSettings": "cpn_dist.cpn.infer",
    "infer_samples": "cpn_dist.cpn.infer",
    "pack_split": "cpn_dist.data.shards.pack",
    "build_train_loader": "cpn_dist.data.loading.loader",
    "sweep": "cpn_dist.labels.evaluate",
    "run_demo": "cpn_dist.demo.run",
}


def test_import_cpn_dist_imports_no_torch():
    code = "import sys, cpn_dist; cpn_dist.__version__; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False", proc.stderr


def test_public_names_resolve_to_their_modules():
    assert set(cpn_dist.__all__) == {"__version__", *HOMES}
    for name, module in HOMES.items():
        assert getattr(cpn_dist, name) is getattr(importlib.import_module(module), name), name
    assert set(cpn_dist.__all__) <= set(dir(cpn_dist))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        cpn_dist.no_such_name  # noqa: B018
