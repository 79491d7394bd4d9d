"""Multi-scale inference speed: images/s of `cpn infer`'s pipeline (4 scales × 2 flips, released
normalisation, one CAM file written per image).

Data: N synthetic VOC images (`cpn synth-voc`, long side --size, default 500 like VOC), made once
under benchmarks/results/infer_data/. The model is randomly initialised (speed does not depend on the
weights). Compared on the same images and model:
- batched: equal-sized inputs (the two flips of a scale, and equal-sized images) in one forward;
- one input per forward: the released infer_cam.py's way (batch size 1), same arithmetic otherwise.

    .venv/bin/python benchmarks/bench_infer.py --backbone tiny --images 24 --repeat 3
    .venv/bin/python benchmarks/bench_infer.py --backbone resnet38d --images 2 --repeat 1   # slow on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/machine.py
from rich.console import Console
from rich.table import Table

from cpn_dist.cpn.infer import InferSettings, infer_samples
from cpn_dist.cpn.model import build_model
from cpn_dist.data.datasets.voc import read_split
from cpn_dist.data.inputs import VocSource
from cpn_dist.data.synth.voc import synthesize_voc

RESULTS = Path(__file__).resolve().parent / "results"




def prepare(root: Path, n: int, size: int) -> list[str]:
    stamp = root / "stamp.json"
    want = {"images": n, "size": size, "seed": 0}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
        synthesize_voc(root / "VOC2012", n, size=size, seed=0, workers=os.cpu_count() or 1, overwrite=True)
        stamp.write_text(json.dumps(want))
    split = root / "VOC2012" / "ImageSets" / "Segmentation"
    return sorted(read_split(split / "train_aug.txt") + read_split(split / "val.txt"))


def timed(model, source, settings: InferSettings, images_per_step: int, device) -> float:
    with tempfile.TemporaryDirectory() as out:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        infer_samples(model, source.samples(), out, settings, device=device, images_per_step=images_per_step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tiny", choices=("tiny", "resnet38d"))
    ap.add_argument("--head", default="official", choices=("official", "paper", "none"))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=500, help="long side of the synthetic images")
    ap.add_argument("--scales", default="0.5,1.0,1.5,2.0")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--images-per-step", type=int, default=4)
    ap.add_argument("--skip-unbatched", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    console = Console()

    root = RESULTS / f"infer_data_{args.size}"
    names = prepare(root, args.images, args.size)[: args.images]
    source = VocSource(root / "VOC2012", names)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.backbone, args.head, dropout=0.0).to(device).eval()
    scales = tuple(float(s) for s in args.scales.split(","))
    runs = {"batched": InferSettings(scales=scales, batch_size=args.batch_size)}
    if not args.skip_unbatched:
        runs["one input per forward"] = InferSettings(scales=scales, batch_size=1)
    timed(model, VocSource(root / "VOC2012", names[:1]), runs["batched"], 1, device)  # warm-up

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for label, settings in runs.items():
            step = args.images_per_step if settings.batch_size > 1 else 1
            times[label].append(timed(model, source, settings, step, device))

    title = (f"multi-scale inference, {args.backbone} backbone, {len(names)} images (long side {args.size}), "
             f"scales {args.scales} × 2 flips, {device.type} ({torch.get_num_threads()} threads)")  # fmt: skip
    table = Table("pipeline", "runs", "best s", "median s", "images/s (best)", "s/image (best)", title=title)
    for label, ts in times.items():
        best = min(ts)
        table.add_row(label, str(len(ts)), f"{best:.2f}", f"{statistics.median(ts):.2f}",
                      f"{len(names) / best:.2f}", f"{best / len(names):.3f}")  # fmt: skip
    console.print(table)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "backbone": args.backbone, "head": args.head, "images": len(names), "size": args.size,
        "scales": scales, "batch_size": args.batch_size, "times_s": times,
        "images_per_s": {k: len(names) / min(v) for k, v in times.items()},
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_infer_{args.backbone}_{device.type}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
