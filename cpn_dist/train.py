"""Train CPN: ``accelerate launch -m cpn_dist.train --config configs/X.yaml [KEY=VALUE ...]``
(or ``cpn train`` in one process). The loop itself is :mod:`cpn_dist.engine`; this module is what
is particular to CPN.

Each micro-step runs the triplet (I, I_h, I_hbar) as ONE forward over 3N images (BatchNorm is
frozen, so this is exact), then ``cpn_loss``. With ``loss.ohem_scope: batch`` the OHEM selection of
CPCR elements is taken over the whole global batch — all ranks, all micro-steps — exactly: without
accumulation the selection is a collective between the forward and the backward; with it, a no-grad
pass over the accumulation window (replaying the RNG so dropout masks match) finds it first. With
dropout off, one optimizer step therefore gives the same parameters for every split of the global
batch (1×4×1, 2×2×1, 1×1×4, 2×1×2 …).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cpn_dist import losses as L
from cpn_dist.config import Config
from cpn_dist.engine import accumulation_steps, quiet_libraries, rng_state, run_main, run_training, set_rng_state
from cpn_dist.monitor import image_panel

__all__ = ["CPNTask", "accumulation_steps", "main", "quiet_libraries", "train"]


def _triplet(model, batch: dict, device) -> tuple[tuple, tuple | None]:
    """One forward over cat([I, I_h, I_hbar]); returns (cams, refined) as (o, h, hbar) triples."""
    x = torch.cat([batch["image"], batch["image_h"], batch["image_hbar"]]).to(device, non_blocking=True)
    cam, refined = model(x)
    cams = tuple(cam.float().chunk(3))
    return cams, (tuple(refined.float().chunk(3)) if refined is not None else None)


def _single(model, batch: dict, device):
    """The baseline forward (``loss.recipe: cam``): the original image only."""
    cam, refined = model(batch["image"].to(device, non_blocking=True))
    return (cam.float(),), ((refined.float(),) if refined is not None else None)


class CPNTask:
    """The CPN stage for :func:`cpn_dist.engine.run_training`."""

    name = "cpn"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        triplet = cfg.loss.recipe != "cam"
        self.forward = _triplet if triplet else _single
        self.global_ohem = triplet and cfg.loss.ohem_scope == "batch" and cfg.loss.ohem_ratio < 1.0

    def build_model(self):
        from cpn_dist.models import build_model, load_weights

        model = build_model(self.cfg.model.backbone, self.cfg.model.head, dropout=self.cfg.model.dropout)
        if self.cfg.model.weights:
            load_weights(model, self.cfg.model.weights)
        return model

    def loader(self, *, micro_size, global_size, rank, world_size, epoch, start_step):
        from cpn_dist.data import build_train_loader

        return build_train_loader(self.cfg.data, micro_size=micro_size, global_size=global_size, rank=rank,
                                  world_size=world_size, seed=self.cfg.train.seed, epoch=epoch,
                                  start_step=start_step)  # fmt: skip

    def _candidates(self, cams, refined, batch, device):
        labels, lam = batch["labels"].to(device), batch["lam"].to(device)
        return L.ohem_candidates(cams, refined, labels, lam, self.cfg.loss.recipe, self.cfg.loss.alpha)

    def prepare_window(self, model, window, device):
        """With accumulation and global OHEM: a no-grad pass over the window gives the exact selection,
        and the RNG state before each micro-step, so the grad pass replays the same dropout masks."""
        if not (self.global_ohem and len(window) > 1):
            return None
        states, candidates = [], []
        with torch.no_grad():
            for batch in window:
                states.append(rng_state(device))
                cams, refined = self.forward(model, batch, device)
                candidates.append(self._candidates(cams, refined, batch, device))
        selection = L.global_ohem_selection(candidates, self.cfg.loss.ohem_ratio)
        return [(selection, state) for state in states]

    def loss(self, model, batch, device, context):
        selection = None
        if context is not None:
            selection, state = context
            set_rng_state(state, device)
        cams, refined = self.forward(model, batch, device)
        if self.global_ohem and selection is None:  # no accumulation: select between forward and backward
            selection = L.global_ohem_selection([self._candidates(cams, refined, batch, device)],
                                                self.cfg.loss.ohem_ratio)  # fmt: skip
        # With a global selection every term is this micro-step's chunk estimate (see cpn_dist.ohem).
        labels, lam = batch["labels"].to(device), batch["lam"].to(device)
        terms = L.cpn_loss_from_config(cams, refined, labels, lam, self.cfg.loss, ohem=selection)
        return terms, (cams, refined)

    def panel(self, batch, outputs):
        cams, refined = outputs
        return image_panel(batch, cams[0], refined[0] if refined else None, self.cfg.data.mean, self.cfg.data.std)

    def flops_per_step(self, model):
        from cpn_dist.models.flops import training_step_flops

        flops = training_step_flops(model, crop=self.cfg.data.crop, batch=self.cfg.batch.global_size,
                                    triplet=self.cfg.loss.recipe != "cam")  # fmt: skip
        return float(flops["forward_backward"])


# The stages `cpn train` can train, by the config's `stage` key: "module:Task class".
STAGES = {
    "cpn": "cpn_dist.train:CPNTask",
    "affinity": "cpn_dist.affinity.task:AffinityTask",
    "segmentation": "cpn_dist.segmentation.task:SegmentationTask",
}


def train(cfg: Config, resume: str | None = None, restart: bool = False) -> Path:
    """Train the configured stage; returns the path of the final weights ``{output.dir}/model_final.pth``.
    A folder holding checkpoints of the same config resumes from them; ``resume``/``restart``: see
    :func:`cpn_dist.run_start.plan_start`."""
    import importlib

    module, _, name = STAGES[cfg.stage].partition(":")
    task = getattr(importlib.import_module(module), name)(cfg)
    return run_training(cfg, task, resume=resume, restart=restart)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, "cpn_dist.train", "Train the Complementary Patch Network.", train)


if __name__ == "__main__":
    raise SystemExit(main())
