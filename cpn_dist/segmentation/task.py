"""Train the segmentation model on pseudo labels: the ``stage: segmentation`` task of the shared
training loop (:mod:`cpn_dist.training.engine`: Accelerate DDP/DeepSpeed, AMP, accumulation, checkpoints and
resume, TensorBoard, progress).

Pseudo labels travel beside the shards, not inside them: a folder of label PNGs keyed by image id
(``segmentation.labels``/``{key}.png``, what ``cpn pseudo`` and ``cpn rw`` write), read by
:class:`~cpn_dist.data.loading.labelled.LabelledSampleMaker` and augmented together with the image (random
long-side resize in ``data.scale_range``, flip, colour jitter of the image, random crop
``data.crop`` with padding labelled 255). Changing the labels therefore needs no re-packing.
"""

from __future__ import annotations

from functools import cached_property

from cpn_dist import devices
from cpn_dist.config.run import Config
from cpn_dist.segmentation.loss import check_labels, labelled_pixels, segmentation_loss
from cpn_dist.training.monitor import panel_image, rgb_image, voc_colours


class SegmentationTask:
    """DeepLab on pseudo labels, for :func:`cpn_dist.training.engine.run_training`."""

    name = "segmentation"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @cached_property
    def dataset(self):
        """The dataset of the run's shards: C, the classifier's width, and what the weights record."""
        from cpn_dist.data.datasets.recorded import run_dataset

        return run_dataset(self.cfg.data, missing_ok=True)  # unreadable shards: the loader says so

    def build_model(self):
        from cpn_dist.config.weights import load_start_weights
        from cpn_dist.segmentation.model import model_from_config

        model = model_from_config(self.cfg, num_classes=self.dataset.num_classes)
        if self.cfg.model.weights:
            load_start_weights(model, self.cfg.model.weights, self.cfg.stage, self.cfg.model.allow_pickle)
        return model

    def loader(self, *, micro_size, global_size, rank, world_size, epoch, start_step):
        from cpn_dist.data import build_train_loader
        from cpn_dist.data.loading.labelled import LabelledSampleMaker

        maker = LabelledSampleMaker.from_config(self.cfg.data, self.cfg.segmentation.labels, self.cfg.train.seed,
                                                epoch)  # fmt: skip
        return build_train_loader(self.cfg.data, micro_size=micro_size, global_size=global_size, rank=rank,
                                  world_size=world_size, seed=self.cfg.train.seed, epoch=epoch,
                                  start_step=start_step, maker=maker)  # fmt: skip

    def prepare_window(self, model, window, device):
        """The global count of labelled pixels (all micro-steps, all ranks) and the chunk count."""
        for batch in window:
            check_labels(batch["label"], batch["key"], self.dataset.num_classes)
        world = devices.world_size()
        total = labelled_pixels(window, device, world)
        return [(total, len(window) * world)] * len(window)

    def loss(self, model, batch, device, context):
        total, chunks = context
        logits = model(batch["image"].to(device, non_blocking=True))
        label = batch["label"].to(device, non_blocking=True)
        return segmentation_loss(logits, label, total, chunks), logits

    def panel(self, batch, logits):
        """Image | label | prediction of the first image of the micro-batch (VOC colours)."""
        image = rgb_image(batch["image"][0], self.cfg.data.mean, self.cfg.data.std)
        return panel_image([image, voc_colours(batch["label"][0]), voc_colours(logits[0].argmax(0))])

    def flops_per_step(self, model):
        """Forward + backward FLOPs of the global batch, counted on a ``meta``-device replica."""
        from cpn_dist.models.flops import replica_step_flops
        from cpn_dist.segmentation.model import model_from_config

        return replica_step_flops(lambda: model_from_config(self.cfg, num_classes=self.dataset.num_classes),
                                  self.cfg.batch.global_size, self.cfg.data.crop)  # fmt: skip
