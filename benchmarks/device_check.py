"""The one-shot device check: everything to measure the first time a GPU is lent, in one short run.

    python benchmarks/device_check.py --out DIR            # on a GPU: ResNet38d, crop 448, ≤ 7 min on one GPU
    python benchmarks/device_check.py --quick --out DIR    # anywhere: the tiny model on small inputs, ≤ 2 min on CPU

Writes DIR/device_check.json and DIR/device_check.md (a markdown table per section). Sections:

1. **train step**: the trainer's CPN step (`CPNTask.loss`, backward, SGD with the released groups) at
   global batch 4 (triplet: 12 images), paper and released recipes × fp32 / bf16 / fp16 × NCHW /
   channels_last (and torch.compile when --compile): step time (median), samples/s, MFU against the
   device's peak in that precision, peak memory. fp16 is skipped on the CPU (no fp16 autocast worth
   timing there) and says so.
2. **host syncs per step**: on CUDA counted with `torch.cuda.set_sync_debug_mode("warn")` (every
   synchronizing call warns once per occurrence); on the CPU the calls that WOULD synchronize on a GPU
   (`Tensor.item`, `.tolist`, `.cpu`, `.numpy`, `bool()`, `int()`, `float()`) are counted instead.
   Both for the plain step and for a 2-micro-step window of the head-only global OHEM path.
3. **bf16 vs fp32**: each loss term's relative difference and the cosine of the two gradients.
4. **inference**: images/s of `cpn infer`'s pipeline at 4 scales × flip on 500-px images (quick:
   128-px), fp32 and bf16, with peak memory.
5. **training run**: a 40-step `cpn train` (quick: 10 steps) on packed synthetic images (500 px;
   quick: 64 px) through Accelerate and the real loader: the mean data-wait fraction and step time.

Nothing here is an assertion: it measures and writes. tests/test_device_check.py runs --quick.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from cpn_dist.config import load_config  # noqa: E402
from cpn_dist.cpn.model import build_model  # noqa: E402
from cpn_dist.cpn.task import CPNTask  # noqa: E402
from cpn_dist.models.flops import training_step_flops  # noqa: E402
from cpn_dist.training.monitor import peak_flops_per_device, peak_memory_bytes  # noqa: E402
from cpn_dist.training.optim import build_optimizer  # noqa: E402

DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
RECIPES = {"paper": ("loss.recipe=paper", "model.head=paper", "loss.ohem_scope=batch"),
           "official": ("loss.recipe=official", "model.head=official", "loss.ohem_scope=image")}  # fmt: skip


def random_batch(n: int, crop: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, crop, crop, generator=g)
    mask = (torch.rand(n, 1, crop, crop, generator=g) < 0.5).float()
    labels = torch.zeros(n, 20)
    for i in range(n):
        labels[i, torch.randperm(20, generator=g)[: 1 + i % 3]] = 1
    return {"image": image, "mask": mask, "labels": labels, "lam": mask.mean((1, 2, 3))}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def make_step(cfg, device, precision: str, channels_last: bool, compile_model: bool = False):
    """(step function, model) of the trainer's CPN step for ``cfg`` at ``precision``."""
    torch.manual_seed(0)
    model = build_model(cfg.model.backbone, cfg.model.head, dropout=0.0).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = build_optimizer(model.parameter_groups(), cfg.optim)
    task = CPNTask(cfg)
    task.channels_last = channels_last
    runner = torch.compile(model) if compile_model else model
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = DTYPES[precision]

    def step(batches: list[dict]):
        contexts = task.prepare_window(runner, batches, device) or [None] * len(batches)
        terms = None
        for batch, context in zip(batches, contexts):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                terms, _ = task.loss(runner, batch, device, context)
            scaler.scale(terms["total"] / len(batches)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return terms

    return step, model


def time_step(step, batches, device, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step(batches)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


class HostSyncCounter:
    """Counts host synchronisations during a block: CUDA's sync debug mode on a GPU; on the CPU the tensor
    calls that would synchronise on a GPU (monkey-patched for the block)."""

    CALLS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self, device):
        self.device = device
        self.count = 0

    @contextlib.contextmanager
    def counting(self):
        if self.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    yield self
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            self.count += sum("synchroniz" in str(w.message) for w in caught)
            return
        originals = {name: getattr(torch.Tensor, name) for name in self.CALLS}

        def wrap(name, fn):
            def counted(t, *a, **k):
                if not getattr(counted, "inside", False):
                    self.count += 1
                counted.inside = True
                try:
                    return fn(t, *a, **k)
                finally:
                    counted.inside = False

            return counted

        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)


def bench_train_steps(args, device) -> list[dict]:
    rows = []
    precisions = ["no", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    formats = [False, True]
    for recipe, overrides in RECIPES.items():
        cfg = load_config(args.config, [*overrides, "model.dropout=0.0", f"model.backbone={args.backbone}",
                                        f"data.crop={args.crop}", "batch.global_size=4",
                                        "batch.micro_size=4"])  # fmt: skip
        flops = training_step_flops(build_model(args.backbone, cfg.model.head, dropout=0.0), crop=args.crop, batch=4,
                                    triplet=True)["forward_backward"]  # fmt: skip
        batch = random_batch(4, args.crop)
        variants = [(p, cl, False) for p in precisions for cl in formats]
        if args.compile:
            variants.append(("bf16" if device.type == "cuda" else "no", device.type == "cuda", True))
        for precision, channels_last, compiled in variants:
            _reset_peak(device)
            try:
                step, _ = make_step(cfg, device, precision, channels_last, compiled)
                times = time_step(step, [batch], device, args.steps, args.warmup)
            except Exception as exc:  # a combination this device cannot run: recorded, not fatal
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                rows.append({"recipe": recipe, "precision": precision, "channels_last": channels_last,
                             "compile": compiled, "error": error})  # fmt: skip
                continue
            median = statistics.median(times)
            peak = peak_flops_per_device(None, device, precision)
            rows.append({"recipe": recipe, "precision": precision, "channels_last": channels_last, "compile": compiled,
                         "step_s_median": median, "step_s_best": min(times), "samples_per_s": 4 / median,
                         "flops_per_step": flops, "mfu": flops / median / peak if peak else None,
                         "peak_memory_bytes": peak_memory_bytes(device)})  # fmt: skip
    return rows


def bench_syncs(args, device) -> list[dict]:
    rows = []
    for recipe, overrides in RECIPES.items():
        for micro, label in ((4, "global batch 4, no accumulation"), (2, "2 micro-steps of 2 (accumulation)")):
            cfg = load_config(args.config, [*overrides, "model.dropout=0.0", f"model.backbone={args.backbone}",
                                            f"data.crop={args.crop}", "batch.global_size=4",
                                            f"batch.micro_size={micro}", "loss.ohem_scope=batch"])  # fmt: skip
            step, _ = make_step(cfg, device, "no", False)
            batches = [random_batch(micro, args.crop, seed=i) for i in range(4 // micro)]
            step(batches)  # warm-up
            counter = HostSyncCounter(device)
            with counter.counting():
                step(batches)
            method = "cuda sync debug mode" if device.type == "cuda" else "calls that sync on a GPU"
            rows.append({"recipe": recipe, "window": label, "host_syncs": counter.count, "method": method})
    return rows


def bench_agreement(args, device) -> dict:
    """bf16 autocast against fp32 on one batch: each term's relative difference, the gradients' cosine.

    OHEM is per image here: a global top-k over the batch is discontinuous, and one element that bf16 moves
    across the threshold changes which CPCR elements carry gradient, which is not an arithmetic error."""
    cfg = load_config(args.config, [*RECIPES["paper"], "model.dropout=0.0", f"model.backbone={args.backbone}",
                                    f"data.crop={args.crop}", "loss.ohem_scope=image"])  # fmt: skip
    batch = random_batch(4, args.crop)
    results = {}
    for precision in ("no", "bf16"):
        torch.manual_seed(0)
        model = build_model(cfg.model.backbone, cfg.model.head, dropout=0.0).to(device).train()
        task = CPNTask(cfg)
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "no"):
            terms, _ = task.loss(model, batch, device, None)
        terms["total"].backward()
        grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        results[precision] = ({k: float(v) for k, v in terms.items()}, grad)
    (ref, g32), (low, g16) = results["no"], results["bf16"]
    rel = {k: abs(low[k] - ref[k]) / max(abs(ref[k]), 1e-8) for k in ref if k in ("total", "cls", "tcp", "cpcr")}
    cosine = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    return {"relative_difference": rel, "gradient_cosine": cosine, "fp32": ref, "bf16": low}


def bench_inference(args, device, work: Path) -> list[dict]:
    from cpn_dist.cpn.infer import InferSettings, infer_samples
    from cpn_dist.data.datasets.voc import read_split
    from cpn_dist.data.inputs import VocSource
    from cpn_dist.data.synth.voc import synthesize_voc

    voc = synthesize_voc(work / "infer_voc", args.infer_images, size=args.infer_size, seed=0,
                         workers=min(8, os.cpu_count() or 1), overwrite=True)  # fmt: skip
    names = read_split(voc / "ImageSets" / "Segmentation" / "train_aug.txt") + read_split(
        voc / "ImageSets" / "Segmentation" / "val.txt")
    torch.manual_seed(0)
    model = build_model(args.backbone, "official", dropout=0.0).to(device).eval()
    rows = []
    for precision in ("fp32", "bf16"):
        settings = InferSettings(scales=(0.5, 1.0, 1.5, 2.0), precision=precision)
        with tempfile.TemporaryDirectory() as out:  # a warm-up image
            infer_samples(model, VocSource(voc, names[:1]).samples(), out, settings, device=device)
        _reset_peak(device)
        with tempfile.TemporaryDirectory() as out:
            _sync(device)
            t0 = time.perf_counter()
            infer_samples(model, VocSource(voc, names).samples(), out, settings, device=device)
            _sync(device)
            seconds = time.perf_counter() - t0
        rows.append({"precision": precision, "images": len(names), "image_size": args.infer_size,
                     "images_per_s": len(names) / seconds, "peak_memory_bytes": peak_memory_bytes(device)})  # fmt: skip
    return rows


def bench_training_run(args, device, work: Path) -> dict:
    """A short `cpn train` through Accelerate and the real loader on packed synthetic images."""
    from cpn_dist.data.shards.pack import pack_split
    from cpn_dist.data.synth.voc import synthesize_voc
    from cpn_dist.train import train
    from cpn_dist.training.launch import quiet_libraries

    workers = min(8, os.cpu_count() or 1)
    voc = synthesize_voc(work / "train_voc", args.run_images, size=args.run_size, seed=0, workers=workers,
                         overwrite=True)  # fmt: skip
    shards = work / "train_shards"
    pack_split(voc, "train_aug", shards, segments=(args.segments,), workers=workers, overwrite=True)
    quiet_libraries()
    cfg = load_config(args.config, [*RECIPES["paper"], f"model.backbone={args.backbone}", "model.weights=null",
                                    f"data.shards={shards}",
                                    f"data.crop={args.crop}", f"data.scale_range=[{args.crop}, {int(args.crop * 1.5)}]",
                                    f"data.patch.segments={args.segments}", f"data.workers={args.loader_workers}",
                                    f"train.max_steps={args.run_steps}", "train.epochs=100", "batch.global_size=4",
                                    "batch.micro_size=4", f"output.dir={work / 'run'}", "log.every=1",
                                    f"train.precision={'bf16' if device.type == 'cuda' else 'no'}"])  # fmt: skip
    t0 = time.perf_counter()
    final = train(cfg)
    wall = time.perf_counter() - t0
    summary = json.loads((final.parent / "train_summary.json").read_text())
    return {"steps": args.run_steps, "wall_s": wall, "loader_workers": args.loader_workers,
            "image_size": args.run_size, "summary": summary}  # fmt: skip


def markdown(record: dict) -> str:
    def gib(b):
        return f"{b / 2**30:.2f} GiB"

    lines = [f"# Device check — {record['device']}", "",
             f"{record['date']}, torch {record['torch']}, backbone {record['backbone']}, crop {record['crop']}"
             f"{' (quick)' if record['quick'] else ''}", "", "## Train step (global batch 4, triplet)", "",
             "| recipe | precision | memory format | compile | step (median) | samples/s | MFU | peak memory |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in record["train_step"]:
        fmt = "channels_last" if r["channels_last"] else "NCHW"
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['precision']} | {fmt} | {r['compile']} | {r['error']} | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['recipe']} | {r['precision']} | {fmt} | {r['compile']} | {1000 * r['step_s_median']:.1f} ms"
                     f" | {r['samples_per_s']:.1f} | {mfu} | {gib(r['peak_memory_bytes'])} |")  # fmt: skip
    lines += ["", "## Host syncs per optimizer step", "", "| recipe | window | syncs | counted by |",
              "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['recipe']} | {r['window']} | {r['host_syncs']} | {r['method']} |" for r in record["syncs"]]
    a = record["bf16_vs_fp32"]
    lines += ["", "## bf16 against fp32 (one batch)", "",
              "| term | relative difference |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v:.2e} |" for k, v in a["relative_difference"].items()]
    lines += [f"| gradient cosine | {a['gradient_cosine']:.5f} |", "", "## Inference (4 scales × flip)", "",
              "| precision | images | size | images/s | peak memory |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['precision']} | {r['images']} | {r['image_size']} px | {r['images_per_s']:.2f} | "
              f"{gib(r['peak_memory_bytes'])} |" for r in record["inference"]]  # fmt: skip
    run = record["training_run"]
    means = run["summary"].get("means", {})
    lines += ["", "## Training run (cpn train through Accelerate and the loader)", "",
              f"{run['steps']} steps, {run['loader_workers']} loader workers, {run['image_size']}-px images: wall "
              f"{run['wall_s']:.1f} s; mean data-wait fraction "
              f"{means.get('speed/data_wait_fraction', float('nan')):.3f}, "
              f"mean step {means.get('speed/step_time_s', float('nan')):.3f} s", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="the tiny model on small inputs (CPU, ≤ 2 min)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("no CUDA device: run with --quick (the tiny model on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    quick = args.quick
    args.config = str(ROOT / "configs" / "voc_cpn_official.yaml")
    args.backbone = "tiny" if quick else "resnet38d"
    args.crop = 64 if quick else 448
    args.steps, args.warmup = (3, 1) if quick else (10, 3)
    args.infer_images, args.infer_size = (2, 128) if quick else (16, 500)
    args.run_images, args.run_size, args.run_steps = (20, 64, 10) if quick else (120, 500, 40)
    args.segments = 30 if quick else 300
    args.loader_workers = 1 if quick else 8
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if cuda else cpu_model(), "torch": torch.__version__,
              "quick": quick, "backbone": args.backbone, "crop": args.crop,
              "threads": torch.get_num_threads()}  # fmt: skip
    sections = (("train_step", lambda: bench_train_steps(args, device)), ("syncs", lambda: bench_syncs(args, device)),
                ("bf16_vs_fp32", lambda: bench_agreement(args, device)))  # fmt: skip
    for name, fn in sections:
        t0 = time.perf_counter()
        record[name] = fn()
        record[f"{name}_s"] = time.perf_counter() - t0
        print(f"{name}: {record[f'{name}_s']:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as work:
        for name, fn in (("inference", bench_inference), ("training_run", bench_training_run)):
            t0 = time.perf_counter()
            record[name] = fn(args, device, Path(work))
            record[f"{name}_s"] = time.perf_counter() - t0
            print(f"{name}: {record[f'{name}_s']:.0f} s", flush=True)
    record["wall_s"] = time.perf_counter() - started
    (args.out / "device_check.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (args.out / "device_check.md").write_text(markdown(record))
    print(markdown(record))
    print(f"wall {record['wall_s']:.0f} s; written {args.out / 'device_check.json'} and device_check.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
