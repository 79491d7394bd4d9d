"""FLOPs of a CPN training step, counted by ``torch.utils.flop_counter.FlopCounterMode``.

The count is made on a replica built on the ``meta`` device (no memory, no compute, any crop), so it
is instant and leaves the caller's model alone. It covers the matrix work FlopCounterMode knows
(convolutions, matmuls: > 99 % of the step); elementwise ops, interpolation and the loss are not
counted. Backward counts only what autograd computes: no weight gradients for the frozen layers
(conv1a, b2*, BatchNorm) and none into the backbone from the refinement head. A convolution's
backward counts, for each gradient it computes (input, weight), its forward's FLOPs: PyTorch's own
rule ignores ``groups`` for the weight gradient, which over-counts a depthwise convolution
(EfficientNet-Lite0's) by its channel count.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:  # fmt: skip
    """FLOPs of ``aten.convolution_backward``: the forward's 2·MACs for each of the input and weight
    gradients it computes (``w_shape`` already holds in_channels / groups)."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (bool(output_mask[0]) + bool(output_mask[1]))


def _count(fn) -> int:
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def replica_step_flops(build, batch: int, crop: int) -> float:
    """Forward + backward FLOPs of one step of the model ``build()`` makes over ``batch`` images at
    ``crop``×``crop`` (the backward of its summed output), counted on a ``meta``-device replica."""
    with torch.device("meta"):
        replica = build().train()
        x = torch.empty(batch, 3, crop, crop)
    return float(_count(lambda: replica(x).sum().backward()))


def training_step_flops(model=None, *, backbone: str | None = None, head: str | None = None, crop: int = 448,
                        batch: int = 4, triplet: bool = True) -> dict[str, int]:  # fmt: skip
    """FLOPs of one training step over ``batch`` images at ``crop``×``crop``: ``{"forward",
    "forward_backward", "images"}``. With ``triplet`` each image is run as the triplet (I, I_h, I_hbar),
    i.e. one forward over 3·batch images. Give a built model (its backbone, head and class count are read
    from it) or ``backbone`` and ``head`` names (VOC's 21 classes)."""
    from cpn_dist.cpn.model import build_model

    kwargs = {}
    if model is not None:
        backbone = backbone or getattr(model, "backbone_name", None)
        head = head or getattr(model, "head", None)
        kwargs = {"num_classes": model.num_classes} if hasattr(model, "num_classes") else {}
    if backbone is None or head is None:
        raise ValueError("training_step_flops needs a model built by build_model, or backbone and head names")
    with torch.device("meta"):
        replica = build_model(backbone, head, dropout=0.0, **kwargs).train()
    images = (3 if triplet else 1) * batch
    x = torch.empty(images, 3, crop, crop, device="meta")

    def forward():
        return replica(x)

    def forward_backward():
        cam, refined = replica(x)
        loss = cam.sum() if refined is None else cam.sum() + refined.sum()
        loss.backward()

    return {"forward": _count(forward), "forward_backward": _count(forward_backward), "images": images}


def global_ohem_window_flops(backbone: str, head: str, *, crop: int = 448, micro: int = 1,
                             accumulation: int = 4) -> dict[str, int]:  # fmt: skip
    """What global OHEM over an accumulation window of ``accumulation`` micro-steps of ``micro`` images
    (triplets) adds to the window's forward + backward (``"step"``): ``"full"`` — the no-grad forward of
    every micro-step first (``global_ohem_pass: full``); ``"head_only"`` — the head's forward + backward
    re-run for every micro-step but the last (``global_ohem_pass: auto``). Counted on the ``meta``
    device like :func:`training_step_flops`."""
    from cpn_dist.cpn.model import build_model

    step = training_step_flops(backbone=backbone, head=head, crop=crop, batch=micro)
    with torch.device("meta"):
        replica = build_model(backbone, head, dropout=0.0).train()
    x = torch.empty(3 * micro, 3, crop, crop, device="meta")
    with torch.no_grad():
        _, _, inputs = replica(x, keep_head_inputs=True)

    def head_forward_backward():
        replica.refine_from(inputs).sum().backward()

    head = _count(head_forward_backward)
    return {"step": accumulation * step["forward_backward"], "full": accumulation * step["forward"],
            "head_only": (accumulation - 1) * head}
