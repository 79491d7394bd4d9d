"""The parts-reliable task and the measurement of CPN's premise on a parts task (cpn_dist.demo.parts.premise_share)."""

import hashlib

import numpy as np
import pytest
import torch

from cpn_dist.config import PatchConfig
from cpn_dist.data.datasets.voc import read_split
from cpn_dist.data.synth import parts as synth_parts
from cpn_dist.data.synth.voc import synthesize_voc
from cpn_dist.demo.parts import premise_share

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def reliable_voc(tmp_path_factory):
    return synthesize_voc(tmp_path_factory.mktemp("reliable") / "VOC2012", 16, size=64, seed=1, task="parts-reliable")


def _worn_textures(task, images=40):
    """(object class, class of the stripes its body wears) of every object of ``images`` rendered images."""
    worn = []
    original = synth_parts.texture_class

    def spy(cls, present, rng, noise=synth_parts.TEXTURE_NOISE):
        chosen = original(cls, present, rng, noise)
        worn.append((cls, chosen))
        return chosen

    synth_parts.texture_class = spy
    try:
        for i in range(images):
            synth_parts.render_parts_image(i, 64, 0, task=task)
    finally:
        synth_parts.texture_class = original
    return worn


def test_parts_reliable_bodies_always_wear_their_own_class_stripes():
    worn = _worn_textures("parts-reliable")
    assert len(worn) > 40 and all(cls == chosen for cls, chosen in worn)
    noisy = _worn_textures("parts")
    wrong = np.mean([cls != chosen for cls, chosen in noisy])
    assert 0.15 < wrong < 0.45  # the old task's 30 % of bodies in another class's stripes


def test_the_old_parts_task_is_unchanged():
    # digest of `synthesize_voc(out, 30, size=64, seed=0, task="parts")` made by the code before the
    # parts-reliable task existed (commit 2e28168)
    root = synthesize_voc(__import__("tempfile").mkdtemp() + "/VOC2012", 30, size=64, seed=0, task="parts",
                          workers=2)  # fmt: skip
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    assert h.hexdigest() == "905e0126986b52d5886ec09bf57721c6e515a1afef1db908ff0de63f4c667e62"


def test_parts_reliable_is_a_stream_of_its_own():
    a = synth_parts.render_parts_image(0, 64, 0, task="parts-reliable")[0]
    b = synth_parts.render_parts_image(0, 64, 0, task="parts")[0]
    assert a.shape != b.shape or not np.array_equal(a, b)


class _Stub(torch.nn.Module):
    """A 'network' whose CAM of every class is ``fn(normalised input)`` (N×H×W) — a known answer."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        cam = self.fn(x)[:, None].expand(-1, 21, -1, -1)
        return cam, None


def _saturation(x):  # per pixel, the spread of the three normalised channels: large on the markers only
    return x.amax(dim=1) - x.amin(dim=1)


@pytest.mark.parametrize("kind", ["superpixel", "grid"])
def test_premise_share_is_zero_for_a_marker_detector_and_one_for_an_object_detector(reliable_voc, kind):
    names = read_split(reliable_voc / "ImageSets" / "Segmentation" / "train_aug.txt")
    patch = PatchConfig(kind=kind, segments=30, grid_sizes=[8, 16])
    marker_only = premise_share(_Stub(lambda x: _saturation(x) - 2.0), reliable_voc, names, patch, MEAN, STD)
    anything = premise_share(_Stub(lambda x: torch.ones_like(x[:, 0])), reliable_voc, names, patch, MEAN, STD)
    assert marker_only.pairs > 3 and marker_only.pairs == anything.pairs
    assert marker_only.share == 0.0 and anything.share == 1.0
    # the marker detector does fire on the visible markers (so a share of 0 is the hidden marker's doing)
    visible = premise_share(_Stub(lambda x: _saturation(x) - 2.0), reliable_voc, names,
                            patch.model_copy(update={"hide_prob": 1e-9}), MEAN, STD)  # fmt: skip
    assert visible.pairs == 0  # with nothing hidden no marker lies in hidden patches: nothing to measure


def test_a_starts_premise_is_measured_on_the_model_its_training_starts_from(tmp_path):
    """Weights without fc8 (as ImageNet weights): the premise's model draws fc8 as the trainer does after
    its set_seed(train.seed), the same on every call and whatever the global RNG holds, which it leaves
    as it found it."""
    from accelerate.utils import set_seed

    from cpn_dist.config import load_config
    from cpn_dist.cpn.model import build_model
    from cpn_dist.cpn.task import CPNTask
    from cpn_dist.demo.steps import raw_cam_model

    backbone = build_model("tiny", "none", dropout=0.0)
    path = tmp_path / "no_fc8.pth"
    torch.save({k: v for k, v in backbone.state_dict().items() if not k.startswith("fc8")}, path)
    cfg = load_config("demo", [f"model.weights={path}", "train.seed=3"])
    set_seed(3)
    trainer_start = CPNTask(cfg).build_model()
    torch.manual_seed(99)
    rng = torch.random.get_rng_state()
    first, second = raw_cam_model(path, cfg), raw_cam_model(path, cfg)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(first.fc8.weight, trainer_start.fc8.weight)
    assert torch.equal(second.fc8.weight, first.fc8.weight)
    loaded = dict(first.named_parameters())
    assert all(torch.equal(loaded[k], v) for k, v in backbone.named_parameters() if not k.startswith("fc8"))
    other = raw_cam_model(path, load_config("demo", [f"model.weights={path}", "train.seed=4"]))
    assert not torch.equal(other.fc8.weight, first.fc8.weight)
