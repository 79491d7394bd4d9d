"""Training-step benchmark: steps/s, samples/s, peak memory and MFU of the CPN step for a config,
precision and crop, with the triplet run as ONE forward over 3N images (what the trainer does)
and as three separate forwards (what the released code does); and (``--accumulation A``) the cost of
global OHEM over A accumulation micro-steps on each path: the head-only window (``global_ohem_pass:
auto``) against the no-grad pass over the window (``full``), in FLOPs counted by FlopCounterMode and in
time, relative to the same A micro-steps without OHEM.

    .venv/bin/python benchmarks/bench_train.py --config configs/demo.yaml --crop 448 --steps 5
    .venv/bin/python benchmarks/bench_train.py --config configs/voc_cpn_official.yaml --precision bf16   # on a GPU
    .venv/bin/python benchmarks/bench_train.py --config configs/demo.yaml --accumulation 4 --batch 4

The step is the trainer's: ``cpn_dist.cpn.task.triplet_forward`` forward, ``cpn_loss_from_config``, backward,
SGD with the released parameter groups. Inputs are random tensors (no data loading: see
bench_data.py for the loader). Prints a table and writes benchmarks/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from cpn_dist.config import load_config  # noqa: E402
from cpn_dist.cpn.loss import cpn_loss_from_config  # noqa: E402
from cpn_dist.cpn.model import build_model  # noqa: E402
from cpn_dist.cpn.task import triplet_forward, triplet_input  # noqa: E402
from cpn_dist.models.flops import training_step_flops  # noqa: E402
from cpn_dist.training.monitor import peak_flops_per_device  # noqa: E402
from cpn_dist.training.optim import build_optimizer  # noqa: E402


def random_batch(n: int, crop: int, generator: torch.Generator) -> dict:
    image = torch.randn(n, 3, crop, crop, generator=generator)
    mask = (torch.rand(n, 1, crop, crop, generator=generator) < 0.5).float()
    labels = torch.zeros(n, 20)
    for i in range(n):
        labels[i, torch.randperm(20, generator=generator)[: 1 + i % 3]] = 1
    return {"image": image, "mask": mask, "labels": labels, "lam": mask.mean((1, 2, 3))}


def separate(model, batch, device):
    """The released code's triplet: three forwards."""
    outs = [model(x) for x in triplet_input(batch, device).chunk(3)]
    cams = tuple(o[0].float() for o in outs)
    refined = tuple(o[1].float() for o in outs) if outs[0][1] is not None else None
    return cams, refined


def time_steps(model, optimizer, forward, batch, cfg, device, precision: str, steps: int, warmup: int):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            cams, refined = forward(model, batch, device)
        terms = cpn_loss_from_config(cams, refined, batch["labels"].to(device), batch["lam"].to(device), cfg.loss)
        scaler.scale(terms["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def accumulation_paths(args, cfg, crop: int, n: int, device) -> list[dict]:
    """One optimizer step of A micro-steps of n/A images with global OHEM on each path, against the same
    micro-steps without a global selection (OHEM per image: no extra pass); FLOPs and seconds."""
    from device_check import make_step
    from torch.utils.flop_counter import FlopCounterMode

    a = args.accumulation
    micro = n // a
    batches = [random_batch(micro, crop, torch.Generator().manual_seed(i)) for i in range(a)]
    rows = []
    for name, overrides in (("no global OHEM (per-image OHEM): the reference", ["loss.ohem_scope=image"]),
                            ("head-only window (global_ohem_pass: auto)", ["loss.global_ohem_pass=auto"]),
                            ("no-grad pass over the window (global_ohem_pass: full)", ["loss.global_ohem_pass=full"])):
        run_cfg = load_config(args.config, [f"model.backbone={cfg.model.backbone}", "model.dropout=0.0",
                                            f"data.crop={crop}", f"batch.global_size={n}", f"batch.micro_size={micro}",
                                            "loss.recipe=paper", "model.head=paper", "loss.ohem_scope=batch",
                                            *overrides])  # fmt: skip
        step, _ = make_step(run_cfg, device, "no", False)
        step(batches)  # warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            step(batches)
        times = time_steps_plain(step, batches, device, args.steps)
        rows.append({"path": name, "flops": counter.get_total_flops(), "step_s_median": statistics.median(times),
                     "step_s_best": min(times)})  # fmt: skip
    from cpn_dist.models.flops import global_ohem_window_flops

    counted = {}
    for backbone, at_crop in ((cfg.model.backbone, crop), ("resnet38d", 448)):
        f = global_ohem_window_flops(backbone, "paper", crop=at_crop, micro=micro, accumulation=a)
        counted[f"{backbone}@{at_crop}"] = {k: v / f["step"] for k, v in f.items() if k != "step"}
        Console().print(f"{backbone}, crop {at_crop}, {a} micro-steps of {micro}: extra FLOPs over the window's "
                        f"forward + backward (meta-device count): full pass {100 * f['full'] / f['step']:.1f} %, "
                        f"head-only {100 * f['head_only'] / f['step']:.2f} %")  # fmt: skip
    rows.append({"meta_device_counts": counted})
    base = rows[0]
    table = Table(title=f"global OHEM over {a} micro-steps of {micro} ({cfg.model.backbone}, crop {crop})")
    for col in ("path", "FLOPs per step", "extra FLOPs", "step s (best / median)", "extra time"):
        table.add_column(col)
    for r in rows[:-1]:
        r["extra_flops"] = r["flops"] / base["flops"] - 1
        r["extra_time"] = r["step_s_median"] / base["step_s_median"] - 1
        times = f"{r['step_s_best']:.3f} / {r['step_s_median']:.3f}"
        table.add_row(r["path"], f"{r['flops'] / 1e9:.2f} GFLOP", f"{100 * r['extra_flops']:+.1f} %", times,
                      f"{100 * r['extra_time']:+.1f} %")  # fmt: skip
    Console().print(table)
    return rows


def time_steps_plain(step, batches, device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--backbone", choices=["resnet38d", "tiny"], help="override model.backbone")
    p.add_argument("--crop", type=int, help="override data.crop")
    p.add_argument("--batch", type=int, help="images per step (default batch.global_size)")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], help="override train.precision")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--accumulation", type=int, default=0, help="also compare the global-OHEM paths over A micro-steps")
    p.add_argument("--out", default="benchmarks/results/bench_train.json")
    args = p.parse_args()

    overrides = [f"model.backbone={args.backbone}"] if args.backbone else []
    cfg = load_config(args.config, overrides + ["model.dropout=0.0"])
    crop = args.crop or cfg.data.crop
    n = args.batch or cfg.batch.global_size
    precision = args.precision or cfg.train.precision
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model.backbone, cfg.model.head, dropout=0.0).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = build_optimizer(model.parameter_groups(), cfg.optim)
    batch = random_batch(n, crop, torch.Generator().manual_seed(0))
    flops = training_step_flops(model, crop=crop, batch=n, triplet=True)["forward_backward"]
    peak = peak_flops_per_device(cfg.log.peak_flops, device, precision)

    rows = []
    for name, forward in (("triplet as one 3N forward", triplet_forward), ("three separate forwards", separate)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = time_steps(model, optimizer, forward, batch, cfg, device, precision, args.steps, args.warmup)
        best, median = min(times), statistics.median(times)
        memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
        rows.append({"variant": name, "step_s_best": best, "step_s_median": median, "steps_per_s": 1 / median,
                     "samples_per_s": n / median, "peak_memory_bytes": int(memory),
                     "mfu": (flops / median / peak) if peak else None})  # fmt: skip

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_name,
              "threads": torch.get_num_threads(), "config": args.config, "backbone": cfg.model.backbone,
              "head": cfg.model.head, "recipe": cfg.loss.recipe, "crop": crop, "batch": n, "precision": precision,
              "flops_per_step": flops, "peak_flops": peak, "rows": rows}  # fmt: skip
    table = Table(title=f"train step: {cfg.model.backbone}/{cfg.model.head}, crop {crop}, batch {n}, "
                        f"{precision}, {device_name}")  # fmt: skip
    for col in ("variant", "step s (best / median)", "samples/s", "peak memory", "MFU"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["variant"], f"{r['step_s_best']:.3f} / {r['step_s_median']:.3f}", f"{r['samples_per_s']:.2f}",
                      f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
                      f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a (CPU)")  # fmt: skip
    Console().print(table)
    if args.accumulation > 1:
        result["accumulation_paths"] = accumulation_paths(args, cfg, crop, n, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
