"""Long work a log can follow (issue 20): without a terminal, long steps log a progress line (k/n, rate,
ETA) at least every interval, by default; each process chooses and logs its torch threads; tables fit
their content when stdout is not a terminal."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from cpn_dist.data.datasets.voc import read_split
from tests.conftest import ROOT
from tests.train_support import pack_shards, tiny_config

# what `make demo > log 2>&1` gives a command: no terminal, no COLUMNS; a progress line at every advance
NO_TERMINAL = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "OMP_NUM_THREADS")},
               "CPN_PROGRESS_SECONDS": "0"}  # fmt: skip


def _cpn(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`cpn ARGS` with stdout and stderr captured (not a terminal), failing with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "cpn_dist", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or NO_TERMINAL, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"cpn {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def cpn_weights(tmp_path_factory):
    """Tiny CPN weights (paper head), a plain state dict."""
    from cpn_dist.cpn.model import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(build_model("tiny", "paper", dropout=0.0).state_dict(), path)
    return path


def _infer(voc, weights, listed, out) -> list[str]:
    """`cpn infer` of the listed images with the tiny CPN weights, at one scale."""
    return ["infer", "--checkpoint", str(weights), "--backbone", "tiny", "--head", "paper", "--voc-root", str(voc),
            "--list", str(listed), "--out", str(out), "--scales", "1.0"]  # fmt: skip


@pytest.fixture
def torch_threads():
    """Puts torch's thread count back after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cpn_dist.progress"]


# ---- the helper ------------------------------------------------------------------------------------
def test_without_a_terminal_a_progress_line_comes_once_per_interval_with_count_rate_and_eta(caplog):
    from cpn_dist.progress import Progress

    caplog.set_level(logging.INFO, "cpn_dist.progress")
    now = [0.0]
    with Progress("cams", 10, terminal=False, interval=30, clock=lambda: now[0]) as bar:
        for t in (10, 20, 30, 40, 61, 65):
            now[0] = t
            bar.advance()
    # a line 30 s after the start and 31 s after that one; at the end, one with the final count
    assert _progress_lines(caplog) == ["cams: 3/10 images (0.1 img/s, ETA 1:10)",
                                       "cams: 5/10 images (0.082 img/s, ETA 1:01)",
                                       "cams: 6/10 images (0.092 img/s, ETA 0:43)"]  # fmt: skip
    caplog.clear()
    now[0] = 0.0
    with Progress("train", 100, "steps", done=40, terminal=False, interval=0, clock=lambda: now[0]) as bar:
        now[0] = 2.0
        bar.update(42, note="loss 0.5000")  # a resumed run: the rate counts the steps since the start only
    assert _progress_lines(caplog) == ["train: 42/100 steps (1.0 steps/s, ETA 0:58) loss 0.5000"]
    caplog.clear()
    with Progress("rw (process 2/2)", 5, terminal=False, interval=0, shown=False) as bar:
        bar.advance(5)
    assert _progress_lines(caplog) == []  # only the main process reports


# ---- the long steps ----------------------------------------------------------------------------------
def test_training_logs_progress_lines_in_steps_without_a_terminal(synth_voc, tmp_path):
    shards = pack_shards(synth_voc, tmp_path / "shards")
    config = tiny_config(tmp_path / "c.yaml", shards)
    proc = _cpn("train", "--config", str(config), f"output.dir={tmp_path / 'run'}")
    for step in (1, 2, 3):
        assert f"train: {step}/3 steps (" in proc.stderr, proc.stderr
    assert "steps/s, ETA " in proc.stderr and "loss " in proc.stderr


def test_cam_inference_logs_progress_lines_by_default_without_a_terminal(synth_voc, cpn_weights, tmp_path):
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:3]
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    proc = _cpn(*_infer(synth_voc, cpn_weights, tmp_path / "list.txt", tmp_path / "cams"))
    assert "-v" not in proc.args  # shown at the CLI's default log level
    for k in (1, 2, 3):
        assert f"infer: {k}/3 images (" in proc.stderr, proc.stderr
    assert "img/s" in proc.stderr


def test_the_pipelines_cams_step_logs_progress_lines_without_a_terminal(synth_voc, cpn_weights, tmp_path):
    """The step `make demo` sat in for 25 silent minutes on a loaded machine."""
    proc = _cpn("pipeline", "--config", "pipeline_demo", f"voc_root={synth_voc}", f"work_dir={tmp_path / 'work'}",
                f"weights.cpn={cpn_weights}", "cams.scales=[1.0]", "--only", "cams")  # fmt: skip
    total = len(set(read_split(synth_voc / "ImageSets" / "Segmentation" / "train_aug.txt")
                    + read_split(synth_voc / "ImageSets" / "Segmentation" / "train.txt")))  # fmt: skip
    assert f"cams: 1/{total} images (" in proc.stderr and f"cams: {total}/{total} images (" in proc.stderr, proc.stderr


def test_the_demos_inference_step_logs_progress_lines_without_a_terminal(synth_voc, cpn_weights, tmp_path, caplog,
                                                                         monkeypatch):  # fmt: skip
    from cpn_dist.demo.settings import DemoSettings
    from cpn_dist.demo.steps import infer_cams

    monkeypatch.setenv("CPN_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO, "cpn_dist.progress")
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:2]
    infer_cams(cpn_weights, "demo", (), synth_voc, names, tmp_path / "cpn", DemoSettings(scales=(1.0,)))
    lines = _progress_lines(caplog)
    assert [line.split(" (")[0] for line in lines] == ["infer cpn: 1/2 images", "infer cpn: 2/2 images"]
    assert all("img/s" in line for line in lines)


# ---- torch threads -----------------------------------------------------------------------------------
def test_the_thread_rule_shares_the_usable_cores_among_the_machines_processes_unless_the_user_chose():
    from cpn_dist.devices import load_warning, local_processes, thread_count

    assert thread_count(2, 1, {}) == 2  # one process on 2 cores: torch's own default there, unchanged
    assert thread_count(2, 2, {}) == 1
    assert thread_count(16, 3, {}) == 5
    assert thread_count(1, 4, {}) == 1  # never 0
    assert thread_count(8, 1, {"OMP_NUM_THREADS": "3"}) is None  # the user's OMP_NUM_THREADS: torch reads it
    assert thread_count(8, 1, {"OMP_NUM_THREADS": "3"}, requested=2) == 2  # --threads wins
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}) == 4 and local_processes({}) == 1
    assert load_warning(1.9, 2, 2) is None
    warning = load_warning(3.5, 2, 2)
    assert "load average is 3.5 on 2 usable cores" in warning and "oversubscribe" in warning
    assert "--threads" in warning


def test_each_process_sets_and_logs_its_threads_and_warns_once_on_a_loaded_cpu(caplog, monkeypatch, torch_threads):
    from cpn_dist import devices

    cores = devices.usable_cores()
    caplog.set_level(logging.INFO, "cpn_dist.devices")
    monkeypatch.setattr(devices, "_load_warned", False)
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    assert devices.set_torch_threads(None, env={"LOCAL_WORLD_SIZE": "2"}) == max(1, cores // 2)
    assert torch.get_num_threads() == max(1, cores // 2)
    devices.set_torch_threads(None, env={"LOCAL_WORLD_SIZE": "2"})
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "cpn_dist.devices"]
    chosen = (f"torch threads: {max(1, cores // 2)} per process ({cores} cores, 2 processes); set --threads or "
              "OMP_NUM_THREADS to choose")  # fmt: skip
    assert messages.count(("INFO", chosen)) == 2
    assert [level for level, message in messages if "oversubscribe" in message] == ["WARNING"]  # once
    caplog.clear()
    devices.set_torch_threads(None, env={"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not caplog.records  # the machine's other processes say nothing
    assert devices.set_torch_threads(3, env={}) == 3 == torch.get_num_threads()


def test_the_cli_logs_its_thread_choice_and_honours_threads(synth_voc, cpn_weights, tmp_path, torch_threads):
    from cpn_dist.train import run_main

    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:1]
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    infer = [*_infer(synth_voc, cpn_weights, tmp_path / "list.txt", tmp_path / "cams"), "--overwrite"]
    proc = _cpn("-v", *infer, "--threads", "1")
    assert "torch threads: 1 per process (--threads)" in proc.stderr, proc.stderr
    from cpn_dist import devices

    cores = devices.usable_cores()
    assert "torch threads" not in _cpn(*infer).stderr  # the choice is INFO: shown with -v
    proc = _cpn("-v", *infer)
    assert f"torch threads: {cores} per process ({cores} cores, 1 process)" in proc.stderr, proc.stderr
    # `accelerate launch -m cpn_dist.train --threads N` sets them before training
    seen = []
    assert run_main(["--config", "demo", "--threads", "1"], "cpn_dist.train", "train",
                    lambda cfg, **kw: seen.append(torch.get_num_threads())) == 0  # fmt: skip
    assert seen == [1]


# ---- tables ------------------------------------------------------------------------------------------
def test_tables_fit_their_content_when_stdout_is_not_a_terminal(synth_voc, tmp_path):
    """rich cut them to 80 columns (`base…`, `hidi…`); COLUMNS is unset, as under `make demo > log`."""
    wide = tmp_path / ("a_folder_whose_name_alone_makes_the_row_wider_than_eighty_columns" + "_x" * 10)
    wide.mkdir()
    listed = wide / "train_aug.txt"
    listed.write_text((synth_voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text())
    _cpn("pack", "--voc-root", str(synth_voc), "--split", str(listed), "--out", str(tmp_path / "shards"),
         "--slic-segments", "30", "--workers", "1")  # fmt: skip
    info = _cpn("shards", "info", str(tmp_path / "shards"))
    assert f"{listed} (labels: Annotations/*.xml" in info.stdout, info.stdout  # the source row, whole
    # the demo's table: every header and model name in full
    script = ("from cpn_dist.cli import print_table\nfrom cpn_dist.cli.demo_cmd import scores_table\n"
              "from cpn_dist.demo.settings import ModelScores\n"
              "row = dict(best_beta=0.25, miou=0.5, foreground=0.4, background=0.6, betas=[0.25], curve=[0.5],"
              " body_recall=0.3, marker_recall=0.9, body_magnitude=0.2, marker_magnitude=0.8,"
              " premise={'superpixel': {'share': 0.5}, 'grid': {'share': 0.4}})\n"
              "print_table(scores_table({n: ModelScores(name=n, **row) for n in ('baseline', 'hiding', 'cpn')}))\n")
    shown = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=NO_TERMINAL)
    assert shown.returncode == 0, shown.stderr
    for text in ("baseline", "hiding", "body rec.", "marker rec.", "body CAM", "marker CAM", "premise sp / grid",
                 "(IoU and recall in %)"):  # fmt: skip
        assert text in shown.stdout, shown.stdout


def test_a_command_started_on_a_loaded_cpu_lets_openmp_threads_sleep_unless_the_user_chose():
    from cpn_dist.cli import passive_when_loaded

    env: dict[str, str] = {}
    assert passive_when_loaded(env, load=5.2, cores=2, torch_loaded=False) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert not passive_when_loaded(env := {}, load=1.5, cores=2, torch_loaded=False) and env == {}  # idle: nothing
    assert not passive_when_loaded(env := {"OMP_WAIT_POLICY": "ACTIVE"}, load=9, cores=2, torch_loaded=False)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}  # the user's choice stays
    assert not passive_when_loaded(env := {}, load=9, cores=2, torch_loaded=True) and env == {}  # too late to matter
