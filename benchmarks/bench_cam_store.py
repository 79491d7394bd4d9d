"""The compact CAM store at COCO scale: bytes per image and mIoU at the best β against the released
full-resolution float32 files; `cpn eval`'s speed over COCO's 81 classes; the peak memory (RSS) of CAM
inference on one 640-pixel image at 4 scales × flip on the CPU.

Data: synthetic COCO 2014 at size 640 (:func:`cpn_dist.data.synth.coco.synthesize_coco`: long side 640,
as COCO's images), its train2014 split; ground truth and image labels by ReCAM's protocol
(:mod:`cpn_dist.data.datasets.coco`, the default of `cpn pack --coco-root`).

CAMs: no COCO-trained CPN exists here (no GPU was lent to this task), so the CAMs come from a stand-in
for a network that is right about where the objects are: for each of the 4 scales × 2 flips, each
labelled class's mask is area-averaged on that input's stride-8 grid (round(W·s) × round(H·s) / 8: what
a network of output stride 8 can resolve), multiplied by a smooth random gain (discriminative parts),
plus smooth noise and a false-positive blob on the same grid; upsampled bilinearly to the image,
summed over the 8 inputs and normalised exactly as the released infer_cam.py does
(`cams.normalise_released`). Their finest detail is that of real multi-scale CAMs — 4 pixels at scale
2.0 — which is what the compact store's block means can lose, and their values span the released
range (−0.5 … 0.5). The absolute mIoU says nothing about CPN; the difference between the stores does.

Measured:
- bytes per CAM file: the released format (`NAME.npy`, float32 maps at full size) and the compact store
  (`NAME.npz`) at stride 1/2/4/8 × uint8/float16 — and, for comparison, at stride 2 and 4 with plain
  block means in place of the least-squares grid (`cam_store.fit_grid`); the train2014 total estimated as
  82,783 images ×
  3.5 labelled classes per image (the COCO paper's mean categories per image) × bytes per class map;
- mIoU at the best β of the sweep 0.01:0.50:0.01 (`cpn eval`'s default off VOC), over the 81 classes
  (mean over those present), for every store, and its difference to float32 in points;
- `cpn eval` (the one-pass sweep) over 81 classes: images/s with 1 and 2 processes, released and compact;
- peak RSS of `cpn infer`'s inference (`cpn_dist.cpn.infer.infer_samples`, an 81-class model, random
  weights, head official) on one image at scales 0.5, 1.0, 1.5, 2.0 × flip, batch size 8 (both flips
  of a scale in one forward; `--infer-batch 1`: one input per forward), each backbone in a fresh process.

    nice -n 10 .venv/bin/python benchmarks/bench_cam_store.py --images 125
    nice -n 10 .venv/bin/python benchmarks/bench_cam_store.py --images 125 --infer tiny   # skip ResNet38d
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_model  # benchmarks/machine.py
from PIL import Image
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from cpn_dist.data.datasets.coco import PROTOCOLS, class_mask, read_coco_split
from cpn_dist.data.datasets.info import coco
from cpn_dist.data.datasets.voc import save_label_png
from cpn_dist.labels import cam_store
from cpn_dist.labels.betas import WIDE_BETAS, parse_betas
from cpn_dist.labels.cam_store import DTYPES, save_compact
from cpn_dist.labels.cams import load_cams, normalise_released, save_cams
from cpn_dist.labels.evaluate import sweep

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = (0.5, 1.0, 1.5, 2.0)
STRIDES = (1, 2, 4, 8)
TRAIN2014 = 82_783  # images of COCO train2014
CLASSES_PER_IMAGE = 3.5  # COCO's mean categories per image (Lin et al., ECCV 2014, Sec. 5)


# --------------------------------------------------------------------------------------------
# data: synthetic COCO, its ground truth, and stand-in CAMs


def _grid_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-ish noise on a grid, smooth over ``sigma`` cells."""
    return ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma) * (2.0 * sigma)


def stand_in_cams(masks: dict[int, np.ndarray], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Released-format CAMs {class key: H×W float32} of an image's labelled classes (module docstring)."""
    keys = sorted(masks)
    h, w = next(iter(masks.values())).shape
    total = torch.zeros(len(keys), h, w)
    stack = np.stack([masks[k] for k in keys]).astype(np.float32)
    for s in SCALES:
        sw, sh = round(w * s), round(h * s)
        grid = (-(-sh // 8), -(-sw // 8))
        # the mask's share of every stride-8 cell of the scaled input
        area = F.adaptive_avg_pool2d(F.interpolate(torch.from_numpy(stack)[None], (sh, sw), mode="nearest"), grid)[0]
        for _flip in range(2):
            maps = []
            for k in range(len(keys)):
                gain = np.clip(rng.uniform(0.8, 1.4) + 0.4 * _grid_noise(rng, grid, 2.0), 0.1, None)
                response = np.tanh(2.5 * area[k].numpy() * gain) + 0.35 * _grid_noise(rng, grid, 1.5)
                if rng.random() < 0.5:  # a false positive somewhere
                    yy, xx = np.ogrid[0:grid[0], 0:grid[1]]
                    by, bx = rng.integers(0, grid[0]), rng.integers(0, grid[1])
                    response += 0.8 * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * (grid[0] / 10) ** 2))
                maps.append(response)
            up = F.interpolate(torch.from_numpy(np.stack(maps)).float()[None], (h, w), mode="bilinear",
                               align_corners=False)[0]  # fmt: skip
            total += up
    norm = normalise_released(total.numpy())
    return {k: norm[i] for i, k in enumerate(keys)}


def prepare(root: Path, images: int, size: int, seed: int) -> list[str]:
    """Synthetic COCO at ``size``, its train2014 ground truth PNGs (ReCAM's protocol) and released CAM files
    under ``root``; returns the image keys (made once per settings)."""
    from cpn_dist.data.synth.coco import synthesize_coco

    stamp = root / "stamp.json"
    want = {"images": images, "size": size, "seed": seed, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return (root / "list.txt").read_text().split()
    synthesize_coco(root / "coco", images, size=size, seed=seed, workers=2, overwrite=True)
    split = read_coco_split(root / "coco", "train2014")
    protocol = PROTOCOLS["recam"]
    for sub in ("gt", "cams/released"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "cams" / "released" / "dataset.json").write_text(json.dumps(coco().to_json()))
    rng = np.random.default_rng(seed)
    names = []
    for image in split.kept(protocol):
        gt = class_mask(image, protocol)
        labels = image.labels(protocol, 80)
        masks = {c: (gt == c + 1) for c in range(80) if labels[c]}
        save_label_png(gt, root / "gt" / f"{image.key}.png")
        save_cams(root / "cams" / "released" / f"{image.key}.npy", stand_in_cams(masks, rng) if masks else {})
        names.append(image.key)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    stamp.write_text(json.dumps(want))
    return names


# --------------------------------------------------------------------------------------------
# stores


@contextlib.contextmanager
def block_means():
    """The compact store as it was first written: plain block means instead of the least-squares grid."""
    fitted = cam_store.fit_grid
    cam_store.fit_grid = cam_store.block_mean
    try:
        yield
    finally:
        cam_store.fit_grid = fitted


def write_compact(root: Path, names: list[str], stride: int, dtype: str, means: bool = False) -> Path:
    out = root / "cams" / f"compact_s{stride}_{dtype}{'_means' if means else ''}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(coco().to_json()))
    with block_means() if means else contextlib.nullcontext():
        for name in names:
            cams = load_cams(root / "cams" / "released" / f"{name}.npy", 80)
            save_compact(out / f"{name}.npz", cams, stride, dtype)
    return out


def store_sizes(folder: Path, names: list[str], suffix: str, classes: list[int]) -> dict:
    """Bytes per file (mean), per class map (over files with classes) and the train2014 estimate (GB)."""
    sizes = np.array([os.path.getsize(folder / f"{n}{suffix}") for n in names], np.float64)
    empty = float(np.mean([s for s, k in zip(sizes, classes) if k == 0])) if 0 in classes else 0.0
    labelled = [(s - empty, k) for s, k in zip(sizes, classes) if k > 0]
    per_map = sum(s for s, _ in labelled) / sum(k for _, k in labelled)
    return {"bytes_per_image": float(sizes.mean()), "bytes_per_class_map": per_map, "bytes_empty_file": empty,
            "train2014_gb": TRAIN2014 * (CLASSES_PER_IMAGE * per_map + empty) / 1e9}  # fmt: skip


def best_score(folder: Path, gt: Path, names: list[str], betas: list[float], workers: int) -> dict:
    t0 = time.perf_counter()
    result = sweep(folder, gt, names, betas, workers=workers, dataset=coco(), mean="present")
    seconds = time.perf_counter() - t0
    best = result.summary()
    return {"beta": best["beta"], "miou": best["miou"], "averaged": len(best["averaged"]), "seconds": seconds}


# --------------------------------------------------------------------------------------------
# inference memory, in a fresh process per backbone


def infer_child(backbone: str, image_path: str, batch_size: str = "8") -> None:
    """Run `cpn infer`'s inference of one image with an 81-class model; print its peak RSS and time as JSON."""
    import tempfile

    from cpn_dist.cpn.infer import InferSettings, infer_samples
    from cpn_dist.cpn.model import build_model
    from cpn_dist.data.inputs import Sample, read_image

    torch.manual_seed(0)
    model = build_model(backbone, "official", dropout=0.0, num_classes=81)
    image = read_image(image_path)
    labels = np.zeros(80, np.float32)
    labels[[0, 15, 56]] = 1  # person, cat, chair: three classes, COCO's typical count
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        infer_samples(model, [Sample("img", image, labels, None)], out,
                      InferSettings(scales=SCALES, batch_size=int(batch_size)), loader_threads=0)  # fmt: skip
        seconds = time.perf_counter() - t0
    print(json.dumps({"backbone": backbone, "batch_size": int(batch_size), "size": list(image.size), "seconds": seconds,
                      "threads":
                      torch.get_num_threads(), "rss_after_model_kib": rss_model,
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))  # fmt: skip


def infer_memory(backbone: str, image_path: Path, batch_size: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--infer-child", backbone, str(image_path), str(batch_size)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pick_image(root: Path, names: list[str]) -> Path:
    """The first train2014 image of 640×480 (else the largest): COCO's most common size."""
    folder = root / "coco" / "train2014"
    sizes = {n: Image.open(folder / f"{n}.jpg").size for n in names}
    exact = [n for n, s in sizes.items() if s == (640, 480)]
    name = exact[0] if exact else max(sizes, key=lambda n: sizes[n][0] * sizes[n][1])
    return folder / f"{name}.jpg"


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=125, help="synthetic COCO images (4 in 5 are train2014)")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes of the timed sweeps")
    ap.add_argument("--repeat", type=int, default=3, help="timed sweeps per store")
    ap.add_argument("--infer", default="tiny,resnet38d", help="backbones whose inference memory is measured ('' none)")
    ap.add_argument("--data", type=Path, default=RESULTS / "cam_store_data")
    ap.add_argument("--infer-batch", type=int, default=8, help="most equal-sized inputs per forward (cpn infer's "
                    "--batch-size; 8: both flips of a scale together)")  # fmt: skip
    ap.add_argument("--infer-child", nargs=3, metavar=("BACKBONE", "IMAGE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.infer_child:
        infer_child(*args.infer_child)
        return 0
    console = Console()
    t0 = time.perf_counter()
    names = prepare(args.data, args.images, args.size, args.seed)
    gt = args.data / "gt"
    classes = [len(load_cams(args.data / "cams" / "released" / f"{n}.npy", 80)) for n in names]
    shapes = [Image.open(gt / f"{n}.png").size for n in names]
    console.print(f"data ready in {time.perf_counter() - t0:.0f} s: {len(names)} train2014 images, mean size "
                  f"{np.mean([s[0] for s in shapes]):.0f}×{np.mean([s[1] for s in shapes]):.0f}, "
                  f"{np.mean(classes):.2f} labelled classes per image")  # fmt: skip
    betas = parse_betas(WIDE_BETAS)

    released = args.data / "cams" / "released"
    rows = {"released float32": {**store_sizes(released, names, ".npy", classes),
                                 **best_score(released, gt, names, betas, 1)}}  # fmt: skip
    for stride in STRIDES:
        for dtype in DTYPES:
            folder = write_compact(args.data, names, stride, dtype)
            rows[f"compact s{stride} {dtype}"] = {**store_sizes(folder, names, ".npz", classes),
                                                  **best_score(folder, gt, names, betas, 1)}  # fmt: skip
    for stride in (2, 4):
        folder = write_compact(args.data, names, stride, "uint8", means=True)
        rows[f"block means s{stride} uint8"] = {**store_sizes(folder, names, ".npz", classes),
                                                **best_score(folder, gt, names, betas, 1)}  # fmt: skip
    full = rows["released float32"]["miou"]
    table = Table("store", "KB / image", "KB / class map", "train2014 GB", "best β", "mIoU %", "Δ points",
                  title=f"CAM stores on {len(names)} synthetic COCO images (long side {args.size})")  # fmt: skip
    for label, r in rows.items():
        r["delta_points"] = (r["miou"] - full) * 100
        table.add_row(label, f"{r['bytes_per_image'] / 1e3:.1f}", f"{r['bytes_per_class_map'] / 1e3:.1f}",
                      f"{r['train2014_gb']:.1f}", f"{r['beta']:.2f}", f"{r['miou'] * 100:.2f}",
                      f"{r['delta_points']:+.3f}")  # fmt: skip
    console.print(table)

    speed = {}
    for label, folder in (("released", released), ("compact s4 uint8", args.data / "cams" / "compact_s4_uint8")):
        for workers in sorted({1, args.workers}):
            times = [best_score(folder, gt, names, betas, workers)["seconds"] for _ in range(args.repeat)]
            speed[f"{label}, {workers} process{'es' if workers > 1 else ''}"] = times
    timing = Table("CAM files, processes", "best s", "median s", "images/s (best)",
                   title=f"cpn eval over 81 classes: {len(betas)} β × {len(names)} images")  # fmt: skip
    for label, times in speed.items():
        timing.add_row(label, f"{min(times):.2f}", f"{statistics.median(times):.2f}", f"{len(names) / min(times):.1f}")
    console.print(timing)

    memory = {}
    image = pick_image(args.data, names)
    for backbone in [b for b in args.infer.split(",") if b]:
        memory[backbone] = infer_memory(backbone, image, args.infer_batch)
        m = memory[backbone]
        console.print(f"infer {backbone}, {m['size'][0]}×{m['size'][1]}, 4 scales × flip, batch {m['batch_size']}: "
                      f"peak RSS {m['peak_rss_kib'] / 2**20:.2f} GiB (model built: "
                      f"{m['rss_after_model_kib'] / 2**20:.2f} GiB), {m['seconds']:.0f} s on {m['threads']} threads")

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
        "command": " ".join(sys.argv), "images": len(names), "size": args.size,
        "mean_size": np.mean(shapes, 0).tolist(), "classes_per_image": float(np.mean(classes)), "betas": WIDE_BETAS,
        "stores": rows,
        "eval_seconds": speed, "infer_memory": memory,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_cam_store.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
