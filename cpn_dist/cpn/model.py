"""The Complementary Patch Network: backbone → fc8 (CAM) → PCM + PRCM (refined CAM).

``CPNet(x)`` returns ``(cam, refined)``, both N×C×H×W at the input size (bilinear,
align_corners=True, as the released Net), ``refined`` None for ``head="none"``. The head works on
the detached CAM and detached backbone features, so gradients of the refined CAM reach only the head
layers (paper Sec. 4.1). Since BatchNorm is frozen, a forward over the concatenated triplet
``cat([I, I_h, I_hbar])`` equals three separate forwards (up to dropout masks).

State-dict keys are those of the released ``network.resnet38_CPN.Net``: the backbone's layers are
registered directly on this module (``conv1a.weight``, ``b4_3.bn_branch2a.running_mean``, …) next to
``fc8``, ``f8_3``, ``f8_4``, ``f9``, ``f10``, so released checkpoints load, and ours load in the
released code, without renaming.

C, the width of ``fc8`` (background + the object classes), is the dataset's class count: 21 for PASCAL
VOC (the default and the released model), 81 for COCO. Training takes it from the shards, inference
from the weights (:mod:`cpn_dist.data.datasets.recorded`); every other layer is the same for every C.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cpn_dist.cpn import head as cpn_head
from cpn_dist.data.datasets.voc import NUM_CLASSES  # VOC's, the default width of fc8
from cpn_dist.errors import CpnError
from cpn_dist.models import BACKBONES
from cpn_dist.models.base import BackboneNet, as_weight_dtype, float32_conv
from cpn_dist.models.base import float32_region as _float32_region

HEADS = ("official", "paper", "pcm", "none")
# The layers the released code trains from scratch (lr ×10 / ×20); everything else is backbone.
NEW_LAYERS = ("fc8", "f8_3", "f8_4", "f9", "f10")


class CPNet(BackboneNet):
    """CAM network with the CPN refinement head (``head``: official, paper, pcm or none)."""

    new_layers = NEW_LAYERS

    def __init__(self, backbone: nn.Module, head: str = "official", dropout: float = 1.0,
                 num_classes: int = NUM_CLASSES) -> None:  # fmt: skip
        super().__init__(backbone)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.head = head
        self.num_classes = num_classes
        channels = backbone.channels
        self.dropout7 = nn.Dropout2d(0.5 * dropout)
        self.fc8 = nn.Conv2d(channels["conv6"], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        if head != "none":
            self.f8_3 = nn.Conv2d(channels["conv4"], 64, 1, bias=False)
            self.f8_4 = nn.Conv2d(channels["conv5"], 128, 1, bias=False)
            self.f9 = nn.Conv2d(192 + 3, 192, 1, bias=False)
            self.f10 = nn.Conv2d(192 + 3, 192, 1, bias=False)
            nn.init.kaiming_normal_(self.f8_3.weight)
            nn.init.kaiming_normal_(self.f8_4.weight)
            nn.init.xavier_uniform_(self.f9.weight, gain=4)
            nn.init.xavier_uniform_(self.f10.weight, gain=4)
            if head == "pcm":  # PCM only: no PRCM, so no f10 (made and dropped: the other layers' init is unchanged)
                del self.f10
        self.freeze()

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep_head_inputs: bool = False):
        """``(cam, refined)`` at the input size; with ``keep_head_inputs`` also the head's detached inputs
        (:class:`HeadInputs`), from which :meth:`refine_from` recomputes ``refined`` exactly."""
        size = x.shape[-2:]
        x = as_weight_dtype(self, x)
        features = self.backbone(x)
        cam = self.fc8(self.dropout7(features.conv6)).float()
        refined = inputs = None
        if self.head != "none":
            image = F.interpolate(x.detach().float(), cam.shape[-2:], mode="bilinear", align_corners=True)
            inputs = HeadInputs(image, cam.detach(), features.conv4.detach(), features.conv5.detach(), tuple(size))
            refined = self.refine_from(inputs)
        cam = F.interpolate(cam, size, mode="bilinear", align_corners=True)
        return (cam, refined, inputs) if keep_head_inputs else (cam, refined)

    def refine_from(self, inputs: HeadInputs) -> torch.Tensor:
        """The refined CAM at the input size from the head's (detached) inputs: the head's whole forward."""
        refined = self.refine(inputs.image, inputs.cam, inputs.conv4, inputs.conv5)
        return F.interpolate(refined, inputs.size, mode="bilinear", align_corners=True)

    def refine(self, image: torch.Tensor, cam: torch.Tensor, conv4: torch.Tensor, conv5: torch.Tensor) -> torch.Tensor:
        """The refined CAM ``Y_pcm + Y_prcm`` (``Y_pcm`` alone for ``head="pcm"``) at the CAM resolution,
        from the input image resized to the CAM grid and the raw CAM (N×C×h×w). Runs in float32 whatever
        the autocast state or the weights' dtype (DeepSpeed's bf16 weights are cast, not the inputs)."""
        with torch.no_grad():
            make_input = cpn_head.official_head_input if self.head == "official" else cpn_head.paper_head_input
            y = make_input(cam.detach().float())
        with _float32_region(image.device):
            reduced3 = F.relu(float32_conv(self.f8_3)(conv4.detach().float()))
            reduced4 = F.relu(float32_conv(self.f8_4)(conv5.detach().float()))
            features = torch.cat([image.float(), reduced3, reduced4], dim=1)  # X, 195 channels
            g = float32_conv(self.f9)(features)
            pcm = cpn_head.pixel_correlation(y, g)
            if self.head == "pcm":
                return pcm
            if self.head == "official":
                prcm = cpn_head.official_pixel_region(y, features, g, float32_conv(self.f10))
            else:
                prcm = cpn_head.paper_pixel_region(y, features, g, float32_conv(self.f10))
            return pcm + prcm


class HeadInputs(NamedTuple):
    """What the refinement head reads, all detached: the input image resized to the CAM grid (N×3×h×w),
    the raw CAM (N×C×h×w), the two backbone taps, and the input size to upsample the result to."""

    image: torch.Tensor
    cam: torch.Tensor
    conv4: torch.Tensor
    conv5: torch.Tensor
    size: tuple[int, int]


def build_model(backbone: str = "resnet38d", head: str = "official", dropout: float = 1.0,
                num_classes: int = NUM_CLASSES) -> CPNet:  # fmt: skip
    """A CPN model for ``num_classes`` classes with background (the dataset's C; VOC's 21 by default).
    ``dropout`` scales every released dropout rate (0.5 before fc8; 0.3 / 0.5 inside b6 / b7); 0 disables
    dropout. Backbone layers use PyTorch's default init, the new layers the released init (fc8 Xavier,
    f8_3/f8_4 Kaiming, f9/f10 Xavier with gain 4)."""
    if backbone not in BACKBONES:
        raise CpnError(f"model.backbone: unknown backbone '{backbone}' (choose from {', '.join(BACKBONES)})")
    if head not in HEADS:
        raise CpnError(f"model.head: unknown head '{head}' (choose from {', '.join(HEADS)})")
    if not 0.0 <= dropout <= 1.0:
        raise CpnError(f"model.dropout: must be within 0..1, got {dropout}")
    if num_classes < 2:
        raise ValueError(f"a CPN needs background and at least one class, got num_classes={num_classes}")
    model = CPNet(BACKBONES[backbone](dropout=dropout), head=head, dropout=dropout, num_classes=num_classes)
    model.backbone_name = backbone
    return model


def model_for_weights(path, backbone: str, head: str, *, dropout: float = 0.0, allow_pickle: bool = False,
                      fallback=None):  # fmt: skip
    """``(model, load report, dataset)``: a CPN built over the classes the weights at ``path`` score — the
    dataset they record, else as many as their ``fc8`` has
    (:func:`cpn_dist.data.datasets.recorded.weights_dataset`), else
    ``fallback`` (a :class:`~cpn_dist.data.datasets.info.DatasetInfo`, or a function giving one, asked only then;
    None: VOC) for weights without a classifier (a backbone's ImageNet weights) — with those weights loaded."""
    from cpn_dist.data.datasets.info import voc
    from cpn_dist.data.datasets.recorded import weights_dataset
    from cpn_dist.models.weights import load_state, read_weights, resolve_weights

    path = resolve_weights(path, backbone)
    state, meta = read_weights(path, allow_pickle)
    dataset = weights_dataset(path, meta, state, "cpn")
    if dataset is None:
        dataset = (fallback() if callable(fallback) else fallback) or voc()
    model = build_model(backbone, head, dropout=dropout, num_classes=dataset.num_classes)
    return model, load_state(model, state, path), dataset
