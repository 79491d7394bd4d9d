"""SGD with the released code's four parameter groups and the poly learning-rate policy.

The released ``train_cpn.py`` gives backbone weights the base lr with weight decay, backbone biases
2× lr without decay, new layers (classifier and refinement head) 10× lr with decay and their biases
20× lr without decay. The lr decays as ``base · (1 − step / total)^power`` (Sec. 4.1: power 0.9).

Past the paper's global batch (``optim.reference_batch``, 4), ``optim.lr_scaling`` scales the base lr with
the global batch — linear (Goyal et al. 2017: lr ∝ batch) or sqrt — and ``optim.warmup_steps`` /
``warmup_epochs`` ramp it up linearly from ``warmup_start × lr`` at the start (:class:`LrSchedule`).
At the reference batch without warm-up the schedule is the paper's, unchanged.

The schedule is applied by :func:`set_group_lrs` from the global optimizer step, not by a scheduler
object: Accelerate steps a wrapped scheduler once per process, and DeepSpeed drops empty parameter
groups, which would shift per-group multipliers onto the wrong groups. Here every group carries
its own ``lr_mult``, and empty groups are never created.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cpn_dist.config.run import OptimConfig

GROUP_NAMES = ("backbone_weight", "backbone_bias", "new_weight", "new_bias")
LR_MULTS = (1.0, 2.0, 10.0, 20.0)
DECAYS = (True, False, True, False)


@dataclass(frozen=True)
class GroupSpec:
    name: str
    lr_mult: float
    weight_decay: float


def build_optimizer(groups: list[list[torch.nn.Parameter]], cfg: OptimConfig) -> tuple[torch.optim.SGD,
                                                                                       list[GroupSpec]]:
    """SGD over the non-empty groups of ``[backbone weights, backbone biases, new weights, new biases]``.

    Returns the optimizer and, in the optimizer's group order, the spec of each group.
    """
    if len(groups) != len(GROUP_NAMES):
        raise ValueError(f"expected {len(GROUP_NAMES)} parameter groups, got {len(groups)}")
    param_groups, specs = [], []
    for params, name, mult, decay in zip(groups, GROUP_NAMES, LR_MULTS, DECAYS):
        params = [p for p in params if p.requires_grad]
        if not params:  # DeepSpeed would drop it and misalign the multipliers of the groups after it
            continue
        spec = GroupSpec(name, mult, cfg.weight_decay if decay else 0.0)
        specs.append(spec)
        param_groups.append({"params": params, "lr": cfg.lr * mult, "weight_decay": spec.weight_decay,
                             "lr_mult": mult, "name": name})
    optimizer = torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optimizer, specs


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """The poly policy: ``base · (1 − step/total)^power`` (0 once ``step ≥ total``)."""
    return base * max(0.0, 1.0 - step / max(total, 1)) ** power


def scaled_lr(cfg: OptimConfig, global_size: int) -> float:
    """``optim.lr`` at a global batch: × ``global / reference`` (linear), × its square root (sqrt), or
    unchanged (none)."""
    ratio = global_size / cfg.reference_batch
    return cfg.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


@dataclass(frozen=True)
class LrSchedule:
    """The base lr of every optimizer step: the poly policy from the scaled lr, times a linear warm-up
    factor that rises from ``warmup_start`` at step 0 to 1 at step ``warmup`` (1 from then on)."""

    base: float
    total: int
    power: float
    warmup: int = 0
    warmup_start: float = 1.0

    @classmethod
    def from_config(cls, cfg: OptimConfig, global_size: int, total: int, steps_per_epoch: int) -> LrSchedule:
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * steps_per_epoch)
        return cls(scaled_lr(cfg, global_size), total, cfg.poly_power, min(warmup, total), cfg.warmup_start)

    def __call__(self, step: int) -> float:
        lr = poly_lr(self.base, step, self.total, self.power)
        if step < self.warmup:
            lr *= self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup
        return lr


def describe_schedule(cfg: OptimConfig, schedule: LrSchedule, global_size: int) -> str:
    """One line for the start of a run, e.g. ``global 32 = 8 × reference 4: lr 0.01 → 0.08 (linear),
    warm-up 200 steps from 0.1 × lr``."""
    ratio = global_size / cfg.reference_batch
    text = f"global {global_size} = {ratio:g} × reference {cfg.reference_batch}: lr {cfg.lr:g}"
    text += f" → {schedule.base:g} ({cfg.lr_scaling})" if schedule.base != cfg.lr else f" ({cfg.lr_scaling} scaling)"
    if schedule.warmup:
        text += f", warm-up {schedule.warmup} steps from {schedule.warmup_start:g} × lr"
    return text + f", poly {schedule.power:g} over {schedule.total} steps"


def set_group_lrs(optimizer, specs: list[GroupSpec], lr: float) -> None:
    """Set every group's lr from the base lr (× the group's multiplier)."""
    if len(optimizer.param_groups) != len(specs):
        raise RuntimeError(f"optimizer has {len(optimizer.param_groups)} groups, expected {len(specs)}")
    for group, spec in zip(optimizer.param_groups, specs):
        group["lr"] = lr * spec.lr_mult


def set_poly_lr(optimizer, specs: list[GroupSpec], cfg: OptimConfig, step: int, total: int) -> float:
    """Set every group's lr for optimizer step ``step`` (0-based) of the plain poly policy; returns the base lr."""
    lr = poly_lr(cfg.lr, step, total, cfg.poly_power)
    set_group_lrs(optimizer, specs, lr)
    return lr
