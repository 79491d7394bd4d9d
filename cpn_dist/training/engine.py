"""The distributed training loop every stage shares (CPN, AffinityNet, segmentation).

One optimizer step consumes one GLOBAL batch of ``batch.global_size`` images, split over
``world_size`` processes and ``accumulation`` micro-steps of ``batch.micro_size`` images:

    accumulation = global_size / (micro_size × world_size)

That is the distributed invariant; docs/design.md states it once, with how each part keeps it.

The loop owns everything that is not the model's business: Accelerate (DDP or DeepSpeed, mixed
precision), SGD with the released four parameter groups and the poly schedule, gradient
accumulation, non-finite losses, atomic checkpoints and exact resume, pre-emption signals and Ctrl-C
(:mod:`cpn_dist.training.stop_signals`), TensorBoard (one run per training run,
:mod:`cpn_dist.training.tensorboard_run`)
and progress, one run per ``output.dir`` (:mod:`cpn_dist.training.runlock`) and how a run starts there — fresh,
resumed automatically, finished and left alone, or refused (:mod:`cpn_dist.training.run_start`); the Accelerator
and the batch layout come from :mod:`cpn_dist.training.launch`. A
:class:`Task` supplies the rest — the model, the data, and the loss of
one micro-step (which may need a no-grad look at the whole accumulation window first, as CPN's
global OHEM does).

Every loss term a task returns must be the mean over its micro-batch (or a chunk estimate whose
mean over equal chunks is the global-batch value): then DDP's mean over ranks and the 1/accumulation
that ``accelerator.backward`` applies make one optimizer step independent of the split.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cpn_dist.config.run import Config, to_yaml
from cpn_dist.devices import announce_threads
from cpn_dist.errors import CpnError
from cpn_dist.training.checkpoint import read_state, save_checkpoint, save_weights
from cpn_dist.training.launch import accumulation_steps, make_accelerator, set_batch_layout
from cpn_dist.training.monitor import Monitor, peak_flops_per_device, peak_memory_bytes
from cpn_dist.training.optim import LrSchedule, build_optimizer, describe_schedule, set_group_lrs
from cpn_dist.training.stop_signals import StopFlag

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a stage gives the training loop."""

    name: str  # TensorBoard project name

    def build_model(self) -> torch.nn.Module:
        """The model, initialised (weights loaded); it has ``parameter_groups()`` (4 lists)."""

    def loader(self, *, micro_size: int, global_size: int, rank: int, world_size: int, epoch: int,
               start_step: int) -> tuple[Any, int]:  # fmt: skip
        """(iterable of this rank's micro-batches from ``start_step`` on, optimizer steps per epoch); the
        steps are those of the run config's data, :func:`cpn_dist.data.loading.loader.epoch_steps`."""

    def prepare_window(self, model, window: list[dict], device) -> list | None:
        """Called before the micro-steps of one optimizer step: per-micro-step context (or None)."""

    def loss(self, model, batch: dict, device, context) -> tuple[dict[str, torch.Tensor], Any]:
        """The scalar loss terms of one micro-step (``"total"`` is back-propagated) and the outputs."""

    def panel(self, batch: dict, outputs) -> np.ndarray | None:
        """A 3×H×W uint8 picture of a micro-batch for TensorBoard, or None."""

    def flops_per_step(self, model) -> float | None:
        """Forward+backward FLOPs of one optimizer step (global batch), for MFU; None if unknown."""


def run_training(cfg: Config, task: Task, resume: str | None = None, restart: bool = False) -> Path:
    """Train ``task`` as configured; returns the final weights ``{output.dir}/model_final.pth``.

    The main process holds the lock of ``output.dir`` for the whole run. ``resume`` ('latest' or a
    checkpoint folder) and ``restart`` (delete the folder's checkpoints first) decide how the run starts
    there, with the checkpoints it holds: see :func:`cpn_dist.training.run_start.plan_start`. A finished run
    returns its final weights at once, changing no file."""
    from cpn_dist.training.run_start import start_plan
    from cpn_dist.training.runlock import lock_on_main

    acc = make_accelerator(cfg)
    lock = lock_on_main(cfg.output.dir, "output.dir", acc.is_main_process, acc.num_processes, record=False)
    try:
        plan = start_plan(acc, cfg, resume, restart)
        if plan.finished:
            return Path(cfg.output.dir) / "model_final.pth"
        if lock is not None:
            lock.record()
        with StopFlag() as stop:
            return _train(acc, cfg, task, Path(plan.checkpoint) if plan.checkpoint else None, stop)
    finally:
        if lock is not None:
            lock.release()


def _train(acc, cfg: Config, task: Task, ckpt: Path | None, stop: StopFlag) -> Path:
    from accelerate.utils import DistributedType, set_seed

    from cpn_dist.data.loading.loader import epoch_steps
    from cpn_dist.training.run_start import layout_change, run_length, run_length_source
    from cpn_dist.training.tensorboard_run import STATE_KEY, run_name, start_run

    # ---- set-up -------------------------------------------------------------------------------
    world_size, rank, device = acc.num_processes, acc.process_index, acc.device
    micro, global_size = cfg.batch.micro_size, cfg.batch.global_size
    accumulation = accumulation_steps(global_size, micro, world_size)
    set_batch_layout(acc, cfg, accumulation)
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    out_dir = Path(cfg.output.dir)
    set_seed(cfg.train.seed)  # the same initial weights on every rank

    model = task.build_model()
    dataset = getattr(task, "dataset", None)  # the classes the model scores, recorded with its weights
    channels_last = cfg.train.channels_last if cfg.train.channels_last != "auto" else device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    task.channels_last = channels_last  # the task lays its inputs out the same way
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop: let cuDNN pick the fastest kernels once
    optimizer, specs = build_optimizer(model.parameter_groups(), cfg.optim)
    model, optimizer = acc.prepare(model, optimizer)
    if deepspeed:
        _buffers_like_weights(acc.unwrap_model(model))
    if cfg.train.compile:
        model = torch.compile(model)

    def loader(epoch: int, start_step: int = 0):
        batches, steps = task.loader(micro_size=micro, global_size=global_size, rank=rank, world_size=world_size,
                                     epoch=epoch, start_step=start_step)  # fmt: skip
        if steps != steps_per_epoch:
            raise RuntimeError(f"the loader has {steps} steps per epoch, the split's size gives {steps_per_epoch}")
        return batches

    steps_per_epoch = epoch_steps(cfg.data, global_size)  # the split's size; no loader built for it
    total_steps = run_length(cfg.train, steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)

    schedule = LrSchedule.from_config(cfg.optim, global_size, total_steps, steps_per_epoch)

    global_step, resumed = 0, None
    if ckpt is not None:
        # checked by start_plan; opted in, the pickled optimizer state may hold more than tensors
        acc.load_state(str(ckpt), load_kwargs={"weights_only": False} if cfg.model.allow_pickle else None)
        resumed = read_state(ckpt)
        global_step = resumed["global_step"]
        # Accelerate restores its micro-step counter from the checkpoint; on another layout (2 processes ×
        # accumulation 1 resumed on 1 × 2) that count falls between two optimizer steps and the next
        # accumulation window would sync (and step) after its first micro-batch. Count from the step.
        acc.step = global_step * accumulation
        log.info("resumed from %s at step %d", ckpt, global_step)
        change = layout_change(resumed, world_size, micro, accumulation)
        if change:
            log.warning("resuming at step %d %s", global_step, change)
    start_epoch, start_in_epoch = divmod(global_step, steps_per_epoch)
    resumed_step = global_step
    # the first epoch's loader is built before anything is logged: bad data stops the run here
    first_loader = loader(start_epoch, start_in_epoch) if global_step < total_steps else None

    tensorboard_run, new_run = run_name(out_dir, task.name, resumed)
    start_run(acc, tensorboard_run, new_run, global_step, _flat_hparams(cfg))
    monitor = Monitor(acc, total_steps, global_step, cfg.log.every)
    monitor.text("config", to_yaml(cfg), step=global_step)
    flops = task.flops_per_step(acc.unwrap_model(model)) if device.type == "cuda" else None
    peak = peak_flops_per_device(cfg.log.peak_flops, device, cfg.train.precision)
    log.info("world %d × micro %d × accumulation %d = global batch %d; %d steps: %s", world_size, micro,
             accumulation, global_size, total_steps, run_length_source(cfg.train, steps_per_epoch))
    log.info("%s", describe_schedule(cfg.optim, schedule, global_size))
    announce_threads()

    def checkpoint():
        # A skipped non-finite step leaves the weights untouched; this guards against anything else.
        if not all(bool(torch.isfinite(p).all()) for p in acc.unwrap_model(model).parameters()):
            raise CpnError(f"non-finite weights at step {global_step}: not checkpointed")
        state = {"global_step": global_step, "epoch": global_step // steps_per_epoch,
                 "steps_per_epoch": steps_per_epoch, "world_size": world_size, "micro_size": micro,
                 "accumulation": accumulation, "distributed_type": acc.distributed_type.value,
                 "config": cfg.to_dict(),  # what a resume compares against (cpn_dist.training.run_start)
                 **({"dataset": dataset.to_json()} if dataset is not None else {}),  # read back as weights
                 STATE_KEY: tensorboard_run, "summary": {"steps": run_steps, "sums": run_sums}}
        save_checkpoint(acc, out_dir, state, cfg.train.keep_last)

    # ---- the step loop ------------------------------------------------------------------------
    run_sums, run_steps = _summary_so_far(resumed, out_dir / SUMMARY_NAME)
    model.train()
    for epoch in range(start_epoch, epochs):
        if global_step >= total_steps:
            break
        first = start_in_epoch if epoch == start_epoch else 0
        batches = prefetch_to_device(iter(first_loader if epoch == start_epoch else loader(epoch, first)), device)
        first_loader = None
        for _ in range(first, steps_per_epoch):
            t0 = time.perf_counter()
            window = [next(batches) for _ in range(accumulation)]
            t_data = time.perf_counter() - t0
            lr = schedule(global_step)
            set_group_lrs(optimizer, specs, lr)
            contexts = task.prepare_window(model, window, device) or [None] * accumulation

            sums, names = None, None
            for batch, context in zip(window, contexts):
                with acc.accumulate(model):
                    terms, outputs = task.loss(model, batch, device, context)
                    if sums is None:
                        names = sorted(terms)
                        sums = torch.zeros(len(names) + 2, device=device)  # + non-finite micro-steps, stop flag
                    bad = (~torch.isfinite(terms["total"])).float()
                    sums[:-1] += torch.stack([terms[k].detach().float() for k in names] + [bad])
                    acc.backward(terms["total"])
            # The step's statistics — loss terms, non-finite micro-steps, the stop flag — summed over the
            # ranks in ONE all-reduce and read once: the only host sync of a step (the skip decision
            # needs it before the optimizer steps).
            sums[-1] = float(stop.raised)
            stats = _sum_over_ranks(sums, world_size).tolist()
            finite, stop_now = stats[-2] == 0, stats[-1] > 0
            if not deepspeed:  # DeepSpeed stepped inside acc.backward (its fp16 overflow check skips)
                if finite:
                    if cfg.optim.grad_clip:
                        acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            global_step += 1
            step_time = time.perf_counter() - t0

            # ---- book-keeping: terms averaged over the global batch; non-finite steps ---------
            means = {k: v / (accumulation * world_size) for k, v in zip(names, stats[:-2])}
            if not finite:
                shown = " ".join(f"{k}={v:.4g}" for k, v in means.items())
                msg = f"non-finite loss at step {global_step}: {shown}"
                if cfg.train.on_nonfinite == "stop":
                    raise CpnError(msg + " (train.on_nonfinite: stop; no checkpoint written)")
                log.warning(msg + "; step skipped")
            scalars = {k if "/" in k else f"loss/{k}": v for k, v in means.items()}  # "ohem/…": diagnostics
            scalars |= {"optim/lr": lr, "speed/samples_per_s": global_size / step_time,
                        "speed/step_time_s": step_time, "speed/data_wait_fraction": t_data / step_time,
                        "memory/peak_bytes": float(peak_memory_bytes(device))}  # fmt: skip
            if flops and peak:
                scalars["speed/mfu"] = flops / world_size / step_time / peak
            for k, v in scalars.items():  # run totals for train_summary.json
                run_sums[k] = run_sums.get(k, 0.0) + v
            run_steps += 1
            monitor.step(global_step, scalars)
            if acc.is_main_process and (global_step % cfg.log.image_every == 0 or global_step == 1):
                panel = task.panel(window[-1], outputs)
                if panel is not None:
                    monitor.image(global_step, panel)
            if global_step % cfg.train.checkpoint_every == 0 or stop_now:
                checkpoint()
            if stop_now:
                monitor.close()
                _finish_trackers(acc)
                log.warning("%s: checkpoint at step %d written in %s; run the same command again to continue "
                            "from it", "interrupted" if stop.interrupted else "pre-empted", global_step, out_dir)
                raise SystemExit(130 if stop.interrupted else 0)
            if global_step >= total_steps:
                break

    if global_step % cfg.train.checkpoint_every != 0 and global_step != resumed_step:
        checkpoint()
    final = out_dir / "model_final.pth"
    # plain keys, as the released code names them (torch.compile adds an "_orig_mod." prefix)
    state_dict = {k.replace("_orig_mod.", ""): v for k, v in acc.get_state_dict(model).items()}
    if acc.is_main_process:
        from cpn_dist.training.run_start import weights_metadata

        save_weights(state_dict, final, metadata=weights_metadata(cfg, dataset))
        _write_summary(out_dir / SUMMARY_NAME, global_step, run_steps, run_sums)
    acc.wait_for_everyone()
    monitor.close()
    _finish_trackers(acc)
    return final


# ---- helpers ------------------------------------------------------------------------------------
SUMMARY_NAME = "train_summary.json"


def _summary_so_far(state: dict | None, path: Path) -> tuple[dict[str, float], int]:
    """(sums of every logged scalar, steps summed) of the run up to the resumed checkpoint (``state``;
    None: a fresh start). Checkpoints record them; for an older checkpoint they are rebuilt from the
    earlier ``train_summary.json`` (means × steps) when that ends at the checkpoint's step."""
    if state is None:
        return {}, 0
    if "summary" in state:
        return dict(state["summary"]["sums"]), state["summary"]["steps"]
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if earlier.get("global_step") != state["global_step"]:
        return {}, 0
    steps = earlier.get("steps_averaged", 0)
    return {k: v * steps for k, v in earlier.get("means", {}).items()}, steps


def _write_summary(path: Path, global_step: int, steps: int, sums: dict[str, float]) -> None:
    """``{output.dir}/train_summary.json``: the mean of every logged scalar (loss terms, diagnostics,
    speed) over the optimizer steps of the run — all of them, across resumes and extensions
    (``steps_averaged``; a run resumed from a checkpoint of an older version: the steps since) — e.g.
    ``ohem/discards_nonzero`` = the share of steps in which OHEM left out a non-zero CPCR element,
    ``speed/data_wait_fraction`` = the share of a step spent waiting for the loader."""
    from cpn_dist.atomic import write_json

    means = {k: v / steps for k, v in sums.items()} if steps else {}
    write_json(path, {"global_step": global_step, "steps_averaged": steps, "means": means})


def _finish_trackers(acc) -> None:
    """Flush and close TensorBoard. (Not ``acc.end_training()``: it destroys the process group, and a
    caller may train again, or evaluate, in the same processes.)"""
    if acc.is_main_process:
        for tracker in acc.trackers:
            tracker.finish()


def rng_state(device):
    """The torch RNG state (CPU and the device's), to replay dropout masks."""
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _buffers_like_weights(model: torch.nn.Module) -> None:
    """DeepSpeed's bf16/fp16 casts the parameters but not the buffers: give the frozen BatchNorms' running
    statistics their parameters' dtype, as batch_norm needs on the CPU."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and weight is not None:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and buffer.dtype != weight.dtype:
                    setattr(module, name, buffer.to(weight.dtype))


def prefetch_to_device(batches, device):
    """The micro-batches of ``batches`` with their tensors already on ``device``: on CUDA each batch is
    copied one ahead on a side stream (from the loader's pinned memory, ``non_blocking``), so the copy
    overlaps the current step's compute; elsewhere the batches pass through unchanged."""
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def send(batch):
        with torch.cuda.stream(stream):
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    upcoming = None
    for batch in batches:
        ready, upcoming = upcoming, send(batch)
        if ready is not None:
            yield _claim(ready, stream)
    if upcoming is not None:
        yield _claim(upcoming, stream)


def _claim(batch: dict, stream) -> dict:
    """Make the current stream wait for a prefetched batch's copies, and tell the allocator it uses them."""
    current = torch.cuda.current_stream()
    current.wait_stream(stream)
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            v.record_stream(current)
    return batch


def _sum_over_ranks(t: torch.Tensor, world_size: int) -> torch.Tensor:
    t = t.clone()
    if world_size > 1:
        torch.distributed.all_reduce(t)
    return t


def _flat_hparams(cfg: Config) -> dict:
    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[prefix + k] = v if isinstance(v, int | float | str | bool) else str(v)

    walk(cfg.to_dict(), "")
    return flat
