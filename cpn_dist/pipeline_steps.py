"""The steps of ``cpn pipeline`` and their stamps: what a finished step recorded, and whether a re-run
may reuse it.

A finished step writes ``{work_dir}/steps/NAME.json``: its scores, an ``id`` (new each time it runs)
and its ``settings`` — every setting it depends on (the pipeline config's keys it reads, the run
config of its stage minus the keys that change nothing), fingerprints of its inputs from outside the
work folder (split lists by content; given weights files by size and modification time), and the
``id`` of every earlier step's stamp. A re-run reuses a step only when its recorded settings equal
today's; otherwise that step and every later one run again (the ``id`` chain makes a rerun step
stale its successors). Nothing here imports torch or pydantic (``cpn --help`` lists :data:`STEPS`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpn_dist.atomic import write_atomic

log = logging.getLogger(__name__)

STEPS = ("pack", "train_cpn", "cams", "eval_cams", "pseudo", "affinity_labels", "train_affinity", "rw", "eval_rw",
         "train_segmentation", "segment", "eval_segmentation")  # fmt: skip
STAGE2 = ("affinity_labels", "train_affinity", "rw", "eval_rw")


def list_fingerprint(path: str | Path) -> str | None:
    """A split list by content (sha256; None if missing): rewriting the same ids changes nothing."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def file_fingerprint(path: str | Path | None) -> list | None:
    """A large input file (weights) by [path, size, mtime_ns]; None when there is none."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return [str(p), None, None]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= _flatten(value, f"{prefix}{key}.")
    return flat


def stale_reasons(recorded: dict[str, Any], now: dict[str, Any], limit: int = 4) -> list[str]:
    """What differs between a stamp's recorded settings and today's, as short ``key: old → new`` lines
    (at most ``limit``, then how many more)."""
    a, b = _flatten(recorded), _flatten(now)
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


def read_stamp(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # unreadable: treated as a stamp without settings


# --------------------------------------------------------------------------------------------
# results


@dataclass
class StageScore:
    """One row of the summary: which labels, scored on which split."""

    stage: str
    split: str
    images: int
    miou: float
    background: float
    foreground: float
    note: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class StepReport:
    name: str
    status: str  # "ran", "done before", "skipped", "not configured"
    seconds: float = 0.0
    scores: list[StageScore] = field(default_factory=list)


@dataclass
class PipelineResult:
    steps: list[StepReport]
    scores: list[StageScore]
    seconds: float

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds}
                                                   for s in self.steps],
                "scores": [s.to_json() for s in self.scores]}  # fmt: skip


def stage_score(stage: str, split: str, images: int, summary: dict, note: str = "") -> StageScore:
    return StageScore(stage, split, images, summary["miou"], summary["background"], summary["foreground"], note)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def step_settings(p, name: str) -> dict[str, Any]:
    """What step ``name`` of pipeline ``p`` depends on besides the steps before it: the settings it reads and
    fingerprints of its inputs from outside the work folder (see :mod:`cpn_dist.pipeline_steps`)."""
    from cpn_dist.run_start import NO_EFFECT, flatten

    c = p.cfg

    def run(stage: str, *sections: str) -> dict:  # a run config minus what changes nothing
        flat = flatten(p.train_config(stage).to_dict())
        return {k: v for k, v in flat.items() if not any(k == n or (n.endswith(".") and k.startswith(n))
                                                         for n in NO_EFFECT)
                and (not sections or k.split(".")[0] in sections)}  # fmt: skip

    lists = lambda *splits: {s: list_fingerprint(p.list_path(s)) for s in splits if s}  # noqa: E731
    given = lambda stage: file_fingerprint(getattr(c.weights, stage))  # noqa: E731
    seg_splits = [s for s, _ in p.segment_splits()]
    settings = {  # keys as the user writes them: the pipeline config's, then the stage's run config's
        "pack": lambda: {"voc_root": c.voc_root, "shards": str(p.shards), "lists": lists(c.splits.train),
                         "pack.segments": c.pack.segments, "pack.shard_size": c.pack.shard_size,
                         "data.patch.segments": run("cpn", "data").get("data.patch.segments")},
        "train_cpn": lambda: run("cpn"),
        "cams": lambda: {"cams.scales": c.cams.scales, "weights.cpn": given("cpn"),
                         "lists": lists(c.splits.train, c.splits.eval), **run("cpn", "model", "data")},
        "eval_cams": lambda: {"cams.betas": c.cams.betas, "lists": lists(c.splits.eval), "gt": str(p.gt)},
        "pseudo": lambda: {"pseudo.beta": c.pseudo.beta, "pseudo.crf": c.pseudo.crf, "lists": lists(c.splits.train)},
        "affinity_labels": lambda: {"lists": lists(c.splits.train), **run("affinity", "affinity")},
        "train_affinity": lambda: run("affinity"),
        "rw": lambda: {"weights.affinity": given("affinity"), **run("affinity", "affinity", "model", "data")},
        "eval_rw": lambda: {"lists": lists(c.splits.eval)},
        "train_segmentation": lambda: {"segmentation_labels": c.segmentation_labels, **run("segmentation")},
        "segment": lambda: {"weights.segmentation": given("segmentation"), "lists": lists(*seg_splits),
                            **run("segmentation", "segmentation", "model", "data")},
        "eval_segmentation": lambda: {"lists": lists(*seg_splits)},
    }[name]()  # fmt: skip
    return _in_work(settings, str(p.work))


def _in_work(tree: Any, work: str) -> Any:
    """Paths inside the work folder written relative to it: a moved or copied work folder stays valid."""
    if isinstance(tree, dict):
        return {k: _in_work(v, work) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_in_work(v, work) for v in tree]
    if isinstance(tree, str) and (tree == work or tree.startswith(work + os.sep)):
        return "{work_dir}" + tree[len(work):]
    return tree


def other_run(out: Path, cfg) -> bool:
    """Whether ``out`` holds the checkpoints or final weights of a run whose config differs from ``cfg`` in
    what changes its result (run length included: the pipeline's step must then run again)."""
    from cpn_dist.checkpoint import complete_checkpoints, read_state
    from cpn_dist.models.weights import read_weights_metadata
    from cpn_dist.run_start import NO_EFFECT, config_changes

    done = complete_checkpoints(out)
    recorded = read_state(done[-1]).get("config") if done else None
    if recorded is None and (out / "model_final.pth").is_file():
        recorded = (read_weights_metadata(out / "model_final.pth") or {}).get("config")
    changes = config_changes(recorded, cfg.to_dict(), ignore=NO_EFFECT) if recorded is not None else []
    if changes:
        log.warning("%s: holds a run of another config (%s): training afresh", out, "; ".join(changes))
    return bool(changes)
