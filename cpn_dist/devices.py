"""Where and in which precision inference runs: the autocast context of a precision, and host → device
copies that do not stall the device (pinned memory, ``non_blocking``)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
