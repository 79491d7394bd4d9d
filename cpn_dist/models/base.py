"""What every network built on the ResNet38d (or tiny) backbone shares: the backbone's layers
registered flat on the model, the released freezing, and the released four parameter groups.

Flat registration keeps the state-dict keys of the released code (``conv1a.weight``,
``b4_3.bn_branch2a.running_mean``, …) next to the model's own layers, so the ImageNet ResNet38
initialisation — and the released trained weights of CPN or AffinityNet — load without renaming.
Training follows the released code: every BatchNorm is frozen (eval mode, affine frozen) and the
backbone's ``frozen_names`` (``conv1a``, ``b2*``) are not trained; dropout follows ``train()``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def float32_region(device: torch.device):
    """A context in which autocast is off, so normalisations and affinities run in float32."""
    if device.type in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def float32_conv(conv: nn.Conv2d):
    """``conv`` applied in float32: the module itself, or — with DeepSpeed's bf16/fp16 weights — the
    convolution with a float32 copy of its weight and bias (the gradient flows back through the cast)."""
    if conv.weight.dtype == torch.float32:
        return conv
    bias = None if conv.bias is None else conv.bias.float()
    return lambda t: F.conv2d(t, conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def as_weight_dtype(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights: DeepSpeed's bf16/fp16 casts the weights, not the inputs
    (under autocast the weights stay float32 and ``x`` is left as it is)."""
    return x.to(next(module.parameters()).dtype)


class BackboneNet(nn.Module):
    """Base of a network whose layers named in :attr:`new_layers` are trained from scratch (lr ×10 /
    ×20) on top of a backbone with the ResNet38d interface (``channels``, ``frozen_names``, a forward
    returning :class:`~cpn_dist.models.resnet38d.BackboneFeatures`). Subclasses call
    :meth:`freeze` once their own layers exist."""

    new_layers: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if any(True for _ in backbone.parameters(recurse=False)) or any(True for _ in backbone.buffers(recurse=False)):
            raise ValueError("a backbone must keep its parameters in child modules")
        self.__dict__["backbone"] = backbone  # not a child: its layers are registered below, flat
        for name, child in backbone.named_children():
            self.add_module(name, child)

    def freeze(self) -> None:
        """No gradients for the backbone's frozen stem and for every BatchNorm."""
        for name in self.backbone.frozen_names:  # a child's name, or a dotted path (``_blocks.0``)
            for p in self.get_submodule(name).parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> BackboneNet:
        """Train mode with BatchNorm frozen (eval mode, affine frozen); dropout follows ``mode``."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """Trainable parameters as the released ``get_parameter_groups``: [backbone weights, backbone
        biases, new-layer weights, new-layer biases] (lr ×1, ×2, ×10, ×20; weight decay on weights only).
        Frozen parameters are in none of them; a group may be empty."""
        groups: list[list[nn.Parameter]] = [[], [], [], []]
        new = {id(getattr(self, name)) for name in self.new_layers if hasattr(self, name)}
        for m in self.modules():
            if not isinstance(m, nn.Conv2d | nn.GroupNorm):
                continue
            offset = 2 if id(m) in new else 0
            if m.weight is not None and m.weight.requires_grad:
                groups[offset].append(m.weight)
            if m.bias is not None and m.bias.requires_grad:
                groups[offset + 1].append(m.bias)
        return groups
