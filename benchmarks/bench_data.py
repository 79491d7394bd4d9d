"""Data-path benchmark (issue 3): SLIC per image at pack time, CP-pair generation alone, and the
full training loader (decode + augment + CP pair) from shards, at crop 448 from VOC-sized images.

    .venv/bin/python benchmarks/bench_data.py [--images 96] [--size 500] [--workers 1 2] [--repeat 3]

Makes a synthetic VOC (``cpn synth-voc --size 500``) and packs it in a scratch folder, then measures:

- ``slic``: skimage SLIC on the original image, per segment count (what ``cpn pack`` runs once);
- ``released-style pair``: SLIC(300) on the normalised crop and a per-pixel Python loop building
  the mask, as the released data loader does for every sample of every epoch (a few samples only);
- ``cp pair (loader)``: our per-sample mask + λ (``hidden[ids]`` lookup) plus I_h/I_hbar made on
  the stacked batch, as the loader does it, amortised per sample;
- ``cp pair (numpy, per sample)``: the whole pair of one sample with numpy (``make_cp_pair``);
- ``sample (1 process)``: decode + augment + CP pair of one sample, no loader;
- ``loader, N workers``: the streaming loader, micro-batch 4, one epoch; samples/s and per worker.

Prints a table and writes JSON to benchmarks/results/bench_data.json. Timings are wall-clock: on a
shared machine repeat (``--repeat``) and read the best and the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from machine import cpu_model  # benchmarks/machine.py
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RELEASED_SECONDS = 0.38  # the measurement of the released per-sample CP code on this CPU




def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def released_style_pair(crop_chw: np.ndarray, rng: np.random.Generator):
    """The released superpixel CP pair, re-implemented from its behaviour for timing: SLIC on the
    normalised crop, floor((K+1)/2) ids drawn with replacement, then a Python loop over every pixel
    writing a torch mask tensor (as the released data loader does for every sample of every epoch)."""
    import torch
    from skimage.segmentation import slic

    img = torch.from_numpy(crop_chw)
    spx = slic(img.permute(1, 2, 0).numpy().astype(np.float64), compactness=10, n_segments=300, start_label=1)
    k = int(spx.max())
    chosen = set(rng.integers(0, k + 1, (k + 1) // 2).tolist())
    sign = torch.ones(img.shape)
    hidden = 0
    h, w = spx.shape
    for i in range(h):
        for j in range(w):
            if spx[i, j] in chosen:
                sign[:, i, j] = 0
                hidden += 1
    return img * sign, img * (1 - sign), 1 - hidden / (h * w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="synthetic images (default 200; ~80 %% in train_aug)")
    ap.add_argument("--size", type=int, default=500, help="long side of the synthetic images (default 500, VOC)")
    ap.add_argument("--crop", type=int, default=448)
    ap.add_argument("--micro", type=int, default=4, help="micro-batch of the loader (default 4)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader worker counts (default 1 2)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    ap.add_argument("--released-samples", type=int, default=3, help="samples timed with the released-style loop")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_data.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker, where collate runs
    from cpn_dist.config import load_config
    from cpn_dist.data.loading.augment import augment, draw_augmentation
    from cpn_dist.data.loading.cp_pair import draw_patch_mask, make_cp_pair, split_image
    from cpn_dist.data.loading.loader import build_train_loader
    from cpn_dist.data.loading.seeding import sample_rngs
    from cpn_dist.data.loading.train_sample import TrainSampleMaker
    from cpn_dist.data.shards.pack import pack_split
    from cpn_dist.data.shards.pack_sample import superpixels
    from cpn_dist.data.shards.reader import decode_image, decode_slic, iter_raw_samples, resolve_shards
    from cpn_dist.data.synth.voc import synthesize_voc

    console = Console()
    rows: list[dict] = []

    def add(name: str, seconds_per_item: list[float], unit: str = "sample", note: str = "") -> None:
        best, median = min(seconds_per_item), statistics.median(seconds_per_item)
        rows.append({"measure": name, "unit": unit, "best_ms": 1000 * best, "median_ms": 1000 * median,
                     "best_per_s": 1 / best, "median_per_s": 1 / median, "runs": len(seconds_per_item),
                     "note": note})  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        console.print(f"synthetic VOC: {args.images} images, long side {args.size} …")
        voc = synthesize_voc(tmp / "VOC2012", args.images, size=args.size, seed=0, workers=2)
        report = pack_split(voc, "train_aug", tmp / "shards", segments=(200, 300), shard_size=32, workers=2)
        console.print(f"packed {report.meta['count']} samples in {report.seconds:.1f} s")

        # SLIC per image at pack time, per segment count
        from PIL import Image

        images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((voc / "JPEGImages").glob("*.jpg"))[:8]]
        for n in (200, 300):
            per = [t / len(images) for t in timed(lambda n=n: [superpixels(im, n, 10.0) for im in images],
                                                   args.repeat)]  # fmt: skip
            add(f"slic N={n} (pack time)", per, "image", f"{images[0].shape[1]}×{images[0].shape[0]}-ish images")

        cfg = load_config(None, [f"data.shards={tmp / 'shards'}", "data.split=train_aug", f"data.crop={args.crop}",
                                 "data.patch.segments=300", "data.patch.sampling=released"])  # fmt: skip
        shards = resolve_shards(cfg.data.shards, cfg.data.split)
        raws = list(iter_raw_samples(shards.urls))
        maker = TrainSampleMaker.from_config(cfg.data, seed=0, epoch=0)

        # augmented crops, the input of the CP pair
        crops = []
        for raw in raws:
            image, slic = decode_image(raw["jpg"]), decode_slic(raw["slic300.png"])
            aug_rng, patch_rng = sample_rngs(0, 0, raw["__key__"])
            k = int(slic.max()) + 1
            x, valid, ids = augment(image, slic, draw_augmentation(aug_rng, maker.data, *image.size),
                                    maker.data, pad_id=k)  # fmt: skip
            crops.append((x, valid, ids, k))

        rng = np.random.default_rng(0)
        released = [timed(lambda c=c: released_style_pair(c[0], rng), 1)[0] for c in crops[: args.released_samples]]
        add("released-style pair (SLIC + pixel loop)", released, note="same machine, our re-implementation")

        n_used = (len(crops) // args.micro) * args.micro
        batches = [torch.from_numpy(np.stack([c[0] for c in crops[i:i + args.micro]]))
                   for i in range(0, n_used, args.micro)]  # fmt: skip

        def loader_pair() -> None:
            for b, image in enumerate(batches):
                part = crops[b * args.micro:(b + 1) * args.micro]
                masks = [draw_patch_mask(v, ids, k, np.random.default_rng(i), maker.patch).mask[None]
                         for i, (_, v, ids, k) in enumerate(part)]  # fmt: skip
                mask = torch.from_numpy(np.stack(masks)).to(torch.float32)
                split_image(image, mask)

        add("cp pair (loader path)", [t / n_used for t in timed(loader_pair, args.repeat)],
            note="per sample: hidden draw, m = visible[ids], λ; per batch: I·m, I − I·m")  # fmt: skip

        def numpy_pair() -> None:
            for i, (x, v, ids, k) in enumerate(crops):
                make_cp_pair(x, v, ids, k, np.random.default_rng(i), maker.patch)

        add("cp pair (numpy, whole pair per sample)", [t / len(crops) for t in timed(numpy_pair, args.repeat)])
        add("sample, 1 process (decode + augment + mask)",
            [t / len(raws) for t in timed(lambda: [maker(r) for r in raws], args.repeat)])  # fmt: skip

        loader_results = {}
        for deterministic, workers_list in ((False, args.workers), (True, [1])):
            for workers in workers_list:
                cfg.data.workers = workers
                cfg.data.deterministic = deterministic
                per = []
                for epoch in range(args.repeat):
                    loader, steps = build_train_loader(cfg.data, micro_size=args.micro, global_size=args.micro,
                                                       rank=0, world_size=1, seed=0, epoch=epoch)  # fmt: skip
                    start = time.perf_counter()
                    n = sum(len(b["key"]) for b in loader)
                    per.append((time.perf_counter() - start) / n)
                mode = "deterministic" if deterministic else "streaming"
                add(f"loader ({mode}), {workers} worker(s)", per,
                    note=f"one epoch of {n} samples, batch {args.micro}, incl. worker start-up")  # fmt: skip
                if not deterministic:
                    loader_results[workers] = per

    table = Table(title=f"data path at crop {args.crop} — {cpu_model()}, {torch.get_num_threads()} threads")
    for col in ("measure", "best ms", "median ms", "best /s", "median /s", "note"):
        table.add_column(col, justify="left" if col in ("measure", "note") else "right")
    for r in rows:
        table.add_row(r["measure"], f"{r['best_ms']:.2f}", f"{r['median_ms']:.2f}", f"{r['best_per_s']:.1f}",
                      f"{r['median_per_s']:.1f}", r["note"])  # fmt: skip
    console.print(table)
    pair = next(r for r in rows if r["measure"] == "cp pair (loader path)")
    for workers, per in loader_results.items():
        console.print(f"loader with {workers} worker(s): {1 / min(per):.1f} samples/s best = "
                      f"{1 / min(per) / workers:.1f} per worker process")  # fmt: skip
    released = next(r for r in rows if r["measure"].startswith("released-style"))
    ours, theirs = pair["median_ms"], released["median_ms"]
    console.print(f"CP pair, loader path: median {ours:.2f} ms = {RELEASED_SECONDS * 1000 / ours:.0f}× faster than the "
                  f"issue's {RELEASED_SECONDS * 1000:.0f} ms for the released code, {theirs / ours:.0f}× faster than "
                  f"our released-style re-implementation on this machine ({theirs:.0f} ms)")  # fmt: skip

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": date.today().isoformat(), "cpu": cpu_model(), "cores": __import__("os").cpu_count(),
        "args": vars(args), "rows": rows,
        "loader_per_worker_best": {w: 1 / min(p) / w for w, p in loader_results.items()},
    }, indent=2))  # fmt: skip
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
