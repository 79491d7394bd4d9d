"""Models: the ResNet38d (or EfficientNet-Lite0, or tiny) backbone with the CPN head, and weight loading.

``build_model(backbone, head, dropout)`` returns a :class:`~cpn_dist.models.cpn.CPNet`;
``load_weights(model, path)`` fills it from the released or our own weights.
"""

from __future__ import annotations

from cpn_dist.errors import CpnError
from cpn_dist.models.cpn import HEADS, NUM_CLASSES, CPNet
from cpn_dist.models.efficientnet import EfficientNetLite0
from cpn_dist.models.resnet38d import ResNet38d
from cpn_dist.models.tiny import TinyBackbone
from cpn_dist.models.weights import LoadReport, load_weights, read_state_dict, resolve_weights

BACKBONES = {"resnet38d": ResNet38d, "efficientnet_lite0": EfficientNetLite0, "tiny": TinyBackbone}

__all__ = [
    "BACKBONES",
    "HEADS",
    "NUM_CLASSES",
    "CPNet",
    "LoadReport",
    "build_model",
    "count_parameters",
    "load_weights",
    "read_state_dict",
    "resolve_weights",
]


def build_model(backbone: str = "resnet38d", head: str = "official", dropout: float = 1.0) -> CPNet:
    """A CPN model. ``dropout`` scales every released dropout rate (0.5 before fc8; 0.3 / 0.5 inside
    b6 / b7); 0 disables dropout. Backbone layers use PyTorch's default init, the new layers the
    released init (fc8 Xavier, f8_3/f8_4 Kaiming, f9/f10 Xavier with gain 4)."""
    if backbone not in BACKBONES:
        raise CpnError(f"model.backbone: unknown backbone '{backbone}' (choose from {', '.join(BACKBONES)})")
    if head not in HEADS:
        raise CpnError(f"model.head: unknown head '{head}' (choose from {', '.join(HEADS)})")
    if not 0.0 <= dropout <= 1.0:
        raise CpnError(f"model.dropout: must be within 0..1, got {dropout}")
    model = CPNet(BACKBONES[backbone](dropout=dropout), head=head, dropout=dropout)
    model.backbone_name = backbone
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
