"""One runner for a table of named steps — ``cpn pipeline`` and ``cpn demo`` both run theirs with it.

A step is a row: its name, the function that runs it, the stage it belongs to, whether only the main
process runs it, and the settings it depends on. The runner owns what every such table needs:

- **stamps**: a finished step writes ``{stamps}/NAME.json`` — its scores, an ``id`` (new each time it
  runs) and its settings together with the ``id`` of every step it comes after. A re-run reuses a
  step only when both are unchanged; otherwise it and every step after it run again (a new ``id``
  stales its successors), and the log says which setting changed.
- **only / skip / redo**: ``only`` and ``skip`` leave steps out (a left-out step keeps its stamp's
  ``id``, so the steps after it are not staled by the omission); ``redo`` reruns a step and every one
  after it, overwriting their outputs.
- **processes**: a main-only step runs on the main process while the others wait; every step ends
  with a barrier; decisions that must agree across processes (stale or not, the new ``id``) are the
  main process's.

Nothing here imports torch or pydantic.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cpn_dist.atomic import write_json
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One row of a step table: ``run(context)`` runs the step and returns its scores (objects with
    ``to_json``) or None."""

    name: str
    run: Callable[[Any], list | None]
    stage: str  # the stage it belongs to ("data", "1", "2", "3", "start", …)
    main_only: bool = False  # only the main process runs it; the others wait at the barrier after it


@dataclass
class StepReport:
    name: str
    status: str  # "ran", "done before", "skipped", "not configured"
    seconds: float = 0.0
    scores: list = field(default_factory=list)


class Processes(Protocol):
    main: bool
    world: int

    def barrier(self) -> None: ...


class OneProcess:
    """The processes of a run that is not distributed."""

    main, world, rank = True, 1, 0

    def barrier(self) -> None:
        pass


def read_stamp(path: Path) -> dict[str, Any] | None:
    """A step's stamp; None when there is none, {} when it is unreadable (treated as a stamp without settings)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= _flatten(value, f"{prefix}{key}.")
    return flat


def stale_reasons(recorded: dict[str, Any], now: dict[str, Any], limit: int = 4,
                  upgrade: Callable[[dict], dict] = lambda flat: flat) -> list[str]:  # fmt: skip
    """What differs between a stamp's recorded settings and today's, as short ``key: old → new`` lines
    (at most ``limit``, then how many more); ``upgrade``: the recorded flat keys as today's version names
    them (keys renamed since)."""
    a, b = upgrade(_flatten(recorded)), _flatten(now)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    shown = []
    for key in keys[:limit]:
        if key.startswith("after."):
            shown.append(f"step {key.removeprefix('after.')} ran again since")
        else:
            shown.append(f"{key}: {_short(a.get(key))} → {_short(b.get(key))}")
    if len(keys) > limit:
        shown.append(f"and {len(keys) - limit} more")
    return shown


def _short(value: Any, n: int = 48) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= n else text[: n - 1] + "…"


def relative_to(tree: Any, folder: str | Path) -> Any:
    """Paths inside ``folder`` written relative to it (``{work_dir}/…``): a moved or copied folder's stamps
    stay valid."""
    folder = str(folder)
    if isinstance(tree, dict):
        return {k: relative_to(v, folder) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [relative_to(v, folder) for v in tree]
    if isinstance(tree, str) and (tree == folder or tree.startswith(folder + os.sep)):
        return "{work_dir}" + tree[len(folder):]
    return tree


class StepRunner:
    """Runs a step table (see the module docstring) over ``context``, the object every step function
    receives. Before each step the runner sets ``context.overwrite``: whether the step overwrites its
    outputs (a redo, or a stale step) or resumes what an interrupted run left.

    ``settings(step)``: what the step depends on besides the steps before it (compared with its stamp);
    ``configured(step)``: False leaves it out of this run as "not configured"; ``given(step)``: its output
    is given from outside (configured weights), so it is skipped; ``revive``: a recorded score (JSON) as
    the object the step returned; ``upgrade``: recorded flat settings with keys renamed since moved to
    their new names."""

    def __init__(self, steps: Sequence[Step], context: Any, stamps: str | Path, procs: Processes | None = None,
                 settings: Callable[[Step], dict] = lambda step: {},
                 configured: Callable[[Step], bool] = lambda step: True,
                 given: Callable[[Step], bool] = lambda step: False,
                 revive: Callable[[dict], Any] = lambda score: score,
                 upgrade: Callable[[dict], dict] = lambda flat: flat):  # fmt: skip
        self.steps = list(steps)
        self.names = [s.name for s in self.steps]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"step names repeat: {self.names}")
        self.context, self.stamps, self.procs = context, Path(stamps), procs or OneProcess()
        self.settings, self.configured, self.given, self.revive = settings, configured, given, revive
        self.upgrade = upgrade

    def check(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.names:
                raise CpnError(f"unknown step '{name}' (steps: {', '.join(self.names)})")

    def stamp(self, name: str) -> Path:
        return self.stamps / f"{name}.json"

    def recorded_scores(self, name: str) -> list:
        """The scores a step's stamp recorded; [] without a stamp."""
        return [self.revive(s) for s in (read_stamp(self.stamp(name)) or {}).get("scores", [])]

    def run(self, only: Sequence[str] | None = None, skip: Sequence[str] = (), redo: str | None = None,
            on_step: Callable[[str, str], None] | None = None) -> list[StepReport]:  # fmt: skip
        """Run the table: every configured step (or only ``only``) minus ``skip``; ``redo``: that step and
        every later one afresh. ``on_step(name, event)`` hears "start", "ran", "done before", "skipped",
        "not configured" and "stale: <why>"."""
        from cpn_dist.training.runlock import share_from_main

        self.check([*(only or ()), *skip, *([redo] if redo else [])])
        procs, tell = self.procs, on_step or (lambda name, event: None)
        if procs.main:
            self.stamps.mkdir(parents=True, exist_ok=True)
        procs.barrier()
        first_redo = self.names.index(redo) if redo else len(self.steps)
        reports: list[StepReport] = []
        ids: dict[str, str | None] = {}  # the stamp id of every earlier step: part of each step's settings
        for index, step in enumerate(self.steps):
            name = step.name
            if not self.configured(step):
                reports.append(StepReport(name, "not configured"))
                tell(name, "not configured")
                continue
            old = read_stamp(self.stamp(name))
            if (only is not None and name not in only) or name in skip or self.given(step):
                ids[name] = (old or {}).get("id")
                reports.append(StepReport(name, "skipped", scores=self.recorded_scores(name)))
                tell(name, "skipped")
                continue
            overwrite = index >= first_redo
            settings = {**self.settings(step), "after": dict(ids)}
            if old is not None and not overwrite:
                if "settings" not in old:
                    log.warning("%s: its stamp records no settings (an older cpn-dist): reused; redo %s reruns it",
                                name, name)  # fmt: skip
                    why = []
                else:
                    why = stale_reasons(old["settings"], settings, upgrade=self.upgrade)
                why = share_from_main(why, procs.world)  # one decision for every process
                if not why:
                    ids[name] = old.get("id")
                    reports.append(StepReport(name, "done before", scores=self.recorded_scores(name)))
                    tell(name, "done before")
                    continue
                log.warning("%s: settings changed since it ran (%s): it and every later step run again", name,
                            "; ".join(why))  # fmt: skip
                tell(name, "stale: " + "; ".join(why))
                first_redo, overwrite = index, True
            self.context.overwrite = overwrite
            reports.append(self._run_step(step, settings, ids, tell))
        return reports

    def _run_step(self, step: Step, settings: dict, ids: dict, tell) -> StepReport:
        import time

        from cpn_dist.training.runlock import share_from_main

        procs = self.procs
        tell(step.name, "start")
        t0 = time.perf_counter()
        scores = (step.run(self.context) if procs.main or not step.main_only else None) or []
        procs.barrier()
        seconds = time.perf_counter() - t0
        ids[step.name] = share_from_main(uuid.uuid4().hex, procs.world)
        if procs.main:
            write_json(self.stamp(step.name), {"step": step.name, "seconds": seconds, "id": ids[step.name],
                                               "settings": settings, "scores": [s.to_json() for s in scores]})
        procs.barrier()
        tell(step.name, "ran")
        return StepReport(step.name, "ran", seconds, scores)
