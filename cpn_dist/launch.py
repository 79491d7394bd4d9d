"""How a training run is launched: the Accelerator (DDP or DeepSpeed, mixed precision) and the batch
layout it trains with, the libraries' logging, and the ``python -m cpn_dist.<stage>`` entry point.
The loop itself is :mod:`cpn_dist.engine`."""

from __future__ import annotations

import logging
import os

import torch

from cpn_dist.config.run import Config
from cpn_dist.devices import set_torch_threads, use_cpu
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


def run_main(argv: list[str] | None, prog: str, description: str, train_fn) -> int:
    """The ``python -m cpn_dist.<stage>`` entry point: parse, choose torch's threads, train, one-line errors,
    clean exit."""
    import argparse

    from cpn_dist.cli import add_threads_argument
    from cpn_dist.config.load import load_config

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--restart", action="store_true",
                        help="delete output.dir's checkpoints and final weights and train from step 0")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        cfg = load_config(args.config, args.overrides)
        set_torch_threads(args.threads, announce=False)  # the engine says it with the run's layout
        train_fn(cfg, resume=args.resume, restart=args.restart)
    except CpnError as exc:
        if not getattr(exc, "shown_by_main", False):
            log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("stopped at once (a second Ctrl-C): no checkpoint of the current step")
        return 130
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
