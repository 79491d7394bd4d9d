"""Where and in which precision models run: the one rule for running on the CPU, the autocast context of
a precision, and host → device copies that do not stall the device (pinned memory, ``non_blocking``)."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the values Accelerate reads as true (accelerate.utils.str_to_bool)
_TRUE = ("1", "true", "yes", "y", "t", "on")


def use_cpu() -> bool:
    """Whether this process runs on the CPU: ``ACCELERATE_USE_CPU`` is set true (as ``accelerate launch
    --cpu`` sets it), or there is no CUDA device. Pass it as ``cpu=`` to Accelerate's ``PartialState`` /
    ``Accelerator``: without CUDA, a process of ``accelerate launch --multi_gpu`` joins the gloo group
    only with ``cpu=True`` (else it reports a world of one)."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in _TRUE or not torch.cuda.is_available()


def world_size() -> int:
    """The processes of the default process group (1 when the run is not distributed)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def autocast(device: torch.device | str, precision: str):
    """The autocast context of ``precision`` on ``device`` (a null context for fp32). fp16 is refused on
    the CPU, which has no fast float16 kernels."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 inference needs a GPU; use bf16 or fp32 on the CPU")
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def to_device(x: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``; to a GPU through pinned memory with a non-blocking copy, so the host goes on
    preparing the next input while this one is copied."""
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
