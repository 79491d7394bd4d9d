"""SGD with the released code's four parameter groups and the poly learning-rate policy.

The released ``train_cpn.py`` gives backbone weights the base lr with weight decay, backbone biases
2× lr without decay, new layers (classifier and refinement head) 10× lr with decay and their biases
20× lr without decay. The lr decays as ``base · (1 − step / total)^power`` (Sec. 4.1: power 0.9).

The schedule is applied by :func:`set_poly_lr` from the global optimizer step, not by a scheduler
object: Accelerate steps a wrapped scheduler once per process, and DeepSpeed drops empty parameter
groups, which would shift per-group multipliers onto the wrong groups. Here every group carries
its own ``lr_mult``, and empty groups are never created.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpn_dist.config import OptimConfig

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


def set_poly_lr(optimizer, specs: list[GroupSpec], cfg: OptimConfig, step: int, total: int) -> float:
    """Set every group's lr for optimizer step ``step`` (0-based); returns the base lr."""
    lr = poly_lr(cfg.lr, step, total, cfg.poly_power)
    if len(optimizer.param_groups) != len(specs):
        raise RuntimeError(f"optimizer has {len(optimizer.param_groups)} groups, expected {len(specs)}")
    for group, spec in zip(optimizer.param_groups, specs):
        group["lr"] = lr * spec.lr_mult
    return lr
