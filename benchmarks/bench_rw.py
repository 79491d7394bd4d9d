"""Stage 2 on issue 7's demo task: do AffinityNet's random-walk pseudo labels beat the CAM pseudo
labels they come from? The whole chain with the tiny backbone on the synthetic parts task:

    `cpn demo`'s steps (data, init, warm-up, CPN, multi-scale CAMs)  →  CAMs of every train_aug image
    →  affinity labels  →  AffinityNet (stage: affinity)  →  random walk  →  scores

Scores, on the demo's evaluation images (its `train` split) against the synthetic ground truth:
- CAM: the CPN CAMs at the best β of the demo's sweep (β in 0 … 0.6, step 0.005);
- RW: PSA's walk with the background (1 − max)^16 → label PNGs (no β to choose);
- RW CAMs: the walked class scores swept over the same βs — the same β-selection rule as the CAMs
  (a walk keeps a constant background constant, so this is the walk with background β).
RW runs with PSA's t = 2^8 steps and with t scaled to the image size (`--logt`, default
round(8 − 2·log2(500 / size)): the walk's reach grows like √t cells, and a 64-pixel image has
(500/64)² ≈ 61× fewer stride-8 cells than a VOC image). The dense CRF's spatial kernels (PSA's
Gaussian sxy 3 and bilateral sxy 80, in pixels of ~500-pixel images) are scaled by size / 500 alike.
AffinityNet starts from the demo's warm-up backbone, the demo's stand-in for the ImageNet
initialisation that PSA starts AffinityNet from.

`--cams synthetic` replaces CPN by CAM stand-ins made from the ground truth (each object's core,
blurred, shifted, at stride 8, peak 0.5): a controlled input for stage 2.

Every step keeps its output under --out and is skipped when it is there (--fresh starts over).

    .venv/bin/python benchmarks/bench_rw.py                    # CPN CAMs (runs the demo first)
    .venv/bin/python benchmarks/bench_rw.py --cams synthetic   # CAM stand-ins from the ground truth
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine import cpu_model  # benchmarks/machine.py
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
AFFINITY_CONFIG = ROOT / "configs" / "demo_affinity.yaml"




def stride8(cam: np.ndarray) -> np.ndarray:
    """A map at CAM resolution: 8×8 average-pooled (zero-padded) and bilinearly upsampled back, as a
    network's stride-8 CAM is."""
    import torch
    import torch.nn.functional as F

    h, w = cam.shape
    x = F.pad(torch.from_numpy(cam)[None, None], (0, -w % 8, 0, -h % 8))
    up = F.interpolate(F.avg_pool2d(x, 8), x.shape[-2:], mode="bilinear", align_corners=False)
    return up[0, 0, :h, :w].numpy()


def synthetic_cams(voc: Path, names: list[str], out: Path, seed: int = 0) -> None:
    """CAM stand-ins from the ground truth, per class: the object eroded to its core (CAMs fire on the
    discriminative part), blurred (they spill over the border and peak inside), shifted by up to 2
    pixels, with multiplicative noise, at stride 8; scaled to the released format's peak 0.5."""
    from scipy import ndimage

    from cpn_dist.data.datasets.voc import read_label_png
    from cpn_dist.labels.cams import save_cams

    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        gt = read_label_png(voc / "SegmentationClass" / f"{name}.png")
        cams = {}
        for c in sorted(set(np.unique(gt).tolist()) - {0, 255}):
            mask = gt == c
            core = ndimage.binary_erosion(mask, iterations=max(1, int(0.1 * np.sqrt(mask.sum()))))
            core = core if core.any() else mask
            cam = ndimage.gaussian_filter(core.astype(np.float32), 2.0)
            cam = ndimage.shift(cam, rng.integers(-2, 3, size=2), order=1, mode="constant")
            cam = stride8(cam * rng.uniform(0.7, 1.3, size=cam.shape).astype(np.float32))
            cams[c - 1] = (0.5 * cam / max(float(cam.max()), 1e-6)).astype(np.float32)
        save_cams(out / f"{name}.npy", cams)


def timed(times: dict, name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0
    return result


def main() -> None:
    from cpn_dist.affinity.labels import AffinityLabelParams, write_affinity_labels
    from cpn_dist.affinity.random_walk import WalkParams, load_affinity_model, walk_samples
    from cpn_dist.config import CrfConfig
    from cpn_dist.data.datasets.voc import read_split
    from cpn_dist.data.inputs import VocSource
    from cpn_dist.demo.run import eval_names, run_demo
    from cpn_dist.demo.settings import DEMO_CONFIG, DemoSettings
    from cpn_dist.demo.steps import infer_cams, initial_weights, make_data, train_model, warm_up
    from cpn_dist.labels.evaluate import GroundTruth, score_labels, sweep

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="working folder (default results/rw_<cams>)")
    p.add_argument("--cams", choices=("cpn", "synthetic"), default="cpn", help="where the CAMs come from")
    p.add_argument("--images", type=int, default=DemoSettings.images)
    p.add_argument("--size", type=int, default=DemoSettings.size)
    p.add_argument("--aff-epochs", type=int, default=20, help="AffinityNet epochs over train_aug")
    p.add_argument("--logt", type=int, default=None, help="the size-scaled walk's logt (default from --size)")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--json", type=Path, default=None, help="default results/bench_rw_<cams>.json")
    args = p.parse_args()
    out = args.out or RESULTS / f"rw_{args.cams}"
    out_json = args.json or RESULTS / f"bench_rw_{args.cams}.json"
    logt = args.logt if args.logt is not None else max(0, round(8 - 2 * np.log2(500 / args.size)))
    console = Console()
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    settings = DemoSettings(images=args.images, size=args.size)
    times: dict[str, float] = {}

    # ---- stage 1: the demo's data, warm-up and CPN; CAMs of every train_aug image --------------------
    demo_data = timed(times, "data", make_data, out, settings)
    voc, data = demo_data.voc, demo_data.overrides(settings)
    train_aug = read_split(voc / "ImageSets" / "Segmentation" / "train_aug.txt")
    names = eval_names(voc, settings)
    if args.cams == "cpn":
        timed(times, "demo (init, warm-up, CPN, CAMs, sweep)", run_demo, out, settings, models={"cpn": ()})
        cams = out / "cams" / "cpn"
        weights = out / "runs" / "cpn" / "model_final.pth"
        timed(times, "CAMs of the rest of train_aug", infer_cams, weights, DEMO_CONFIG,
              (*data, f"model.weights={weights}"), voc, train_aug, cams, settings)  # fmt: skip
    else:
        init = timed(times, "init", initial_weights, out / "init.pth", DEMO_CONFIG, data)
        timed(times, "warm-up", warm_up, out / "runs" / "warmup", DEMO_CONFIG, (*data, f"model.weights={init}"),
              settings.warmup_epochs)  # fmt: skip
        cams = out / "cams" / "synthetic"
        if not cams.is_dir():
            timed(times, "synthetic CAMs", synthetic_cams, voc, train_aug, cams)
    gt = GroundTruth(voc / "SegmentationClass")
    cam = timed(times, "eval", sweep, cams, gt, names, settings.betas).summary()

    # ---- stage 2 ------------------------------------------------------------------------------------
    scale = args.size / 500  # the CRF's spatial kernels are in pixels
    crf = CrfConfig(gaussian_sxy=3 * scale, bilateral_sxy=80 * scale)
    labels = out / "affinity_labels"
    timed(times, "affinity labels", write_affinity_labels, VocSource(voc, train_aug), cams, labels,
          AffinityLabelParams(crf=crf), train_aug, workers=2)  # fmt: skip
    warm = out / "runs" / "warmup" / "model_final.pth"  # plain CAM, no head: its backbone keys load
    aff = timed(times, "train AffinityNet", train_model, AFFINITY_CONFIG,
                (*data, f"affinity.labels={labels}", f"train.epochs={args.aff_epochs}", f"model.weights={warm}"),
                out / "runs" / "affinity")  # fmt: skip
    model, _ = load_affinity_model(aff, "tiny")
    scores = {"cam": cam}
    for steps in dict.fromkeys((8, logt)):
        rw, walked = out / f"rw_t{steps}", out / f"rw_cams_t{steps}"
        todo = [n for n in names if not (rw / f"{n}.png").is_file()]
        timed(times, "random walk", walk_samples, model, VocSource(voc, todo).samples(labels=False), cams, rw,
              WalkParams(logt=steps, method="sparse"), save_cams_dir=walked)  # fmt: skip
        scores[f"rw_t{steps}"] = timed(times, "eval", score_labels, rw, gt, names).summary()
        scores[f"rw_cams_t{steps}"] = timed(times, "eval", sweep, walked, gt, names, settings.betas).summary()

    # ---- report ---------------------------------------------------------------------------------------
    title = f"{len(names)} images ({settings.eval_split} split, {args.size} px, parts task), CAMs: {args.cams}"
    table = Table("pseudo labels", "mIoU %", "bg %", "fg %", "β", title=title)
    described = {"cam": "CAM (best β of the sweep)"}
    for steps in (8, logt):
        described[f"rw_t{steps}"] = f"RW t = 2^{steps}, background (1 − max)^16"
        described[f"rw_cams_t{steps}"] = f"RW t = 2^{steps}, walked CAMs (best β of the sweep)"
    for key, s in scores.items():
        beta = "—" if s["beta"] is None or s["beta"] != s["beta"] else f"{s['beta']:.3f}"
        table.add_row(described[key], f"{s['miou'] * 100:.2f}", f"{s['background'] * 100:.2f}",
                      f"{s['foreground'] * 100:.2f}", beta)  # fmt: skip
    console.print(table)
    clock = Table("step", "seconds", title="time (steps whose output was already there count 0)")
    for name, seconds in times.items():
        clock.add_row(name, f"{seconds:.1f}")
    clock.add_row("[bold]total[/]", f"[bold]{sum(times.values()):.1f}[/]")
    console.print(clock)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "settings": {"cams": args.cams, "images": args.images, "size": args.size, "aff_epochs": args.aff_epochs,
                     "logt": logt, "eval_images": len(names), "crf": crf.__dict__},  # fmt: skip
        "scores": {k: {key: v[key] for key in ("miou", "beta", "background", "foreground")} for k, v in scores.items()},
        "seconds": times,
        "rw_beats_cam": {k: bool(v["miou"] > cam["miou"]) for k, v in scores.items() if k != "cam"},
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    console.print(f"written to {out_json}")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    main()
