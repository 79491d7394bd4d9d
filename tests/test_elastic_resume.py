"""Elastic resume: a run checkpointed on W processes continues on W' processes with the same global batch
(another micro-batch or accumulation) and ends with the weights of an uninterrupted run — DDP over gloo,
global OHEM, deterministic data. DeepSpeed ZeRO, whose optimizer state is partitioned per rank, refuses
another world size in one line."""

import shutil
import sys

import pytest

from tests.train_support import (
    ACCELERATE,
    accelerate_cpu,
    assert_same_weights,
    free_port,
    launch,
    load_final,
    pack_shards,
    run_layout,
    tiny_config,
)  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(synth_voc, tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    shards = pack_shards(synth_voc, root / "shards")
    config = tiny_config(root / "tiny.yaml", shards, loss={"recipe": "paper", "ohem_scope": "batch"},
                         model={"backbone": "tiny", "head": "paper", "dropout": 0.0},
                         batch={"global_size": 4, "micro_size": 2},
                         train={"epochs": 1, "max_steps": 6, "checkpoint_every": 3, "seed": 7})  # fmt: skip
    straight = root / "straight"
    launch([sys.executable, "-m", "cpn_dist", "train", "--config", str(config), f"output.dir={straight}"])
    return root, config, load_final(straight)


def _train(processes: int, config, out, *extra: str):
    head = [sys.executable, "-m", "cpn_dist"] if processes == 1 else [*accelerate_cpu(processes), "-m"]
    entry = ["train"] if processes == 1 else ["cpn_dist.train"]
    return launch([*head, *entry, "--config", str(config), f"output.dir={out}", *extra])


def _cut_to_step_3(out):
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    (out / "model_final.pth").unlink()


@pytest.mark.parametrize("before, after, micro_after", [(2, 1, 2), (1, 2, 1), (2, 1, 4)])
def test_a_run_resumed_on_another_world_size_ends_with_the_uninterrupted_weights(setup, before, after, micro_after):
    root, config, straight = setup
    out = root / f"w{before}to{after}m{micro_after}"
    _train(before, config, out)
    _cut_to_step_3(out)
    proc = _train(after, config, out, "--resume", "latest", f"batch.micro_size={micro_after}")
    assert run_layout(out) == (after, micro_after, 4 // (micro_after * after), "MULTI_CPU" if after > 1 else "NO")
    plural = "es" if after > 1 else ""
    was = f"(was 2 × {4 // (2 * before)})"
    assert f"resuming at step 3 on {after} process{plural}, was {before}: micro {micro_after} × accumulation " \
           f"{4 // (micro_after * after)} {was}" in " ".join(proc.stderr.split())
    assert_same_weights(load_final(out), straight)


def test_a_deepspeed_zero_checkpoint_resumed_on_another_world_size_is_refused_in_one_line(setup):
    root, config, _ = setup
    out = root / "deepspeed"
    base = [ACCELERATE, "launch", "--use_deepspeed", "--zero_stage", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    launch([*base, "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "cpn_dist.train",
            "--config", str(config), f"output.dir={out}"])  # fmt: skip
    _cut_to_step_3(out)
    with pytest.raises(AssertionError) as failed:
        launch([*base, "--num_processes", "1", "--main_process_port", str(free_port()), "-m", "cpn_dist.train",
                "--config", str(config), f"output.dir={out}", "--resume", "latest"])  # fmt: skip
    text = str(failed.value)
    assert "written by 2 DeepSpeed processes" in text and "Resume on 2 processes" in text
    assert "zero_to_fp32.py" in text and "[rank0]: Traceback" not in text  # the launcher adds its own report
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003"]  # nothing lost
