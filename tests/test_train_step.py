"""The CPN training step's pieces: which global-OHEM path a config takes, and the CP pair made on the device."""

import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.train import CPNTask, HeadOnlyWindow, triplet_input


@pytest.mark.parametrize(("overrides", "head_only"), [
    ((), True),  # paper recipe with its stop-gradient: L_cpcr trains only the head
    (("loss.recipe=official", "model.head=official"), True),
    (("loss.cpcr_stop_gradient=false",), False),  # eq. 15 literally: L_cpcr reaches the backbone
    (("loss.global_ohem_pass=full",), False),
])  # fmt: skip
def test_the_head_only_window_is_taken_exactly_when_cpcr_trains_only_the_head(overrides, head_only):
    task = CPNTask(load_config(None, ["model.backbone=tiny", "model.dropout=0.0", *overrides]))
    assert task.global_ohem and task.head_only_window == head_only
    contexts = task.prepare_window(None, [{}, {}, {}], torch.device("cpu")) if head_only else None
    if head_only:
        assert [index for _, index in contexts] == [0, 1, 2]
        assert all(isinstance(window, HeadOnlyWindow) and window is contexts[0][0] for window, _ in contexts)


def test_no_global_ohem_without_a_head_or_with_per_image_ohem():
    for overrides in (("model.head=none",), ("loss.ohem_scope=image",), ("loss.ohem_ratio=1.0",)):
        assert not CPNTask(load_config(None, ["model.backbone=tiny", *overrides])).global_ohem


def test_triplet_input_makes_the_cp_pair_from_image_and_mask():
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 8, 8, generator=g), "mask": (torch.rand(2, 1, 8, 8, generator=g) < 0.5).float()}
    x = triplet_input(batch, torch.device("cpu"))
    image, image_h, image_hbar = x.chunk(3)
    assert torch.equal(image, batch["image"]) and torch.equal(image_h, batch["image"] * batch["mask"])
    assert torch.equal(image_h + image_hbar, image) and torch.all(image_hbar[batch["mask"].expand_as(image) > 0] == 0)
    last = triplet_input(batch, torch.device("cpu"), channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, x)
