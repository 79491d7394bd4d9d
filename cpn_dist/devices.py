"""Where and in which precision models run: the one rule for running on the CPU, the one rule for torch's
CPU threads per process, the autocast context of a precision, and host → device copies that do not stall
the device (pinned memory, ``non_blocking``)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)

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


# torch's own choice before anything changed it: its physical cores (hyperthreads do not count)
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or ``taskset``'s share), and no
    more than torch's own default (physical cores: on an SMT machine, threads on both hyperthreads of a
    core slow each other)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        cores = os.cpu_count() or 1
    return max(1, min(cores, _TORCH_DEFAULT_THREADS))


def local_processes(env: Mapping[str, str]) -> int:
    """The processes of this run on this machine: the launcher's ``LOCAL_WORLD_SIZE`` (``accelerate launch``
    and ``torchrun`` set it), else 1."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def thread_count(cores: int, processes: int, env: Mapping[str, str], requested: int | None = None) -> int | None:
    """The torch CPU threads one process should use: ``requested`` (``--threads``) when given; None —
    torch's own choice — when the environment sets ``OMP_NUM_THREADS`` (torch reads it); otherwise the
    usable cores shared by the machine's processes of the run, ``max(1, cores // processes)``: more
    threads than cores spin against each other (BENCHMARKS.md, issue 20: two trainings side by side on a
    loaded 2-core machine took 5–6× longer with torch's default of 2 threads each than with 1)."""
    if requested is not None:
        return requested
    if env.get("OMP_NUM_THREADS"):
        return None
    return max(1, cores // processes)


def load_warning(load: float, cores: int, threads: int) -> str | None:
    """The warning when the 1-minute load average ``load`` already exceeds the usable ``cores`` at start
    (other work runs beside this one), else None. Only a warning: the thread count never depends on the
    load, so results do not depend on what else the machine runs."""
    if load <= cores:
        return None
    return (f"the 1-minute load average is {load:.1f} on {cores} usable cores: other work is running, and "
            f"{threads} torch thread(s) per process may oversubscribe the CPU (much slower); choose fewer "
            f"with --threads or OMP_NUM_THREADS")  # fmt: skip


_choice: dict = {}  # the last set_torch_threads: threads, why, cores, whether the rule chose, announced
_load_warned = False


def set_torch_threads(requested: int | None = None, env: Mapping[str, str] | None = None,
                      announce: bool = True) -> int:  # fmt: skip
    """Apply :func:`thread_count` to torch in this process and say so once per machine (the local main
    process logs the choice, and warns when the rule chose and the CPU is already loaded); returns the
    threads in use. ``announce=False`` defers the saying to :func:`announce_threads` (training says it
    with the run's layout, after the config and weights are known to be good)."""
    env = os.environ if env is None else env
    cores, processes = usable_cores(), local_processes(env)
    count = thread_count(cores, processes, env, requested)
    if count is not None:
        torch.set_num_threads(count)
    if requested is not None:
        why = "--threads"
    elif count is None:
        why = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
    else:
        why = f"{cores} cores, {processes} process{'es' if processes > 1 else ''}"
    _choice.update(threads=torch.get_num_threads(), why=why, cores=cores, ruled=count is not None and
                   requested is None, local_main=env.get("LOCAL_RANK", "0") == "0", announced=False)  # fmt: skip
    if announce:
        announce_threads()
    return _choice["threads"]


def announce_threads() -> None:
    """Log the last :func:`set_torch_threads` choice once (local main process only), with the warning when the
    rule chose the count and the 1-minute load average already exceeds the usable cores."""
    global _load_warned
    if not _choice or _choice["announced"] or not _choice["local_main"]:
        return
    _choice["announced"] = True
    policy = os.environ.get("OMP_WAIT_POLICY")
    log.info("torch threads: %d per process (%s)%s; set --threads or OMP_NUM_THREADS to choose", _choice["threads"],
             _choice["why"], f", OMP_WAIT_POLICY={policy}" if policy else "")  # fmt: skip
    if _choice["ruled"] and hasattr(os, "getloadavg"):
        warning = load_warning(os.getloadavg()[0], _choice["cores"], _choice["threads"])
        if warning and not _load_warned:
            _load_warned = True
            log.warning("%s", warning)


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
