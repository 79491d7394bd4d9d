"""How a training run is launched: the Accelerator (DDP or DeepSpeed, mixed precision) and the batch
layout it trains with, and the libraries' logging. The loop itself is :mod:`cpn_dist.training.engine`;
the ``python -m cpn_dist.train`` entry point is :mod:`cpn_dist.train`."""

from __future__ import annotations

import logging
import os

from cpn_dist.config.run import Config
from cpn_dist.devices import use_cpu
from cpn_dist.errors import CpnError

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


def make_accelerator(cfg: Config):
    """The Accelerator of a run. On a machine without CUDA, `accelerate launch --multi_gpu` gives
    gloo processes on the CPU (Accelerate needs ``cpu=True`` for that), and DeepSpeed gets a gloo
    process group (its own default leaves a CPU run with a world of one)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = use_cpu()
    check_precision(cfg.train.precision, deepspeed, on_cpu)
    # BatchNorm is frozen, so there are no buffers to broadcast; gradients live in DDP's buckets (no copy)
    handlers = [DistributedDataParallelKwargs(broadcast_buffers=False, gradient_as_bucket_view=True)]
    if on_cpu and deepspeed:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        cpu=on_cpu and not deepspeed,
        mixed_precision=cfg.train.precision,
        log_with="tensorboard",
        project_dir=cfg.output.dir,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )


def check_precision(precision: str, deepspeed: bool, on_cpu: bool) -> None:
    """Refuse, in one line before anything starts, a precision the launcher cannot train in. Every
    combination trains on a GPU; on the CPU fp16 does not (PyTorch has no fp16 autocast worth the name
    there and DeepSpeed's CPU accelerator no fp16), while bf16 does under DDP and DeepSpeed alike."""
    if precision == "fp16" and on_cpu:
        launcher = "DeepSpeed" if deepspeed else "DDP / one process"
        raise CpnError(f"train.precision: fp16 needs a GPU ({launcher} on the CPU has no fp16 training); "
                       "use bf16 or no")  # fmt: skip


def set_batch_layout(acc, cfg: Config, accumulation: int) -> None:
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


def quiet_libraries() -> None:
    """Accelerate and DeepSpeed log every checkpoint file at INFO; keep their warnings only, minus those
    that say nothing to our user (DeepSpeed's "Setting accelerator to CPU" on every CPU run)."""
    for name in ("accelerate", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    deepspeed = logging.getLogger("DeepSpeed")
    if _unhelpful not in deepspeed.filters:
        deepspeed.addFilter(_unhelpful)


def _unhelpful(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Setting accelerator to CPU")
