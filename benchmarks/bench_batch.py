"""Global batch and learning-rate rule: CAM mIoU of the plain CAM and of full CPN at global batch 4, 8, 16
and 32 with the same number of epochs, for each rule (none, linear, sqrt; with and without warm-up).

The parts-reliable task and scoring of `benchmarks/bench_quality.py` (1000 images of 64 px, SLIC 30,
CAMs of the first 200 `train` images, β swept, mIoU at the best β). Every model of a seed starts from
that seed's warm-up (the shared plain-CAM start of the tiny backbone) and trains `train.epochs` (4)
epochs at global batch G = micro batch G (one process: the split does not change the weights, see
docs/design.md), with `optim.reference_batch=4`, `optim.lr=0.05` (the demo's lr) at the reference, and
the rule's lr at G: none → 0.05, linear → 0.05·G/4, sqrt → 0.05·√(G/4); warm-up: `optim.warmup_epochs`
(default 0.5) from 0.1 × lr. At G = 4 every rule is the same run.

    .venv/bin/python benchmarks/bench_batch.py --seeds 0 1 2
    .venv/bin/python benchmarks/bench_batch.py --seeds 0 1 2 --report-only

Prints the table (mean ± std over seeds per cell, and the difference to G = 4 per seed), writes
benchmarks/results/bench_batch_<backbone>.json and .md. Rows are cached: a re-run only trains what is
missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bench_quality import CONFIGS, RESULTS, run_one, seed_start  # benchmarks/bench_quality.py
from machine import cpu_model
from rich.console import Console
from rich.table import Table

from cpn_dist.demo.run import eval_names
from cpn_dist.demo.settings import DemoSettings
from cpn_dist.demo.steps import make_data

BATCHES = (4, 8, 16, 32)
RULES = ("none", "linear", "sqrt")
MODELS = {"baseline": None, "cpn": "superpixel"}  # bench_quality variant → patch kind
BASE_LR = 0.05
REFERENCE = 4


def cells(batches, rules, warmup_epochs: float) -> list[dict]:
    """Every (global batch, rule, warm-up) cell; G = reference appears once per warm-up setting."""
    out = []
    for g in batches:
        for rule in rules if g != REFERENCE else ("none",):
            for warm in (0.0, warmup_epochs):
                label = f"g{g}_{rule}_w{warm:g}"
                overrides = (f"batch.global_size={g}", f"batch.micro_size={g}", f"optim.lr={BASE_LR}",
                             f"optim.reference_batch={REFERENCE}", f"optim.lr_scaling={rule}",
                             f"optim.warmup_epochs={warm}")  # fmt: skip
                out.append({"label": label, "global": g, "rule": rule, "warmup_epochs": warm, "overrides": overrides})
    return out


def summarise(rows: list[dict]) -> dict:
    """Per (model, cell): mean/std/min/max of mIoU over seeds and the per-seed difference to G = 4 — without
    warm-up (the paper's setting: ``delta``), with the cell's own warm-up (``delta_same_warmup``: what
    the batch and the rule cost, the warm-up aside), and with warm-up (``delta_warmed_mean``: against the
    reference that trains stably on this proxy — without warm-up global 4 collapses on some seeds)."""
    base = {(r["model"], r["seed"], r["warmup_epochs"]): r["miou"] for r in rows if r["global"] == REFERENCE}
    warmed = max((r["warmup_epochs"] for r in rows), default=0.0)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["global"], r["rule"], r["warmup_epochs"]), []).append(r)
    out = {}
    for (model, g, rule, warm), rs in sorted(groups.items()):
        values = [r["miou"] for r in rs]
        deltas = [r["miou"] - base[(model, r["seed"], 0.0)] for r in rs if (model, r["seed"], 0.0) in base]
        same = [r["miou"] - base[(model, r["seed"], warm)] for r in rs if (model, r["seed"], warm) in base]
        stable = [r["miou"] - base[(model, r["seed"], warmed)] for r in rs if (model, r["seed"], warmed) in base]
        out[f"{model}|{g}|{rule}|{warm:g}"] = {
            "model": model, "global": g, "rule": rule, "warmup_epochs": warm, "seeds": [r["seed"] for r in rs],
            "miou": {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "min": min(values), "max": max(values), "values": values},
            "delta": deltas, "delta_mean": statistics.fmean(deltas) if deltas else None,
            "delta_same_warmup": same, "delta_same_warmup_mean": statistics.fmean(same) if same else None,
            "delta_warmed_mean": statistics.fmean(stable) if stable else None,
            "lr": rs[0]["lr"], "train_s": statistics.fmean(r["train_s"] for r in rs),
        }  # fmt: skip
    return out


def verdicts(summary: dict, tolerance: float = 0.01) -> list[dict]:
    """For each rule and warm-up: the mean difference to G = 4 (same warm-up) at the largest batch measured,
    per model, and whether every model stays within ``tolerance`` (1 point) of it — the issue's criterion."""
    largest = max(e["global"] for e in summary.values())
    found: dict[tuple, dict] = {}
    for e in summary.values():
        if e["global"] != largest or e["delta_same_warmup_mean"] is None:
            continue
        entry = found.setdefault((e["rule"], e["warmup_epochs"]), {"rule": e["rule"], "warmup_epochs":
                                                                    e["warmup_epochs"], "global": largest})
        entry[e["model"]] = e["delta_same_warmup_mean"]
        entry[f"{e['model']} vs warmed"] = e["delta_warmed_mean"]
    for entry in found.values():
        entry["within"] = all(v >= -tolerance for k, v in entry.items() if k in MODELS)
    return sorted(found.values(), key=lambda v: -min(v.get(m, -1.0) for m in MODELS))


def markdown(summary: dict) -> str:
    lines = ["| model | global batch | rule | warm-up (epochs) | lr | mIoU % (mean ± std) | Δ vs global 4 "
             "(no warm-up), per seed | Δ vs global 4 (same warm-up), per seed | mean Δ (same warm-up) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in summary.values():
        deltas = " / ".join(f"{d * 100:+.1f}" for d in e["delta"])
        same = " / ".join(f"{d * 100:+.1f}" for d in e["delta_same_warmup"])
        mean = "—" if e["delta_same_warmup_mean"] is None else f"{e['delta_same_warmup_mean'] * 100:+.1f}"
        lines.append(f"| {e['model']} | {e['global']} | {e['rule']} | {e['warmup_epochs']:g} | {e['lr']:g} | "
                     f"{e['miou']['mean'] * 100:.1f} ± {e['miou']['std'] * 100:.1f} | {deltas} | {same} | "
                     f"{mean} |")  # fmt: skip
    keys = [*MODELS, *(f"{m} vs warmed" for m in MODELS)]
    lines += ["", "| rule | warm-up (epochs) | global | " + " | ".join(f"mean Δ {m} (same warm-up)" for m in MODELS)
              + " | " + " | ".join(f"mean Δ {m} (vs global 4 with warm-up)" for m in MODELS)
              + " | within 1 point (same warm-up) |", "|---|---|---|" + "---|" * len(keys) + "---|"]  # fmt: skip
    for v in verdicts(summary):
        cols = " | ".join("—" if v.get(k) is None else f"{v[k] * 100:+.1f}" for k in keys)
        within = "yes" if v["within"] else "no"
        lines.append(f"| {v['rule']} | {v['warmup_epochs']:g} | {v['global']} | {cols} | {within} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=list(CONFIGS), default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--warmup-epochs", type=float, default=0.5)
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default results/batch_parts-reliable_<backbone>")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    import torch

    from cpn_dist.training.launch import quiet_libraries

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console = Console(width=200)
    out = args.out or RESULTS / f"batch_parts-reliable_{args.backbone}"
    config = CONFIGS[args.backbone]
    settings = replace(DemoSettings(), task="parts-reliable", eval_images=args.eval_images)
    started = time.perf_counter()
    data = make_data(out, settings)
    names = eval_names(data.voc, settings)
    todo = cells(args.batches, args.rules, args.warmup_epochs)
    rows = []
    for seed in args.seeds:
        start = () if args.report_only else seed_start(out, config, args.backbone, seed, data, settings, ())
        for cell in todo:
            for model, kind in MODELS.items():
                if model not in args.models:
                    continue
                cell_out = out / cell["label"]
                label = model if kind is None else f"{model}/{kind}"
                path = cell_out / "rows" / f"seed{seed}_{label.replace('/', '_')}.json"
                if args.report_only and not path.is_file():
                    continue
                row = run_one(cell_out, config, model, seed, kind, start, data, names, settings, cell["overrides"])
                from cpn_dist.config.load import load_config
                from cpn_dist.training.optim import scaled_lr

                lr = scaled_lr(load_config(config, list(cell["overrides"])).optim, cell["global"])
                rows.append({"model": model, "seed": seed, "global": cell["global"], "rule": cell["rule"],
                             "warmup_epochs": cell["warmup_epochs"], "lr": lr, "miou": row["miou"],
                             "train_s": row["train_s"],
                             "loss_total": row["train_summary"].get("loss/total")})  # fmt: skip
                if not args.report_only:
                    console.print(f"[dim]{time.perf_counter() - started:6.0f} s[/] seed {seed} {cell['label']} "
                                  f"{model}: mIoU {row['miou'] * 100:.2f} (lr {lr:g}, {row['train_s']:.0f} s)")
    summary = summarise(rows)
    table = Table("model", "G", "rule", "warm-up", "lr", "mIoU %", "Δ vs G=4 per seed", "Δ same warm-up",
                  "mean Δ same warm-up",
                  title=f"global batch × lr rule, {args.backbone}, seeds {args.seeds}")
    for e in summary.values():
        table.add_row(e["model"], str(e["global"]), e["rule"], f"{e['warmup_epochs']:g}", f"{e['lr']:g}",
                      f"{e['miou']['mean'] * 100:.1f} ± {e['miou']['std'] * 100:.1f}",
                      " ".join(f"{d * 100:+.1f}" for d in e["delta"]),
                      " ".join(f"{d * 100:+.1f}" for d in e["delta_same_warmup"]),
                      "—" if e["delta_same_warmup_mean"] is None
                      else f"{e['delta_same_warmup_mean'] * 100:+.1f}")  # fmt: skip
    console.print(table)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
              "cores": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads,
              "torch": torch.__version__, "backbone": args.backbone, "seeds": args.seeds,
              "warmup_epochs": args.warmup_epochs, "base_lr": BASE_LR, "reference_batch": REFERENCE,
              "wall_s": time.perf_counter() - started, "rows": rows, "summary": summary,
              "verdicts": verdicts(summary)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_batch_{args.backbone}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(summary))
    console.print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
