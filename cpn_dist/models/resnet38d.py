"""ResNet38d: the wide ResNet-38 (Wu et al., "Wider or deeper") with output stride 8, the CPN backbone.

Layer names and shapes are those of the released state dicts (``conv1a``, ``b2`` … ``b7``, ``bn7``;
inside a block ``bn_branch2a``, ``conv_branch2a``, ``bn_branch2b1``, ``conv_branch2b1``,
``conv_branch1``, and for the bottleneck blocks ``bn_branch2b2``, ``conv_branch2b2``), so the
released ImageNet initialisation loads without renaming. Blocks are pre-activation: each block
starts with BN-ReLU of its input, and that BN-ReLU'd input is what CPN taps as intermediate features
("conv4" = input of ``b5``, "conv5" = input of ``b6``). Stages 5-7 are dilated (2, 4, 4) instead of
strided, so the last feature map is at 1/8 of the input.

Training follows the released code: every BatchNorm is frozen (eval mode, affine frozen) and the
first stages (``conv1a``, ``b2``, ``b2_1``, ``b2_2``) are not trained. Dropout2d inside ``b6``/``b7``
(0.3 / 0.5 in the released net) stays active in training.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class BackboneFeatures(NamedTuple):
    """The feature maps the CPN head uses, all at 1/8 of the input size."""

    conv4: torch.Tensor  # BN-ReLU'd input of stage 5 (512 channels in ResNet38d)
    conv5: torch.Tensor  # BN-ReLU'd input of stage 6 (1024 channels)
    conv6: torch.Tensor  # final BN-ReLU'd features (4096 channels), input of the classifier


class ResBlock(nn.Module):
    """Pre-activation basic block: two 3×3 convolutions, projection shortcut when the shape changes."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:  # fmt: skip
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)  # fmt: skip
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (block output, BN-ReLU'd block input)."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        branch = self.conv_branch2a(pre)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch, pre


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck (1×1 → dilated 3×3 → 1×1) with Dropout2d before the last two convs."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (block output, BN-ReLU'd block input)."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(pre)
        branch = self.conv_branch2a(pre)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch, pre


class ResNet38d(nn.Module):
    """Wide ResNet-38 with output stride 8 (about 104M parameters).

    ``dropout`` scales the released Dropout2d rates of ``b6`` (0.3) and ``b7`` (0.5); 0 disables them.
    """

    frozen_names = ("conv1a", "b2", "b2_1", "b2_2")

    def __init__(self, dropout: float = 1.0) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)
        self.b5 = ResBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3 * dropout)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5 * dropout)
        self.bn7 = nn.BatchNorm2d(4096)
        self.channels = {"conv4": 512, "conv5": 1024, "conv6": 4096}

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        x = self.conv1a(x)
        for block in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2,
                      self.b4, self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5):  # fmt: skip
            x, _ = block(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        return BackboneFeatures(conv4, conv5, F.relu(self.bn7(x)))
