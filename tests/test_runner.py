"""The step runner that `cpn pipeline` and `cpn demo` share: stamps, only/skip/redo, stale settings,
main-only steps, not-configured and given steps — on a table of toy steps (no torch)."""

import logging
from dataclasses import dataclass, field

import pytest

from cpn_dist.errors import CpnError
from cpn_dist.pipeline.runner import Step, StepRunner, relative_to, stale_reasons


@dataclass
class Score:
    value: int

    def to_json(self) -> dict:
        return {"value": self.value}


@dataclass
class Toy:
    """A context: records which steps ran and with which ``overwrite``."""

    knobs: dict = field(default_factory=lambda: {"a": 1, "b": 1, "c": 1})
    ran: list = field(default_factory=list)
    overwrite: bool = False


def _step(name: str, main_only: bool = False, stage: str = "1") -> Step:
    def run(ctx: Toy):
        ctx.ran.append((name, ctx.overwrite))
        return [Score(ctx.knobs[name])]

    return Step(name, run, stage, main_only)


TABLE = [_step("a"), _step("b", main_only=True), _step("c", stage="2")]


def _runner(tmp_path, ctx, **kwargs) -> StepRunner:
    return StepRunner(TABLE, ctx, tmp_path / "steps", settings=lambda s: {"knob": ctx.knobs[s.name]},
                      revive=lambda d: Score(**d), **kwargs)  # fmt: skip


def _statuses(reports) -> dict[str, str]:
    return {r.name: r.status for r in reports}


def test_a_rerun_reuses_every_step_and_its_recorded_scores(tmp_path):
    ctx = Toy()
    first = _runner(tmp_path, ctx).run()
    assert ctx.ran == [("a", False), ("b", False), ("c", False)]
    assert _statuses(first) == {"a": "ran", "b": "ran", "c": "ran"}
    again = _runner(tmp_path, Toy()).run()
    assert _statuses(again) == {"a": "done before", "b": "done before", "c": "done before"}
    assert [r.scores for r in again] == [r.scores for r in first]  # revived from the stamps


def test_a_changed_setting_reruns_its_step_and_every_later_one_overwriting(tmp_path, caplog):
    _runner(tmp_path, Toy()).run()
    ctx = Toy(knobs={"a": 1, "b": 2, "c": 1})
    with caplog.at_level(logging.WARNING, logger="cpn_dist"):
        reports = _runner(tmp_path, ctx).run()
    assert _statuses(reports) == {"a": "done before", "b": "ran", "c": "ran"}
    assert ctx.ran == [("b", True), ("c", True)]
    assert "b: settings changed since it ran (knob: 1 → 2)" in caplog.text


def test_redo_only_and_skip(tmp_path):
    _runner(tmp_path, Toy()).run()
    ctx = Toy()
    assert _statuses(_runner(tmp_path, ctx).run(redo="b")) == {"a": "done before", "b": "ran", "c": "ran"}
    assert ctx.ran == [("b", True), ("c", True)]
    ctx = Toy(knobs={"a": 5, "b": 1, "c": 1})
    reports = _runner(tmp_path, ctx).run(only=["b", "c"])
    # a is left out with its old stamp: the steps after it are not staled by the omission
    assert _statuses(reports) == {"a": "skipped", "b": "done before", "c": "done before"} and ctx.ran == []
    assert reports[0].scores == [Score(1)]  # a left-out step reports what it recorded
    assert _statuses(_runner(tmp_path, Toy()).run(skip=["c"]))["c"] == "skipped"
    with pytest.raises(CpnError, match="unknown step 'd' \\(steps: a, b, c\\)"):
        _runner(tmp_path, Toy()).run(skip=["d"])


def test_not_configured_and_given_steps_do_not_run(tmp_path):
    ctx = Toy()
    runner = _runner(tmp_path, ctx, configured=lambda s: s.stage != "2", given=lambda s: s.name == "a")
    assert _statuses(runner.run()) == {"a": "skipped", "b": "ran", "c": "not configured"}
    assert ctx.ran == [("b", False)]


class OtherProcess:
    """A process that is not the main one (world of 1, so nothing is broadcast)."""

    main, world = False, 1

    def __init__(self):
        self.barriers = 0

    def barrier(self) -> None:
        self.barriers += 1


def test_a_main_only_step_runs_on_the_main_process_only_and_every_step_ends_with_barriers(tmp_path):
    ctx, procs = Toy(), OtherProcess()
    reports = StepRunner(TABLE, ctx, tmp_path / "steps", procs).run()
    assert ctx.ran == [("a", False), ("c", False)] and reports[1].scores == []
    assert procs.barriers == 1 + 2 * len(TABLE)  # one before the first step, two around each stamp
    assert not (tmp_path / "steps" / "a.json").exists()  # only the main process writes stamps


def test_paths_inside_the_folder_are_recorded_relative_to_it(tmp_path):
    assert relative_to({"x": [str(tmp_path / "a"), "elsewhere"], "y": (str(tmp_path),)}, tmp_path) == {
        "x": ["{work_dir}/a", "elsewhere"], "y": ["{work_dir}"]}
    assert stale_reasons({"k": 1, "after": {"a": "x"}}, {"k": 1, "after": {"a": "y"}}) == ["step a ran again since"]
