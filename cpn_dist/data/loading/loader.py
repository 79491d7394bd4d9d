"""The training data loader: shards → augmented CP pairs → micro-batches, on every rank.

Two modes (``data.deterministic``):

**streaming** (default) — a webdataset pipeline in the shape of open_clip's ``data.py``::

    epoch_shard_ranges   detshuffle the shards by epoch (same order on every rank), then split the
                         epoch's sample sequence by node and by worker into contiguous ranges
    read_shard_ranges    stream those ranges out of the tars (local, glob/brace, pipe:, http(s)://)
    seeded_shuffle       shuffle buffer seeded by (seed, epoch, rank, worker)
    skip_resumed         drop the samples of micro-batches already done (start_step > 0)
    map(decode)          JPEG, labels, SLIC map
    map(augment)         joint augmentation of image and SLIC map, seeded per sample
    map(cp_pair)         CP mask m and λ, seeded per sample
    batched              micro-batches inside the pipeline
    WebLoader(batch_size=None)

  The split uses explicit epoch lengths from ``meta.json``: every rank takes ``steps × accumulation
  × micro_size`` consecutive samples of the epoch's sequence and every worker a whole number of
  micro-batches of them, so all ranks yield the same number of batches whatever the shard count,
  and each sample is used at most once per epoch (exactly once when the global batch divides the
  sample count).

**deterministic** ("elastic determinism") — the epoch is a permutation of all samples seeded by
(seed, epoch); global batch b is ``perm[b·G : (b+1)·G]`` and rank r's accumulation step a takes
the ``micro_size`` samples at ``(a·world_size + r)·micro_size`` of it. Samples are read by offset
from local tars, so the global batches do not depend on world size, micro-batch, accumulation or
worker count, and resuming at ``start_step`` is exact.

In both modes a sample's augmentation and CP mask depend only on (seed, epoch, key).
"""

from __future__ import annotations

import contextlib
import logging
import random
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from cpn_dist.data.loading.seeding import order_rng
from cpn_dist.data.loading.train_sample import TrainSampleMaker
from cpn_dist.data.shards.reader import ShardSet, is_remote, resolve_shards, unreadable_shard
from cpn_dist.data.shards.tar_index import TarIndex
from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)


def split_shards(data) -> ShardSet:
    """The shards of ``data.split`` (:func:`~cpn_dist.data.shards.reader.resolve_shards` of ``data.shards``). A
    ``data.shards`` folder that does not exist (not packed yet; a packaged config's relative ``demo/shards``
    read from another folder) is one line saying what makes it."""
    spec = data.shards
    pattern = is_remote(spec) or any(c in spec for c in "*?[{") or spec.endswith(".tar")
    if not pattern and not Path(spec).exists():
        where = "" if Path(spec).is_absolute() else f" (in {Path.cwd()})"
        demo = ", or `cpn demo` (it packs demo/shards)" if Path(spec) == Path("demo", "shards") else ""
        raise CpnError(f"data.shards {spec}: shards folder not found{where}; pack the split first: `cpn pack "
                       f"--voc-root VOC --split {data.split} --out {spec}`{demo}; or set data.shards=DIR to packed "
                       "shards")  # fmt: skip
    return resolve_shards(spec, data.split, data.meta)


def build_train_loader(
    data,
    *,
    micro_size: int,
    global_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    deterministic: bool | None = None,
    maker=None,
):
    """-> (iterable of micro-batch dicts, steps_per_epoch)

    ``steps_per_epoch`` = optimizer steps in one epoch (global batches, the remainder of the samples
    dropped); the iterable yields exactly ``(steps_per_epoch - start_step) * accumulation``
    micro-batches on EVERY rank, where ``accumulation = global_size // (micro_size * world_size)``
    (docs/design.md, "The distributed invariant").
    ``start_step`` resumes mid-epoch. ``deterministic=None`` takes ``data.deterministic``.
    Batches are dicts as in docs/interfaces.md ("Training batch"). ``maker`` replaces the CPN sample
    maker (decode → augment → CP pair) with another per-sample callable that has ``members`` and
    ``collate`` (e.g. :class:`~cpn_dist.data.loading.labelled.LabelledSampleMaker` for image + label map).
    """
    deterministic = data.deterministic if deterministic is None else deterministic
    if micro_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad layout: micro_size={micro_size}, rank={rank}, world_size={world_size}")
    if global_size % (micro_size * world_size):
        raise CpnError(f"batch.global_size: {global_size} is not a multiple of batch.micro_size × world size "
                       f"= {micro_size} × {world_size}")  # fmt: skip
    accumulation = global_size // (micro_size * world_size)
    shards = split_shards(data)
    if maker is None and data.patch.kind == "superpixel" and data.patch.segments not in shards.segments:
        raise CpnError(f"data.patch.segments: {data.patch.segments} is not packed in {data.shards} "
                       f"(packed: {', '.join(map(str, shards.segments)) or 'none'})")  # fmt: skip
    steps = epoch_steps(data, global_size, shards)
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside 0..{steps}")
    maker = maker or TrainSampleMaker.from_config(data, seed, epoch, shards.dataset)
    rank_batches = steps * accumulation
    done_batches = start_step * accumulation
    common = dict(num_workers=data.workers, pin_memory=torch.cuda.is_available(), worker_init_fn=_worker_init)
    if deterministic:
        if not shards.local:
            remote = next(u for u in shards.urls if "://" in u or u.startswith("pipe:"))
            raise CpnError(f"{remote}: data.deterministic needs local tar shards (random access by offset)")
        index = TarIndex.cached(shards.urls, maker.members)
        if len(index) != shards.total:
            raise CpnError(f"{data.shards}: the shards hold {len(index)} samples, meta.json says {shards.total}")
        positions = global_batch_positions(len(index), seed, epoch, global_size, micro_size, rank, world_size,
                                           start_step, steps)  # fmt: skip
        dataset = MicroBatches(index, maker, positions)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, **common)
        return loader, steps

    import webdataset as wds

    pipeline = wds.DataPipeline(
        EpochShardRanges(shards, seed, epoch, rank, micro_size, rank_batches, done_batches),
        read_shard_ranges(maker.members),
        SeededShuffle(data.shuffle_buffer, seed, epoch, rank, done_batches),
        SkipResumed(micro_size, done_batches),
        wds.map(maker.decode),
        wds.map(maker.augment_sample),
        wds.map(maker.cp_pair),
        wds.batched(micro_size, collation_fn=maker.collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, **common)
    return loader.with_length(rank_batches - done_batches, silent=True), steps


def epoch_steps(data, global_size: int, shards: ShardSet | None = None) -> int:
    """Optimizer steps in one epoch of ``data``'s split — the ``steps_per_epoch`` of
    :func:`build_train_loader`, known without building a loader: the split's sample count (``meta.json``)
    over ``global_size``, the remainder dropped. In both modes every rank yields exactly
    ``steps × accumulation`` micro-batches of it, whatever the world size, micro-batch and workers.
    ``shards``: the split, when already resolved."""
    shards = shards if shards is not None else split_shards(data)
    steps = shards.total // global_size
    if steps == 0:
        raise CpnError(f"{data.shards}: {shards.total} samples, fewer than one global batch ({global_size})")
    return steps


def _worker_init(_: int) -> None:
    """Loader workers ignore Ctrl-C: the terminal sends it to the whole process group, and the main
    process finishes its step and checkpoints (cpn_dist.training.stop_signals) before the workers are shut down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------
# Streaming: the split of an epoch over ranks and workers


def worker_batches(rank_batches: int, workers: int) -> list[int]:
    """Micro-batches per (logical) worker: as even as possible, the first ones taking the remainder,
    which is the order a DataLoader's round robin hands them out."""
    return [rank_batches // workers + (w < rank_batches % workers) for w in range(workers)]


def batches_done(done: int, worker: int, workers: int) -> int:
    """How many of the first ``done`` rank micro-batches came from ``worker`` (round robin)."""
    return max(0, -(-(done - worker) // workers))


def sample_ranges(counts: list[int], start: int, length: int) -> list[tuple[int, int, int]]:
    """The pieces ``(shard, skip, take)`` that make up samples ``[start, start + length)`` of the
    concatenation of shards with ``counts`` samples each."""
    pieces = []
    offset = 0
    end = start + length
    for shard, n in enumerate(counts):
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            pieces.append((shard, lo - offset, hi - lo))
        offset += n
        if offset >= end:
            break
    if sum(p[2] for p in pieces) != length:
        raise ValueError(f"samples [{start}, {end}) exceed the {offset} samples of the shards")
    return pieces


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _logical_worker(done_batches: int) -> tuple[int, int]:
    # On resume the DataLoader still starts its round robin at worker 0, so worker 0 plays the
    # worker whose batch comes next.
    worker, workers = _worker()
    return (worker + done_batches) % workers, workers


class EpochShardRanges(IterableDataset):
    """detshuffle by epoch → split_by_node → split_by_worker, as sample ranges of whole micro-batches:
    yields ``dict(url, skip, take)`` pieces of this worker's part of the epoch."""

    def __init__(self, shards: ShardSet, seed: int, epoch: int, rank: int, micro_size: int,
                 rank_batches: int, done_batches: int):  # fmt: skip
        self.urls, self.counts = shards.urls, shards.counts
        self.seed, self.epoch, self.rank, self.micro = seed, epoch, rank, micro_size
        self.rank_batches, self.done_batches = rank_batches, done_batches

    def __iter__(self):
        order = order_rng(self.seed, self.epoch).permutation(len(self.urls))  # same on every rank
        counts = [self.counts[i] for i in order]
        worker, workers = _logical_worker(self.done_batches)
        per_worker = worker_batches(self.rank_batches, workers)
        start = (self.rank * self.rank_batches + sum(per_worker[:worker])) * self.micro
        for shard, skip, take in sample_ranges(counts, start, per_worker[worker] * self.micro):
            yield {"url": self.urls[order[shard]], "skip": skip, "take": take}


def read_shard_ranges(members: tuple[str, ...]):
    """Pipeline stage: the raw samples of each ``dict(url, skip, take)`` piece, only ``members`` kept."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    suffixes = set(members)

    def select(fname: str) -> bool:
        return fname.split(".", 1)[-1].lower() in suffixes

    def stage(pieces):
        for piece in pieces:
            url, skip, take = piece["url"], piece["skip"], piece["take"]
            streams = list(url_opener([{"url": url}]))
            got = 0
            try:
                files = tar_file_expander(iter(streams), select_files=select)
                for raw in islice(group_by_keys(files), skip, skip + take):
                    got += 1
                    yield raw
            except CpnError:
                raise
            except Exception as exc:
                raise unreadable_shard(url, exc) from None
            finally:
                for s in streams:
                    with contextlib.suppress(Exception):  # a pipe closed early exits with SIGPIPE: expected
                        s["stream"].close()
            if got != take:
                raise unreadable_shard(url, f"{skip + got} samples, meta.json promised at least {skip + take}")

    return stage


class SeededShuffle:
    """Pipeline stage: a shuffle buffer seeded by (seed, epoch, rank, logical worker)."""

    def __init__(self, bufsize: int, seed: int, epoch: int, rank: int, done_batches: int):
        self.bufsize, self.seed, self.epoch, self.rank, self.done = bufsize, seed, epoch, rank, done_batches

    def __call__(self, src):
        # webdataset's private _shuffle (third-party): the plain generator behind its public `shuffle` stage
        # (shuffle = pipelinefilter(_shuffle)); this class is itself a stage, so it calls the generator
        # directly, with the random.Random seeded below
        from webdataset.filters import _shuffle

        if self.bufsize <= 1:
            return src
        worker, _ = _logical_worker(self.done)
        seed = int(order_rng(self.seed, self.epoch, self.rank, worker).integers(2**62))
        return _shuffle(src, self.bufsize, self.bufsize, random.Random(seed))


class SkipResumed:
    """Pipeline stage: drop (before decoding) this worker's samples of micro-batches already trained on."""

    def __init__(self, micro_size: int, done_batches: int):
        self.micro, self.done = micro_size, done_batches

    def __call__(self, src):
        worker, workers = _logical_worker(self.done)
        return islice(src, batches_done(self.done, worker, workers) * self.micro, None)


# --------------------------------------------------------------------------------------------
# Deterministic mode


def global_batch_positions(n_samples: int, seed: int, epoch: int, global_size: int, micro_size: int,
                           rank: int, world_size: int, start_step: int, steps: int) -> np.ndarray:  # fmt: skip
    """Sample indices of this rank's micro-batches, ``[(steps - start_step)·accumulation, micro_size]``:
    within global batch b (``global_size`` samples of the epoch permutation), accumulation step a
    takes the ``micro_size`` samples at ``(a·world_size + rank)·micro_size``."""
    perm = order_rng(seed, epoch).permutation(n_samples)
    accumulation = global_size // (micro_size * world_size)
    b = np.arange(start_step, steps)[:, None, None]
    a = np.arange(accumulation)[None, :, None]
    j = np.arange(micro_size)[None, None, :]
    pos = b * global_size + (a * world_size + rank) * micro_size + j
    return perm[pos.reshape(-1, micro_size)]


class MicroBatches(Dataset):
    """Micro-batch ``i`` of this rank = the collated samples at ``positions[i]`` (map-style, so the
    order does not depend on the number of workers)."""

    def __init__(self, index: TarIndex, maker: TrainSampleMaker, positions: np.ndarray):
        self.index, self.maker, self.positions = index, maker, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.maker.collate([self.maker(self.index.raw(int(j))) for j in self.positions[i]])
