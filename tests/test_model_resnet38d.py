"""ResNet38d + CPN head against the released structure: names, shapes, frozen parts, and the
official forward against a literal re-statement of the released code (tests/reference)."""

import pytest
import torch

from cpn_dist.cpn.model import build_model
from cpn_dist.models import count_parameters, load_weights
from tests.reference.released_net import random_state_dict, released_forward, released_shapes


@pytest.fixture(scope="module")
def released_sd():
    return random_state_dict(seed=0)


@pytest.fixture(scope="module")
def model(released_sd, tmp_path_factory):
    """ResNet38d + official head holding the random 'released' weights (built once: ~100M parameters)."""
    path = tmp_path_factory.mktemp("w") / "released_cpn.pth"
    torch.save(released_sd, path)
    m = build_model("resnet38d", "official")
    report = load_weights(m, path)
    assert report.missing == [] and report.unexpected == []
    return m.eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_state_dict_names_and_shapes_are_the_released_ones(model):
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours == released_shapes()
    assert list(ours)[:3] == ["conv1a.weight", "b2.bn_branch2a.weight", "b2.bn_branch2a.bias"]


def test_official_head_matches_the_released_forward(model, released_sd, image):
    with torch.no_grad():
        cam, refined = model(image)
    ref_cam, ref_refined = released_forward(released_sd, image)
    assert cam.shape == refined.shape == (2, 21, 64, 64)
    assert cam.dtype == refined.dtype == torch.float32
    assert (cam.double() - ref_cam).abs().max() < 1e-5
    assert (refined.double() - ref_refined).abs().max() < 1e-5
    # the PRCM term is not negligible here, so a wrong reshape or softmax axis would show
    prcm_free = released_forward({**released_sd, "f10.weight": torch.zeros_like(released_sd["f10.weight"])}, image)[1]
    assert (prcm_free - ref_refined).abs().max() > 1e-3


def test_paper_head_differs_from_official_on_the_same_weights(model, image):
    paper = build_model("resnet38d", "paper")
    paper.load_state_dict(model.state_dict())
    paper.eval()
    with torch.no_grad():
        cam_o, ref_o = model(image)
        cam_p, ref_p = paper(image)
    assert torch.equal(cam_o, cam_p)  # same backbone and classifier
    assert (ref_o - ref_p).abs().max() > 1e-3


def test_train_mode_keeps_bn_frozen_and_dropout_zero_equals_eval(model, image):
    m0 = build_model("resnet38d", "official", dropout=0.0)
    m0.load_state_dict(model.state_dict())
    m0.train()
    assert all(not bn.training for bn in m0.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    with torch.no_grad():
        cam_t, ref_t = m0(image)
        cam_e, ref_e = model(image)
    assert torch.allclose(cam_t, cam_e, atol=1e-6) and torch.allclose(ref_t, ref_e, atol=1e-6)
    assert m0.state_dict()["b4.bn_branch2a.running_mean"].equal(model.state_dict()["b4.bn_branch2a.running_mean"])


def test_frozen_parameters_and_groups(model):
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "conv1a.weight" in frozen and "b2_2.conv_branch2b1.weight" in frozen
    assert all(n in frozen for n, _ in model.named_parameters() if ".bn_" in n or n.startswith("bn7"))
    assert "b3.conv_branch2a.weight" not in frozen
    groups = model.parameter_groups()
    assert len(groups) == 4
    ids = [{id(p) for p in g} for g in groups]
    named = {id(p): n for n, p in model.named_parameters()}
    assert {named[i] for i in ids[2]} == {"fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight", "f10.weight"}
    assert groups[1] == [] and groups[3] == []  # ResNet38d convs have no bias; BN is frozen
    assert sum(len(g) for g in ids) == len({i for g in ids for i in g})  # disjoint
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set().union(*ids) == trainable


def test_parameter_count(model):
    total = count_parameters(model)
    # every released parameter (BN buffers excluded): backbone 105,070,912 + head 324,736
    assert total == 105_395_648
    assert count_parameters(model, trainable_only=True) < total


def test_triplet_batch_equals_three_forwards(model, image):
    a, b, c = image[:1], image[1:], image[:1].flip(-1)
    with torch.no_grad():
        cam3, ref3 = model(torch.cat([a, b, c]))
        for i, x in enumerate((a, b, c)):
            cam, ref = model(x)
            assert torch.allclose(cam3[i : i + 1], cam, atol=1e-5)
            assert torch.allclose(ref3[i : i + 1], ref, atol=1e-5)


def test_loading_the_released_imagenet_init_keeps_head_init(released_sd, tmp_path):
    backbone_only = {k: v for k, v in released_sd.items() if not k.startswith(("fc8", "f8_", "f9", "f10"))}
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"
    torch.save(backbone_only, path)
    m = build_model("resnet38d", "official")
    fc8_before = m.fc8.weight.detach().clone()
    report = load_weights(m, path)
    assert set(report.missing) == {"fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight", "f10.weight"}
    assert report.unexpected == []
    assert torch.equal(m.fc8.weight, fc8_before)
    assert torch.equal(m.b7.conv_branch2b2.weight, released_sd["b7.conv_branch2b2.weight"])
