"""A tiny backbone with ResNet38d's interface, for tests and the CPU demo (~150k parameters).

Same block types, same names for the frozen stem (``conv1a``, ``b2``), same output stride 8 with
dilated last stages, same taps (``conv4`` = input of ``b5``, ``conv5`` = input of ``b6``), same
frozen BatchNorm and Dropout2d placement, just one block per stage and few channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cpn_dist.models.resnet38d import BackboneFeatures, BottleneckBlock, ResBlock


class TinyBackbone(nn.Module):
    frozen_names = ("conv1a", "b2")

    def __init__(self, dropout: float = 1.0) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b2 = ResBlock(8, 16, 16, stride=2)
        self.b3 = ResBlock(16, 32, 32, stride=2)
        self.b4 = ResBlock(32, 32, 32, stride=2)
        self.b5 = ResBlock(32, 32, 64, first_dilation=1, dilation=2)
        self.b6 = BottleneckBlock(64, 128, dilation=4, dropout=0.3 * dropout)
        self.b7 = BottleneckBlock(128, 128, dilation=4, dropout=0.5 * dropout)
        self.bn7 = nn.BatchNorm2d(128)
        self.channels = {"conv4": 32, "conv5": 64, "conv6": 128}

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        x = self.conv1a(x)
        for block in (self.b2, self.b3, self.b4):
            x, _ = block(x)
        x, conv4 = self.b5(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        return BackboneFeatures(conv4, conv5, F.relu(self.bn7(x)))
