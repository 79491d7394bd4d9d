"""Stage 3 costs on this machine: segmentation training step, multi-scale inference (batched as
`cpn segment` does it vs one input at a time) and the dense CRF, for the tiny model of the demo and,
with --resnet, one ResNet38d forward.

    .venv/bin/python benchmarks/bench_segment.py [--repeats 5] [--threads 1] [--resnet]

Prints a table and writes benchmarks/results/bench_segment.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table

from cpn_dist.config import SegmentationCrfConfig
from cpn_dist.data.inputs import Sample
from cpn_dist.labels.crf import dense_crf
from cpn_dist.segmentation.infer import Outputs, SegmentSettings, segment_samples
from cpn_dist.segmentation.model import build_segmentation_model

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
DEEPLAB_CRF = SegmentationCrfConfig()  # 10 iterations, Gaussian 1 / 3, bilateral 67 / 3 / 4


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def images(n: int, size: tuple[int, int], seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(f"img{i}", Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)), None, None)
            for i in range(n)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--resnet", action="store_true", help="also time one ResNet38d forward (slow on a CPU)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_segment.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: dict[str, dict] = {}

    model = build_segmentation_model("tiny", "aspp", rates=(1, 2, 3), head_dropout=0.0, backbone_dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 96, 96), torch.randint(0, 21, (8, 96, 96))

    def step():
        opt.zero_grad()
        F.cross_entropy(model.train()(x), y, ignore_index=255).backward()
        opt.step()

    step()
    rows["tiny train step, crop 96, batch 8 (fwd+bwd+SGD)"] = timed(step, args.repeats)

    out = RESULTS / "bench_segment_out"
    for size, n in (((96, 80), 16), ((500, 375), 2)):
        samples = images(n, size)
        for batch, label in ((8, "batched"), (1, "one input at a time")):
            settings = SegmentSettings(scales=SCALES, flip=True, batch_size=batch)
            r = timed(lambda s=settings, b=batch, ss=samples: segment_samples(
                model, ss, Outputs(out), s, images_per_step=4 if b > 1 else 1, loader_threads=0), args.repeats)
            r["images"] = n
            r["images_per_s"] = n / r["best_s"]
            rows[f"tiny inference {size[0]}×{size[1]}, 5 scales × flip, {label}"] = r

    for size in ((96, 80), (500, 375)):
        rng = np.random.default_rng(1)
        image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        probs = rng.random((21, size[1], size[0])).astype(np.float32)
        probs /= probs.sum(0, keepdims=True)
        rows[f"dense CRF {size[0]}×{size[1]}, 21 classes, DeepLab settings"] = timed(
            lambda i=image, q=probs: dense_crf(i, q, DEEPLAB_CRF), args.repeats)  # fmt: skip

    if args.resnet:
        big = build_segmentation_model("resnet38d", "largefov", head_dropout=0.0, backbone_dropout=0.0).eval()
        xb = torch.randn(1, 3, 448, 448)
        with torch.inference_mode():
            rows["ResNet38d DeepLab-LargeFOV forward, 448×448, batch 1"] = timed(lambda: big.score(xb), 1)

    table = Table("measure", "best", "median", "repeats", title=f"stage 3 costs ({args.threads} torch thread(s))")
    for name, r in rows.items():
        extra = f" ({r['images_per_s']:.1f} images/s)" if "images_per_s" in r else ""
        table.add_row(name, f"{r['best_s'] * 1000:.1f} ms{extra}", f"{r['median_s'] * 1000:.1f} ms", str(r["repeats"]))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
