"""The training loader: batch format, exact coverage over simulated ranks × workers, seeding,
resume, elastic determinism, and remote sources (http, pipe:, brace patterns)."""

import functools
import http.server
import threading

import numpy as np
import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.data.loading.cp_pair import split_image
from cpn_dist.data.loading.loader import batches_done, build_train_loader, epoch_steps, sample_ranges, worker_batches
from cpn_dist.data.loading.train_sample import BATCH_KEYS
from cpn_dist.data.shards.pack import pack_split
from cpn_dist.data.shards.reader import read_shard_samples
from cpn_dist.errors import CpnError

CROP = 48


@pytest.fixture(scope="module")
def shards(synth_voc, tmp_path_factory):
    """32 samples in 5 shards of 7, 7, 7, 7, 4: a shard count that does not divide 2 nodes × 2 workers."""
    out = tmp_path_factory.mktemp("loader") / "shards"
    pack_split(synth_voc, "train_aug", out, segments=(20, 50), shard_size=7, workers=1)
    return out


def config(source, *overrides):
    return load_config(None, [f"data.shards={source}", f"data.crop={CROP}", "data.scale_range=[40, 64]",
                              "data.patch.segments=20", "data.workers=0", *overrides]).data  # fmt: skip


def run(data, **layout):
    layout = {"micro_size": 2, "global_size": 4, "rank": 0, "world_size": 1, "seed": 0, "epoch": 0} | layout
    loader, steps = build_train_loader(data, **layout)
    batches = list(loader)
    accumulation = layout["global_size"] // (layout["micro_size"] * layout["world_size"])
    assert len(batches) == (steps - layout.get("start_step", 0)) * accumulation == len(loader)
    return batches, steps


def keys(batches):
    return [k for b in batches for k in b["key"]]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"] and all(torch.equal(x[k], y[k]) for k in BATCH_KEYS[1:]) for x, y in zip(a, b)
    )


def test_batch_has_the_documented_shapes_and_dtypes(shards):
    batches, steps = run(config(shards), micro_size=4, global_size=4)
    assert steps == 8
    labels = {s["key"]: s["labels"] for s in read_shard_samples(shards)}
    b = batches[0]
    assert list(b) == list(BATCH_KEYS)
    assert isinstance(b["key"], list) and len(b["key"]) == 4
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 3, CROP, CROP)
    assert b["mask"].dtype == torch.float32 and b["mask"].shape == (4, 1, CROP, CROP)
    assert b["valid"].dtype == torch.bool and b["valid"].shape == (4, 1, CROP, CROP)
    assert b["labels"].dtype == torch.float32 and b["labels"].shape == (4, 20)
    assert b["lam"].dtype == torch.float32 and b["lam"].shape == (4,)
    padded = 0
    for b in batches:
        valid = b["valid"].expand_as(b["image"])
        assert torch.all(b["mask"][~b["valid"]] == 0)  # padding is never visible in I_h
        image_h, image_hbar = split_image(b["image"], b["mask"])  # as the training step makes them
        assert torch.equal((image_h + image_hbar)[valid], b["image"][valid])
        assert torch.all(b["image"][~valid] == 0) and torch.all(image_hbar[~valid] == 0)
        lam = b["mask"].sum((1, 2, 3)) / b["valid"].sum((1, 2, 3))  # λ = visible valid-pixel fraction
        assert torch.allclose(b["lam"], lam)
        for key, y in zip(b["key"], b["labels"]):
            assert np.array_equal(y.numpy(), labels[key])
        padded += int((~b["valid"]).any())
    assert padded > 0  # crops with padding were exercised


@pytest.mark.parametrize("global_size", [8, 12])
def test_two_nodes_two_workers_each_sample_at_most_once_with_equal_batch_counts(shards, global_size):
    data = config(shards, "data.workers=2")
    per_rank = [run(data, rank=r, world_size=2, global_size=global_size) for r in range(2)]
    counts = {len(b) for b, _ in per_rank}
    assert len(counts) == 1  # every rank yields the same number of micro-batches
    seen = keys(per_rank[0][0]) + keys(per_rank[1][0])
    steps = per_rank[0][1]
    assert steps == 32 // global_size and len(seen) == steps * global_size
    assert len(set(seen)) == len(seen)  # no sample twice in an epoch
    if 32 % global_size == 0:
        assert sorted(seen) == sorted(s["key"] for s in read_shard_samples(shards))  # every sample once


def test_one_shard_over_two_nodes_and_two_workers(shards):
    data = config(f"{shards}/train_aug-000000.tar", "data.workers=2")  # 7 samples, 4 (rank, worker) slots
    per_rank = [run(data, rank=r, world_size=2, micro_size=1, global_size=2)[0] for r in range(2)]
    assert [len(b) for b in per_rank] == [3, 3]
    seen = keys(per_rank[0]) + keys(per_rank[1])
    assert len(set(seen)) == 6 and set(seen) < {s["key"] for s in read_shard_samples(shards / "train_aug-000000.tar")}


def test_same_seed_same_batches_and_a_new_epoch_reshuffles(shards):
    data = config(shards, "data.workers=2")
    a, _ = run(data)
    b, _ = run(data)
    assert same_batches(a, b)
    c, _ = run(data, epoch=1)
    assert keys(c) != keys(a) and sorted(keys(c)) == sorted(keys(a))
    d, _ = run(data, seed=1)
    assert keys(d) != keys(a)


@pytest.mark.parametrize("workers,start_step,global_size", [(2, 1, 4), (2, 3, 2), (0, 5, 2)])
def test_streaming_resume_continues_exactly(shards, workers, start_step, global_size):
    data = config(shards, f"data.workers={workers}")
    full, steps = run(data, global_size=global_size, micro_size=2)
    rest, _ = run(data, global_size=global_size, micro_size=2, start_step=start_step)
    accumulation = global_size // 2
    assert same_batches(rest, full[start_step * accumulation:])


def global_batches(data, world_size, micro_size, global_size=4, **layout):
    """Reassemble the global batches from every rank's micro-batches."""
    per_rank = [run(data, rank=r, world_size=world_size, micro_size=micro_size, global_size=global_size,
                    **layout)[0] for r in range(world_size)]  # fmt: skip
    accumulation = global_size // (micro_size * world_size)
    out = []
    for step in range(len(per_rank[0]) // accumulation):
        parts = [per_rank[r][step * accumulation + a] for a in range(accumulation) for r in range(world_size)]
        out.append({"key": [k for p in parts for k in p["key"]],
                    **{k: torch.cat([p[k] for p in parts]) for k in BATCH_KEYS[1:]}})  # fmt: skip
    return out


def test_deterministic_mode_global_batches_do_not_depend_on_the_layout(shards):
    layouts = [(1, 4, 0), (2, 2, 1), (2, 1, 2), (1, 1, 0)]
    runs = [global_batches(config(shards, "data.deterministic=true", f"data.workers={w}"), world, micro)
            for world, micro, w in layouts]  # fmt: skip
    assert len(runs[0]) == 8
    for other in runs[1:]:
        assert same_batches(runs[0], other)
    resumed = global_batches(config(shards, "data.deterministic=true"), 2, 1, start_step=3)
    assert same_batches(resumed, runs[0][3:])
    # a sample's augmentation and CP mask depend only on (seed, epoch, key): streaming agrees
    streamed = run(config(shards), micro_size=1, global_size=1)[0]
    by_key = {b["key"][0]: b for b in streamed}
    first = runs[0][0]
    for i, key in enumerate(first["key"]):
        assert torch.equal(first["image"][i], by_key[key]["image"][0])
        assert torch.equal(first["mask"][i], by_key[key]["mask"][0])


@pytest.fixture
def http_shards(shards, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(shards)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_and_pattern_sources_stream_the_same_batches(shards, http_shards):
    reference, _ = run(config(shards, "data.workers=2"))
    brace = "train_aug-{000000..000004}.tar"
    sources = [
        (f"{shards}/{brace}", ()),
        (f"{shards}/train_aug-*.tar", ()),
        (f"{http_shards}/{brace}", ()),
        (f"pipe:cat {shards}/{brace}", (f"data.meta={shards}/meta.json",)),
    ]
    for source, extra in sources:
        got, _ = run(config(source, "data.workers=2", *extra))
        assert same_batches(got, reference), source


def test_user_errors_name_the_key_or_file(shards, http_shards):
    with pytest.raises(CpnError, match=r"data.patch.segments: 300 is not packed .* \(packed: 20, 50\)"):
        run(config(shards, "data.patch.segments=300"))
    with pytest.raises(CpnError, match="batch.global_size: 6 is not a multiple"):
        run(config(shards), micro_size=2, world_size=2, global_size=6)
    with pytest.raises(CpnError, match="needs local tar shards"):
        run(config(f"{http_shards}/train_aug-000000.tar", "data.deterministic=true"))
    with pytest.raises(CpnError, match="a pipe: source needs data.meta"):
        run(config(f"pipe:cat {shards}/train_aug-000000.tar"))
    with pytest.raises(CpnError, match="fewer than one global batch"):
        run(config(f"{shards}/train_aug-000004.tar"), global_size=8, micro_size=8)
    with pytest.raises(CpnError, match="split 'val' not packed here"):
        run(config(shards, "data.split=val"))
    with pytest.raises(CpnError, match="no_such_dir/x.tar: shard not found"):
        run(config(f"{shards}/no_such_dir/x.tar"))
    # grid patches need no SLIC map at all
    batches, _ = run(config(shards, "data.patch.kind=grid", "data.patch.grid_sizes=[8, 16]", "data.patch.segments=7"))
    assert len(batches) == 16


def test_epoch_split_arithmetic():
    assert worker_batches(7, 3) == [3, 2, 2] and worker_batches(2, 4) == [1, 1, 0, 0]
    # round robin: batch i comes from worker i % W
    for done in range(9):
        assert sum(batches_done(done, w, 3) for w in range(3)) == done
        assert batches_done(done, 1, 3) == len([i for i in range(done) if i % 3 == 1])
    assert sample_ranges([7, 7, 7, 7, 4], 5, 10) == [(0, 5, 2), (1, 0, 7), (2, 0, 1)]
    assert sample_ranges([3, 0, 3], 2, 2) == [(0, 2, 1), (2, 0, 1)]
    with pytest.raises(ValueError):
        sample_ranges([3, 3], 4, 5)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("world_size, micro_size, global_size", [
    (1, 2, 4), (1, 4, 32), (2, 2, 8), (2, 3, 12), (3, 2, 6), (4, 1, 8), (2, 1, 10),
])  # fmt: skip
def test_epoch_steps_is_the_loaders_count_without_building_it(shards, deterministic, world_size, micro_size,
                                                              global_size):  # fmt: skip
    """What the engine computes from meta.json equals what every rank's loader yields (32 samples; the
    remainder of the global batch dropped), for several world sizes, micro-batches and accumulations."""
    data = config(shards, "data.patch.kind=grid", "data.patch.grid_sizes=[8, 16]")
    steps = epoch_steps(data, global_size)
    assert steps == 32 // global_size
    accumulation = global_size // (micro_size * world_size)
    for rank in range(world_size):
        batches, loader_steps = run(data, rank=rank, world_size=world_size, micro_size=micro_size,
                                    global_size=global_size, deterministic=deterministic)  # fmt: skip
        assert loader_steps == steps and len(batches) == steps * accumulation
    with pytest.raises(CpnError, match="fewer than one global batch"):
        epoch_steps(data, 64)
