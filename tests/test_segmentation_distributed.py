"""The segmentation stage keeps the trainer's invariant: with dropout off, the parameters after a few
optimizer steps do not depend on how the global batch of 4 is split into processes × micro-batch ×
accumulation (1×4×1, 1×1×4, 2×2×1, 2×1×2; real gloo processes)."""

import sys

import pytest
import torch
import yaml

from tests.train_support import accelerate_cpu, assert_same_weights, launch, load_final, pack_shards, run_layout

pytestmark = pytest.mark.slow

HARNESS = "tests/harness_train.py"


@pytest.fixture(scope="module")
def runs(synth_voc, tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_splits")
    shards = pack_shards(synth_voc, root / "shards")
    cfg = {
        "stage": "segmentation",
        "data": {"shards": str(shards), "split": "train_aug", "crop": 48, "scale_range": [48, 64], "workers": 0,
                 "deterministic": True},
        "model": {"backbone": "tiny", "dropout": 0.0},
        "segmentation": {"labels": str(synth_voc / "SegmentationClass"), "head": "largefov", "head_channels": 16,
                         "fov_dilation": 2, "head_dropout": 0.0},
        "batch": {"global_size": 4, "micro_size": 4},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "max_steps": 3, "checkpoint_every": 100, "seed": 7},
        "log": {"every": 1, "image_every": 2},
    }  # fmt: skip
    config = root / "seg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    launch([sys.executable, HARNESS, str(config), str(root / "w1"), "m4:batch.micro_size=4", "m1:batch.micro_size=1"])
    launch([*accelerate_cpu(2), HARNESS, str(config), str(root / "w2"), "m2:batch.micro_size=2",
            "m1:batch.micro_size=1"])  # fmt: skip
    return root


def test_every_split_gives_the_same_parameters(runs):
    reference = load_final(runs / "w1" / "m4")
    assert run_layout(runs / "w1" / "m4") == (1, 4, 1, "NO")
    layouts = {"w1/m1": (1, 1, 4, "NO"), "w2/m2": (2, 2, 1, "MULTI_CPU"), "w2/m1": (2, 1, 2, "MULTI_CPU")}
    for run, layout in layouts.items():
        assert run_layout(runs / run) == layout
        assert_same_weights(load_final(runs / run), reference)


def test_training_moved_every_trained_layer(runs, tmp_path):
    """Three steps changed the head and the trained backbone blocks (so the comparison is not vacuous),
    and the run logged a TensorBoard image panel."""
    from cpn_dist.segmentation.model import build_segmentation_model

    final = load_final(runs / "w1" / "m4")
    torch.manual_seed(7)
    init = build_segmentation_model("tiny", "largefov", channels=16, dilation=2, head_dropout=0.0,
                                    backbone_dropout=0.0).state_dict()  # fmt: skip
    for key in ("seg_head.fc8.weight", "seg_head.fc6.bias", "b7.conv_branch2b2.weight"):
        assert not torch.allclose(final[key], init[key]), key
    torch.testing.assert_close(final["conv1a.weight"], init["conv1a.weight"])  # frozen
    assert list((runs / "w1" / "m4").rglob("events.out.tfevents.*"))


def test_segment_over_two_processes_writes_each_image_once(runs, synth_voc):
    """`accelerate launch -m cpn_dist.segmentation.infer` on 2 gloo processes: every listed image is
    written once, the processes share the work, and the maps equal those of one process."""
    from cpn_dist.data.datasets.voc import read_label_png, read_split
    from tests.conftest import run_cpn

    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")
    common = ["--checkpoint", str(runs / "w1" / "m4" / "model_final.pth"), "--config", str(runs / "seg.yaml"),
              "--voc-root", str(synth_voc), "--list", str(synth_voc / "ImageSets" / "Segmentation" / "val.txt"),
              "--scales", "0.75,1.0", "--batch-size", "1", "--images-per-step", "1"]  # fmt: skip
    two = launch([*accelerate_cpu(2), "-m", "cpn_dist.segmentation.infer", *common, "--out", str(runs / "seg2"),
                  "--test-server", str(runs / "server2")])  # fmt: skip
    half = len(names) // 2
    assert f"segmented {len(names)} images" in two.stdout and f"per process: {half}, {len(names) - half}" in two.stdout
    run_cpn("segment", *common, "--out", str(runs / "seg1"), check=True)
    layout = runs / "server2" / "results" / "VOC2012" / "Segmentation" / "comp5_test_cls"
    assert sorted(p.stem for p in (runs / "seg2").glob("*.png")) == sorted(names)
    for name in names:
        one = read_label_png(runs / "seg1" / f"{name}.png")
        assert (read_label_png(runs / "seg2" / f"{name}.png") == one).all()
        assert (read_label_png(layout / f"{name}.png") == one).all()
