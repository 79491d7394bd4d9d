"""AffinityNet (Ahn & Kwak, CVPR 2018, Sec. 3.1; the released ``network/resnet38_aff.py``) on the
ResNet38d (or tiny) backbone.

Features of three stages at stride 8 — ``conv4`` and ``conv5`` (the BN-ReLU'd inputs of blocks b5 and
b6) and ``conv6`` (the final BN-ReLU'd features) — are reduced by 1×1 convolutions to 64, 128 and 256
channels (``f8_3``, ``f8_4``, ``f8_5``, ELU), concatenated, and mixed by a 1×1 convolution to the
448-channel affinity embedding (``f9``, ELU). The affinity of two positions is
``exp(−mean_c |f_i − f_j|)`` (:func:`~cpn_dist.affinity.pairs.pair_affinities`).

Layer names are the released ones, so the ImageNet ResNet38 initialisation fills the backbone and a
released ``resnet38_aff`` checkpoint loads whole. Freezing, train mode and the four parameter groups
(f8_3, f8_4, f8_5, f9 are the new layers, lr ×10/×20) come from :class:`~cpn_dist.models.base.BackboneNet`.
The backbone's Dropout2d (b6/b7) stays active in training, as released; ``dropout`` scales it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cpn_dist.errors import CpnError
from cpn_dist.models.base import BackboneNet, as_weight_dtype, float32_conv, float32_region

EMBEDDING = 448  # 64 + 128 + 256


class AffinityNet(BackboneNet):
    """``model(x)`` → the affinity embedding, N×448×⌈H/8⌉×⌈W/8⌉ float32."""

    new_layers = ("f8_3", "f8_4", "f8_5", "f9")

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(backbone)
        channels = backbone.channels
        self.f8_3 = nn.Conv2d(channels["conv4"], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(channels["conv5"], 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(channels["conv6"], 256, 1, bias=False)
        self.f9 = nn.Conv2d(EMBEDDING, EMBEDDING, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(as_weight_dtype(self, x))
        with float32_region(x.device):
            reduced = [F.elu(float32_conv(self.f8_3)(features.conv4.float())),
                       F.elu(float32_conv(self.f8_4)(features.conv5.float())),
                       F.elu(float32_conv(self.f8_5)(features.conv6.float()))]  # fmt: skip
            return F.elu(float32_conv(self.f9)(torch.cat(reduced, dim=1)))


def build_affinity_model(backbone: str = "resnet38d", dropout: float = 1.0) -> AffinityNet:
    """An AffinityNet on ``backbone`` (``resnet38d`` or ``tiny``); ``dropout`` scales the backbone's
    released Dropout2d rates (0.3 / 0.5 in b6 / b7; 0 = none)."""
    from cpn_dist.models import BACKBONES

    if backbone not in BACKBONES:
        raise CpnError(f"model.backbone: unknown backbone '{backbone}' (choose from {', '.join(BACKBONES)})")
    if not 0.0 <= dropout <= 1.0:
        raise CpnError(f"model.dropout: must be within 0..1, got {dropout}")
    model = AffinityNet(BACKBONES[backbone](dropout=dropout))
    model.backbone_name = backbone
    return model
