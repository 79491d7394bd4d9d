"""Packing one split on many machines: ``cpn pack … --part i/N`` packs only the shards ``s`` with
``s mod N == i``, and ``cpn pack … --join`` checks that every shard of the split is there, intact and
packed with the same settings, then writes ``meta.json`` — byte-identical to a one-machine pack, since
packing is deterministic per shard and meta.json is made from the per-shard statistics alone.

A part writes its shards and their statistics (``.{split}.pack/NNNNNN.json``: counts, size, SHA-256,
the digest of the settings) into ``--out``. The N parts may share one ``--out`` on a shared file system
(they never write the same file), or each write its own folder: ``--join --parts-from DIR …`` first moves
their shards and statistics into ``--out``. Each part resumes (``--resume``) and overwrites
(``--overwrite``) only its own shards.

Why every N-th shard rather than a contiguous block: an annotation file or split list often orders its
images by source, size or date, so contiguous blocks can differ in cost; dealt round robin, every part
gets shards from the whole list and the N parts finish at about the same time. The last, shorter
shard costs one part a little less; nothing else depends on the choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from cpn_dist.data.shards.reader import shard_name
from cpn_dist.data.shards.verify import shard_problem
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)

Part = tuple[int, int]  # (i, N): this part is number i of N, 0 <= i < N


def parse_part(text: str) -> Part:
    """``"i/N"`` → ``(i, N)``; anything else is a one-line CpnError naming ``--part``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise CpnError(f"--part {text}: expected i/N with 0 <= i < N (part i of N, e.g. --part 0/4)")
    return int(match[1]), int(match[2])


def part_shards(n_shards: int, part: Part | None) -> set[int]:
    """The shard indices a part packs (every shard without a part)."""
    if part is None:
        return set(range(n_shards))
    i, n = part
    return set(range(i, n_shards, n))


def part_images(n_ids: int, shard_size: int, part: Part | None) -> int:
    """List entries in the shards of ``part`` (a split of ``n_ids`` entries, ``shard_size`` per shard)."""
    n_shards = -(-n_ids // shard_size)
    return sum(min(shard_size, n_ids - s * shard_size) for s in part_shards(n_shards, part))


def settings_digest(settings: dict[str, Any]) -> str:
    """SHA-256 of a pack's settings, recorded with each shard's statistics: a join refuses a shard packed
    with other settings than the rest."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def stats_path(work: Path, index: int) -> Path:
    return work / f"{index:06d}.json"


def join_problems(out: Path, work: Path, split: str, n_shards: int, digest: str) -> dict[int, str]:
    """Shard index → what keeps it from a join: no statistics (not packed, or its part still running),
    a shard missing or changed since its statistics, or statistics of other settings."""
    problems: dict[int, str] = {}
    for index in range(n_shards):
        path = stats_path(work, index)
        if not path.is_file():
            problems[index] = "not packed"
            continue
        stats = json.loads(path.read_text())
        if stats.get("settings_sha256") != digest:
            problems[index] = "packed with other settings"
        elif problem := shard_problem(out / shard_name(split, index), stats):
            problems[index] = problem
    return problems


def join_error(out: Path, split: str, problems: dict[int, str], n_shards: int) -> CpnError:
    """The one line of a join that cannot be made: which shards, why, and what packs them."""
    shown = ", ".join(f"{shard_name(split, i)} {why}" for i, why in sorted(problems.items())[:5])
    more = f", … {len(problems) - 5} more" if len(problems) > 5 else ""
    return CpnError(f"{out}: cannot join split {split}: {len(problems)} of {n_shards} shards not ready "
                    f"({shown}{more}); run their parts (shard s is part s mod N) with the same flags and --resume, "
                    "then --join again")  # fmt: skip


def gather_parts(out: Path, split: str, folders: list[Path]) -> int:
    """Move the shards and statistics that parts packed into other folders into ``out``; returns how many
    shards were moved. A file ``out`` already holds with other bytes is a CpnError (nothing is lost)."""
    work = out / f".{split}.pack"
    work.mkdir(parents=True, exist_ok=True)
    moved = 0
    for folder in folders:
        theirs = folder / f".{split}.pack"
        if not theirs.is_dir():
            raise CpnError(f"{folder}: holds no part of split {split} (no {theirs.name}/)")
        if folder.resolve() == out.resolve():
            continue
        for stats in sorted(theirs.glob("[0-9]" * 6 + ".json")):
            shard = folder / shard_name(split, int(stats.stem))
            for src, dst in ((shard, out / shard.name), (stats, work / stats.name)):
                if dst.exists() and dst.read_bytes() != src.read_bytes():
                    raise CpnError(f"{dst}: exists and differs from {src}; remove one of them")
                if src.exists():
                    shutil.move(str(src), str(dst))
            moved += 1
        settings = theirs / "settings.json"
        if settings.is_file() and not (work / "settings.json").is_file():
            shutil.copyfile(settings, work / "settings.json")
        if not any(p.name != "settings.json" for p in theirs.iterdir()):  # all moved: the part folder is done
            shutil.rmtree(theirs)
    log.info("moved %d shards of %s from %d part folder(s) into %s", moved, split, len(folders), out)
    return moved
