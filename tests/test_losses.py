"""cpn_loss against literal step-by-step statements of the released loss block and of eqs. 13-17."""

import pytest
import torch
import torch.nn.functional as F

from cpn_dist.config import LossConfig
from cpn_dist.cpn.loss import cpcr_elements, cpn_loss, cpn_loss_from_config
from cpn_dist.cpn.ohem import topk_sum_rows
from tests.reference.paper_loss import normalise, paper_loss
from tests.reference.released_loss import released_loss

N, H, W = 3, 16, 20


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    six = [(torch.randn(N, 21, H, W, generator=g) * 2 + 0.5).requires_grad_() for _ in range(6)]
    labels = torch.zeros(N, 20)
    labels[0, [3, 7]] = 1
    labels[1, 11] = 1
    labels[2, [0, 5, 19]] = 1
    lam = torch.rand(N, generator=g) * 0.6 + 0.2
    return six, labels, lam


def _grads(loss, six):
    return torch.autograd.grad(loss, six, allow_unused=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_official_recipe_equals_the_released_loss_block(seed):
    six, labels, lam = _inputs(seed)
    a_o, r_o, a_h, r_h, a_hb, r_hb = six
    ours = cpn_loss((a_o, a_h, a_hb), (r_o, r_h, r_hb), labels, lam, recipe="official", ohem_scope="image")
    ref = released_loss(a_o, r_o, a_h, r_h, a_hb, r_hb, labels, lam)
    for key, value in zip(("total", "cls", "tcp", "cpcr"), ref):
        assert abs(ours[key].item() - value.item()) < 1e-6, key
    for g_ours, g_ref in zip(_grads(ours["total"], six), _grads(ref[0], six)):
        assert g_ref.abs().max() > 1e-5  # every input gets a gradient
        assert (g_ours - g_ref).abs().max() < 1e-6


@pytest.mark.parametrize(("seed", "bg_power", "stop_gradient", "tcp_background"),
                         [(0, 1.0, True, True), (1, 1.0, True, False), (2, 2.0, True, True),
                          (0, 1.0, False, True), (1, 2.0, False, False)])  # fmt: skip
def test_paper_recipe_equals_eqs_13_to_17(seed, bg_power, stop_gradient, tcp_background):
    six, labels, lam = _inputs(seed)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    ours = cpn_loss(cams, refined, labels, lam, recipe="paper", ohem_scope="batch", bg_power=bg_power,
                    cpcr_stop_gradient=stop_gradient, tcp_background=tcp_background)  # fmt: skip
    ref = paper_loss(cams, refined, labels, lam, ratio=0.2, bg_power=bg_power, stop_gradient=stop_gradient,
                     tcp_background=tcp_background)  # fmt: skip
    for key, value in zip(("total", "cls", "tcp", "cpcr"), ref):
        assert abs(ours[key].item() - value.item()) < 1e-6, key
    for g_ours, g_ref in zip(_grads(ours["total"], six), _grads(ref[0], six)):
        assert g_ref.abs().max() > 1e-5
        assert (g_ours - g_ref).abs().max() < 1e-6, (stop_gradient, tcp_background)


@pytest.mark.parametrize("scope", ["batch", "image"])
def test_paper_cpcr_sends_no_gradient_into_the_raw_cams_unless_read_literally(scope):
    six, labels, lam = _inputs(0)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    for stop_gradient in (True, False):
        out = cpn_loss(cams, refined, labels, lam, recipe="paper", ohem_scope=scope, cpcr_stop_gradient=stop_gradient)
        raw = torch.autograd.grad(out["cpcr"], cams, allow_unused=True, retain_graph=True)
        refined_grads = torch.autograd.grad(out["cpcr"], refined[1:])
        assert all(g.abs().max() > 1e-5 for g in refined_grads)  # Ỹ_h, Ỹ_hbar are trained either way
        if stop_gradient:
            assert all(g is None or bool((g == 0).all()) for g in raw)
        else:
            assert all(g is not None and g.abs().max() > 1e-5 for g in raw)


def test_official_recipe_refuses_the_paper_only_switches():
    with pytest.raises(ValueError, match="'paper' only"):
        LossConfig(recipe="official", cpcr_stop_gradient=False)
    with pytest.raises(ValueError, match="'paper' only"):
        LossConfig(recipe="official", tcp_background=False)


def test_ohem_discard_diagnostic_says_whether_a_non_zero_element_is_left_out():
    six, labels, lam = _inputs(0)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    e1, e2 = cpcr_elements(cams, refined, labels, lam, recipe="paper")
    nonzero = max(int((e != 0).sum()) for e in (e1, e2))
    share = nonzero / e1.numel()  # ≈ (1 + labels per image) / 21 of the elements can be non-zero
    for ratio in (share / 2, min(1.0, share * 1.5), 1.0):
        out = cpn_loss(cams, refined, labels, lam, recipe="paper", ohem_ratio=ratio)
        k = int(e1.numel() * ratio)
        assert out["ohem/discards_nonzero"].item() == float(nonzero > k)
    assert cpn_loss(cams, refined, labels, lam, recipe="paper", ohem_ratio=share / 2)["ohem/discards_nonzero"] == 1
    assert cpn_loss(cams, refined, labels, lam, recipe="paper", ohem_ratio=1.0)["ohem/discards_nonzero"] == 0


def test_cam_recipe_is_the_classification_of_the_original_image():
    six, labels, lam = _inputs(0)
    expected = F.multilabel_soft_margin_loss(six[0][:, 1:].mean(dim=(2, 3)), labels)
    for cams in (six[0], (six[0],), tuple(six[0::2])):
        out = cpn_loss(cams, None, labels, None, recipe="cam", weights=(2.0, 1.0, 1.0))
        assert torch.allclose(out["cls"], expected) and torch.allclose(out["total"], 2 * expected)
        assert out["tcp"] == 0 and out["cpcr"] == 0


def test_without_refined_cam_the_refined_terms_are_absent():
    six, labels, lam = _inputs(0)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    paper = cpn_loss(cams, None, labels, lam, recipe="paper")
    full = cpn_loss(cams, refined, labels, lam, recipe="paper")
    t_o, t_h, t_hb = (normalise(r, labels, 1.0) for r in refined)
    lam4 = lam.view(-1, 1, 1, 1)
    refined_tcp = torch.abs(lam4 * t_h + (1 - lam4) * t_hb - t_o).mean()
    assert paper["cpcr"] == 0 and paper["cls"] == full["cls"]
    assert abs((full["tcp"] - paper["tcp"]).item() - refined_tcp.item()) < 1e-6
    official = cpn_loss(cams, None, labels, lam, recipe="official")
    with_refined = cpn_loss(cams, refined, labels, lam, recipe="official")
    assert official["cls"] < with_refined["cls"]  # no min-pooling term
    assert official["cpcr"] == 0


def test_weights_and_config_wrapper():
    six, labels, lam = _inputs(0)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    base = cpn_loss(cams, refined, labels, lam, recipe="official", ohem_scope="batch")
    cfg = LossConfig(recipe="official", ohem_scope="batch", weights=[0.5, 2.0, 3.0])
    out = cpn_loss_from_config(cams, refined, labels, lam, cfg)
    expected = 0.5 * base["cls"] + 2.0 * base["tcp"] + 3.0 * base["cpcr"]
    assert torch.allclose(out["total"], expected)


def test_ohem_ratio_one_is_the_plain_mean():
    six, labels, lam = _inputs(0)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    e1, e2 = cpcr_elements(cams, refined, labels, lam, recipe="paper")
    for scope in ("batch", "image"):
        out = cpn_loss(cams, refined, labels, lam, recipe="paper", ohem_ratio=1.0, ohem_scope=scope)
        assert torch.allclose(out["cpcr"], e1.mean() + e2.mean(), atol=1e-6)


def test_threshold_rule_equals_topk_value_and_splits_tied_gradient_evenly():
    x = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]], requires_grad=True)
    s = topk_sum_rows(x, 3)  # 5 + two of the three 3's
    assert s.item() == 11.0
    s.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[1.0, 2 / 3, 2 / 3, 2 / 3, 0.0, 0.0]]))


def test_losses_are_float32_under_low_precision_inputs():
    six, labels, lam = _inputs(0)
    cams = tuple(t.detach().bfloat16() for t in six[0::2])
    refined = tuple(t.detach().bfloat16() for t in six[1::2])
    out = cpn_loss(cams, refined, labels, lam, recipe="paper")
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_bad_arguments():
    six, labels, lam = _inputs(0)
    cams, refined = tuple(six[0::2]), tuple(six[1::2])
    with pytest.raises(ValueError, match="recipe"):
        cpn_loss(cams, refined, labels, lam, recipe="seam")
    with pytest.raises(ValueError, match="triplets"):
        cpn_loss(cams[:2], refined, labels, lam)
