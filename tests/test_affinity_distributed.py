"""Split invariance of AffinityNet training (`stage: affinity`): with dropout off and deterministic
data, the parameters after 3 optimizer steps do not depend on how the global batch of 4 is split
into processes × micro-batch × accumulation — 1×4×1, 1×1×4, 2×2×1, 2×1×2 over gloo, and DeepSpeed
ZeRO-2 — although the images' pair counts differ (the loss normalises by the global batch's counts)."""

import sys

import pytest
import torch
import yaml

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

HARNESS = "tests/harness_train.py"


def _variants(micro: int) -> list[str]:
    return [f"m{micro}:batch.micro_size={micro}"]


@pytest.fixture(scope="module")
def runs(synth_voc, tmp_path_factory):
    root = tmp_path_factory.mktemp("affinity_splits")
    shards = pack_shards(synth_voc, root / "shards")
    config = tiny_config(root / "tiny.yaml", shards)
    cfg = yaml.safe_load(config.read_text())
    del cfg["loss"]
    cfg["stage"] = "affinity"
    cfg["affinity"] = {"labels": str(synth_voc / "SegmentationClass"), "radius": 5}  # any 0..20/255 label PNGs
    cfg["optim"] = {"lr": 0.1, "momentum": 0.9}
    config.write_text(yaml.safe_dump(cfg))
    one, two = root / "world1", root / "world2"
    launch([sys.executable, HARNESS, str(config), str(one), *_variants(4), *_variants(1)])  # 1×4×1, 1×1×4
    launch([*accelerate_cpu(2), HARNESS, str(config), str(two), *_variants(2), *_variants(1)])  # 2×2×1, 2×1×2
    return {"1x4x1": one / "m4", "1x1x4": one / "m1", "2x2x1": two / "m2", "2x1x2": two / "m1", "config": config,
            "root": root}  # fmt: skip


# The splits sum the pair terms in different orders: float32 rounding leaves differences of up to
# ~7e-7 after 3 steps at lr 0.1 with momentum 0.9. Normalising each micro-batch by its own pair
# counts (a mean of means) instead moves the 1×1×4 weights by ~7e-3 from the 1×4×1 ones.
ATOL = 1e-6


def test_every_split_gives_the_same_affinitynet(runs):
    layouts = {"1x4x1": (1, 4, 1, "NO"), "1x1x4": (1, 1, 4, "NO"), "2x2x1": (2, 2, 1, "MULTI_CPU"),
               "2x1x2": (2, 1, 2, "MULTI_CPU")}  # fmt: skip
    reference = load_final(runs["1x4x1"])
    assert "f8_5.weight" in reference and "fc8.weight" not in reference  # AffinityNet, not CPN
    for split, layout in layouts.items():
        assert run_layout(runs[split]) == layout
        assert_same_weights(load_final(runs[split]), reference, atol=ATOL)


def test_training_moved_the_new_layers_and_the_backbone(runs):
    from cpn_dist.affinity.model import build_affinity_model

    torch.manual_seed(7)  # the run's seed: the same initial weights
    init = build_affinity_model("tiny", dropout=0.0).state_dict()
    final = load_final(runs["1x4x1"])
    torch.testing.assert_close(init["conv1a.weight"], final["conv1a.weight"])  # frozen stem
    for key in ("f9.weight", "f8_5.weight", "b3.conv_branch2a.weight"):
        assert not torch.allclose(init[key], final[key]), key


def test_deepspeed_zero2_matches_ddp(runs):
    out = runs["root"] / "deepspeed"
    launch([ACCELERATE, "launch", "--use_deepspeed", "--zero_stage", "2", "--num_processes", "2", "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            HARNESS, str(runs["config"]), str(out), *_variants(1)])  # fmt: skip
    assert run_layout(out / "m1") == (2, 1, 2, "DEEPSPEED")
    assert_same_weights(load_final(out / "m1"), load_final(runs["2x1x2"]), atol=ATOL)
