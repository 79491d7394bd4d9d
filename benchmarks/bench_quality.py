"""CAM quality ablation on the synthetic parts task (the paper's Table 2 ladder, both patch kinds, both recipes).

Data: `cpn synth-voc --task parts` (1000 images, long side 64, data seed 0; the same task for every
model), packed with SLIC 30. Every model runs through the library steps of `cpn demo`
(cpn_dist.demo): per seed, data-calibrated random weights → the warm-up (the plain CAM, L_cls on I,
12 epochs; the shared start of every model of that seed, as every model of the paper starts from the
same ImageNet weights) → each variant for `train.epochs` (configs/demo.yaml: 4) from the warm-up →
multi-scale + flip CAMs of the `train` split → β swept over 0.000 … 0.600 (step 0.005; the same rule
for every model) → mIoU at the best β, and at that β body and marker recall and the mean CAM (relative
to its peak) on bodies and markers (cpn_dist.parts).

The variants (overrides of configs/demo.yaml), in the order of the paper's Table 2:

    baseline       L_cls on I only, no head (loss.recipe=cam, model.head=none)
    hiding         L_cls on I, I_h, I_hbar: hiding as augmentation only (weights [1,0,0], head none)
    tcp            + L_tcp on the raw CAM (weights [1,1,0], head none)
    tcp_pcm        + PCM: L_tcp on the raw and the refined CAM (head pcm, weights [1,1,0])   — Table 2 row 2
    cpcr           + L_cpcr, no OHEM (head pcm, weights [1,1,1], ohem_ratio 1.0)              — row 3
    ohem           + OHEM 20 % over the batch (head pcm)                                       — row 4
    cpn            + PRCM: the full paper recipe (head paper)                                  — row 5
    cpn_official   the released recipe (loss.recipe=official, head official, OHEM per image)

L_cpcr needs a refined CAM, so PCM comes in with L_tcp, as in Table 2. Every variant but the baseline
runs for each patch kind (superpixel: SLIC 30; grid: K = {8, 16}); the baseline has no patches.

    .venv/bin/python benchmarks/bench_quality.py --seeds 0 1 2 --threads 1
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

from machine import cpu_model  # benchmarks/machine.py
from rich.console import Console
from rich.table import Table

from cpn_dist.demo import (
    DEMO_CONFIG,
    DemoSettings,
    eval_names,
    infer_cams,
    initial_weights,
    make_data,
    score_cams,
    train_model,
    warm_up,
)

RESULTS = Path(__file__).resolve().parent / "results"

VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": ("loss.recipe=cam", "model.head=none"),
    # (head none has no CPCR; ohem_ratio 1 keeps the trainer from asking for refined CAMs for OHEM)
    "hiding": ("model.head=none", "loss.weights=[1.0, 0.0, 0.0]", "loss.ohem_ratio=1.0"),
    "tcp": ("model.head=none", "loss.weights=[1.0, 1.0, 0.0]", "loss.ohem_ratio=1.0"),
    "tcp_pcm": ("model.head=pcm", "loss.weights=[1.0, 1.0, 0.0]"),
    "cpcr": ("model.head=pcm", "loss.ohem_ratio=1.0"),
    "ohem": ("model.head=pcm",),
    "cpn": ("model.head=paper",),
    "cpn_official": ("loss.recipe=official", "model.head=official", "loss.ohem_scope=image"),
}
KINDS = ("superpixel", "grid")
METRICS = ("miou", "best_beta", "body_recall", "marker_recall", "body_magnitude", "marker_magnitude")




def run_one(out: Path, name: str, seed: int, kind: str | None, start: Path, data: tuple[str, ...],
            voc: Path, names: list[str], settings: DemoSettings, overrides: tuple[str, ...]) -> dict:  # fmt: skip
    """Train, infer and score one variant; returns its row (scores, seconds). Finished steps are reused."""
    label = name if kind is None else f"{name}/{kind}"
    tag = f"seed{seed}/{label}"
    row_path = out / "rows" / f"{tag.replace('/', '_')}.json"
    if row_path.is_file():
        return json.loads(row_path.read_text())
    run_overrides = (*data, f"model.weights={start}", f"train.seed={seed}", *overrides, *VARIANTS[name])
    if kind is not None:
        run_overrides += (f"data.patch.kind={kind}",)
    t0 = time.perf_counter()
    weights = train_model(DEMO_CONFIG, run_overrides, out / "runs" / tag)
    t_train = time.perf_counter() - t0
    cams = infer_cams(weights, DEMO_CONFIG, run_overrides, voc, names, out / "cams" / tag, settings)
    scores = score_cams(label, cams, voc, names, settings.betas)
    row = {"variant": name, "kind": kind, "seed": seed, **scores.to_json(), "beta_inside": scores.beta_inside,
           "train_s": t_train, "total_s": time.perf_counter() - t0}  # fmt: skip
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row) + "\n")
    return row


def tcp_target_stats(weights: Path, shards: Path, kind: str, batches: int = 10, seed: int = 0) -> dict:
    """What L_tcp (eq. 14) asks of the CAM at a model's weights: over ``batches`` training batches, on the
    active pixels (Y_o > 0.05) of labelled classes, the mean max-normalised CAM Y_o, the mean target
    λY_h + λ̄Y_hbar, and the share of those pixels where the target lies below Y_o."""
    import torch

    from cpn_dist.config import load_config
    from cpn_dist.data import build_train_loader
    from cpn_dist.losses import max_norm
    from cpn_dist.models import build_model, load_weights

    cfg = load_config(DEMO_CONFIG, [f"data.shards={shards}", f"data.patch.kind={kind}", "data.workers=0"])
    model = build_model(cfg.model.backbone, "none", dropout=0.0)
    load_weights(model, weights)
    model.eval()
    loader, _ = build_train_loader(cfg.data, micro_size=8, global_size=8, rank=0, world_size=1, seed=seed, epoch=0)
    y_sum = t_sum = below = n = 0.0
    with torch.no_grad():
        for i, b in enumerate(loader):
            if i == batches:
                break
            cam, _ = model(torch.cat([b["image"], b["image_h"], b["image_hbar"]]))
            y = b["labels"][..., None, None]
            y_o, y_h, y_hb = (max_norm(a[:, 1:]) * y for a in cam.chunk(3))
            lam = b["lam"].view(-1, 1, 1, 1)
            target = lam * y_h + (1 - lam) * y_hb
            active = (y.expand_as(y_o) > 0) & (y_o > 0.05)
            y_sum += y_o[active].sum().item()
            t_sum += target[active].sum().item()
            below += (target[active] < y_o[active]).sum().item()
            n += active.sum().item()
    return {"kind": kind, "mean_y_o": y_sum / n, "mean_target": t_sum / n, "target_below_share": below / n,
            "pixels": int(n)}  # fmt: skip


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per variant/kind: mean, sample std, min and max of each metric over seeds; the per-seed
    difference of mIoU and body recall to the same seed's baseline."""
    base = {r["seed"]: r for r in rows if r["variant"] == "baseline"}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["variant"] if r["kind"] is None else f"{r['variant']}/{r['kind']}", []).append(r)
    out = {}
    for label, rs in groups.items():
        entry = {"seeds": [r["seed"] for r in rs]}
        for m in METRICS:
            values = [r[m] for r in rs]
            entry[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values), "values": values}  # fmt: skip
        deltas = [r["miou"] - base[r["seed"]]["miou"] for r in rs if r["seed"] in base]
        body = [r["body_recall"] - base[r["seed"]]["body_recall"] for r in rs if r["seed"] in base]
        entry["delta_miou"] = deltas
        entry["delta_body_recall"] = body
        entry["beta_inside"] = all(r["beta_inside"] for r in rs)
        entry["train_s"] = statistics.fmean(r["train_s"] for r in rs)
        out[label] = entry
    return out


def table(summary: dict[str, dict], seeds: int) -> Table:
    t = Table("variant", "mIoU %", "Δ vs baseline (per seed)", "best β", "body recall %", "marker recall %",
              "body CAM", "marker CAM", "train s",
              title=f"parts task, {seeds} seed(s): mean ± std over seeds")  # fmt: skip

    def pm(entry, key, scale=100.0, digits=1):
        v = entry[key]
        return f"{v['mean'] * scale:.{digits}f} ± {v['std'] * scale:.{digits}f}"

    for label, e in summary.items():
        deltas = " ".join(f"{d * 100:+.1f}" for d in e["delta_miou"]) if label != "baseline" else ""
        betas = f"{e['best_beta']['min']:.3f}–{e['best_beta']['max']:.3f}" + ("" if e["beta_inside"] else " (edge)")
        t.add_row(label, pm(e, "miou"), deltas, betas, pm(e, "body_recall"), pm(e, "marker_recall"),
                  pm(e, "body_magnitude", 1, 3), pm(e, "marker_magnitude", 1, 3), f"{e['train_s']:.0f}")  # fmt: skip
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--eval-images", type=int, default=200, help="first N images of the train split scored")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a shared 2-core machine)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality")
    ap.add_argument("--tcp-target-only", action="store_true",
                    help="only measure the TCP target against Y_o on each seed's warm-up weights (already trained)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run (e.g. train.epochs=2)")
    args = ap.parse_args()
    import torch

    from cpn_dist.engine import quiet_libraries

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console = Console(width=170)
    settings = replace(DemoSettings(), eval_images=args.eval_images)
    started = time.perf_counter()
    voc, shards = make_data(args.out, settings)
    data = (f"data.shards={shards}", f"data.patch.segments={settings.segments}")
    names = eval_names(voc, settings)
    overrides = tuple(args.overrides)
    if args.tcp_target_only:
        stats = [{"seed": seed, **tcp_target_stats(args.out / "runs" / f"seed{seed}" / "warmup" / "model_final.pth",
                                                   shards, kind)}
                 for seed in args.seeds for kind in args.kinds]  # fmt: skip
        t = Table("seed", "patches", "mean Y_o", "mean λY_h + λ̄Y_hbar", "target < Y_o", "pixels",
                  title="L_tcp's target on active pixels of labelled classes (warm-up weights)")  # fmt: skip
        for st in stats:
            t.add_row(str(st["seed"]), st["kind"], f"{st['mean_y_o']:.3f}", f"{st['mean_target']:.3f}",
                      f"{st['target_below_share'] * 100:.1f} %", str(st["pixels"]))  # fmt: skip
        console.print(t)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "bench_quality_tcp_target.json").write_text(json.dumps(stats, indent=1) + "\n")
        return 0
    rows = []
    for seed in args.seeds:
        seeded = (*data, f"train.seed={seed}", *overrides)
        init = initial_weights(args.out / f"init_seed{seed}.pth", DEMO_CONFIG, seeded)
        t0 = time.perf_counter()
        start = warm_up(args.out / "runs" / f"seed{seed}" / "warmup", DEMO_CONFIG, (*seeded, f"model.weights={init}"),
                        settings.warmup_epochs)  # fmt: skip
        console.print(f"seed {seed}: warm-up ready ({time.perf_counter() - t0:.0f} s)")
        for name in args.variants:
            for kind in [None] if name == "baseline" else args.kinds:
                row = run_one(args.out, name, seed, kind, start, data, voc, names, settings, overrides)
                rows.append(row)
                console.print(f"[dim]{time.perf_counter() - started:6.0f} s[/] seed {seed} {row['name']}: mIoU "
                              f"{row['miou'] * 100:.2f} at β {row['best_beta']:.3f}, body "
                              f"{row['body_recall'] * 100:.1f} %, marker {row['marker_recall'] * 100:.1f} % "
                              f"({row['total_s']:.0f} s)")  # fmt: skip
    summary = summarise(rows)
    console.print(table(summary, len(args.seeds)))
    wall = time.perf_counter() - started
    console.print(f"wall time {wall:.0f} s")
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads,
        "python": sys.version.split()[0], "torch": torch.__version__, "settings": settings.__dict__,
        "overrides": list(overrides), "seeds": args.seeds, "kinds": args.kinds, "wall_s": wall,
        "rows": rows, "summary": summary,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_quality.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    console.print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
