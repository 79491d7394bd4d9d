"""Progress of long work — the one helper every long loop a user waits on reports through (training, CAM
inference, the random walk, segmentation, labels, CRF, evaluation, packing, synthetic data).

On a terminal it draws a rich progress bar. When the output is not a terminal (``make demo > log``,
a batch job) it logs a plain line on the ``cpn_dist.progress`` logger, which the CLI always shows, at
least every ``interval`` seconds while the work advances::

    cams: 120/1000 images (3.4 img/s, ETA 4:19)
    train: 40/400 steps (0.8 steps/s, ETA 7:30) loss 0.6931, 6.4 img/s

so that a log tells work from a hang. The interval defaults to :data:`INTERVAL_S`, or the environment's
``CPN_PROGRESS_SECONDS``. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INTERVAL_S = 30.0  # the longest a log goes without a progress line while work advances
INTERVAL_ENV = "CPN_PROGRESS_SECONDS"
RATE_UNITS = {"images": "img"}  # how a unit is named in a rate (img/s)


def default_interval() -> float:
    """Seconds between progress lines: ``CPN_PROGRESS_SECONDS`` when set to a number >= 0, else 30."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return INTERVAL_S
    return value if value >= 0 else INTERVAL_S


def clock_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(what: str, done: int, total: int | None, unit: str, rate: float, note: str = "") -> str:
    """``<what>: k/n <unit> (x.x <unit>/s, ETA m:ss)`` — the rate over the work done since the start,
    no ETA without a total or a rate; ``note`` (e.g. the loss) follows."""
    count = f"{done}/{total}" if total is not None else f"{done}"
    shown_rate = f"{rate:.1f}" if rate >= 1 or rate == 0 else f"{rate:.2g}"
    parts = [f"{shown_rate} {RATE_UNITS.get(unit, unit)}/s"]
    if total is not None and rate > 0:
        parts.append(f"ETA {clock_time(max(total - done, 0) / rate)}")
    return f"{what}: {count} {unit} ({', '.join(parts)})" + (f" {note}" if note else "")


def _stdout_is_terminal() -> bool:
    """Whether stdout is a terminal, as rich decides it (``FORCE_TERMINAL`` and the like included)."""
    from rich import get_console

    return get_console().is_terminal


class Progress:
    """The progress of one long piece of work: ``total`` items of ``unit`` (None: unknown), ``done`` of
    them finished before (a resumed run). Use as a context manager and call :meth:`advance` (or
    :meth:`update`, or pass :meth:`on_item` as an ``on_image`` callback).

    ``shown``: whether this process reports at all (the main one of a distributed run); ``terminal``:
    draw a bar (None: when stdout is a terminal), else log lines every ``interval`` seconds (None:
    :func:`default_interval`; 0: a line at every advance) measured by ``clock``; ``transient``: the bar
    disappears when done."""

    def __init__(self, what: str, total: int | None, unit: str = "images", *, done: int = 0, shown: bool = True,
                 terminal: bool | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, transient: bool = True) -> None:  # fmt: skip
        self.what, self.total, self.unit = what, total, unit
        self.done = self.start_done = done
        self.interval = default_interval() if interval is None else interval
        self.clock = clock
        self.note = ""
        self.lines = 0  # progress lines logged
        self.logged_done = done
        self.started = self.last_line = clock()
        self.terminal = shown and (_stdout_is_terminal() if terminal is None else terminal)
        self.logs = shown and not self.terminal  # plain lines; on a terminal a bar (none when one is drawn)
        self.bar = self._start_bar(transient) if self.terminal else None

    def _start_bar(self, transient: bool):
        """A rich bar on the shared console; None when another live display holds the console."""
        from rich import get_console
        from rich.errors import LiveError
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        rate = RATE_UNITS.get(self.unit, self.unit)
        bar = Bar(
            TextColumn(self.what), BarColumn(), MofNCompleteColumn(),
            TextColumn(f"{{task.fields[rate]}} {rate}/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"), console=get_console(), transient=transient,
        )  # fmt: skip
        try:
            bar.start()
        except LiveError:  # a bar is already drawn (nested work): this one stays silent there
            return None
        self.task = bar.add_task(self.what, total=self.total, completed=self.done, rate="-.-", note="")
        return bar

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        """Items per second since the start (items done before it do not count)."""
        elapsed = self.clock() - self.started
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more items done."""
        self.update(self.done + n, note)

    def on_item(self, _item=None) -> None:
        """One more item done: an ``on_image(name)`` callback."""
        self.advance(1)

    def update(self, done: int, note: str | None = None) -> None:
        """``done`` items done in all; ``note``: text shown after the count (e.g. the loss)."""
        self.done = done
        if note is not None:
            self.note = note
        if self.bar is not None:
            self.bar.update(self.task, completed=done, rate=f"{self.rate:.1f}", note=self.note)
        elif self.logs and self.clock() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        log.info("%s", progress_line(self.what, self.done, self.total, self.unit, self.rate, self.note))
        self.lines += 1
        self.last_line = self.clock()
        self.logged_done = self.done

    def close(self) -> None:
        """Stop the bar; when lines were logged, one more with the final count unless the last one had it."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif self.logs and self.lines and self.logged_done != self.done:
            self._line()
