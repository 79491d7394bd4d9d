"""Trainer lifecycle: resume after SIGKILL, pre-emption by SIGTERM, a checkpoint that dies while being
written, a non-finite loss, the TensorBoard record, and the CLI entry points (one process, two
processes, two "nodes" on loopback)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.training.checkpoint import complete_checkpoints
from tests.conftest import ROOT
from tests.train_support import (
    ACCELERATE,
    accelerate_cpu,
    assert_same_weights,
    free_port,
    launch,
    load_final,
    pack_shards,
    run_layout,
    tensorboard_scalars,
    tiny_config,
)  # fmt: skip

pytestmark = pytest.mark.slow
CPN = [sys.executable, "-m", "cpn_dist"]


@pytest.fixture(scope="module")
def shards(synth_voc, tmp_path_factory):
    return pack_shards(synth_voc, tmp_path_factory.mktemp("life") / "shards")


def _config(tmp_path, shards, **sections):
    return tiny_config(tmp_path / "tiny.yaml", shards, **sections)


def _start(args, **kw):
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}, **kw)  # fmt: skip


def _wait_for(path: Path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timeout waiting for {path}")
        time.sleep(0.01)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, shards):
    config = _config(tmp_path, shards, train={"max_steps": 6, "checkpoint_every": 3, "epochs": 2})
    straight = tmp_path / "straight"
    launch([*CPN, "train", "--config", str(config), f"output.dir={straight}"])

    killed = tmp_path / "killed"
    proc = _start([*CPN, "train", "--config", str(config), f"output.dir={killed}"])
    _wait_for(killed / "checkpoints" / "step_00000003" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in complete_checkpoints(killed)] == ["step_00000003"], "killed too late to test resume"
    assert not (killed / "model_final.pth").exists()

    launch([*CPN, "train", "--config", str(config), f"output.dir={killed}", "--resume", "latest"])
    assert [p.name for p in complete_checkpoints(killed)] == ["step_00000003", "step_00000006"]
    assert_same_weights(load_final(killed), load_final(straight))


def test_sigterm_checkpoints_and_exits_zero(tmp_path, shards):
    config = _config(tmp_path, shards, train={"max_steps": 500, "checkpoint_every": 1000, "epochs": 100})
    out = tmp_path / "pre"
    proc = _start([*CPN, "train", "--config", str(config), f"output.dir={out}"])
    for line in proc.stdout:  # the log line of step 2 (stdout is not a terminal: plain log lines)
        if "step 2/500" in line:
            break
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    done = complete_checkpoints(out)
    assert len(done) == 1
    step = int(done[0].name.split("_")[1])
    assert 2 <= step < 500
    assert "pre-empted" in output
    # the checkpoint is loadable: resuming continues from it
    more = launch([*CPN, "train", "--config", str(config), f"output.dir={out}", "--resume", "latest",
                   f"train.max_steps={step + 1}"])  # fmt: skip
    assert f"resumed from {done[0]} at step {step}" in more.stdout + more.stderr
    assert (out / "model_final.pth").is_file()


def test_a_checkpoint_dying_mid_write_never_replaces_the_last_good_one(tmp_path, shards, monkeypatch):
    from accelerate import Accelerator

    from cpn_dist.train import train

    cfg = load_config(_config(tmp_path, shards, train={"max_steps": 3, "checkpoint_every": 1}),
                      [f"output.dir={tmp_path / 'run'}"])  # fmt: skip
    real_save = Accelerator.save_state
    calls = {"n": 0}

    def dying_save(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-2 checkpoint: write part of it, then "die"
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt("killed while writing")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    done = complete_checkpoints(tmp_path / "run")
    assert [p.name for p in done] == ["step_00000001"]
    assert (tmp_path / "run" / "checkpoints" / ".tmp-step_00000002").exists()  # the torn one, ignored
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    final = train(cfg, resume="latest")
    assert final.is_file()
    assert [p.name for p in complete_checkpoints(tmp_path / "run")][-1] == "step_00000003"


def test_non_finite_loss_is_reported_skipped_and_never_checkpointed(tmp_path, shards, monkeypatch, caplog):
    from cpn_dist.cpn import loss as losses
    from cpn_dist.train import train

    real = losses.cpn_loss_from_config
    calls = {"n": 0}

    def poisoned(*args, **kw):
        terms = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 2:  # step 2 (micro 4, no accumulation: one call per step)
            terms = dict(terms, total=terms["total"] * float("nan"))
        return terms

    monkeypatch.setattr(losses, "cpn_loss_from_config", poisoned)
    cfg = load_config(_config(tmp_path, shards, train={"max_steps": 3, "checkpoint_every": 1, "keep_last": 5}),
                      [f"output.dir={tmp_path / 'nan'}"])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="cpn_dist.train"):
        train(cfg)
    assert any("non-finite loss at step 2" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    from safetensors.torch import load_file

    states = [load_file(p / "model.safetensors") for p in complete_checkpoints(tmp_path / "nan")]
    assert len(states) == 3
    for state in states:
        assert all(torch.isfinite(v).all() for v in state.values())
    assert_same_weights(states[1], states[0], rtol=0, atol=0)  # step 2 was skipped: weights unchanged
    assert any(not torch.equal(states[2][k], states[1][k]) for k in states[1])  # step 3 trained again


def test_on_nonfinite_stop_exits_with_the_step(tmp_path, shards, monkeypatch):
    from cpn_dist.cpn import loss as losses
    from cpn_dist.errors import CpnError
    from cpn_dist.train import train

    real = losses.cpn_loss_from_config
    monkeypatch.setattr(losses, "cpn_loss_from_config",
                        lambda *a, **k: {**real(*a, **k), "total": torch.tensor(float("inf"), requires_grad=True)})
    cfg = load_config(_config(tmp_path, shards, train={"max_steps": 3, "checkpoint_every": 1, "on_nonfinite": "stop"}),
                      [f"output.dir={tmp_path / 'stop'}"])  # fmt: skip
    with pytest.raises(CpnError, match="non-finite loss at step 1"):
        train(cfg)
    assert complete_checkpoints(tmp_path / "stop") == []


def test_tensorboard_records_scalars_config_and_image_panel(tmp_path, shards):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(tmp_path, shards)
    out = tmp_path / "tb"
    launch([*CPN, "train", "--config", str(config), f"output.dir={out}"])
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events
    tags = {"scalars": set(), "images": set(), "tensors": set()}
    for event_file in events:
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags().get(kind, []))
        if "loss/total" in acc.Tags()["scalars"]:
            steps = [e.step for e in acc.Scalars("loss/total")]
            assert steps == [1, 2, 3]
        if "cp_pair_and_cams" in acc.Tags()["images"]:
            image = acc.Images("cp_pair_and_cams")[0]
            assert image.width == 5 * 48 and image.height == 48  # I, I_h, I_hbar, CAM, refined CAM
    for tag in ("loss/total", "loss/cls", "loss/tcp", "loss/cpcr", "optim/lr", "speed/samples_per_s",
                "speed/step_time_s", "speed/data_wait_fraction", "memory/peak_bytes"):
        assert tag in tags["scalars"], tag
    assert "cp_pair_and_cams" in tags["images"]
    assert any("config" in t for t in tags["tensors"])


def test_tensorboard_keeps_one_run_per_training_run_whose_steps_never_go_back(tmp_path, shards):
    """Killed after logging steps past its last checkpoint, then resumed: one run, steps 1..20 once each.
    --restart: a second run, from step 1; the first one is kept as it was."""
    config = _config(tmp_path, shards, train={"max_steps": 20, "epochs": 3, "checkpoint_every": 10})
    out = tmp_path / "tb"
    proc = _start([*CPN, "train", "--config", str(config), f"output.dir={out}"])
    for line in proc.stdout:
        if "step 11/20" in line:  # logged after the checkpoint of step 10
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000010"], "killed too late to test resume"
    runs = tensorboard_scalars(out, "loss/total")
    assert len(runs) == 1, sorted(runs)  # no extra run for the hyperparameters
    [killed] = runs.values()
    assert killed[-1][0] >= 11

    launch([*CPN, "train", "--config", str(config), f"output.dir={out}"])  # the same command resumes
    runs = tensorboard_scalars(out, "loss/total")
    assert len(runs) == 1, sorted(runs)
    [(first, curve)] = runs.items()
    assert [step for step, _ in curve] == list(range(1, 21))  # strictly increasing, no step twice
    assert curve[:10] == killed[:10]  # the steps before the checkpoint, as the killed process logged them
    assert json.loads((out / "train_summary.json").read_text())["steps_averaged"] == 20

    launch([*CPN, "train", "--config", str(config), f"output.dir={out}", "--restart"])
    runs = tensorboard_scalars(out, "loss/total")
    assert len(runs) == 2 and runs[first] == curve
    [restarted] = [c for name, c in runs.items() if name != first]
    assert [step for step, _ in restarted] == list(range(1, 21))


def test_max_steps_is_the_runs_length_and_the_log_says_which_limit_decides(tmp_path, shards):
    """8 steps per epoch (32 images, global batch 4): max_steps 12 runs into a second epoch, 3 cuts the first."""
    config = _config(tmp_path, shards, train={"max_steps": 12, "epochs": 1})
    longer = launch([*CPN, "train", "--config", str(config), f"output.dir={tmp_path / 'long'}"])
    said = longer.stdout + longer.stderr
    assert "global batch 4; 12 steps: train.max_steps 12 overrides train.epochs 1 (8 steps)" in said
    assert "step 12/12" in said
    state = json.loads((complete_checkpoints(tmp_path / "long")[-1] / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"]) == (12, 1)
    shorter = launch([*CPN, "train", "--config", str(config), f"output.dir={tmp_path / 'short'}", "train.max_steps=3",
                      "train.epochs=2"])  # fmt: skip
    assert "global batch 4; 3 steps: train.max_steps 3 overrides train.epochs 2 (16 steps)" in shorter.stderr
    assert [p.name for p in complete_checkpoints(tmp_path / "short")] == ["step_00000003"]


def test_cli_one_process_with_accumulation_equals_two_processes(tmp_path, shards):
    """From the CLI, data.deterministic: `cpn train` (micro 1, accumulation 4) and `accelerate launch
    --multi_gpu --num_processes 2 -m cpn_dist.train` (micro 2) end with the same model_final.pth."""
    config = _config(tmp_path, shards, loss={"recipe": "paper", "ohem_scope": "batch"})
    one, two = tmp_path / "one", tmp_path / "two"
    launch([*CPN, "train", "--config", str(config), f"output.dir={one}", "batch.micro_size=1"])
    launch([*accelerate_cpu(2), "-m", "cpn_dist.train", "--config", str(config), f"output.dir={two}",
            "batch.micro_size=2"])  # fmt: skip
    assert run_layout(one) == (1, 1, 4, "NO") and run_layout(two) == (2, 2, 1, "MULTI_CPU")
    assert_same_weights(load_final(two), load_final(one))
    # the final weights are a plain state dict that load_weights reads completely
    from cpn_dist.cpn.model import build_model
    from cpn_dist.models import load_weights

    report = load_weights(build_model("tiny", "official"), one / "model_final.pth")
    assert not report.missing and not report.unexpected


def test_two_nodes_on_loopback_train_together(tmp_path, shards):
    config = _config(tmp_path, shards)
    out = tmp_path / "nodes"
    port = str(free_port())
    procs = [
        _start([ACCELERATE, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cpn_dist.train", "--config", str(config),
                f"output.dir={out}", "batch.micro_size=2"])  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    assert run_layout(out) == (2, 2, 1, "MULTI_CPU")
    state = json.loads((complete_checkpoints(out)[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert (out / "model_final.pth").is_file()
