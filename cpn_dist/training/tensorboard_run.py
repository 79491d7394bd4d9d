"""One TensorBoard run per training run of an ``output.dir``, whose steps never go back.

The run is ``{output.dir}/{task name}/{start time}`` (e.g. ``runs/x/cpn/20260102-153000``). A fresh start,
``--restart`` included, opens a new one; its name is recorded in every checkpoint
(``trainer_state.json``: ``"tensorboard_run"``), so a resume — after a crash, a pre-emption, or with a
longer ``train.max_steps`` — writes into the same run and continues its curve. The resumed writer gets
``purge_step`` = the first step it logs: TensorBoard then hides what the interrupted process logged
after its last checkpoint (those steps are trained and logged again). The hyperparameters go into the
run itself, once, when it starts (Accelerate's ``store_init_configuration`` would add a run
``{timestamp}`` of its own at every start).
"""

from __future__ import annotations

import time
from pathlib import Path

STATE_KEY = "tensorboard_run"  # the run's name in a checkpoint's trainer_state.json


def run_name(out_dir: str | Path, task_name: str, state: dict | None) -> tuple[str, bool]:
    """(the run to write to, whether it is new): the checkpoint's run when ``state`` (the resumed
    checkpoint's) records one, else a new run named by the start time."""
    if state and state.get(STATE_KEY):
        return state[STATE_KEY], False
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"{task_name}/{stamp}", 1
    while (Path(out_dir) / name).exists():  # two starts within one second
        n += 1
        name = f"{task_name}/{stamp}-{n}"
    return name, True


def start_run(acc, name: str, new: bool, step: int, hparams: dict) -> None:
    """Open the TensorBoard run ``name`` (Accelerate's tracker, main process) to log the steps after
    ``step``: a new run gets ``hparams``; a continued one drops its events from ``step + 1`` on."""
    acc.init_trackers(name, init_kwargs={"tensorboard": {"purge_step": step + 1}} if step else None)
    if new and acc.is_main_process:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        writer = acc.get_tracker("tensorboard", unwrap=True)
        for summary in hparams_summaries(hparams, {}):
            writer.file_writer.add_summary(summary)
