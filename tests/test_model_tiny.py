"""The CPN model with the tiny backbone: interface, gradient routing, frozen parts, dropout, precision."""

import pytest
import torch

from cpn_dist.cpn.head import official_head_input, paper_head_input
from cpn_dist.cpn.model import build_model
from cpn_dist.errors import CpnError
from cpn_dist.models import count_parameters


def _image(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head", ["official", "paper", "none"])
def test_outputs_at_input_size(head):
    torch.manual_seed(0)
    m = build_model("tiny", head).eval()
    cam, refined = m(_image(size=72))
    assert cam.shape == (2, 21, 72, 72) and cam.dtype == torch.float32
    if head == "none":
        assert refined is None
    else:
        assert refined.shape == (2, 21, 72, 72) and torch.isfinite(refined).all()


def test_tiny_is_tiny():
    n = count_parameters(build_model("tiny", "official"))
    assert 5_000 < n < 500_000


def test_unknown_names_are_user_errors():
    with pytest.raises(CpnError, match="model.backbone"):
        build_model("resnet50", "official")
    with pytest.raises(CpnError, match="model.head"):
        build_model("tiny", "ocr")


@pytest.mark.parametrize("head", ["official", "paper"])
def test_refined_cam_gradient_reaches_only_the_head(head):
    torch.manual_seed(0)
    m = build_model("tiny", head).train()
    _, refined = m(_image())
    refined.square().mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    for name in ("f8_3.weight", "f8_4.weight", "f9.weight", "f10.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    for name, g in grads.items():
        if not name.startswith(("f8_", "f9", "f10")):
            assert g is None or g.abs().sum() == 0, name


def test_cam_gradient_reaches_the_trainable_backbone_but_not_frozen_layers():
    torch.manual_seed(0)
    m = build_model("tiny", "official").train()
    cam, _ = m(_image())
    cam.square().mean().backward()
    assert m.b3.conv_branch2a.weight.grad.abs().sum() > 0
    assert m.fc8.weight.grad.abs().sum() > 0
    assert m.conv1a.weight.grad is None and m.b2.conv_branch2a.weight.grad is None
    assert m.b3.bn_branch2a.weight.grad is None
    assert m.f9.weight.grad is None  # the head is not on the CAM's path


def test_train_mode_freezes_bn_keeps_dropout_and_dropout_scale():
    torch.manual_seed(0)
    m = build_model("tiny", "official", dropout=1.0).train()
    assert not any(b.training for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
    assert m.dropout7.training and m.dropout7.p == 0.5
    assert m.b6.dropout_2b1.p == pytest.approx(0.3) and m.b7.dropout_2b2.p == 0.5
    x = _image()
    with torch.no_grad():
        assert not torch.equal(m(x)[0], m(x)[0])  # independent dropout masks
    before = m.b4.bn_branch2a.running_mean.clone()
    m(x)
    assert torch.equal(before, m.b4.bn_branch2a.running_mean)  # frozen statistics
    half = build_model("tiny", "official", dropout=0.5)
    assert half.dropout7.p == 0.25 and half.b7.dropout_2b1.p == 0.25
    off = build_model("tiny", "official", dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(off(x)[0], off(x)[0])


def test_triplet_batch_equals_three_forwards():
    torch.manual_seed(0)
    m = build_model("tiny", "paper").eval()
    i, i_h, i_hbar = _image(1, seed=1), _image(1, seed=2), _image(1, seed=3)
    with torch.no_grad():
        cam3, ref3 = m(torch.cat([i, i_h, i_hbar]))
        for k, x in enumerate((i, i_h, i_hbar)):
            cam, ref = m(x)
            assert torch.allclose(cam3[k : k + 1], cam, atol=1e-6)
            assert torch.allclose(ref3[k : k + 1], ref, atol=1e-6)


def test_channels_last_and_low_precision_autocast_are_safe():
    torch.manual_seed(0)
    m = build_model("tiny", "official").eval()
    x = _image()
    with torch.no_grad():
        cam, ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        cam_cl, ref_cl = m_cl(x.to(memory_format=torch.channels_last))
        assert torch.allclose(cam, cam_cl, atol=1e-5) and torch.allclose(ref, ref_cl, atol=1e-5)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                cam_lp, ref_lp = m(x)
            assert cam_lp.dtype == ref_lp.dtype == torch.float32  # the head and outputs stay in float32
            assert torch.isfinite(ref_lp).all()
            assert (cam_lp - cam).abs().max() < 0.1 * cam.abs().max()


def test_triplet_forward_backward_at_64():
    torch.manual_seed(0)
    m = build_model("tiny", "official").train()
    cam, ref = m(_image(6))  # 3N = 6 images: a triplet of 2
    (cam.mean() + ref.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_official_head_input():
    cam = torch.randn(2, 21, 5, 6, generator=torch.Generator().manual_seed(0)) * 3
    y = official_head_input(cam)
    fg = y[:, 1:]
    assert torch.allclose(y[:, 0], 1 - fg.max(dim=1)[0])
    survivors = fg > 0
    assert (fg[survivors] == fg.max(dim=1, keepdim=True)[0].expand_as(fg)[survivors]).all()  # only maxima survive
    assert survivors.sum() < 1.5 * survivors.any(dim=1).sum()  # ~one class per pixel (ties are rare)
    assert fg.max() <= 1 and fg.min() >= 0
    p = paper_head_input(cam)
    assert ((p[:, 1:] > 0).sum(dim=1) > 1).any()  # the paper input keeps every class
    assert torch.allclose(p[:, 0], 1 - p[:, 1:].max(dim=1)[0])


def test_paper_prcm_is_a_per_pixel_distribution_over_classes():
    from cpn_dist.cpn.head import paper_pixel_region

    torch.manual_seed(0)
    m = build_model("tiny", "paper")
    y = paper_head_input(torch.randn(1, 21, 4, 4))
    features = torch.randn(1, 195, 4, 4)
    out = paper_pixel_region(torch.ones_like(y), features, m.f9(features), m.f10)
    assert torch.allclose(out.sum(dim=1), torch.ones(1, 4, 4), atol=1e-5)
