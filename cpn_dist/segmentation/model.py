"""The stage-3 segmentation network: DeepLab on the ResNet38d (or tiny) backbone, output stride 8.

Two DeepLab heads on the backbone's last features (``conv6``: 4096 channels for ResNet38d):

- ``largefov`` (DeepLab-v1 LargeFOV, Chen et al., ICLR 2015): a 3×3 convolution with dilation 12 to
  ``channels`` (1024), ReLU, dropout; a 1×1 convolution to ``channels``, ReLU, dropout; a 1×1
  classifier to the C classes. The head of the ResNet38 DeepLab that PSA, SEAM and CPN report.
- ``aspp`` (DeepLab-v2 ASPP, Chen et al., TPAMI 2018): parallel 3×3 classifiers with dilations
  6, 12, 18, 24, summed (the "ASPP-S" form that the PyTorch DeepLab-v2 ports use).

The backbone's layers are registered flat on the model (``conv1a.weight``, ``b4_3.bn_branch2a…``), so
the released ImageNet ResNet38 initialisation loads without renaming; the head lives under
``seg_head.*``, so no CPN key (``fc8``) loads into it by accident. Backbone convolutions start from
He init (what a DeepLab trained from scratch needs; loaded weights replace it). As in CPN training, BatchNorm is
frozen (eval mode, affine frozen) and ``conv1a``/``b2*`` are not trained: with a few images per
device BatchNorm statistics would be noise, and a frozen BatchNorm keeps one optimizer step
independent of how the global batch is split over devices.

``model(x)`` returns the class scores (logits) N×C×H×W at the input size (bilinear,
align_corners=False); ``model.score(x)`` the stride-8 logits N×C×⌈H/8⌉×⌈W/8⌉. C, the classifier's width,
is the dataset's class count with background (21 for PASCAL VOC, the default; 81 for COCO): training
takes it from the shards, inference from the weights (:mod:`cpn_dist.data.datasets.recorded`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cpn_dist.data.datasets.voc import NUM_CLASSES  # VOC's, the default width of the classifier
from cpn_dist.errors import CpnError
from cpn_dist.models.base import BackboneNet, as_weight_dtype

SEG_HEADS = ("largefov", "aspp")


class LargeFOV(nn.Module):
    """DeepLab-v1 LargeFOV: conv3×3 (dilation) → ReLU → dropout → conv1×1 → ReLU → dropout → classifier."""

    def __init__(self, in_ch: int, channels: int, dilation: int, dropout: float, num_classes: int) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_ch, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)
        self.drop6 = nn.Dropout2d(dropout)
        self.drop7 = nn.Dropout2d(dropout)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop6(F.relu(self.fc6(x)))
        x = self.drop7(F.relu(self.fc7(x)))
        return self.fc8(x)


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: the sum of dilated 3×3 classifiers (after dropout)."""

    def __init__(self, in_ch: int, rates: tuple[int, ...], dropout: float, num_classes: int) -> None:
        super().__init__()
        self.drop = nn.Dropout2d(dropout)
        self.branches = nn.ModuleList(nn.Conv2d(in_ch, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        return sum(branch(x) for branch in self.branches)


class SegNet(BackboneNet):
    """DeepLab (``head``: largefov or aspp) on a backbone with the ResNet38d interface."""

    new_layers = ("seg_head",)

    def __init__(self, backbone: nn.Module, head: str = "largefov", channels: int = 1024, dilation: int = 12,
                 rates: tuple[int, ...] = (6, 12, 18, 24), dropout: float = 0.5,
                 num_classes: int = NUM_CLASSES) -> None:  # fmt: skip
        if head not in SEG_HEADS:
            raise CpnError(f"segmentation.head: unknown head '{head}' (choose from {', '.join(SEG_HEADS)})")
        super().__init__(backbone)
        self.head = head
        self.num_classes = num_classes
        in_ch = backbone.channels["conv6"]
        if head == "largefov":
            self.seg_head = LargeFOV(in_ch, channels, dilation, dropout, num_classes)
        else:
            self.seg_head = ASPP(in_ch, tuple(rates), dropout, num_classes)
        # He init of the backbone convolutions: PyTorch's default init shrinks activations about 3x per
        # layer (the tiny backbone's conv6 comes out with std ~0.002), which stalls SGD from scratch.
        # Loaded ImageNet weights replace it.
        for m in backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.freeze()

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """[backbone weights, backbone biases, head weights, head biases] (lr ×1, ×2, ×10, ×20 in the
        engine's optimizer; weight decay on weights only), every convolution inside the head counting as
        head. Frozen parameters are in none of them."""
        groups: list[list[nn.Parameter]] = [[], [], [], []]
        head = {id(m) for m in self.seg_head.modules()}
        for m in self.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            offset = 2 if id(m) in head else 0
            if m.weight.requires_grad:
                groups[offset].append(m.weight)
            if m.bias is not None and m.bias.requires_grad:
                groups[offset + 1].append(m.bias)
        return groups

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at output stride 8, N×C×h×w, float32."""
        return self.seg_head(self.backbone(as_weight_dtype(self, x)).conv6).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.score(x), x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmentation_model(backbone: str = "resnet38d", head: str = "largefov", *, channels: int = 1024,
                             dilation: int = 12, rates: tuple[int, ...] = (6, 12, 18, 24),
                             head_dropout: float = 0.5, backbone_dropout: float = 1.0,
                             num_classes: int = NUM_CLASSES) -> SegNet:  # fmt: skip
    """A DeepLab model over ``num_classes`` classes with background (the dataset's C, VOC's 21 by default);
    ``backbone_dropout`` scales ResNet38d's released Dropout2d rates in b6/b7."""
    from cpn_dist.models import BACKBONES

    if backbone not in BACKBONES:
        raise CpnError(f"model.backbone: unknown backbone '{backbone}' (choose from {', '.join(BACKBONES)})")
    model = SegNet(BACKBONES[backbone](dropout=backbone_dropout), head, channels, dilation, tuple(rates),
                   head_dropout, num_classes)  # fmt: skip
    model.backbone_name = backbone
    return model


def model_from_config(cfg, *, dropout: bool = True, num_classes: int = NUM_CLASSES) -> SegNet:
    """The segmentation model of a run config (``model.backbone``, ``model.dropout``, ``segmentation.*``)
    over ``num_classes`` classes (the dataset's C); ``dropout=False`` builds it without dropout (inference)."""
    seg = cfg.segmentation
    return build_segmentation_model(
        cfg.model.backbone, seg.head, channels=seg.head_channels, dilation=seg.fov_dilation,
        rates=tuple(seg.aspp_rates), head_dropout=seg.head_dropout if dropout else 0.0,
        backbone_dropout=cfg.model.dropout if dropout else 0.0, num_classes=num_classes,
    )  # fmt: skip
