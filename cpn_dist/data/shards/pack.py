"""``cpn pack``: turn a VOC or COCO split into webdataset shards with precomputed SLIC superpixel maps.

SLIC runs once per image and requested segment count, at pack time, in worker processes; the
training loader then only looks superpixel ids up (see :mod:`cpn_dist.data.loading.cp_pair`). What is
packed (the image keys, their labels and ground truth, the dataset's classes) comes from a source of
:mod:`cpn_dist.data.shards.pack_source`; ``meta.json`` records the dataset.

Shard ``i`` holds the images at positions ``[i·shard_size, (i+1)·shard_size)`` of the split list,
minus the skipped ones, so every shard can be (re)built on its own. Each shard is written to a
hidden temporary file and renamed when complete; then its statistics, size and SHA-256 are saved in
the work folder ``.{split}.pack/``. ``meta.json`` is written last (with the settings and every shard's
size and checksum) and the work folder removed. The tar bytes depend only on the input (member order
fixed, mtime 0, uid/gid 0, no user names, mode 0644), so a re-pack is byte-identical.

``resume=True`` finishes an interrupted pack, keeping the shards that match their statistics and
building the rest; on a complete split it rebuilds exactly the shards that are missing or damaged
(:mod:`cpn_dist.data.shards.pack_check`). Either way other settings than the pack's are refused.
``part=(i, N)`` packs only the shards ``s`` with ``s mod N == i``, and ``join=True`` writes meta.json
from the parts' shards (:mod:`cpn_dist.data.shards.pack_parts`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpn_dist import __version__
from cpn_dist.atomic import write_atomic, write_json
from cpn_dist.data.datasets.coco import CocoProtocol
from cpn_dist.data.datasets.info import DatasetInfo, from_meta
from cpn_dist.data.shards.members import sample_members
from cpn_dist.data.shards.pack_check import damaged_shards, recorded_settings, settings_changes
from cpn_dist.data.shards.pack_parts import (
    Part,
    join_error,
    join_problems,
    part_shards,
    settings_digest,
    stats_path,
)
from cpn_dist.data.shards.pack_sample import MAX_SEGMENTS, Prepared, SampleTask, prepare_sample
from cpn_dist.data.shards.pack_source import CocoPackSource, PackSource, find_coco_source, find_source
from cpn_dist.data.shards.reader import (
    FORMAT,
    FORMAT_VERSION,
    META_NAME,
    SHARD_PATTERN,
    parse_meta,
    shard_name,
)
from cpn_dist.data.shards.verify import file_digest, shard_problem
from cpn_dist.errors import CpnError
from cpn_dist.parallel import parallel_map

log = logging.getLogger(__name__)

Source = PackSource | CocoPackSource  # what cpn_dist.data.shards.pack_source finds

# Fault injection for tests: after this many shards were written, start the next one and SIGKILL
# the packing process mid-write, as a pre-empted job would be.
KILL_AFTER_ENV = "CPN_PACK_TEST_KILL_AFTER_SHARDS"


# --------------------------------------------------------------------------------------------
# Writing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    info.type = tarfile.REGTYPE
    return info


def write_shard(path: Path, samples: list[Prepared], kill_midway: bool = False) -> None:
    """Write one shard to a temporary name beside ``path`` and rename it when complete."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for i, sample in enumerate(samples):
                for suffix, data in sample.members:
                    tar.addfile(_tarinfo(f"{sample.key}.{suffix}", len(data)), io.BytesIO(data))
                if kill_midway and i >= len(samples) // 2:
                    fh.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

    write_atomic(path, write, path.with_name(f".{path.name}.partial"))


def _shard_stats(index: int, path: Path, samples: list[Prepared], skipped: list[Prepared],
                 num_foreground: int) -> dict[str, Any]:  # fmt: skip
    """The statistics of the shard written at ``path`` (its samples' and its file's; class counts over the
    ``num_foreground`` object classes)."""
    class_counts = np.zeros(num_foreground, dtype=np.int64)
    pixel_sum = np.zeros(3, dtype=np.int64)
    spx: dict[str, list[int]] = {}
    for s in samples:
        class_counts += np.asarray(s.labels, dtype=np.int64)
        pixel_sum += np.asarray(s.pixel_sum, dtype=np.int64)
        for n, k in s.superpixels.items():
            lo, total, hi = spx.get(str(n), [k, 0, k])
            spx[str(n)] = [min(lo, k), total + k, max(hi, k)]
    size, sha256 = file_digest(path)
    return {
        "index": index,
        "name": path.name,
        "count": len(samples),
        "size": size,
        "sha256": sha256,
        "with_seg": sum(s.has_seg for s in samples),
        "class_counts": class_counts.tolist(),
        "pixel_sum": pixel_sum.tolist(),
        "pixels": sum(s.pixels for s in samples),
        "superpixels": spx,  # N -> [min, sum, max] of K over the shard's images
        "skipped": [[s.key, s.skipped] for s in skipped],
    }


@dataclass
class PackReport:
    """What a pack did; ``meta`` is the split's entry written to meta.json (for a ``part``: the part's
    sample count, shards and skipped images, as the split's entry will count them)."""

    out: Path
    split: str
    meta: dict[str, Any]
    shards_written: int
    shards_reused: int
    images_processed: int
    slic_seconds: float  # summed over processed images and segment counts
    seconds: float
    already_complete: bool = False
    rebuilt: list[str] | None = None  # the shards of a complete split that --resume rebuilt
    part: Part | None = None  # the part packed (--part i/N); meta.json is written by --join
    joined: bool = False  # meta.json was written from the parts' shards (--join)

    @property
    def skipped(self) -> list[dict[str, str]]:
        return self.meta["skipped"]

    @property
    def slic_ms_per_image(self) -> float:
        return 1000 * self.slic_seconds / max(self.images_processed - len(self.skipped), 1)


def _settings(source: Source, segments: tuple[int, ...], compactness: float, shard_size: int) -> dict:
    import skimage

    return {
        "split": source.split,
        "list_sha256": hashlib.sha256("\n".join(source.ids).encode()).hexdigest(),
        "segments": list(segments),
        "compactness": compactness,
        "shard_size": shard_size,
        **source.settings(),  # labels, masks (and a COCO protocol's choices)
        "skimage": skimage.__version__,
    }


def check_options(segments, compactness: float, shard_size: int, workers: int, overwrite: bool, resume: bool,
                  join: bool) -> tuple[int, ...]:  # fmt: skip
    """The sorted segment counts, after checking every option of a pack (a one-line CpnError naming the flag)."""
    segments = tuple(sorted(set(int(n) for n in segments)))
    if not segments or any(not 2 <= n <= MAX_SEGMENTS for n in segments):
        raise CpnError(f"--slic-segments: each segment count must be in 2..{MAX_SEGMENTS}, got {list(segments)}")
    if shard_size < 1:
        raise CpnError(f"--shard-size: must be >= 1, got {shard_size}")
    if workers < 1:
        raise CpnError(f"--workers: must be >= 1, got {workers}")
    if compactness <= 0:
        raise CpnError(f"--compactness: must be > 0, got {compactness}")
    if overwrite and resume:
        raise CpnError("--overwrite and --resume: choose one")
    if join and (overwrite or resume):
        raise CpnError("--join packs nothing: without --overwrite and --resume")
    return segments


def pack_split(voc_root: str | Path, split: str, out: str | Path, *, labels_file: str | Path | None = None,
               **options: Any) -> PackReport:  # fmt: skip
    """Pack one split of a VOC folder into ``out``; ``options`` as :func:`pack_source`."""
    check_options(options.get("segments", (200, 300)), options.get("compactness", 10.0),
                  options.get("shard_size", 1000), options.get("workers", 1), options.get("overwrite", False),
                  options.get("resume", False), options.get("join", False))  # fmt: skip
    return pack_source(find_source(voc_root, split, labels_file), out, **options)


def pack_coco_split(coco_root: str | Path, split: str, out: str | Path, *, protocol: CocoProtocol | None = None,
                    **options: Any) -> PackReport:  # fmt: skip
    """Pack one split of a COCO folder (``ROOT/{split}/``, ``ROOT/annotations/instances_{split}.json``) into
    ``out`` by ``protocol`` (ReCAM's when None); ``options`` as :func:`pack_source`."""
    return pack_source(find_coco_source(coco_root, split, protocol), out, **options)


def pack_source(
    source: Source,
    out: str | Path,
    *,
    segments: tuple[int, ...] | list[int] = (200, 300),
    compactness: float = 10.0,
    shard_size: int = 1000,
    workers: int = 1,
    overwrite: bool = False,
    resume: bool = False,
    part: Part | None = None,
    join: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PackReport:
    """Pack ``source`` (:func:`~cpn_dist.data.shards.pack_source.find_source`, :func:`~cpn_dist.data.shards.pack_source.
    find_coco_source`) into ``out`` (see the module docstring); ``progress(n)`` is called as ``n`` more
    images are done. ``part=(i, N)`` packs only the shards ``s`` with ``s mod N == i`` and leaves meta.json
    to ``join=True`` (:mod:`cpn_dist.data.shards.pack_parts`). Bad images are skipped and listed in the report and
    in meta.json; bad arguments and missing inputs raise :class:`CpnError` before anything is written."""
    started = time.perf_counter()
    segments = check_options(segments, compactness, shard_size, workers, overwrite, resume, join)
    split = source.split
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CpnError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".{split}.pack"
    meta_path = out / META_NAME
    meta = parse_meta(meta_path.read_bytes(), str(meta_path)) if meta_path.is_file() else None
    _check_dataset(meta, source.dataset, meta_path)
    settings = _settings(source, segments, compactness, shard_size)
    n_shards = math.ceil(len(source.ids) / shard_size)
    mine = part_shards(n_shards, part)
    existing = [p for p in sorted(out.glob(f"{split}-" + "[0-9]" * 6 + ".tar")) if _index(p) in mine]
    packed = meta is not None and split in meta["splits"]
    if join:
        return _join(source, settings, out, meta, n_shards, started)

    if overwrite:
        if packed:  # never leave meta.json naming deleted shards
            del meta["splits"][split]
            write_json(meta_path, meta, indent=2)
        for path in existing:
            path.unlink()
        if part is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for index in mine:
                stats_path(work, index).unlink(missing_ok=True)
    elif resume:
        if work.is_dir() and (part is None or (work / "settings.json").is_file()):  # a part may be first
            old = json.loads((work / "settings.json").read_text()) if (work / "settings.json").is_file() else None
            if old != settings:
                changes = "; ".join(settings_changes(old, settings))
                raise CpnError(f"{work}: the interrupted pack used other settings ({changes}); use --overwrite")
        elif packed:
            entry = meta["splits"][split]
            changes = settings_changes(recorded_settings(entry), settings)
            if changes:
                raise CpnError(f"{out}: split {split} was packed with other settings ({'; '.join(changes)}); "
                               "use --overwrite")  # fmt: skip
            return _rebuild(source, settings, out, entry, workers, progress, started, mine)
        elif existing:
            raise CpnError(f"{out}: holds {split} shards that no pack here can resume; use --overwrite")
    elif packed or existing or (work.is_dir() and (part is None or any(stats_path(work, i).is_file() for i in mine))):
        raise CpnError(f"{out}: already holds split '{split}' (use --overwrite to replace it or --resume to finish it)")
    elif part is not None and (work / "settings.json").is_file():
        old = json.loads((work / "settings.json").read_text())
        if old != settings:
            changes = "; ".join(settings_changes(old, settings))
            raise CpnError(f"{work}: the other parts of this pack used other settings ({changes}); give every part "
                           "the same flags")  # fmt: skip

    work.mkdir(exist_ok=True)
    tag = "" if part is None else f".part{part[0]}"  # parts sharing a folder never write the same temporary file
    write_json(work / "settings.json", settings, indent=2, tmp=work / f".settings.json{tag}.tmp")
    for index in mine:
        Path(out / f".{shard_name(split, index)}.partial").unlink(missing_ok=True)
    done = {i for i in mine if _kept(out / shard_name(split, i), stats_path(work, i))}
    _advance(progress, source, shard_size, done)

    kill_after = int(os.environ.get(KILL_AFTER_ENV, "-1"))
    digest = settings_digest(settings)
    written = 0
    processed = 0
    slic_seconds = 0.0
    skip = set(range(n_shards)) - mine | done
    for index, prepared in _prepared_shards(source, settings, skip=skip, workers=workers, progress=progress):
        kept = [s for s in prepared if s.skipped is None]
        path = out / shard_name(split, index)
        write_shard(path, kept, kill_midway=written == kill_after)
        skipped = [s for s in prepared if s.skipped is not None]
        stats = _shard_stats(index, path, kept, skipped, source.dataset.num_foreground)
        write_json(stats_path(work, index), {**stats, "settings_sha256": digest}, indent=2)
        written += 1
        processed += len(prepared)
        slic_seconds += sum(s.slic_seconds for s in prepared)

    if part is not None:
        summary = _part_summary(work, sorted(mine))
        return PackReport(out, split, summary, written, len(done), processed, slic_seconds,
                          time.perf_counter() - started, part=part)  # fmt: skip
    entry = _write_split(source, settings, out, work, n_shards)
    return PackReport(out, split, entry, written, len(done), processed, slic_seconds, time.perf_counter() - started)


def _index(shard: Path) -> int:
    return int(SHARD_PATTERN.match(shard.name)["index"])


def _check_dataset(meta: dict | None, dataset: DatasetInfo, meta_path: Path) -> None:
    """A folder holds the splits of one dataset: packing another into it is refused."""
    if meta is None or not meta["splits"]:
        return
    recorded = from_meta(meta)
    if recorded != dataset:
        raise CpnError(f"{meta_path}: the folder holds {recorded.name} splits ({recorded.num_classes} classes); "
                       f"pack {dataset.name} ({dataset.num_classes} classes) into another --out folder")  # fmt: skip


def _write_split(source: Source, settings: dict, out: Path, work: Path, n_shards: int) -> dict[str, Any]:
    """Write the split's entry, made from the per-shard statistics in ``work``, into meta.json (with the
    folder's dataset) and remove ``work``; returns the entry."""
    entry = _split_entry(source, settings, work, n_shards)
    meta_path = out / META_NAME
    meta = parse_meta(meta_path.read_bytes(), str(meta_path)) if meta_path.is_file() else None
    folder = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": source.dataset.name,
              "classes": list(source.dataset.foreground), "splits": {}}  # fmt: skip
    meta = {**folder, **{k: v for k, v in (meta or {}).items() if k not in ("dataset", "classes")}}
    meta["tool"] = f"cpn-dist {__version__}"
    meta["splits"][source.split] = entry
    meta["splits"] = dict(sorted(meta["splits"].items()))
    write_json(meta_path, meta, indent=2)
    shutil.rmtree(work, ignore_errors=True)
    return entry


def _join(source: Source, settings: dict, out: Path, meta: dict | None, n_shards: int,
          started: float) -> PackReport:  # fmt: skip
    """``--join``: check that every shard of the split was packed by its part, intact and with these
    settings, then write meta.json as a one-machine pack does (:mod:`cpn_dist.data.shards.pack_parts`)."""
    split = source.split
    work = out / f".{split}.pack"
    if not work.is_dir():
        if meta is not None and split in meta["splits"]:
            entry = meta["splits"][split]
            return PackReport(out, split, entry, 0, len(entry["shards"]), 0, 0.0, time.perf_counter() - started,
                              already_complete=True, joined=True)  # fmt: skip
        raise CpnError(f"{out}: no parts of split {split} to join (no {work.name}/); pack them first with --part i/N")
    old = json.loads((work / "settings.json").read_text()) if (work / "settings.json").is_file() else None
    if old != settings:
        changes = "; ".join(settings_changes(old, settings))
        raise CpnError(f"{work}: the parts were packed with other settings ({changes}); give --join the flags the "
                       "parts were packed with")  # fmt: skip
    problems = join_problems(out, work, split, n_shards, settings_digest(settings))
    if problems:
        raise join_error(out, split, problems, n_shards)
    entry = _write_split(source, settings, out, work, n_shards)
    return PackReport(out, split, entry, 0, n_shards, 0, 0.0, time.perf_counter() - started, joined=True)


def _part_summary(work: Path, shards: list[int]) -> dict[str, Any]:
    """A part's samples, shards and skipped images, from its shards' statistics."""
    stats = [json.loads(stats_path(work, i).read_text()) for i in shards]
    return {"count": sum(s["count"] for s in stats), "shards": [s["name"] for s in stats],
            "skipped": [{"id": k, "reason": r} for s in stats for k, r in s["skipped"]]}  # fmt: skip


def _kept(shard: Path, stats: Path) -> bool:
    """Whether an interrupted pack's shard is complete: its statistics were saved after it and its
    size and checksum still match them."""
    return stats.is_file() and shard_problem(shard, json.loads(stats.read_text())) is None


def _advance(progress: Callable[[int], None] | None, source: Source, shard_size: int, kept: set[int]) -> None:
    """Count the images of the ``kept`` shards as done."""
    if kept and progress:
        progress(sum(min(shard_size, len(source.ids) - i * shard_size) for i in kept))


def _rebuild(source: Source, settings: dict, out: Path, entry: dict, workers: int,
             progress: Callable[[int], None] | None, started: float, mine: set[int]) -> PackReport:  # fmt: skip
    """``--resume`` on a complete split: rebuild those of the shards ``mine`` (all, or a part's) that are
    missing or damaged, each to the bytes meta.json records (packing is deterministic); meta.json is not
    touched. A rebuilt shard that differs from the record (the source files changed since) is a CpnError
    naming ``--overwrite``."""
    split = source.split
    damaged = {i: why for i, why in damaged_shards(out, split, entry, source.dataset).items() if i in mine}
    if not damaged:
        log.info("%s: split %s is already complete, every shard intact", out, split)
        return PackReport(out, split, entry, 0, len(entry["shards"]), 0, 0.0, time.perf_counter() - started,
                          already_complete=True)  # fmt: skip
    for index, problem in sorted(damaged.items()):
        log.warning("%s: %s; rebuilding it", out / shard_name(split, index), problem)
    for index in damaged:
        Path(out / f".{shard_name(split, index)}.partial").unlink(missing_ok=True)
    intact = set(range(len(entry["shards"]))) - set(damaged)
    _advance(progress, source, settings["shard_size"], intact & mine)
    processed, slic_seconds = 0, 0.0
    for index, prepared in _prepared_shards(source, settings, skip=intact, workers=workers, progress=progress):
        kept = [s for s in prepared if s.skipped is None]
        path = out / shard_name(split, index)
        write_shard(path, kept)
        record = entry["shards"][index]
        if len(kept) != record["count"] or shard_problem(path, record):
            raise CpnError(f"{path}: rebuilt from {source.root}, it differs from the shard meta.json records "
                           "(the images or labels changed since the pack); re-pack the split with --overwrite")
        processed += len(prepared)
        slic_seconds += sum(s.slic_seconds for s in prepared)
    rebuilt = [shard_name(split, i) for i in sorted(damaged)]
    return PackReport(out, split, entry, len(damaged), len(intact), processed, slic_seconds,
                      time.perf_counter() - started, rebuilt=rebuilt)  # fmt: skip


def _prepared_shards(source: Source, settings: dict, skip: set[int], workers: int,
                     progress: Callable[[int], None] | None):  # fmt: skip
    """(shard index, its prepared samples, skipped ones included), shard by shard in order, for every
    shard of the split not in ``skip``."""
    shard_size = settings["shard_size"]
    tasks = _tasks(source, tuple(settings["segments"]), settings["compactness"], shard_size, skip_shards=skip)
    current: list[Prepared] = []
    for prepared in _run(tasks, workers):
        if current and prepared.position // shard_size != current[0].position // shard_size:
            yield current[0].position // shard_size, current
            current = []
        current.append(prepared)
        if prepared.skipped:
            log.warning("%s: skipped (%s)", prepared.key, prepared.skipped)
        if progress:
            progress(1)
    if current:
        yield current[0].position // shard_size, current


def _tasks(source: Source, segments, compactness, shard_size, skip_shards: set[int]):
    """The SampleTask of every image of the shards not in ``skip_shards``, in list order."""
    seen: set[str] = set()
    for position, key in enumerate(source.ids):
        skip = None
        if key in seen:
            skip = "duplicate id in the split list"
        elif "." in key or "/" in key or not key:
            skip = "id contains '.' or '/' (not usable as a webdataset key)"
        seen.add(key)
        if position // shard_size in skip_shards:
            continue
        inputs, reason = source.sample_inputs(position, key)
        yield SampleTask(position, key, segments, compactness, num_classes=source.dataset.num_classes,
                         skip=skip or reason, **inputs)  # fmt: skip


def _run(tasks, workers: int):
    """prepare_sample over the tasks, results in task order, at most a few tasks ahead per worker."""
    return parallel_map(prepare_sample, tasks, workers if workers > 1 else 0, depth=4 * workers,
                        initializer=_die_with_parent)  # fmt: skip


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the packing process dies: workers of a killed pack would
    otherwise wait forever on the task queue (their siblings hold its write end)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers exit when the pool shuts down normally
        pass


def _split_entry(source: Source, settings: dict, work: Path, n_shards: int) -> dict[str, Any]:
    """The split's meta.json entry, from the per-shard statistics in shard order."""
    stats = [json.loads(stats_path(work, i).read_text()) for i in range(n_shards)]
    count = sum(s["count"] for s in stats)
    class_counts = np.sum([s["class_counts"] for s in stats], axis=0, dtype=np.int64)
    pixel_sum = np.sum([s["pixel_sum"] for s in stats], axis=0, dtype=np.int64)
    pixels = sum(s["pixels"] for s in stats)
    spx: dict[str, dict[str, float]] = {}
    for n in settings["segments"]:
        per = [s["superpixels"][str(n)] for s in stats if str(n) in s["superpixels"]]
        if per:
            spx[str(n)] = {
                "min": min(p[0] for p in per),
                "mean": round(sum(p[1] for p in per) / count, 3),
                "max": max(p[2] for p in per),
            }
    with_seg = sum(s["with_seg"] for s in stats)
    import skimage

    return {
        "count": count,
        "shards": [{"name": s["name"], "count": s["count"], "size": s["size"], "sha256": s["sha256"]} for s in stats],
        "members": sample_members(settings["segments"], with_seg=False),
        "with_seg": with_seg,
        "slic": {
            "segments": settings["segments"],
            "compactness": settings["compactness"],
            "start_label": 0,
            "library": f"scikit-image {skimage.__version__} segmentation.slic",
            "superpixels": spx,
        },
        "mean_rgb": [round(float(v) / max(pixels, 1) / 255.0, 6) for v in pixel_sum],
        "class_counts": {name: int(c) for name, c in zip(source.dataset.foreground, class_counts)},
        "source": source.source_entry(),
        **source.entry_extras(),  # COCO: the protocol of the labels and masks
        "shard_size": settings["shard_size"],
        "skipped": [{"id": k, "reason": r} for s in stats for k, r in s["skipped"]],
        "settings": settings,  # what a --resume compares against (cpn_dist.data.shards.pack_check)
    }
