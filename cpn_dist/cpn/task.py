"""The CPN stage (``stage: cpn``) of the shared trainer (``cpn train``, ``accelerate launch -m cpn_dist.train``).
The loop itself is :mod:`cpn_dist.training.engine`; this module is what is particular to CPN.

Each micro-step builds the CP pair on the device (I_h = I·m, I_hbar = I − I·m from the image and the
mask, so only two tensors cross to the device) and runs the triplet (I, I_h, I_hbar) as ONE forward
over 3N images (BatchNorm is frozen, so this is exact), then ``cpn_loss``. With ``loss.ohem_scope:
batch`` the OHEM selection of CPCR elements is taken over the whole global batch — all ranks, all
micro-steps — exactly:

* without accumulation the selection is a collective between the forward and the backward;
* with accumulation, when L_cpcr's gradient reaches only the refinement head (the released recipe,
  and the paper recipe with its stop-gradient — ``loss.global_ohem_pass: auto``): each micro-step
  backpropagates L_cls + L_tcp at once and keeps the head's detached inputs; the last micro-step takes
  the selection over the whole window and adds the L_cpcr of every micro-step, the earlier ones by
  re-running the head alone on their kept inputs (a few % of a step's FLOPs);
* otherwise (the literal paper recipe, or ``global_ohem_pass: full``) a no-grad pass over the window
  (replaying the RNG so dropout masks match) finds the selection first (+36 % FLOPs at ResNet38d).

With dropout off, one optimizer step therefore gives the same parameters for every split of the
global batch (1×4×1, 2×2×1, 1×1×4, 2×1×2 …) and on every path (docs/design.md, "The distributed
invariant").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from cpn_dist.config.run import Config
from cpn_dist.cpn import loss as L
from cpn_dist.training.engine import rng_state, set_rng_state
from cpn_dist.training.monitor import image_panel

__all__ = ["CPNTask", "HeadOnlyWindow", "triplet_forward", "triplet_input"]


def triplet_input(batch: dict, device, channels_last: bool = False) -> torch.Tensor:
    """cat([I, I_h, I_hbar]) on ``device``, the CP pair made there from the image and the mask m:
    I_h = I·m, I_hbar = I − I·m (= I·(1 − m) exactly, m being 0/1)."""
    image = batch["image"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    image_h = image * mask
    x = torch.cat([image, image_h, image - image_h])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def triplet_forward(model, batch: dict, device, channels_last: bool = False, keep_head_inputs: bool = False):
    """One forward over cat([I, I_h, I_hbar]); returns (cams, refined) as (o, h, hbar) triples (and the
    head's inputs with ``keep_head_inputs``)."""
    out = model(triplet_input(batch, device, channels_last), keep_head_inputs=True) if keep_head_inputs \
        else model(triplet_input(batch, device, channels_last))
    cams = tuple(out[0].float().chunk(3))
    refined = tuple(out[1].float().chunk(3)) if out[1] is not None else None
    return (cams, refined, out[2]) if keep_head_inputs else (cams, refined)


def _single(model, batch: dict, device, channels_last: bool = False):
    """The baseline forward (``loss.recipe: cam``): the original image only."""
    x = batch["image"].to(device, non_blocking=True)
    cam, refined = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return (cam.float(),), ((refined.float(),) if refined is not None else None)


@dataclass
class HeadOnlyWindow:
    """One accumulation window of the head-only global OHEM path: the micro-steps' OHEM candidates and
    the head inputs (with labels and λ) of every micro-step but the last."""

    size: int
    candidates: list = field(default_factory=list)
    kept: list = field(default_factory=list)


def _unwrap(model):
    """The CPNet inside a DDP / DeepSpeed / torch.compile wrapper."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


class CPNTask:
    """The CPN stage for :func:`cpn_dist.training.engine.run_training`."""

    name = "cpn"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.triplet = cfg.loss.recipe != "cam"
        self.channels_last = False  # set by the trainer (train.channels_last) before the first step
        self.global_ohem = (self.triplet and cfg.loss.ohem_scope == "batch" and cfg.loss.ohem_ratio < 1.0
                            and cfg.model.head != "none")  # fmt: skip
        # L_cpcr trains only the head (its raw-CAM side detached): the backbone need not wait for the selection
        head_only = cfg.loss.recipe == "official" or cfg.loss.cpcr_stop_gradient
        self.head_only_window = self.global_ohem and head_only and cfg.loss.global_ohem_pass == "auto"

    @cached_property
    def dataset(self):
        """The dataset of the run's shards: C, the width of ``fc8``, and what the weights record."""
        from cpn_dist.data.datasets.recorded import run_dataset

        return run_dataset(self.cfg.data, missing_ok=True)  # unreadable shards: the loader says so

    def forward(self, model, batch: dict, device, keep_head_inputs: bool = False):
        if not self.triplet:
            return _single(model, batch, device, self.channels_last)
        return triplet_forward(model, batch, device, self.channels_last, keep_head_inputs)

    def build_model(self):
        from cpn_dist.config.weights import load_start_weights
        from cpn_dist.cpn.model import build_model

        model = build_model(self.cfg.model.backbone, self.cfg.model.head, dropout=self.cfg.model.dropout,
                            num_classes=self.dataset.num_classes)  # fmt: skip
        if self.cfg.model.weights:
            load_start_weights(model, self.cfg.model.weights, self.cfg.stage, self.cfg.model.allow_pickle)
        return model

    def loader(self, *, micro_size, global_size, rank, world_size, epoch, start_step):
        from cpn_dist.data import build_train_loader

        return build_train_loader(self.cfg.data, micro_size=micro_size, global_size=global_size, rank=rank,
                                  world_size=world_size, seed=self.cfg.train.seed, epoch=epoch,
                                  start_step=start_step)  # fmt: skip

    def _labels(self, batch, device):
        return batch["labels"].to(device, non_blocking=True), batch["lam"].to(device, non_blocking=True)

    def _candidates(self, cams, refined, labels, lam):
        return L.ohem_candidates(cams, refined, labels, lam, self.cfg.loss.recipe, self.cfg.loss.bg_power)

    def prepare_window(self, model, window, device):
        """With accumulation and global OHEM: the head-only window (see the module docstring), or a no-grad
        pass over the window that gives the exact selection and the RNG state before each micro-step, so
        the grad pass replays the same dropout masks."""
        if not (self.global_ohem and len(window) > 1):
            return None
        if self.head_only_window:
            shared = HeadOnlyWindow(len(window))
            return [(shared, i) for i in range(len(window))]
        states, candidates = [], []
        with torch.no_grad():
            for batch in window:
                states.append(rng_state(device))
                cams, refined = self.forward(model, batch, device)
                candidates.append(self._candidates(cams, refined, *self._labels(batch, device)))
        selection = L.global_ohem_selection(candidates, self.cfg.loss.ohem_ratio)
        return [(selection, state) for state in states]

    def loss(self, model, batch, device, context):
        if context is not None and isinstance(context[0], HeadOnlyWindow):
            return self._head_only_loss(model, batch, device, *context)
        selection = None
        if context is not None:
            selection, state = context
            set_rng_state(state, device)
        cams, refined = self.forward(model, batch, device)
        labels, lam = self._labels(batch, device)
        if self.global_ohem and selection is None:  # no accumulation: select between forward and backward
            selection = L.global_ohem_selection([self._candidates(cams, refined, labels, lam)],
                                                self.cfg.loss.ohem_ratio)  # fmt: skip
        # With a global selection every term is this micro-step's chunk estimate (see cpn_dist.cpn.ohem).
        terms = L.cpn_loss_from_config(cams, refined, labels, lam, self.cfg.loss, ohem=selection)
        return terms, (cams, refined)

    def _head_only_loss(self, model, batch, device, window: HeadOnlyWindow, index: int):
        """Micro-step ``index`` of a head-only window: L_cls + L_tcp now; at the last micro-step also the
        L_cpcr of the whole window (this micro-step's from its own forward, the earlier ones' by re-running
        the head on their kept inputs). Each micro-step's L_cpcr is its chunk estimate, and all of them sit
        in the last micro-step's loss, so the accumulated gradient is the one of the full path."""
        cams, refined, inputs = self.forward(model, batch, device, keep_head_inputs=True)
        labels, lam = self._labels(batch, device)
        window.candidates.append(self._candidates(cams, refined, labels, lam))
        if index < window.size - 1:
            window.kept.append((inputs, labels, lam))
            return L.cpn_loss_from_config(cams, refined, labels, lam, self.cfg.loss, with_cpcr=False), (cams, refined)
        cfg = self.cfg.loss
        selection = L.global_ohem_selection(window.candidates, cfg.ohem_ratio)
        terms = L.cpn_loss_from_config(cams, refined, labels, lam, cfg, ohem=selection)
        net = _unwrap(model)
        cpcr = terms["cpcr"]
        for kept_inputs, kept_labels, kept_lam in window.kept:
            kept_cams = F.interpolate(kept_inputs.cam, kept_inputs.size, mode="bilinear", align_corners=True)
            kept_refined = net.refine_from(kept_inputs)
            cpcr = cpcr + L.cpcr_loss(kept_cams.chunk(3), kept_refined.float().chunk(3), kept_labels, kept_lam, cfg,
                                      ohem=selection)[0]  # fmt: skip
        window.kept.clear()
        terms["total"] = terms["total"] + cfg.weights[2] * (cpcr - terms["cpcr"])
        # the engine averages every term over the window's micro-steps: report the window's sums here
        terms["cpcr"] = cpcr
        terms["ohem/discards_nonzero"] = terms["ohem/discards_nonzero"] * window.size
        return terms, (cams, refined)

    def panel(self, batch, outputs):
        cams, refined = outputs
        return image_panel(batch, cams[0], refined[0] if refined else None, self.cfg.data.mean, self.cfg.data.std)

    def flops_per_step(self, model):
        from cpn_dist.models.flops import training_step_flops

        flops = training_step_flops(model, crop=self.cfg.data.crop, batch=self.cfg.batch.global_size,
                                    triplet=self.cfg.loss.recipe != "cam")  # fmt: skip
        return float(flops["forward_backward"])
