"""Every precision on every launcher: bf16 trains under DeepSpeed and DDP over 2 gloo processes (the
issue's own `accelerate launch --use_deepspeed … --mixed_precision bf16` command), and a precision a
launcher cannot train in is refused in one line before anything starts."""

import math

import pytest
import torch

from tests.train_support import (
    ACCELERATE,
    accelerate_cpu,
    free_port,
    launch,
    load_final,
    pack_shards,
    run_layout,
    tiny_config,  # fmt: skip
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(synth_voc, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    shards = pack_shards(synth_voc, root / "shards")
    # the paper recipe with global OHEM over 2 micro-steps per rank: the head-only window under bf16 too
    config = tiny_config(root / "tiny.yaml", shards, loss={"recipe": "paper", "ohem_scope": "batch"},
                         model={"head": "paper"}, train={"max_steps": 2}, batch={"micro_size": 1})  # fmt: skip
    return root, config


def _finite_weights(run):
    weights = load_final(run)
    assert weights and all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    return weights


def test_deepspeed_bf16_trains_from_the_cli(setup):
    root, config = setup
    out = root / "ds-bf16"
    launch([ACCELERATE, "launch", "--use_deepspeed", "--num_processes", "2", "--num_machines", "1",
            "--deepspeed_config_file", "launch/ds_zero2.json", "--mixed_precision", "bf16", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "cpn_dist.train", "--config", str(config),
            f"output.dir={out}", "train.precision=bf16"])  # fmt: skip
    assert run_layout(out) == (2, 1, 2, "DEEPSPEED")
    weights = _finite_weights(out)
    assert weights["fc8.weight"].dtype in (torch.bfloat16, torch.float32)


def test_ddp_bf16_trains_and_stays_close_to_fp32(setup):
    root, config = setup
    runs = {}
    for precision in ("bf16", "no"):
        out = root / f"ddp-{precision}"
        cmd = accelerate_cpu(2, "-m", "cpn_dist.train", "--config", str(config), f"output.dir={out}",
                             f"train.precision={precision}")  # fmt: skip
        cmd[cmd.index("--mixed_precision") + 1] = precision
        launch(cmd)
        assert run_layout(out) == (2, 1, 2, "MULTI_CPU")
        runs[precision] = _finite_weights(out)
    # two optimizer steps in bf16 autocast move the weights as fp32 does, up to bf16's rounding
    delta = torch.cat([(runs["bf16"][k].float() - runs["no"][k].float()).flatten() for k in runs["no"]])
    scale = torch.cat([runs["no"][k].float().flatten() for k in runs["no"]])
    assert 0 < delta.norm() / scale.norm() < 0.05 and math.isfinite(float(delta.norm()))


def test_fp16_on_the_cpu_is_refused_in_one_line(setup):
    from tests.conftest import run_cpn

    root, config = setup
    proc = run_cpn("train", "--config", str(config), f"output.dir={root / 'fp16'}", "train.precision=fp16")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fp16 needs a GPU" in proc.stderr and not (root / "fp16" / "model_final.pth").exists()
