import pytest
import torch

from cpn_dist.config import OptimConfig
from cpn_dist.errors import CpnError
from cpn_dist.training.launch import accumulation_steps
from cpn_dist.training.optim import build_optimizer, poly_lr, set_poly_lr


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


def _schedule(global_size, total=100, steps_per_epoch=10, **optim):
    from cpn_dist.training.optim import LrSchedule

    cfg = OptimConfig(lr=0.01, poly_power=0.9, **optim)
    return LrSchedule.from_config(cfg, global_size, total, steps_per_epoch)


@pytest.mark.parametrize("rule", ["none", "linear", "sqrt"])
def test_at_the_reference_batch_every_rule_is_the_papers_poly_schedule(rule):
    schedule = _schedule(4, lr_scaling=rule)
    assert [schedule(s) for s in (0, 37, 99, 100)] == [poly_lr(0.01, s, 100, 0.9) for s in (0, 37, 99, 100)]


def test_global_32_under_linear_is_8_times_and_under_sqrt_its_root():
    assert _schedule(32, lr_scaling="linear")(0) == pytest.approx(0.08)
    assert _schedule(32, lr_scaling="sqrt")(0) == pytest.approx(0.01 * 8**0.5)
    assert _schedule(32, lr_scaling="none")(0) == pytest.approx(0.01)
    assert _schedule(32, lr_scaling="linear", reference_batch=8)(0) == pytest.approx(0.04)
    assert _schedule(32, lr_scaling="linear")(50) == pytest.approx(0.08 * 0.5**0.9)


def test_warm_up_rises_linearly_from_its_start_fraction_then_follows_poly():
    schedule = _schedule(32, lr_scaling="linear", warmup_steps=20, warmup_start=0.1)
    assert schedule(0) == pytest.approx(0.008)
    assert schedule(10) == pytest.approx(0.08 * (1 - 10 / 100) ** 0.9 * 0.55)
    assert schedule(20) == pytest.approx(poly_lr(0.08, 20, 100, 0.9))
    assert schedule(60) == pytest.approx(poly_lr(0.08, 60, 100, 0.9))
    lrs = [schedule(s) for s in range(21)]
    assert all(a < b for a, b in zip(lrs, lrs[1:]))
    in_epochs = _schedule(32, lr_scaling="linear", warmup_epochs=2.0, warmup_start=0.1)  # 10 steps per epoch
    assert [in_epochs(s) for s in range(30)] == [schedule(s) for s in range(30)]


def test_the_schedule_is_logged_in_one_line_and_both_warm_up_keys_are_refused():
    from cpn_dist.config import ConfigError, load_config
    from cpn_dist.training.optim import describe_schedule

    cfg = OptimConfig(lr=0.01, lr_scaling="linear", warmup_steps=200)
    line = describe_schedule(cfg, _schedule(32, lr_scaling="linear", warmup_steps=200, total=1000), 32)
    assert line == "global 32 = 8 × reference 4: lr 0.01 → 0.08 (linear), warm-up 200 steps from 0.1 × lr, " \
                   "poly 0.9 over 1000 steps"
    assert "lr 0.01 (none scaling)" in describe_schedule(OptimConfig(lr=0.01), _schedule(4), 4)
    with pytest.raises(ConfigError, match="warmup_steps and warmup_epochs: give one"):
        load_config(None, ["optim.warmup_steps=5", "optim.warmup_epochs=1"])


def test_a_run_recorded_before_the_lr_rule_keys_existed_still_resumes_and_real_changes_still_count():
    import copy

    from cpn_dist.config import load_config
    from cpn_dist.training.run_start import config_changes

    new = load_config(None, []).to_dict()
    old = copy.deepcopy(new)
    for key in ("lr_scaling", "reference_batch", "warmup_steps", "warmup_epochs", "warmup_start"):
        del old["optim"][key]
    assert config_changes(old, new) == []
    assert config_changes(old, load_config(None, ["optim.lr_scaling=linear"]).to_dict()) == \
           ["optim.lr_scaling: 'none' → 'linear'"]
    assert config_changes(new, load_config(None, ["batch.micro_size=1"]).to_dict()) == []  # the split is free
