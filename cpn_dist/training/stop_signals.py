"""How a training run stops early: pre-emption signals and Ctrl-C.

SIGTERM and SIGUSR1 (a cluster's pre-emption notice; SLURM's ``--signal``) and Ctrl-C (SIGINT) all
mean: finish the current optimizer step, write a checkpoint, exit — 0 after pre-emption (the job is
re-queued), 130 after Ctrl-C. The same command then resumes from that checkpoint. A second Ctrl-C
stops at once, without a checkpoint. Under ``accelerate launch`` every process gets the signal (or
not); the training loop decides together (any process flagged → all checkpoint and stop).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (cluster pre-emption) and by Ctrl-C (SIGINT): finish the step, checkpoint,
    exit (0 after pre-emption, 130 after Ctrl-C). A second Ctrl-C stops at once, without a checkpoint.
    The previous handlers come back when the run ends."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.raised = False
        self.interrupted = False  # by Ctrl-C
        self._previous: dict = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt("a second Ctrl-C: stopped at once, without a checkpoint")
            self.interrupted = True
            log.warning("Ctrl-C: checkpointing after this step, then stopping (Ctrl-C again stops at once)")
        else:
            log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)
        self.raised = True
