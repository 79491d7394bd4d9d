"""β sweep speed: `cpn eval`'s one-pass sweep against the released evaluator's algorithm.

Data (made once, cached under benchmarks/results/eval_data/): N synthetic 500×375 ground-truth masks
with 1–3 objects each (class shapes from cpn_dist.data.synth.voc, a 3-pixel void band on every border),
and one CAM file per image in the released format. The CAMs are made from the masks plus noise: per
labelled class, tanh of the object's mask blurred (σ 12 px) times a smooth random gain field, plus smooth noise, plus a
false-positive blob; summed over 8 noisy "scale/flip" draws and normalised exactly as the released
infer_cam.py does (so values lie in about −0.5..0.5 and the best β is inside 0.20..0.59).

Timed on the same files:
- released: an honest re-implementation of evaluation_cam.py's algorithm: for every β, 8 processes
  (fork) each take every 8th image, load the CAM dict, fill a 21×H×W float32 tensor with β in
  channel 0, argmax, read the GT PNG, and add 63 sums into shared locked integers; one such full
  pass per β, as the released `--curve` loop does.
- one-pass: cpn_dist.labels.evaluate.sweep — each file read once, all β from one histogram.
The mIoU of every β must be identical (bit for bit) between the two.

    .venv/bin/python benchmarks/bench_eval.py --images 300 --workers 2 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine import cpu_model  # benchmarks/machine.py
from PIL import Image
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from cpn_dist.data.datasets.voc import IGNORE, NUM_CLASSES, NUM_FOREGROUND, save_label_png
from cpn_dist.data.synth.draw import shape_mask, void_border
from cpn_dist.data.synth.voc import SHAPES
from cpn_dist.labels.betas import parse_betas
from cpn_dist.labels.cams import load_cams, normalise_released, save_cams
from cpn_dist.labels.evaluate import sweep

RESULTS = Path(__file__).resolve().parent / "results"
H, W = 375, 500


# --------------------------------------------------------------------------------------------
# data


def _objects(rng: np.random.Generator) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    labels = np.zeros((H, W), np.uint8)
    classes = sorted(rng.choice(NUM_FOREGROUND, size=int(rng.integers(1, 4)), replace=False).tolist())
    masks = []
    for c in classes:
        r = rng.uniform(0.18, 0.4) * H
        cx, cy, th = rng.uniform(0.15, 0.85) * W, rng.uniform(0.15, 0.85) * H, rng.uniform(0, np.pi)
        u = (np.cos(th) * (xx - cx) + np.sin(th) * (yy - cy)) / (r * 1.2)
        v = (-np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy)) / (r / 1.2)
        inside = shape_mask(SHAPES[c % len(SHAPES)], u, v)
        labels[inside] = c + 1
        masks.append(inside)
    # keep only what stayed visible, as later objects cover earlier ones
    masks = [labels == c + 1 for c in classes]
    return labels, classes, masks


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise with structure ~40 px, H×W float32."""
    coarse = ndimage.gaussian_filter(rng.normal(0, 1, (H // 8 + 2, W // 8 + 2)), 1.5) * 2.5
    return ndimage.zoom(coarse, 8, order=1)[:H, :W].astype(np.float32)


def make_image(i: int, seed: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    rng = np.random.default_rng([seed, i])
    labels, classes, masks = _objects(rng)
    gt = labels.copy()
    gt[void_border(labels, 3)] = IGNORE
    total = np.zeros((len(classes), H, W), np.float32)
    for _draw in range(8):  # 4 scales × 2 flips in the real thing
        for k, mask in enumerate(masks):
            # CAMs fire on the discriminative part: the mask, blurred, times a smooth random gain
            gain = np.clip(rng.uniform(0.8, 1.4) + 0.5 * _smooth_noise(rng), 0.1, None)
            response = np.tanh(2.5 * ndimage.gaussian_filter(mask.astype(np.float32), sigma=12) * gain)
            response += 0.9 * _smooth_noise(rng)
            total[k] += response.astype(np.float32)
        by, bx = rng.integers(0, H), rng.integers(0, W)  # a false-positive blob for one class
        yy, xx = np.ogrid[0:H, 0:W]
        total[rng.integers(len(classes))] += 0.8 * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * 30.0**2))
    norm = normalise_released(total)
    return gt, {c: norm[k] for k, c in enumerate(classes)}


def _write(args: tuple[Path, int, int]) -> str:
    root, i, seed = args
    name = f"bench_{i:06d}"
    gt, cams = make_image(i, seed)
    save_label_png(gt, root / "gt" / f"{name}.png")
    save_cams(root / "cams" / f"{name}.npy", cams)
    return name


def prepare(root: Path, n: int, seed: int, workers: int) -> list[str]:
    stamp = root / "stamp.json"
    want = {"images": n, "seed": seed, "size": [W, H], "version": 2}
    names = [f"bench_{i:06d}" for i in range(n)]
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return names
    (root / "gt").mkdir(parents=True, exist_ok=True)
    (root / "cams").mkdir(parents=True, exist_ok=True)
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(_write, [(root, i, seed) for i in range(n)], chunksize=4)
    (root / "list.txt").write_text("".join(f"{x}\n" for x in names))
    stamp.write_text(json.dumps(want))
    return names


# --------------------------------------------------------------------------------------------
# the released evaluator's algorithm (evaluation_cam.py, `--type npy --curve`)


def released_pass(predict_folder: Path, gt_folder: Path, names: list[str], threshold: float,
                  processes: int = 8) -> float:
    """One full pass over every file at one β, as the released do_python_eval does; returns mIoU."""
    ctx = mp.get_context("fork")
    num_cls = NUM_CLASSES
    tp = [ctx.Value("i", 0, lock=True) for _ in range(num_cls)]
    p = [ctx.Value("i", 0, lock=True) for _ in range(num_cls)]
    t = [ctx.Value("i", 0, lock=True) for _ in range(num_cls)]

    def compare(start: int, step: int) -> None:
        for idx in range(start, len(names), step):
            name = names[idx]
            cams = load_cams(predict_folder / f"{name}.npy")
            h, w = next(iter(cams.values())).shape
            tensor = np.zeros((num_cls, h, w), np.float32)
            for key, value in cams.items():
                tensor[key + 1] = value
            tensor[0, :, :] = threshold
            predict = np.argmax(tensor, axis=0).astype(np.uint8)
            gt = np.array(Image.open(gt_folder / f"{name}.png"))
            cal = gt < 255
            mask = (predict == gt) * cal
            for i in range(num_cls):
                with p[i].get_lock():
                    p[i].value += int(np.sum((predict == i) * cal))
                with t[i].get_lock():
                    t[i].value += int(np.sum((gt == i) * cal))
                with tp[i].get_lock():
                    tp[i].value += int(np.sum((gt == i) * mask))

    workers = [ctx.Process(target=compare, args=(i, processes)) for i in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    iou = [tp[i].value / (t[i].value + p[i].value - tp[i].value + 1e-10) for i in range(num_cls)]
    return float(np.mean(np.array(iou)))


# --------------------------------------------------------------------------------------------




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--betas", default="0.20:0.60:0.01")
    ap.add_argument("--workers", type=int, default=2, help="processes of the one-pass sweep")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of the one-pass sweep")
    ap.add_argument("--released-repeat", type=int, default=1, help="timed runs of the released algorithm")
    ap.add_argument("--skip-released", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=RESULTS / "eval_data")
    args = ap.parse_args()
    console = Console()

    t0 = time.perf_counter()
    names = prepare(args.data, args.images, args.seed, max(1, os.cpu_count() or 1))
    console.print(f"data ready in {time.perf_counter() - t0:.1f} s: {len(names)} images {W}×{H} in {args.data}")
    betas = parse_betas(args.betas)
    cams, gt = args.data / "cams", args.data / "gt"

    ours = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = sweep(cams, gt, names, betas, workers=args.workers)
        ours.append(time.perf_counter() - t0)
    ours_1 = []
    for _ in range(max(1, args.repeat // 2)):
        t0 = time.perf_counter()
        sweep(cams, gt, names, betas, workers=1)
        ours_1.append(time.perf_counter() - t0)

    released_times, released_miou = [], None
    if not args.skip_released:
        for _ in range(args.released_repeat):
            t0 = time.perf_counter()
            released_miou = [released_pass(cams, gt, names, b) for b in betas]
            released_times.append(time.perf_counter() - t0)

    identical = released_miou is not None and all(float(a) == b for a, b in zip(result.miou, released_miou))
    table = Table("evaluator", "runs", "best s", "median s", "images/s (best)", title=f"β sweep, {len(betas)} "
                  f"thresholds × {len(names)} images {W}×{H}")  # fmt: skip
    rows = [(f"one-pass, {args.workers} processes", ours), ("one-pass, 1 process", ours_1)]
    if released_times:
        rows.append(("released algorithm (8 processes per β)", released_times))
    for label, times in rows:
        table.add_row(label, str(len(times)), f"{min(times):.2f}", f"{statistics.median(times):.2f}",
                      f"{len(names) / min(times):.0f}")  # fmt: skip
    console.print(table)
    best = result.summary()
    console.print(f"best β {best['beta']:.2f}, mIoU {best['miou'] * 100:.2f} %")
    if released_times:
        speedup = min(released_times) / min(ours)
        console.print(f"speed-up (best vs best): {speedup:.1f}×; mIoU identical at every β: {identical}")
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
        "images": len(names), "size": [W, H], "betas": betas, "workers": args.workers,
        "one_pass_s": ours, "one_pass_1proc_s": ours_1, "released_s": released_times,
        "miou": [float(m) for m in result.miou], "released_miou": released_miou,
        "identical": identical if released_times else None, "best": best,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_eval.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"written {out}")
    return 0 if (identical or not released_times) else 1


if __name__ == "__main__":
    sys.exit(main())
