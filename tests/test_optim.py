import pytest
import torch

from cpn_dist.config import OptimConfig
from cpn_dist.errors import CpnError
from cpn_dist.launch import accumulation_steps
from cpn_dist.optim import build_optimizer, poly_lr, set_poly_lr


def _params(*shapes):
    return [torch.nn.Parameter(torch.zeros(s)) for s in shapes]


def test_four_groups_with_released_multipliers_and_decay():
    groups = [_params((3, 3)), _params((3,)), _params((4, 4)), _params((4,))]
    opt, specs = build_optimizer(groups, OptimConfig(lr=0.01, weight_decay=5e-4, momentum=0.9))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert [s.name for s in specs] == ["backbone_weight", "backbone_bias", "new_weight", "new_bias"]


def test_empty_groups_are_dropped_without_shifting_multipliers():
    # ResNet38d has no backbone biases: the released "backbone bias" group is empty.
    groups = [_params((3, 3)), [], _params((4, 4)), _params((4,))]
    opt, specs = build_optimizer(groups, OptimConfig(lr=0.01))
    assert len(opt.param_groups) == 3
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1, 0.2])
    assert opt.param_groups[1]["params"][0] is groups[2][0]
    set_poly_lr(opt, specs, OptimConfig(lr=0.01, poly_power=0.9), step=5, total=10)
    base = 0.01 * 0.5**0.9
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([base, 10 * base, 20 * base])


def test_frozen_parameters_are_left_out():
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    opt, _ = build_optimizer([[frozen, *_params((2,))], [], [], _params((1,))], OptimConfig())
    assert all(p is not frozen for g in opt.param_groups for p in g["params"])


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert poly_lr(0.01, 150, 100, 0.9) == 0.0


@pytest.mark.parametrize("g, m, w, a", [(4, 4, 1, 1), (4, 2, 2, 1), (4, 1, 1, 4), (4, 1, 2, 2), (16, 1, 8, 2)])
def test_accumulation_steps(g, m, w, a):
    assert accumulation_steps(g, m, w) == a


def test_batch_that_does_not_divide_names_the_three_numbers():
    with pytest.raises(CpnError) as info:
        accumulation_steps(4, 3, 1)
    with pytest.raises(CpnError) as info:
        accumulation_steps(4, 1, 3)
    msg = str(info.value)
    assert "batch.global_size 4" in msg and "batch.micro_size 1" in msg and "3 processes" in msg
