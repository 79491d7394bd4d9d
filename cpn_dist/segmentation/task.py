"""Train the segmentation model on pseudo labels: the ``stage: segmentation`` task of the shared
training loop (:mod:`cpn_dist.engine`: Accelerate DDP/DeepSpeed, AMP, accumulation, checkpoints and
resume, TensorBoard, progress).

Pseudo labels travel beside the shards, not inside them: a folder of label PNGs keyed by image id
(``segmentation.labels``/``{key}.png``, what ``cpn pseudo`` and ``cpn rw`` write), read by
:class:`~cpn_dist.data.labelled.LabelledSampleMaker` and augmented together with the image (random
long-side resize in ``data.scale_range``, flip, colour jitter of the image, random crop
``data.crop`` with padding labelled 255). Changing the labels therefore needs no re-packing.
"""

from __future__ import annotations

import numpy as np
import torch

from cpn_dist.config import Config
from cpn_dist.data.voc import PALETTE
from cpn_dist.segmentation.loss import check_labels, labelled_pixels, segmentation_loss


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


class SegmentationTask:
    """DeepLab on pseudo labels, for :func:`cpn_dist.engine.run_training`."""

    name = "segmentation"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self):
        from cpn_dist.models import load_weights
        from cpn_dist.segmentation.model import model_from_config

        model = model_from_config(self.cfg)
        if self.cfg.model.weights:
            load_weights(model, self.cfg.model.weights)
        return model

    def loader(self, *, micro_size, global_size, rank, world_size, epoch, start_step):
        from cpn_dist.data import build_train_loader
        from cpn_dist.data.labelled import LabelledSampleMaker

        maker = LabelledSampleMaker.from_config(self.cfg.data, self.cfg.segmentation.labels, self.cfg.train.seed,
                                                epoch)  # fmt: skip
        return build_train_loader(self.cfg.data, micro_size=micro_size, global_size=global_size, rank=rank,
                                  world_size=world_size, seed=self.cfg.train.seed, epoch=epoch,
                                  start_step=start_step, maker=maker)  # fmt: skip

    def prepare_window(self, model, window, device):
        """The global count of labelled pixels (all micro-steps, all ranks) and the chunk count."""
        for batch in window:
            check_labels(batch["label"], batch["key"])
        world = _world_size()
        total = labelled_pixels(window, device, world)
        return [(total, len(window) * world)] * len(window)

    def loss(self, model, batch, device, context):
        total, chunks = context
        logits = model(batch["image"].to(device, non_blocking=True))
        label = batch["label"].to(device, non_blocking=True)
        return segmentation_loss(logits, label, total, chunks), logits

    def panel(self, batch, logits):
        """Image | label | prediction of the first image of the micro-batch (VOC colours)."""
        mean = torch.tensor(self.cfg.data.mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.data.std).view(3, 1, 1)
        image = (batch["image"][0].float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        label = PALETTE[batch["label"][0].numpy().astype(np.uint8)] / 255.0
        pred = PALETTE[logits[0].detach().argmax(0).cpu().numpy().astype(np.uint8)] / 255.0
        panel = np.concatenate([image, label, pred], axis=1)
        return (panel * 255).round().astype(np.uint8).transpose(2, 0, 1)

    def flops_per_step(self, model):
        """Forward + backward FLOPs of the global batch, counted on a ``meta``-device replica."""
        from torch.utils.flop_counter import FlopCounterMode

        from cpn_dist.segmentation.model import model_from_config

        crop, n = self.cfg.data.crop, self.cfg.batch.global_size
        with torch.device("meta"):
            replica = model_from_config(self.cfg).train()
            x = torch.empty(n, 3, crop, crop)
        with FlopCounterMode(display=False) as counter:
            replica(x).sum().backward()
        return float(counter.get_total_flops())
