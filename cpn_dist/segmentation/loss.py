"""Pixel-wise cross-entropy of the segmentation model, ignoring label 255, split-invariant.

The loss of one optimizer step is the mean cross-entropy over every labelled (≠ 255) pixel of the
GLOBAL batch, as one device with the whole batch computes it with ``F.cross_entropy``. A micro-batch
alone does not know that mean's denominator — micro-batches hold different numbers of labelled
pixels — so the task counts the labelled pixels of the whole accumulation window on every rank and
sums them over ranks first (:func:`labelled_pixels`). Each micro-step then returns its *chunk
estimate* ``chunks × Σ(its pixel losses) / T`` (``chunks`` = ranks × micro-steps, ``T`` the global
count): the mean of the chunk estimates is the global-batch mean, which is what DDP's mean over ranks
and the engine's 1/accumulation produce. One step therefore gives the same parameters for every
split of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cpn_dist.data.datasets.voc import IGNORE, NUM_CLASSES  # VOC's class count: the default
from cpn_dist.errors import CpnError


def check_labels(label: torch.Tensor, keys: list[str], num_classes: int = NUM_CLASSES) -> None:
    """A CpnError naming the first image whose label map holds a value outside the classes 0..C-1
    (C = ``num_classes``) and 255."""
    bad = (label >= num_classes) & (label != IGNORE)
    if bad.any():
        i = int(bad.flatten(1).any(1).nonzero()[0])
        value = int(label[i][bad[i]][0])
        raise CpnError(f"{keys[i]}.png: label value {value} is neither a class 0..{num_classes - 1} nor {IGNORE}")


def labelled_pixels(window: list[dict], device, world_size: int) -> int:
    """Labelled (≠ 255) pixels of the micro-batches of one optimizer step, summed over all ranks
    (collective when ``world_size`` > 1: every rank must call it)."""
    count = torch.tensor([float(sum(int((b["label"] != IGNORE).sum()) for b in window))], device=device,
                         dtype=torch.float64)  # fmt: skip
    if world_size > 1:
        torch.distributed.all_reduce(count)
    return int(count.item())


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, total_labelled: int, chunks: int) -> dict:
    """``{"total", "pixel_acc"}``: this micro-batch's chunk estimates of the global-batch mean
    cross-entropy (logits N×C×H×W against label N×H×W, 255 ignored) and of the pixel accuracy."""
    scale = chunks / max(total_labelled, 1)
    loss_sum = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="sum")
    with torch.no_grad():
        correct = ((logits.argmax(1) == label) & (label != IGNORE)).sum().float()
    return {"total": loss_sum * scale, "pixel_acc": correct * scale}
