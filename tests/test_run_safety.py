"""Never lose a run: re-running a training command resumes it or refuses in one line, one run per
output.dir, Ctrl-C checkpoints, self-describing final weights, one-line errors from loader workers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.errors import CpnError
from cpn_dist.training.checkpoint import complete_checkpoints
from tests.conftest import ROOT
from tests.train_support import accelerate_cpu, pack_shards, tensorboard_scalars, tiny_config

pytestmark = pytest.mark.slow
CPN = [sys.executable, "-m", "cpn_dist"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


@pytest.fixture(scope="module")
def shards(synth_voc, tmp_path_factory):
    return pack_shards(synth_voc, tmp_path_factory.mktemp("safety") / "shards")


def _run(*args, timeout=600):
    return subprocess.run([*CPN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def _start(*args, **kw):
    return subprocess.Popen([*CPN, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, **kw)  # fmt: skip


def _wait_for_line(proc, text: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"process ended ({proc.wait()}) before printing {text!r}:\n{''.join(seen)}")


def _errors(proc) -> list[str]:
    """stderr after the last log line (INFO/WARNING lines, indented continuations): what the user is told."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    logged = [i for i, line in enumerate(lines) if " INFO " in line or " WARNING " in line or line.startswith(" ")]
    return lines[logged[-1] + 1:] if logged else lines


def _mtimes(run: Path) -> dict[str, int]:
    return {p.name: (p / "trainer_state.json").stat().st_mtime_ns for p in complete_checkpoints(run)}


def test_rerun_after_sigkill_resumes_instead_of_starting_over(tmp_path, shards):
    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 6, "checkpoint_every": 3, "epochs": 2})
    out = tmp_path / "run"
    proc = _start("train", "--config", str(config), f"output.dir={out}")
    while not (out / "checkpoints" / "step_00000003" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000003"], "killed too late to test resume"
    before = _mtimes(out)

    again = _run("train", "--config", str(config), f"output.dir={out}")  # the same command, no --resume
    assert again.returncode == 0, again.stderr
    log = again.stdout + again.stderr
    assert "resuming from step 3" in log and "step 4/6" in log and "step 1/6" not in log
    assert _mtimes(out)["step_00000003"] == before["step_00000003"]  # the old checkpoint was not rewritten
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000003", "step_00000006"]


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (hidden ones, checkpoints, TensorBoard events included): mtime and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_the_same_command_on_a_finished_run_says_so_and_changes_no_file(tmp_path, shards):
    from cpn_dist.train import train

    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 2})
    out = tmp_path / "run"
    assert _run("train", "--config", str(config), f"output.dir={out}").returncode == 0
    before = _snapshot(out)
    assert ".lock" in before and any("tfevents" in name for name in before) and "train_summary.json" in before
    for how in ([], ["--resume", "latest"]):
        again = _run("train", "--config", str(config), f"output.dir={out}", *how)
        said = " ".join((again.stdout + again.stderr).split())
        assert again.returncode == 0, again.stderr
        assert (f"{out}: finished (step 2 of 2, model_final.pth); to train longer raise train.max_steps (it "
                "continues from step 2), --restart trains again from step 0") in said  # fmt: skip
        assert "resum" not in said and _snapshot(out) == before
    # a caller in this process (the pipeline, the demo) still gets the final weights back
    assert train(load_config(config, [f"output.dir={out}"])) == out / "model_final.pth"
    assert _snapshot(out) == before


def test_a_longer_run_continues_a_finished_one_and_its_summary_covers_every_step(tmp_path, shards):
    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 2})
    out = tmp_path / "run"
    assert _run("train", "--config", str(config), f"output.dir={out}").returncode == 0
    first = json.loads((out / "train_summary.json").read_text())
    longer = _run("train", "--config", str(config), f"output.dir={out}", "train.max_steps=4")
    assert longer.returncode == 0 and "resuming from step 2" in longer.stderr, longer.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["global_step"], summary["steps_averaged"]) == (4, 4)
    [curve] = tensorboard_scalars(out, "loss/total").values()  # one run: steps 1-2, then 3-4
    assert [step for step, _ in curve] == [1, 2, 3, 4]
    losses = [value for _, value in curve]
    assert first["means"]["loss/total"] == pytest.approx(sum(losses[:2]) / 2, rel=1e-5)
    assert summary["means"]["loss/total"] == pytest.approx(sum(losses) / 4, rel=1e-5)  # not the last 2 only
    assert set(summary["means"]) == set(first["means"])


def test_rerun_with_another_config_is_refused_naming_the_keys_and_both_flags(tmp_path, shards):
    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 2})
    out = tmp_path / "run"
    assert _run("train", "--config", str(config), f"output.dir={out}").returncode == 0
    before = _mtimes(out)
    final = (out / "model_final.pth").stat().st_mtime_ns

    other = _run("train", "--config", str(config), f"output.dir={out}", "optim.lr=0.02")
    assert other.returncode == 1 and len(_errors(other)) == 1, other.stderr
    assert "optim.lr: 0.05 → 0.02" in other.stderr and "--resume latest" in other.stderr
    assert "--restart" in other.stderr and "Traceback" not in other.stderr
    assert _mtimes(out) == before and (out / "model_final.pth").stat().st_mtime_ns == final

    # what may differ: the run's length, its logging, its loader workers
    longer = _run("train", "--config", str(config), f"output.dir={out}", "train.max_steps=3", "log.every=2")
    assert longer.returncode == 0, longer.stderr
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000003"]


def test_resume_refuses_a_config_that_changes_the_result(tmp_path, shards):
    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 2})
    out = tmp_path / "run"
    assert _run("train", "--config", str(config), f"output.dir={out}").returncode == 0
    bigger = _run("train", "--config", str(config), f"output.dir={out}", "--resume", "latest", "train.max_steps=4",
                  "batch.global_size=8")  # fmt: skip
    assert bigger.returncode == 1 and "batch.global_size: 4 → 8" in bigger.stderr
    assert "train.max_steps" not in bigger.stderr.split("(")[1].split(")")[0]  # allowed to differ: not listed
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002"]


def test_restart_starts_over_and_a_finished_folder_needs_it(tmp_path, shards):
    from cpn_dist.train import train

    cfg = load_config(tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 2}), [f"output.dir={tmp_path}/r"])
    train(cfg)
    old = _mtimes(tmp_path / "r")
    other = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.01})})
    with pytest.raises(CpnError, match="--restart"):
        train(other)
    with pytest.raises(CpnError, match="--restart and --resume: choose one"):
        train(other, resume="latest", restart=True)
    train(other, restart=True)
    new = _mtimes(tmp_path / "r")
    assert list(new) == ["step_00000002"] and new["step_00000002"] != old["step_00000002"]
    state = json.loads((tmp_path / "r" / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["config"]["optim"]["lr"] == 0.01


def test_two_runs_into_one_folder_the_second_fails_fast_naming_the_holder(tmp_path, shards):
    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 500, "epochs": 100},
                         data={"workers": 1, "deterministic": False})  # fmt: skip
    out = tmp_path / "run"
    first = _start("train", "--config", str(config), f"output.dir={out}")
    try:
        _wait_for_line(first, "step 1/500")
        second = _run("train", "--config", str(config), f"output.dir={out}", timeout=120)
        assert second.returncode == 1 and len(_errors(second)) == 1, second.stderr
        assert f"in use by another run (pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert complete_checkpoints(out) == []  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the dead holder's lock (its loader worker closed its copy): the same command goes on
    third = _run("train", "--config", str(config), f"output.dir={out}", "train.max_steps=1")
    assert third.returncode == 0, third.stderr


def test_ctrl_c_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path, shards):
    """Ctrl-C in a terminal signals the whole process group, loader workers included."""
    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 500, "epochs": 100},
                         data={"workers": 1, "deterministic": False})  # fmt: skip
    out = tmp_path / "run"
    proc = _start("train", "--config", str(config), f"output.dir={out}", start_new_session=True)
    _wait_for_line(proc, "step 2/500")
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    done = complete_checkpoints(out)
    assert len(done) == 1 and int(done[0].name.split("_")[1]) >= 2
    assert "run the same command again to continue" in output and "Traceback" not in output
    again = _run("train", "--config", str(config), f"output.dir={out}", "train.max_steps=" + str(
        int(done[0].name.split("_")[1]) + 1))  # fmt: skip
    assert again.returncode == 0 and "resuming from step" in again.stdout + again.stderr


def test_a_second_ctrl_c_stops_at_once_and_handlers_come_back(tmp_path, shards, monkeypatch):
    from cpn_dist.cpn import loss as losses
    from cpn_dist.train import train

    real = losses.cpn_loss_from_config
    calls = {"n": 0}

    def impatient(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # during step 2: Ctrl-C, then Ctrl-C again
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kw)

    monkeypatch.setattr(losses, "cpn_loss_from_config", impatient)
    before = signal.getsignal(signal.SIGINT)
    cfg = load_config(tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 5, "checkpoint_every": 1}),
                      [f"output.dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["step_00000001"]  # step 2: none
    assert signal.getsignal(signal.SIGINT) is before


def test_final_weights_record_their_model_and_still_load_as_weights(tmp_path, shards):
    from cpn_dist.cpn.model import build_model
    from cpn_dist.models import load_weights
    from cpn_dist.train import train

    cfg = load_config(tiny_config(tmp_path / "c.yaml", shards, model={"head": "paper"}), [f"output.dir={tmp_path}/r"])
    final = train(cfg)
    saved = torch.load(final, map_location="cpu", weights_only=True)
    meta = saved["cpn_dist"]
    assert (meta["stage"], meta["backbone"], meta["head"]) == ("cpn", "tiny", "paper")
    assert meta["config"] == cfg.to_dict()
    report = load_weights(build_model("tiny", "paper"), final)
    assert not report.missing and not report.unexpected
    plain = tmp_path / "plain.pth"  # the released format: a plain state dict
    torch.save(saved["model"], plain)
    assert not load_weights(build_model("tiny", "paper"), plain).missing


def test_a_truncated_shard_read_by_a_loader_worker_is_one_line(tmp_path, shards):
    import shutil

    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    shard = sorted(bad.glob("train_aug-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    config = tiny_config(tmp_path / "c.yaml", bad, train={"max_steps": 8, "epochs": 2},
                         data={"workers": 2, "deterministic": False, "shuffle_buffer": 0})  # fmt: skip
    proc = _run("train", "--config", str(config), f"output.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    lines = _errors(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{shard}: unreadable shard" in lines[0] and f"cpn shards verify {bad}" in lines[0]
    assert "0x" not in lines[0]


def test_under_accelerate_launch_a_user_error_is_one_line_per_process_and_a_held_lock_stops_all(tmp_path, shards):
    """Our processes print the error once, without a Python traceback of ours, and every process exits
    (none hangs in a collective). Accelerate's launcher then prints its own failure report, which is
    not ours to silence (docs/training.md: "Errors")."""
    from cpn_dist.training.runlock import DirLock

    config = tiny_config(tmp_path / "c.yaml", shards, train={"max_steps": 2}, batch={"micro_size": 2})
    out = tmp_path / "run"
    with DirLock(out, "output.dir"):
        proc = subprocess.run([*accelerate_cpu(2), "-m", "cpn_dist.train", "--config", str(config),
                               f"output.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=ENV)  # fmt: skip
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "in use by another run" in line]
    assert proc.returncode != 0 and len(ours) == 1, proc.stderr
    assert f"pid {os.getpid()}" in ours[0]
    assert not any(f'cpn_dist/{m}.py", line' in proc.stderr for m in ("launch", "engine"))
    assert "cpn_dist.errors.CpnError" not in proc.stderr
    assert complete_checkpoints(out) == []
