"""Models: the backbones every stage builds on (ResNet38d, EfficientNet-Lite0, tiny) and weight loading.

``BACKBONES`` maps a config's ``model.backbone`` to its class; ``load_weights(model, path)`` fills a
model from the released or our own weights. The CPN model itself is :mod:`cpn_dist.cpn.model`.
"""

from __future__ import annotations

from cpn_dist.models.efficientnet import EfficientNetLite0
from cpn_dist.models.resnet38d import ResNet38d
from cpn_dist.models.tiny import TinyBackbone
from cpn_dist.models.weights import LoadReport, load_weights, read_state_dict, resolve_weights

BACKBONES = {"resnet38d": ResNet38d, "efficientnet_lite0": EfficientNetLite0, "tiny": TinyBackbone}

__all__ = [
    "BACKBONES",
    "LoadReport",
    "count_parameters",
    "load_weights",
    "read_state_dict",
    "resolve_weights",
]


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
