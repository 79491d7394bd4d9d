"""Pack throughput on COCO-sized images (issue 21): images/s per core with SLIC 200 and 300, and the time
to pack COCO train2014 (82,783 images) on 1 and on 64 cores.

    nice -n 10 .venv/bin/python benchmarks/bench_pack.py [--images 40] [--size 640] [--processes 1 2]

Makes a synthetic COCO 2014 folder (``cpn synth-coco --size 640``: 640×480 and 480×640 JPEGs, polygon,
RLE and crowd annotations) in a scratch folder, then measures, every process with one thread
(``OMP_NUM_THREADS=1``: packing is one worker process per core):

- per image, in one process: JPEG decode, the COCO mask (``class_mask``, ReCAM's protocol), and
  ``prepare_sample`` — everything a pack worker does for one image — with SLIC 200, SLIC 300 and both;
- ``cpn pack --coco-root`` end to end (``pack_source``: workers, tar writing, statistics, meta.json) with
  ``--slic-segments 200 300`` and each count alone, for each ``--processes`` count (worker processes).

images/s per core = the end-to-end rate over the worker processes. The train2014 estimate is
82,783 / (rate per core × cores): packing scales linearly while each core has a worker and the disk
keeps up, since workers share nothing but the task queue (the 1 → N process rows here show how close a
loaded machine comes). Prints a table and writes JSON to benchmarks/results/bench_pack.json, with the
machine's load average before and after.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process, before numpy loads a BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN2014 = 82_783
SEGMENT_SETS = ((200,), (300,), (200, 300))


def per_image_rows(coco: Path, images: int, repeat: int) -> list[dict]:
    """Seconds per image of each step a pack worker runs, in this process (best and median of ``repeat``)."""
    import io

    import numpy as np
    from PIL import Image

    from cpn_dist.data.datasets.coco import PROTOCOLS, class_mask
    from cpn_dist.data.shards.pack_sample import SampleTask, prepare_sample
    from cpn_dist.data.shards.pack_source import find_coco_source

    source = find_coco_source(coco, "train2014", PROTOCOLS["recam"])
    kept = source.kept[:images]
    data = [(source.images / im.file_name).read_bytes() for im in kept]

    def decode() -> None:
        for raw in data:
            np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))

    def masks() -> None:
        for im in kept:
            class_mask(im, source.protocol)

    def prepare(segments: tuple[int, ...]) -> None:
        for position, im in enumerate(kept):
            inputs, _ = source.sample_inputs(position, im.key)
            prepare_sample(SampleTask(position, im.key, segments, 10.0, num_classes=81, **inputs))

    steps = [("JPEG decode", decode), ("COCO mask (class_mask)", masks)]
    steps += [(f"prepare_sample, SLIC {'+'.join(map(str, s))}", lambda s=s: prepare(s)) for s in SEGMENT_SETS]
    rows = []
    for name, fn in steps:
        per = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            per.append((time.perf_counter() - start) / len(kept))
        rows.append({"measure": name, "images": len(kept), "best_ms": 1000 * min(per),
                     "median_ms": 1000 * statistics.median(per), "runs": repeat})  # fmt: skip
    return rows


def pack_rows(coco: Path, work: Path, processes: list[int]) -> list[dict]:
    """End-to-end ``cpn pack --coco-root`` of train2014 for each segment set and worker count."""
    from cpn_dist.data.datasets.coco import PROTOCOLS
    from cpn_dist.data.shards.pack import pack_source
    from cpn_dist.data.shards.pack_source import find_coco_source

    source = find_coco_source(coco, "train2014", PROTOCOLS["recam"])
    rows = []
    for segments in SEGMENT_SETS:
        for n in processes:
            out = work / f"shards_{'_'.join(map(str, segments))}_{n}"
            start = time.perf_counter()
            report = pack_source(source, out, segments=segments, shard_size=16, workers=n)
            seconds = time.perf_counter() - start
            rate = report.meta["count"] / seconds
            rows.append({"segments": list(segments), "processes": n, "images": report.meta["count"],
                         "seconds": seconds, "images_per_s": rate, "images_per_s_per_core": rate / n,
                         "train2014_hours_1_core": TRAIN2014 / (rate / n) / 3600,
                         "train2014_minutes_64_cores": TRAIN2014 / (rate / n * 64) / 60})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="synthetic COCO images (default 40; 4/5 in train2014)")
    ap.add_argument("--size", type=int, default=640, help="long side of the images (default 640: 640×480, COCO's)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="pack worker processes (default 1 2)")
    ap.add_argument("--per-image", type=int, default=8, help="images of the per-image timings (default 8)")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions of the per-image timings (default 2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_pack.json"))
    args = ap.parse_args()

    from cpn_dist.data.synth.coco import synthesize_coco

    console = Console(width=None if Console().is_terminal else 160)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        tmp = Path(tmp)
        console.print(f"synthetic COCO: {args.images} images, long side {args.size} …")
        coco = synthesize_coco(tmp / "COCO", args.images, size=args.size, seed=0, workers=max(args.processes))
        per_image = per_image_rows(coco, args.per_image, args.repeat)
        packs = pack_rows(coco, tmp, args.processes)
    load_after = os.getloadavg()

    title = (f"pack on {args.size}×{args.size * 3 // 4} synthetic COCO — {cpu_model()}, {os.cpu_count()} cores, "
             f"1 thread per process; load {load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    t1 = Table(title=f"per image, one process — {title}")
    for col in ("step", "images", "best ms", "median ms"):
        t1.add_column(col, justify="left" if col == "step" else "right")
    for r in per_image:
        t1.add_row(r["measure"], str(r["images"]), f"{r['best_ms']:.0f}", f"{r['median_ms']:.0f}")
    console.print(t1)
    t2 = Table(title="cpn pack --coco-root, end to end (train2014 of the synthetic folder)")
    for col in ("SLIC", "processes", "images", "s", "images/s", "images/s per core", "train2014, 1 core",
                "train2014, 64 cores"):  # fmt: skip
        t2.add_column(col, justify="right")
    for r in packs:
        t2.add_row("+".join(map(str, r["segments"])), str(r["processes"]), str(r["images"]), f"{r['seconds']:.1f}",
                   f"{r['images_per_s']:.2f}", f"{r['images_per_s_per_core']:.2f}",
                   f"{r['train2014_hours_1_core']:.1f} h", f"{r['train2014_minutes_64_cores']:.1f} min")  # fmt: skip
    console.print(t2)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after, "args": vars(args),
        "omp_num_threads": os.environ["OMP_NUM_THREADS"], "per_image": per_image, "pack": packs,
        "train2014_images": TRAIN2014,
    }, indent=2))  # fmt: skip
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
