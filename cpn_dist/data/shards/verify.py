"""Check a packed folder: every sample decodes and agrees with meta.json (``cpn shards verify``)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpn_dist.data.datasets.info import DatasetInfo, from_meta, voc
from cpn_dist.data.shards.members import SampleDecodeError, decode_labels, decode_members, slic_member
from cpn_dist.data.shards.reader import SHARD_PATTERN, iter_raw_samples, read_meta
from cpn_dist.data.datasets.voc import IGNORE
from cpn_dist.errors import CpnError


@dataclass
class SplitCheck:
    """The outcome for one split: ``problems`` make the shards unusable, ``warnings`` are
    disagreements a real dataset may have (e.g. an XML class absent from the mask)."""

    split: str
    samples: int = 0
    shards: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, what)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


def shard_problem(path: Path, record: dict) -> str | None:
    """What is wrong with a shard against its record (``size``, ``sha256``; an older record has
    neither and is checked for presence only), or None."""
    if not path.is_file():
        return "missing"
    if "sha256" in record and file_digest(path) != (record["size"], record["sha256"]):
        return "its size or checksum differs from the one recorded when it was packed"
    return None


def verify_split(folder: Path, split: str, entry: dict, progress: Callable[[int], None] | None = None,
                 dataset: DatasetInfo | None = None) -> SplitCheck:  # fmt: skip
    """Decode every sample of one split (``entry``: its meta.json entry; ``dataset``: the folder's, VOC
    when None) and check it against the entry."""
    dataset = dataset or voc()
    check = SplitCheck(split)
    segments = entry["slic"]["segments"]
    required = {"jpg", "cls.json", *(slic_member(n) for n in segments)}
    allowed = required | {"seg.png"}
    keys: set[str] = set()
    class_counts = np.zeros(dataset.num_foreground, dtype=np.int64)
    with_seg = 0
    for shard in entry["shards"]:
        path = folder / shard["name"]
        check.shards += 1
        if not path.is_file():
            check.problems.append((shard["name"], "shard listed in meta.json not found"))
            continue
        changed = shard_problem(path, shard)
        if changed:
            check.problems.append((shard["name"], changed))
        count = 0
        try:
            for raw in iter_raw_samples([str(path)], hint=False):
                count += 1
                _check_sample(raw, shard["name"], required, allowed, segments, check, dataset)
                key = raw["__key__"]
                if key in keys:
                    check.problems.append((f"{shard['name']}:{key}", "duplicate key"))
                keys.add(key)
                if "cls.json" in raw:
                    with contextlib.suppress(ValueError):  # reported by _check_sample
                        class_counts += decode_labels(raw["cls.json"], dataset.num_foreground).astype(np.int64)
                with_seg += "seg.png" in raw
                if progress:
                    progress(1)
        except CpnError as exc:
            check.problems.append((shard["name"], str(exc)))
            continue
        if count != shard["count"]:
            check.problems.append((shard["name"], f"{count} samples, meta.json says {shard['count']}"))
        check.samples += count
    if check.samples != entry["count"]:
        check.problems.append((split, f"{check.samples} samples in the shards, meta.json says {entry['count']}"))
    expected = [entry["class_counts"].get(c, 0) for c in dataset.foreground]
    if class_counts.tolist() != expected:
        check.problems.append((split, "per-class image counts differ from meta.json"))
    if with_seg != entry.get("with_seg", 0):
        check.problems.append((split, f"{with_seg} samples with seg.png, meta.json says {entry.get('with_seg', 0)}"))
    listed = {s["name"] for s in entry["shards"]}
    for path in sorted(folder.glob(f"{split}-*.tar")):
        m = SHARD_PATTERN.match(path.name)
        if m and m["split"] == split and path.name not in listed:
            check.warnings.append((path.name, "shard on disk not listed in meta.json"))
    return check


def _check_sample(raw: dict, shard: str, required: set, allowed: set, segments: list[int], check: SplitCheck,
                  dataset: DatasetInfo) -> None:  # fmt: skip
    key = raw["__key__"]
    where = f"{shard}:{key}"
    members = {k for k in raw if not k.startswith("__")}
    for name in sorted(required - members):
        check.problems.append((where, f"missing member {name}"))
    for name in sorted(members - allowed):
        check.problems.append((where, f"unexpected member {name}"))
    decoded: dict = {}
    for name in ["jpg", "cls.json", "seg.png", *(slic_member(n) for n in segments)]:
        if name in raw:
            try:
                decoded |= decode_members(raw, [name], where=shard, num_foreground=dataset.num_foreground)
            except SampleDecodeError as exc:
                check.problems.append((where, f"{name} does not decode ({exc.problem})"))
    labels = decoded.get("cls.json")
    if decoded.get("jpg") is None:
        return
    size = np.asarray(decoded["jpg"]).shape[:2]
    for name in (slic_member(n) for n in segments if slic_member(n) in decoded):
        ids = decoded[name]
        if ids.shape != size:
            check.problems.append((where, f"{name} is {ids.shape[1]}×{ids.shape[0]}, image is {size[1]}×{size[0]}"))
        elif not np.bincount(ids.ravel()).all():
            check.problems.append((where, f"{name}: superpixel ids are not consecutive 0..K-1"))
    seg = decoded.get("seg.png")
    if seg is not None:
        if seg.shape != size:
            check.problems.append((where, f"seg.png is {seg.shape[1]}×{seg.shape[0]}, image is {size[1]}×{size[0]}"))
            return
        values = set(np.unique(seg).tolist())
        if not values <= set(range(dataset.num_classes)) | {IGNORE}:
            check.problems.append((where, f"seg.png holds values outside 0..{dataset.num_classes - 1} and {IGNORE}: "
                                          f"{sorted(values)}"))  # fmt: skip
        elif labels is not None:
            in_mask = {v - 1 for v in values if 1 <= v <= dataset.num_foreground}
            in_labels = set(np.flatnonzero(labels).tolist())
            if in_mask != in_labels:
                extra = sorted(dataset.foreground[i] for i in in_mask - in_labels)
                missing = sorted(dataset.foreground[i] for i in in_labels - in_mask)
                what = "; ".join(x for x in (extra and f"in mask, not in labels: {extra}",
                                             missing and f"in labels, not in mask: {missing}") if x)  # fmt: skip
                check.warnings.append((where, what))


def verify_shards(folder: str | Path, split: str | None = None,
                  progress: Callable[[int], None] | None = None) -> list[SplitCheck]:  # fmt: skip
    """Decode every sample of every packed split (or of ``split``) of ``folder`` and check members,
    sizes, value ranges, counts and label/mask consistency against meta.json."""
    folder = Path(folder)
    meta = read_meta(folder)
    splits = meta["splits"]
    if split is not None and split not in splits:
        raise CpnError(f"{folder}: split '{split}' not packed here (packed: {', '.join(sorted(splits))})")
    names = [split] if split else sorted(splits)
    return [verify_split(folder, name, splits[name], progress, from_meta(meta)) for name in names]


def total_samples(folder: str | Path, split: str | None = None) -> int:
    meta = read_meta(folder)
    return sum(e["count"] for name, e in meta["splits"].items() if split is None or name == split)

