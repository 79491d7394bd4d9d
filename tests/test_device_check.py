"""benchmarks/device_check.py --quick: every section measured on the CPU and written as JSON and markdown."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_device_check_writes_every_section(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/device_check.py", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "device_check.json").read_text())
    assert record["quick"] and record["backbone"] == "tiny"
    steps = [r for r in record["train_step"] if "error" not in r]
    assert {(r["recipe"], r["precision"], r["channels_last"]) for r in steps} == {
        (recipe, precision, layout) for recipe in ("paper", "official") for precision in ("no", "bf16")
        for layout in (False, True)}  # fmt: skip
    assert all(r["step_s_median"] > 0 and r["peak_memory_bytes"] > 0 for r in steps)
    assert {r["window"] for r in record["syncs"]} == {"global batch 4, no accumulation",
                                                      "2 micro-steps of 2 (accumulation)"}  # fmt: skip
    assert all(r["host_syncs"] >= 1 for r in record["syncs"])  # the global selection reads its result once
    agreement = record["bf16_vs_fp32"]
    # the agreement threshold itself is tests/test_train_step.py's; here: the section is written and finite
    assert -1.0 - 1e-6 <= agreement["gradient_cosine"] <= 1.0 + 1e-6
    assert set(agreement["relative_difference"]) >= {"total", "cls", "tcp", "cpcr"}
    assert [r["precision"] for r in record["inference"]] == ["fp32", "bf16"]
    assert all(r["images_per_s"] > 0 for r in record["inference"])
    run = record["training_run"]
    assert run["summary"]["global_step"] == run["steps"]
    assert 0.0 <= run["summary"]["means"]["speed/data_wait_fraction"] <= 1.0
    table = (tmp_path / "device_check.md").read_text()
    for heading in ("Train step", "Host syncs", "bf16 against fp32", "Inference", "Training run"):
        assert heading in table
