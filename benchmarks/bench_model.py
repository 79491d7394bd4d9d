"""Model benchmark: parameter counts, FLOPs per training step, the tiny triplet step time, and the
time and peak memory of one ResNet38d training step on CPU (float32).

    .venv/bin/python benchmarks/bench_model.py                 # everything (the ResNet38d step takes minutes)
    .venv/bin/python benchmarks/bench_model.py --no-resnet-step

Prints a rich table and writes benchmarks/results/bench_model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/machine.py
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpn_dist.cpn.loss import cpn_loss  # noqa: E402
from cpn_dist.cpn.model import build_model  # noqa: E402
from cpn_dist.models import count_parameters  # noqa: E402
from cpn_dist.models.flops import training_step_flops  # noqa: E402


def _triplet_inputs(n: int, crop: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, 3, crop, crop, generator=g)
    labels = torch.zeros(n, 20)
    labels[:, 3] = 1
    lam = torch.full((n,), 0.6)
    return x, labels, lam


def training_step(model, x, labels, lam, recipe="official", scope="batch"):
    cam, refined = model(x)
    cams = cam.chunk(3)
    refs = refined.chunk(3) if refined is not None else None
    out = cpn_loss(cams, refs, labels, lam, recipe=recipe, ohem_scope=scope)
    out["total"].backward()
    return out


def time_tiny_step(repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model("tiny", "official").train()
    x, labels, lam = _triplet_inputs(1, 64)
    training_step(model, x, labels, lam)  # warm-up
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        training_step(model, x, labels, lam)
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def resnet_step_child(crop: int, batch: int, threads: int) -> None:
    """Run in a fresh process: one ResNet38d training step; prints JSON (time, peak RSS)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("resnet38d", "official").train()
    x, labels, lam = _triplet_inputs(batch, crop)
    base = _vm_kib("VmRSS")
    t0 = time.perf_counter()
    out = training_step(model, x, labels, lam)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"seconds": elapsed, "rss_before_step_kib": base, "peak_rss_kib": _vm_kib("VmHWM"),
                      "loss": float(out["total"])}))  # fmt: skip


def resnet_step(crop: int, batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(crop), str(batch), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-resnet-step", action="store_true", help="skip the (minutes-long) ResNet38d CPU step")
    parser.add_argument("--crop", type=int, default=448, help="crop of the ResNet38d CPU step")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of the tiny step")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        resnet_step_child(*args.child)
        return 0

    console = Console()
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
    }  # fmt: skip
    params = {}
    for backbone, head in (("resnet38d", "official"), ("resnet38d", "none"), ("tiny", "official")):
        with torch.device("meta"):
            m = build_model(backbone, head)
        params[f"{backbone}/{head}"] = {"total": count_parameters(m), "trainable": count_parameters(m, True)}
    results["parameters"] = params
    results["flops_resnet38d_official_crop448_batch4_triplet"] = training_step_flops(
        backbone="resnet38d", head="official", crop=448, batch=4)
    results["flops_tiny_official_crop64_batch1_triplet"] = training_step_flops(
        backbone="tiny", head="official", crop=64, batch=1)
    results["tiny_triplet_step_64"] = time_tiny_step(args.repeats)
    if not args.no_resnet_step:
        results[f"resnet38d_cpu_step_crop{args.crop}_batch1"] = resnet_step(args.crop, 1, torch.get_num_threads())

    table = Table(title="cpn-dist model benchmark")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, p in params.items():
        table.add_row(f"parameters {name}", f"{p['total']:,} ({p['trainable']:,} trainable)")
    f = results["flops_resnet38d_official_crop448_batch4_triplet"]
    table.add_row("ResNet38d step FLOPs, crop 448, batch 4 (12 images): forward",
                  f"{f['forward'] / 1e12:.2f} TFLOP")
    table.add_row("  forward + backward", f"{f['forward_backward'] / 1e12:.2f} TFLOP")
    t = results["tiny_triplet_step_64"]
    table.add_row("tiny triplet step 64×64 (fwd+loss+bwd), best / median",
                  f"{t['best_s'] * 1e3:.1f} / {t['median_s'] * 1e3:.1f} ms")
    key = f"resnet38d_cpu_step_crop{args.crop}_batch1"
    if key in results:
        r = results[key]
        table.add_row(f"ResNet38d CPU step crop {args.crop} batch 1 (triplet): time", f"{r['seconds']:.1f} s")
        table.add_row("  peak RSS (process)", f"{r['peak_rss_kib'] / 2**20:.2f} GiB")
        grown = (r["peak_rss_kib"] - r["rss_before_step_kib"]) / 2**20
        table.add_row("  peak RSS − RSS before the step", f"{grown:.2f} GiB")
    console.print(table)
    console.print(f"{results['cpu']}, {results['cores']} cores, torch {results['torch']}")
    out = ROOT / "benchmarks" / "results" / "bench_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
