"""Train AffinityNet on affinity labels: the ``stage: affinity`` task of the shared training loop
(:mod:`cpn_dist.training.engine`: Accelerate DDP/DeepSpeed, AMP, accumulation, checkpoints and exact resume,
TensorBoard, progress). ``cpn train --config configs/voc_affinity.yaml`` or ``accelerate launch -m
cpn_dist.train --config configs/voc_affinity.yaml``.

Data: the shards' images with the affinity labels of ``affinity.labels`` (``{image id}.png``, from
``cpn affinity-labels``) through :class:`~cpn_dist.data.loading.labelled.LabelledSampleMaker` — the same
joint augmentation as every stage (``data.scale_range``, flip, colour jitter, crop ``data.crop`` with
padding labelled 255). Per micro-batch the label crop is reduced to the stride-8 grid
(:func:`~cpn_dist.affinity.pairs.reduce_labels`) and turned into the bg-positive, fg-positive and
negative pairs within ``affinity.radius``.

Split invariance: before the micro-steps of an optimizer step, the three pair counts of the whole
global batch are summed over the accumulation window and all-reduced over the ranks (labels only, no
forward); each micro-step's loss is then its chunk estimate (:mod:`cpn_dist.affinity.loss`), so one
step reproduces the released whole-batch loss whatever the split of the batch.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from cpn_dist import devices
from cpn_dist.affinity.loss import affinity_loss, pair_counts
from cpn_dist.affinity.pairs import pair_affinities, pair_labels, reduce_labels
from cpn_dist.config.run import Config
from cpn_dist.training.monitor import panel_image, rgb_image, voc_colours


class AffinityTask:
    """AffinityNet on affinity labels, for :func:`cpn_dist.training.engine.run_training`."""

    name = "affinity"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.radius = cfg.affinity.radius

    @cached_property
    def dataset(self):
        """The dataset of the run's shards: the label values (0..C-1, 255) and what the weights record."""
        from cpn_dist.data.datasets.recorded import run_dataset

        return run_dataset(self.cfg.data, missing_ok=True)  # unreadable shards: the loader says so

    def build_model(self):
        from cpn_dist.affinity.model import build_affinity_model
        from cpn_dist.config.weights import load_start_weights

        model = build_affinity_model(self.cfg.model.backbone, dropout=self.cfg.model.dropout)
        if self.cfg.model.weights:
            load_start_weights(model, self.cfg.model.weights, self.cfg.stage, self.cfg.model.allow_pickle)
        return model

    def loader(self, *, micro_size, global_size, rank, world_size, epoch, start_step):
        from cpn_dist.data import build_train_loader
        from cpn_dist.data.loading.labelled import LabelledSampleMaker

        maker = LabelledSampleMaker.from_config(self.cfg.data, self.cfg.affinity.labels, self.cfg.train.seed, epoch)
        return build_train_loader(self.cfg.data, micro_size=micro_size, global_size=global_size, rank=rank,
                                  world_size=world_size, seed=self.cfg.train.seed, epoch=epoch,
                                  start_step=start_step, maker=maker)  # fmt: skip

    def pairs(self, batch: dict, device) -> tuple[torch.Tensor, ...]:
        """The (bg, fg, neg) pair masks of a micro-batch's labels on the stride-8 grid."""
        grid = reduce_labels(batch["label"].to(device, non_blocking=True), num_classes=self.dataset.num_classes)
        return pair_labels(grid, self.radius)

    def prepare_window(self, model, window, device):
        """Pair masks of every micro-step, and the pair counts of the global batch (all ranks)."""
        pairs = [self.pairs(batch, device) for batch in window]
        counts = sum(pair_counts(*p) for p in pairs)
        world = devices.world_size()
        if world > 1:
            torch.distributed.all_reduce(counts)
        chunks = world * len(window)
        return [(p, counts, chunks) for p in pairs]

    def loss(self, model, batch, device, context):
        (bg, fg, neg), counts, chunks = context
        embedding = model(batch["image"].to(device, non_blocking=True))
        aff = pair_affinities(embedding, self.radius)
        if aff.shape != bg.shape:  # the embedding's grid is ⌈crop / 8⌉, as reduce_labels makes it
            raise RuntimeError(f"{aff.shape[1]} pairs on the {tuple(embedding.shape[-2:])} embedding, "
                               f"{bg.shape[1]} on the label grid")  # fmt: skip
        return affinity_loss(aff, bg, fg, neg, counts, chunks), embedding

    def panel(self, batch, embedding):
        """Image | affinity label (VOC colours) | boundaries: 1 − the mean affinity of each stride-8 cell
        to its right and lower neighbours (white = strong boundary), for the first image."""
        image = rgb_image(batch["image"][0], self.cfg.data.mean, self.cfg.data.std)
        f = embedding[:1].detach().float().cpu()
        right = torch.exp(-(f[..., :, 1:] - f[..., :, :-1]).abs().mean(1))[0]  # h×(w-1)
        down = torch.exp(-(f[..., 1:, :] - f[..., :-1, :]).abs().mean(1))[0]  # (h-1)×w
        edge = torch.zeros(f.shape[-2:])
        edge[:, :-1] += 0.5 * (1 - right)
        edge[:-1, :] += 0.5 * (1 - down)
        size = image.shape[:2]
        edge = torch.nn.functional.interpolate(edge[None, None], size, mode="nearest")[0, 0].numpy()
        return panel_image([image, voc_colours(batch["label"][0]), np.repeat(edge[..., None], 3, axis=2)])

    def flops_per_step(self, model):
        """Forward + backward FLOPs of the global batch (backbone and embedding; the pairwise L1
        distances are elementwise and not counted), on a ``meta``-device replica."""
        from cpn_dist.affinity.model import build_affinity_model
        from cpn_dist.models.flops import replica_step_flops

        return replica_step_flops(lambda: build_affinity_model(self.cfg.model.backbone, dropout=0.0),
                                  self.cfg.batch.global_size, self.cfg.data.crop)  # fmt: skip
