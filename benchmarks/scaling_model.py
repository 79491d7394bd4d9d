"""The scaling model of docs/scaling.md: what one optimizer step of CPN costs on 1 … 64 GPUs, from
counted FLOPs, counted gradient bytes, datasheet bandwidths and the loader rate measured on the CPU.

    .venv/bin/python benchmarks/scaling_model.py                      # ResNet38d, crop 448, bf16 (the paper)
    .venv/bin/python benchmarks/scaling_model.py --mfu 0.30 --micro 2  # other assumptions

Weak scaling: every GPU runs ``--micro`` images (CPN triplets) per optimizer step, so the global batch is
``micro × GPUs`` (past 4, with the lr rule of docs/training.md "More than 4 GPUs"). Per step:

- compute: forward + backward FLOPs of one GPU's micro-batch (``cpn_dist.models.flops``, counted) at
  the device's bf16 peak (datasheet) × ``--mfu`` (an assumption until benchmarks/device_check.py has
  measured the step time on the card);
- gradients: every trainable parameter's gradient is all-reduced in fp32 (DDP keeps fp32 master weights
  under bf16 autocast), in DDP's 25 MB buckets; a ring all-reduce moves ``2 (N − 1) / N`` of the bytes
  at the bus bandwidth of its slowest stage — NVLink in a node, the node's NICs together between nodes
  (8 NICs per node, rail-optimised, or 1) — plus a latency per hop and bucket;
- overlap: DDP launches a bucket's all-reduce as soon as its gradients are ready during the backward
  pass; only what exceeds the backward time, plus the last bucket, is exposed;
- the loader: samples/s each GPU consumes at that step time, against the per-worker rate measured on
  the CPU (BENCHMARKS.md: 46–55 samples/s per worker at crop 448, streaming) → workers per GPU.

Nothing here is a measurement of a GPU. Prints a table and writes benchmarks/results/scaling_model.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"

# Datasheet figures (dense, no sparsity): H100 SXM bf16 peak; NVLink 4 per GPU per direction; NICs.
PEAK_BF16 = 989.5e12
NVLINK_BYTES_S = 450e9  # 900 GB/s bidirectional per H100 SXM
NCCL_EFFICIENCY = 0.8  # share of a link's bandwidth a ring all-reduce reaches (NCCL bus bandwidth): assumed
LINKS_GBIT = (100, 200, 400)  # NIC speeds between nodes
NICS_PER_NODE = (8, 1)  # one NIC per GPU (rail-optimised H100 clusters), or one per node
LATENCY_S = 5e-6  # per ring hop and bucket: assumed
BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb
BACKWARD_SHARE = 2 / 3  # of a step's compute: backward ≈ 2 × forward
LOADER_PER_WORKER = 46.0  # samples/s per loader worker at crop 448, the lower of BENCHMARKS.md's CPU figures
GPUS_PER_NODE = 8
GPU_COUNTS = (1, 8, 16, 64)
DATASETS = {"VOC train_aug × 8 epochs": 10582 * 8, "COCO train2014 × 5 epochs": 82783 * 5}


def counted(backbone: str, head: str, crop: int, micro: int) -> dict:
    """FLOPs of one GPU's step and the trainable parameters (both counted on the meta device)."""
    import torch

    from cpn_dist.cpn.model import build_model
    from cpn_dist.models.flops import training_step_flops

    flops = training_step_flops(backbone=backbone, head=head, crop=crop, batch=micro)
    with torch.device("meta"):
        model = build_model(backbone, head, dropout=0.0)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"flops": flops["forward_backward"], "forward_flops": flops["forward"], "trainable_params": params}


def allreduce_seconds(nbytes: float, gpus: int, nic_gbit: float, nics_per_node: int, buckets: int) -> float:
    """A hierarchical ring all-reduce of ``nbytes`` over ``gpus`` (NCCL's schedule on several nodes): each
    GPU moves ``2 (N − 1) / N`` of the bytes at the bus bandwidth of the slowest stage — NVLink inside a
    node; between nodes the node's NICs together (every byte leaves and enters each node about twice,
    spread over its NICs) — plus a latency per hop and bucket."""
    if gpus == 1:
        return 0.0
    nodes = math.ceil(gpus / GPUS_PER_NODE)
    bus = NVLINK_BYTES_S if nodes == 1 else min(NVLINK_BYTES_S, nics_per_node * nic_gbit * 1e9 / 8)
    hops = 2 * (min(gpus, GPUS_PER_NODE) - 1 + nodes - 1)
    return 2 * (gpus - 1) / gpus * nbytes / (bus * NCCL_EFFICIENCY) + buckets * hops * LATENCY_S


def step_model(c: dict, gpus: int, nic_gbit: float, nics_per_node: int, mfu: float, micro: int) -> dict:
    compute = c["flops"] / (PEAK_BF16 * mfu)
    grad_bytes = 4 * c["trainable_params"]
    buckets = math.ceil(grad_bytes / BUCKET_BYTES)
    comm = allreduce_seconds(grad_bytes, gpus, nic_gbit, nics_per_node, buckets)
    last_bucket = comm / buckets if gpus > 1 else 0.0
    exposed = max(0.0, comm - BACKWARD_SHARE * compute) + last_bucket
    step = compute + exposed
    samples_s = micro / step
    link = "NVLink" if gpus <= GPUS_PER_NODE else f"{nics_per_node} × {nic_gbit:g} Gb/s per node"
    return {"gpus": gpus, "global_batch": micro * gpus, "link": link, "compute_ms": compute * 1e3,
            "allreduce_ms": comm * 1e3, "exposed_ms": exposed * 1e3, "step_ms": step * 1e3,
            "efficiency": compute / step, "samples_s_per_gpu": samples_s,
            "workers_per_gpu": samples_s / LOADER_PER_WORKER,
            "hours": {name: n / (samples_s * gpus) / 3600 for name, n in DATASETS.items()}}  # fmt: skip


def _minutes(m: float) -> str:
    return f"{m:.1f} min" if m < 10 else f"{m:.0f} min"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet38d")
    ap.add_argument("--head", default="paper")
    ap.add_argument("--crop", type=int, default=448)
    ap.add_argument("--micro", type=int, default=4, help="images per GPU per optimizer step (weak scaling)")
    ap.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOP utilisation in bf16")
    args = ap.parse_args()
    c = counted(args.backbone, args.head, args.crop, args.micro)
    rows = [step_model(c, g, link, nics, args.mfu, args.micro) for g in GPU_COUNTS
            for nics in (NICS_PER_NODE if g > GPUS_PER_NODE else NICS_PER_NODE[:1])
            for link in (LINKS_GBIT if g > GPUS_PER_NODE else LINKS_GBIT[:1])]  # fmt: skip
    table = Table("GPUs", "global batch", "link", "compute ms", "all-reduce ms", "exposed ms", "step ms",
                  "efficiency", "samples/s/GPU", "workers/GPU", *(f"{name}, wall" for name in DATASETS),
                  title=f"{args.backbone} crop {args.crop}, {args.micro} images/GPU, bf16 at MFU {args.mfu:g}")
    for r in rows:
        table.add_row(str(r["gpus"]), str(r["global_batch"]), r["link"], f"{r['compute_ms']:.0f}",
                      f"{r['allreduce_ms']:.1f}", f"{r['exposed_ms']:.1f}", f"{r['step_ms']:.0f}",
                      f"{r['efficiency'] * 100:.0f} %", f"{r['samples_s_per_gpu']:.1f}", f"{r['workers_per_gpu']:.1f}",
                      *(_minutes(h * 60) for h in r["hours"].values()))  # fmt: skip
    console = Console(width=220)
    console.print(table)
    console.print(f"counted: {c['flops'] / 1e12:.2f} TFLOP forward+backward per GPU step ({args.micro} triplets), "
                  f"{c['trainable_params'] / 1e6:.1f} M trainable parameters = {4 * c['trainable_params'] / 2**20:.0f}"
                  f" MiB of fp32 gradients")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "counted": c, "assumed": {"peak_bf16": PEAK_BF16, "nvlink_bytes_s": NVLINK_BYTES_S,
              "nccl_efficiency": NCCL_EFFICIENCY, "latency_s": LATENCY_S, "bucket_bytes": BUCKET_BYTES,
              "backward_share": BACKWARD_SHARE, "loader_per_worker": LOADER_PER_WORKER}, "rows": rows}  # fmt: skip
    (RESULTS / "scaling_model.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
