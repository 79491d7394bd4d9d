"""The CLI as a new user meets it: no torch where no model runs, arguments checked before any work,
output folders created, warnings that matter (and none that do not)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, cams_from_ground_truth, run_cpn

# Runs `cpn ARGS` in a fresh interpreter and reports, on the last line of stderr, whether torch was imported.
WATCH = """
import sys
from cpn_dist.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("torch imported" if "torch" in sys.modules else "no torch", file=sys.stderr)
sys.exit(code or 0)
"""


def watch(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, bool]:
    proc = subprocess.run([sys.executable, "-c", WATCH, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0, f"cpn {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc, proc.stderr.strip().splitlines()[-1] == "torch imported"


def test_version_and_every_help_import_no_torch():
    from cpn_dist.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for args in (["--version"], ["--help"], *([name, "--help"] for name in sub.choices)):
        proc, torch_imported = watch(*args)
        assert not torch_imported, f"cpn {' '.join(args)} imported torch"


def test_commands_that_run_no_model_import_no_torch(synth_voc, tmp_path):
    val = synth_voc / "ImageSets" / "Segmentation" / "val.txt"
    cams_from_ground_truth(synth_voc, "val", tmp_path / "cams")
    runs = [
        ["config", "show", "demo"],
        ["config", "keys"],
        ["config", "docs"],
        ["synth-voc", "--out", str(tmp_path / "voc"), "--images", "4", "--size", "48"],
        ["check-voc", str(synth_voc)],
        ["pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(tmp_path / "shards"),
         "--slic-segments", "20", "--shard-size", "50"],
        ["shards", "verify", str(tmp_path / "shards")],
        ["shards", "info", str(tmp_path / "shards")],
        ["eval", "--cams", str(tmp_path / "cams"), "--gt", str(synth_voc / "SegmentationClass"), "--list", str(val),
         "--betas", "0.2,0.4,0.6", "--json", str(tmp_path / "scores.json")],
        ["pseudo", "--cams", str(tmp_path / "cams"), "--out", str(tmp_path / "pseudo"), "--beta", "0.4"],
        ["crf", "--cams", str(tmp_path / "cams"), "--voc-root", str(synth_voc), "--beta", "0.4", "--out",
         str(tmp_path / "crf"), "--list", str(val)],
        ["show", "--cams", str(tmp_path / "cams"), "--voc-root", str(synth_voc), "--out", str(tmp_path / "g.png")],
    ]  # fmt: skip
    for args in runs:
        _, torch_imported = watch(*args)
        assert not torch_imported, f"cpn {' '.join(args)} imported torch"
    assert (tmp_path / "scores.json").is_file() and len(list((tmp_path / "pseudo").glob("*.png"))) == 8


def test_outputs_go_into_folders_that_do_not_exist_yet(synth_voc, tmp_path):
    val = synth_voc / "ImageSets" / "Segmentation" / "val.txt"
    cams_from_ground_truth(synth_voc, "val", tmp_path / "cams")
    new = tmp_path / "new"
    run_cpn("eval", "--cams", str(tmp_path / "cams"), "--gt", str(synth_voc / "SegmentationClass"), "--list",
            str(val), "--betas", "0.2,0.4,0.6", "--json", str(new / "a" / "s.json"), "--plot",
            str(new / "b" / "s.png"), check=True)  # fmt: skip
    run_cpn("show", "--cams", str(tmp_path / "cams"), "--voc-root", str(synth_voc), "--out", str(new / "c" / "g.png"),
            check=True)  # fmt: skip
    assert (new / "a" / "s.json").is_file()
    for png in (new / "b" / "s.png", new / "c" / "g.png"):
        assert Image.open(png).format == "PNG"
    # a folder given as the output file is refused before the work
    proc = run_cpn("eval", "--cams", str(tmp_path / "cams"), "--gt", str(synth_voc / "SegmentationClass"),
                   "--list", str(val), "--json", str(new / "a"))  # fmt: skip
    assert proc.returncode == 1 and "--json" in proc.stderr and "is a folder" in proc.stderr


@pytest.mark.parametrize("command", ["pseudo", "crf", "show"])
def test_a_negative_beta_is_refused_in_one_line(command, synth_voc, tmp_path):
    cams_from_ground_truth(synth_voc, "val", tmp_path / "cams")
    extra = {"pseudo": ["--out", str(tmp_path / "o")], "crf": ["--out", str(tmp_path / "o"), "--voc-root",
                                                                str(synth_voc)],
             "show": ["--out", str(tmp_path / "g.png"), "--voc-root", str(synth_voc)]}[command]  # fmt: skip
    proc = run_cpn(command, "--cams", str(tmp_path / "cams"), "--beta", "-1", *extra)
    assert proc.returncode == 1 and "--beta -1: a background score β must be a number >= 0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_eval_warns_when_the_best_beta_lies_on_the_edge_of_the_sweep(synth_voc, tmp_path):
    val = synth_voc / "ImageSets" / "Segmentation" / "val.txt"
    cams_from_ground_truth(synth_voc, "val", tmp_path / "cams")  # best β: anything in [0.3, 0.5)
    common = ["eval", "--cams", str(tmp_path / "cams"), "--gt", str(synth_voc / "SegmentationClass"), "--list",
              str(val)]  # fmt: skip
    inside = run_cpn(*common, "--betas", "0.2,0.4,0.6", check=True)
    assert "best β = 0.400" in inside.stdout and "edge" not in inside.stderr
    edge = run_cpn(*common, "--betas", "0.4,0.6,0.8", check=True)
    assert "best β = 0.400" in edge.stdout and "lies on the edge of the sweep" in edge.stderr


def test_infer_refuses_an_empty_image_list(synth_voc, tmp_path):
    import torch

    from cpn_dist.config import load_config
    from cpn_dist.cpn.model import build_model
    from cpn_dist.training.checkpoint import save_weights
    from cpn_dist.training.run_start import weights_metadata

    cfg = load_config("demo")
    weights = tmp_path / "model_final.pth"
    torch.manual_seed(0)
    save_weights(build_model("tiny", "paper").state_dict(), weights, metadata=weights_metadata(cfg))
    (tmp_path / "empty.txt").write_text("\n")
    proc = run_cpn("infer", "--checkpoint", str(weights), "--backbone", "tiny", "--head", "paper", "--voc-root",
                   str(synth_voc), "--list", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "cams"))  # fmt: skip
    assert proc.returncode == 1 and "empty.txt: the list holds no image ids" in proc.stderr
    assert not (tmp_path / "cams").exists()


def test_train_help_shows_examples_and_where_the_keys_are():
    out = run_cpn("train", "--help", check=True).stdout
    assert "examples:" in out and "cpn config keys" in out and "--restart" in out and "--resume latest" in out


def test_deepspeeds_cpu_accelerator_warning_is_filtered():
    code = ("from cpn_dist.training.launch import quiet_libraries; quiet_libraries()\n"
            "from deepspeed.accelerator import get_accelerator; get_accelerator()")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Setting accelerator to CPU" not in proc.stdout + proc.stderr
