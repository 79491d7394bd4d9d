"""The CPN trainer: ``accelerate launch -m cpn_dist.train --config configs/X.yaml [KEY=VALUE ...]``.

One optimizer step consumes one GLOBAL batch of ``batch.global_size`` images (the paper: 4), split
over ``world_size`` processes and ``accumulation`` micro-steps of ``batch.micro_size`` images:

    accumulation = global_size / (micro_size × world_size)

Each micro-step runs the triplet (I, I_h, I_hbar) as ONE forward over 3N images (BatchNorm is
frozen, so this is exact), then ``cpn_loss``. With ``loss.ohem_scope: batch`` the OHEM selection of
CPCR elements is taken over the whole global batch — all ranks, all micro-steps — exactly: with
accumulation, a no-grad pass over the micro-steps (replaying the RNG so dropout masks match) finds
the global top-k threshold first. With dropout off, one optimizer step therefore gives the same
parameters for every split of the global batch (1×4×1, 2×2×1, 1×1×4, 2×1×2 …).

Read top to bottom: set-up (accelerator, model, optimizer, data), then the step loop.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

import torch

from cpn_dist.checkpoint import read_state, resolve_resume, save_checkpoint, save_weights
from cpn_dist.config import Config, load_config, to_yaml
from cpn_dist.errors import CpnError
from cpn_dist.monitor import Monitor, image_panel, peak_flops_per_device, peak_memory_bytes
from cpn_dist.optim import build_optimizer, set_poly_lr

log = logging.getLogger(__name__)


def accumulation_steps(global_size: int, micro_size: int, world_size: int) -> int:
    """global_size / (micro_size × world_size), or a CpnError naming the three numbers."""
    per_step = micro_size * world_size
    if global_size % per_step:
        raise CpnError(
            f"batch.global_size {global_size} is not a multiple of batch.micro_size {micro_size} × "
            f"{world_size} processes = {per_step}"
        )
    return global_size // per_step


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (cluster pre-emption): finish the step, checkpoint, exit 0."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)
        self.raised = True


def _make_accelerator(cfg: Config):
    """The Accelerator of a run. On a machine without CUDA, `accelerate launch --multi_gpu` gives
    gloo processes on the CPU (Accelerate needs ``cpu=True`` for that), and DeepSpeed gets a gloo
    process group (its own default leaves a CPU run with a world of one)."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = not torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and deepspeed else []
    return Accelerator(
        cpu=on_cpu and not deepspeed,
        mixed_precision=cfg.train.precision,
        log_with="tensorboard",
        project_dir=cfg.output.dir,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )


def _set_batch_layout(acc, cfg: Config, accumulation: int) -> None:
    """Give Accelerate — and under DeepSpeed its config, which owns these numbers there — the micro
    batch, accumulation, global batch and clipping derived from the run config, in this one place."""
    from accelerate.utils import DistributedType

    acc.gradient_accumulation_steps = accumulation
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = acc.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    ours = {"train_micro_batch_size_per_gpu": cfg.batch.micro_size, "gradient_accumulation_steps": accumulation,
            "train_batch_size": cfg.batch.global_size, "gradient_clipping": cfg.optim.grad_clip or 0.0}
    for key, value in ours.items():
        if ds.get(key, "auto") not in ("auto", value):
            log.warning("DeepSpeed config %s=%s replaced by %s from the run config", key, ds[key], value)
        ds[key] = value
    plugin.gradient_accumulation_steps = accumulation


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


def train(cfg: Config, resume: str | None = None) -> Path:
    """Train CPN as configured; returns the path of the final weights ``{output.dir}/model_final.pth``."""
    # ---- set-up -------------------------------------------------------------------------------
    from accelerate.utils import DistributedType, set_seed

    from cpn_dist import losses as L
    from cpn_dist.data import build_train_loader
    from cpn_dist.models import build_model, load_weights

    # ---- set-up -------------------------------------------------------------------------------
    acc = _make_accelerator(cfg)
    world_size, rank, device = acc.num_processes, acc.process_index, acc.device
    micro, global_size = cfg.batch.micro_size, cfg.batch.global_size
    accumulation = accumulation_steps(global_size, micro, world_size)
    _set_batch_layout(acc, cfg, accumulation)
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    out_dir = Path(cfg.output.dir)
    triplet = cfg.loss.recipe != "cam"
    global_ohem = triplet and cfg.loss.ohem_scope == "batch" and cfg.loss.ohem_ratio < 1.0
    set_seed(cfg.train.seed)  # same initial weights on every rank

    model = build_model(cfg.model.backbone, cfg.model.head, dropout=cfg.model.dropout)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    optimizer, specs = build_optimizer(model.parameter_groups(), cfg.optim)
    model, optimizer = acc.prepare(model, optimizer)
    if cfg.train.compile:
        model = torch.compile(model)

    _, steps_per_epoch = build_train_loader(
        cfg.data, micro_size=micro, global_size=global_size, rank=rank, world_size=world_size,
        seed=cfg.train.seed, epoch=0,
    )  # fmt: skip
    if steps_per_epoch < 1:
        raise CpnError(f"{cfg.data.shards}: fewer images than one global batch of {global_size}")
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    global_step, start_epoch, start_in_epoch = 0, 0, 0
    ckpt = resolve_resume(out_dir, resume)
    if ckpt is not None:
        acc.load_state(str(ckpt))
        state = read_state(ckpt)
        global_step = state["global_step"]
        start_epoch, start_in_epoch = divmod(global_step, steps_per_epoch)
        log.info("resumed from %s at step %d", ckpt, global_step)

    acc.init_trackers("cpn", config=_flat_hparams(cfg))
    monitor = Monitor(acc, total_steps, global_step, cfg.log.every)
    monitor.text("config", to_yaml(cfg))
    stop = _StopFlag()
    flops_per_step = _flops_per_step(model, cfg, acc) if device.type == "cuda" else None
    peak = peak_flops_per_device(cfg.log.peak_flops, device)
    log.info("world %d × micro %d × accumulation %d = global batch %d; %d steps", world_size, micro,
             accumulation, global_size, total_steps)

    # ---- the step loop ------------------------------------------------------------------------
    def checkpoint():
        # A skipped non-finite step leaves the weights untouched; this guards against anything else.
        if not all(bool(torch.isfinite(p).all()) for p in acc.unwrap_model(model).parameters()):
            raise CpnError(f"non-finite weights at step {global_step}: not checkpointed")
        state = {"global_step": global_step, "epoch": global_step // steps_per_epoch,
                 "steps_per_epoch": steps_per_epoch, "world_size": world_size, "micro_size": micro,
                 "accumulation": accumulation, "distributed_type": acc.distributed_type.value}
        save_checkpoint(acc, out_dir, state, cfg.train.keep_last)

    model.train()
    done = global_step >= total_steps
    for epoch in range(start_epoch, cfg.train.epochs):
        if done:
            break
        loader, _ = build_train_loader(
            cfg.data, micro_size=micro, global_size=global_size, rank=rank, world_size=world_size,
            seed=cfg.train.seed, epoch=epoch, start_step=start_in_epoch if epoch == start_epoch else 0,
        )  # fmt: skip
        batches = iter(loader)
        for _ in range(start_in_epoch if epoch == start_epoch else 0, steps_per_epoch):
            t0 = time.perf_counter()
            window = [next(batches) for _ in range(accumulation)]
            t_data = time.perf_counter() - t0
            forward = _triplet if triplet else _single
            lr = set_poly_lr(optimizer, specs, cfg.optim, global_step, total_steps)
            selection, rng_states = None, None
            if global_ohem and accumulation > 1:
                selection, rng_states = _ohem_prepass(model, forward, window, device, cfg)

            sums = torch.zeros(5, device=device)  # total, cls, tcp, cpcr, non-finite micro-steps
            for i, batch in enumerate(window):
                if rng_states is not None:
                    _set_rng_state(rng_states[i], device)  # same dropout masks as the no-grad pass
                with acc.accumulate(model):
                    cams, refined = forward(model, batch, device)
                    labels, lam = batch["labels"].to(device), batch["lam"].to(device)
                    if global_ohem and accumulation == 1:
                        candidates = L.ohem_candidates(cams, refined, labels, lam, cfg.loss.recipe, cfg.loss.alpha)
                        selection = L.global_ohem_selection([candidates], cfg.loss.ohem_ratio)
                    # With a global selection each term is this micro-step's chunk estimate: DDP's
                    # mean over ranks and the 1/accumulation of acc.backward give the global loss.
                    terms = L.cpn_loss_from_config(cams, refined, labels, lam, cfg.loss, ohem=selection)
                    loss = terms["total"]
                    bad = (~torch.isfinite(loss)).float()
                    sums += torch.stack([loss.detach(), terms["cls"].detach(), terms["tcp"].detach(),
                                         terms["cpcr"].detach(), bad])
                    acc.backward(loss)
                    if acc.sync_gradients:
                        _optimizer_step(acc, model, optimizer, cfg, sums[4], world_size, deepspeed)
            global_step += 1
            step_time = time.perf_counter() - t0

            # ---- book-keeping: averaged terms over the global batch, non-finite handling ----
            stats = _sum_over_ranks(sums, world_size)
            total, l_cls, l_tcp, l_cpcr = (stats[:4] / (accumulation * world_size)).tolist()
            if stats[4] > 0:
                msg = (f"non-finite loss at step {global_step}: total={total:.4g} cls={l_cls:.4g} "
                       f"tcp={l_tcp:.4g} cpcr={l_cpcr:.4g}")
                if cfg.train.on_nonfinite == "stop":
                    raise CpnError(msg + " (train.on_nonfinite: stop; no checkpoint written)")
                log.warning(msg + "; step skipped")
            scalars = {"loss/total": total, "loss/cls": l_cls, "loss/tcp": l_tcp, "loss/cpcr": l_cpcr,
                       "optim/lr": lr, "speed/samples_per_s": global_size / step_time,
                       "speed/step_time_s": step_time, "speed/data_wait_fraction": t_data / step_time,
                       "memory/peak_bytes": float(peak_memory_bytes(device))}
            if flops_per_step and peak:
                scalars["speed/mfu"] = flops_per_step / world_size / step_time / peak
            monitor.step(global_step, scalars)
            if global_step % cfg.log.image_every == 0 or global_step == 1:
                monitor.image(global_step, image_panel(window[-1], cams[0], refined[0] if refined else None,
                                                       cfg.data.mean, cfg.data.std))
            stop_now = _any_rank(stop.raised, device, world_size)
            if global_step % cfg.train.checkpoint_every == 0 or stop_now:
                checkpoint()
            if stop_now:
                monitor.close()
                _finish_trackers(acc)
                log.warning("pre-empted: checkpoint at step %d written, exiting", global_step)
                raise SystemExit(0)
            if global_step >= total_steps:
                done = True
                break

    if global_step % cfg.train.checkpoint_every != 0:
        checkpoint()
    final = out_dir / "model_final.pth"
    state_dict = acc.get_state_dict(model)
    if acc.is_main_process:
        save_weights(state_dict, final)
    acc.wait_for_everyone()
    monitor.close()
    _finish_trackers(acc)
    return final


# ---- helpers ------------------------------------------------------------------------------------
def _ohem_prepass(model, forward, window, device, cfg):
    """No-grad pass over an accumulation window: the exact global OHEM selection, and the RNG state
    before each micro-step so that the grad pass can replay the same dropout masks."""
    from cpn_dist import losses as L

    rng_states, candidates = [], []
    with torch.no_grad():
        for batch in window:
            rng_states.append(_rng_state(device))
            cams, refined = forward(model, batch, device)
            labels, lam = batch["labels"].to(device), batch["lam"].to(device)
            candidates.append(L.ohem_candidates(cams, refined, labels, lam, cfg.loss.recipe, cfg.loss.alpha))
    return L.global_ohem_selection(candidates, cfg.loss.ohem_ratio), rng_states


def _optimizer_step(acc, model, optimizer, cfg: Config, bad: torch.Tensor, world_size: int, deepspeed: bool) -> None:
    """Apply the accumulated gradients, unless a micro-step of any rank had a non-finite loss.

    Under DeepSpeed the engine has already stepped inside ``acc.backward``; it skips a step whose
    gradients are not finite by itself (its overflow check), so nothing is applied there either."""
    if deepspeed:
        return
    if _sum_over_ranks(bad, world_size).item() == 0:
        if cfg.optim.grad_clip:
            acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _finish_trackers(acc) -> None:
    """Flush and close TensorBoard. (Not ``acc.end_training()``: it destroys the process group, and a
    caller may train again, or evaluate, in the same processes.)"""
    if acc.is_main_process:
        for tracker in acc.trackers:
            tracker.finish()


def _rng_state(device):
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _sum_over_ranks(t: torch.Tensor, world_size: int) -> torch.Tensor:
    t = t.clone()
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _any_rank(flag: bool, device, world_size: int) -> bool:
    if world_size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


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


def _flops_per_step(model, cfg: Config, acc) -> float | None:
    try:
        from cpn_dist.models.flops import training_step_flops
    except ImportError:
        return None
    flops = training_step_flops(acc.unwrap_model(model), crop=cfg.data.crop, batch=cfg.batch.global_size,
                                triplet=cfg.loss.recipe != "cam")
    return float(flops["forward_backward"])


def quiet_libraries() -> None:
    """Accelerate and DeepSpeed log every checkpoint file at INFO; keep their warnings only."""
    for name in ("accelerate", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpn_dist.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume)
    except CpnError as exc:
        log.error("%s", exc)
        return exc.exit_code
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
