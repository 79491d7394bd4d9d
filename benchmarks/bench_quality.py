"""CAM quality ablation on a synthetic parts task: the paper's Table 2 ladder, both recipes, both heads.

Data: `cpn synth-voc --task parts-reliable` (default; `--task parts` is the older task, whose body cue
is unreliable), 1000 images, long side 64, data seed 0, packed with SLIC 30 — the same data, packing
and β rule for every model. Every model runs through the library steps of `cpn demo` (cpn_dist.demo.run):
the shared start of a seed → each variant for `train.epochs` → multi-scale + flip CAMs of the first
`--eval-images` `train` images → β swept over 0.000 … 0.600 (finer below 0.005) → mIoU at the best β,
body and marker recall and the mean CAM (relative to its peak) on bodies and markers at that β.

Backbones (`--backbone`):

    tiny                 configs/demo.yaml: per seed, data-calibrated random weights → the warm-up (the
                         plain CAM, 12 epochs) = the shared start of every variant of that seed
    efficientnet_lite0   configs/demo_efficientnet.yaml: every variant starts from the packaged ImageNet
                         weights (no warm-up), as every model of the paper starts from ImageNet

Variants (overrides of the config), in the order of the paper's Table 2, then the recipe/head grid:

    baseline                     L_cls on I only, no head (loss.recipe=cam, model.head=none)
    hiding                       L_cls on I, I_h, I_hbar: hiding as augmentation only (head none)
    tcp_pcm                      + L_tcp on the raw and the refined CAM, PCM head (weights [1,1,0])  — row 2
    cpcr                         + L_cpcr, no OHEM (head pcm, ohem_ratio 1)                          — row 3
    ohem                         + OHEM 20 % over the batch (head pcm)                               — row 4
    cpn                          + PRCM: full CPN, paper recipe, CPCR's stop-gradient (head paper)   — row 5
    cpn_literal                  full CPN, paper recipe, eq. 15 read literally (nothing detached)
    cpn_official                 full CPN, released recipe + head, OHEM per image, the released optimizer
                                 (momentum 5e-4) and draw rule (floor((K+1)/2) ids with replacement)
    paper_recipe_official_head   the paper recipe with the released head
    official_recipe_paper_head   the released recipe (optimizer, draw rule) with the paper head

Columns besides the scores: the premise share (cpn_dist.demo.parts.premise_share: CP pairs whose
marker-less branch still has a positive raw CAM on the body) of each seed's start and of each trained
model; for models with a head the raw CAM's mIoU next to the refined CAM's (the refined CAM is what is
scored, as released); for paper-head models the refined CAM without its PRCM term ("PCM only": the same
weights run with model.head=pcm, Y_pcm alone — what PRCM adds or costs); and the share of training steps
in which OHEM left out a non-zero CPCR element (train_summary.json's `ohem/discards_nonzero`; with few
labels per image at most (1 + #labels)/21 of the elements are non-zero, so OHEM at 20 % often keeps them
all).

    .venv/bin/python benchmarks/bench_quality.py --backbone tiny --seeds 0 1 2 --kinds superpixel grid
    .venv/bin/python benchmarks/bench_quality.py --backbone efficientnet_lite0 --seeds 0 1 2
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

from cpn_dist.demo.run import eval_names
from cpn_dist.demo.settings import DemoSettings, size_overrides
from cpn_dist.demo.steps import infer_cams, initial_weights, make_data, premise, score_cams, train_model, warm_up

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {"tiny": ROOT / "configs" / "demo.yaml", "efficientnet_lite0": ROOT / "configs" / "demo_efficientnet.yaml"}

RELEASED = ("loss.recipe=official", "loss.ohem_scope=image", "optim.momentum=0.0005", "data.patch.sampling=released")
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": ("loss.recipe=cam", "model.head=none"),
    # (head none has no CPCR; ohem_ratio 1 keeps the trainer from asking for refined CAMs for OHEM)
    "hiding": ("model.head=none", "loss.weights=[1.0, 0.0, 0.0]", "loss.ohem_ratio=1.0"),
    "tcp_pcm": ("model.head=pcm", "loss.weights=[1.0, 1.0, 0.0]"),
    "cpcr": ("model.head=pcm", "loss.ohem_ratio=1.0"),
    "ohem": ("model.head=pcm",),
    "cpn": ("model.head=paper",),
    "cpn_literal": ("model.head=paper", "loss.cpcr_stop_gradient=false"),
    "cpn_official": (*RELEASED, "model.head=official"),
    "paper_recipe_official_head": ("model.head=official",),
    "official_recipe_paper_head": (*RELEASED, "model.head=paper"),
}
HEADLESS = ("baseline", "hiding")
PAPER_HEAD = ("cpn", "cpn_literal", "official_recipe_paper_head")  # PCM + PRCM (eq. 10-12) on the paper's input
KINDS = ("superpixel", "grid")
METRICS = ("miou", "raw_miou", "pcm_only_miou", "best_beta", "body_recall", "marker_recall", "body_magnitude",
           "marker_magnitude", "premise", "ohem_discards", "image_independence")  # fmt: skip


def with_image_independence(out: Path, row: dict, names: list[str]) -> dict:
    """The row with ``image_independence`` (cpn_dist.labels.cams.image_independence) of its scored CAMs: ~0.1 for
    CAMs that follow their objects, ~1 for a CAM collapsed to one image-independent pattern."""
    if row.get("image_independence") is None:
        from cpn_dist.labels.cams import image_independence

        label = row["variant"] if row["kind"] is None else f"{row['variant']}/{row['kind']}"
        folder = out / "cams" / f"seed{row['seed']}" / label
        row = {**row, "image_independence": image_independence(folder, names) if folder.is_dir() else None}
    return row


def variant_overrides(name: str, seed: int, kind: str | None, start: tuple[str, ...], data, settings: DemoSettings,
                      overrides: tuple[str, ...]) -> tuple[str, ...]:  # fmt: skip
    """The config overrides one variant of one seed trains (and infers) with."""
    run_overrides = (*data.overrides(settings), *start, f"train.seed={seed}", *overrides, *VARIANTS[name])
    return run_overrides + ((f"data.patch.kind={kind}",) if kind is not None else ())


def with_pcm_only(out: Path, config: Path, row: dict, data, names: list[str], settings: DemoSettings,
                  overrides: tuple[str, ...]) -> dict:  # fmt: skip
    """The row with ``pcm_only_miou`` for a paper-head model: its refined CAM without the PRCM term — the same
    trained weights run with ``model.head=pcm``, so Ŷ = Y_pcm instead of Y_pcm + Y_prcm — what PRCM adds
    or costs at inference. Written back into the cached row."""
    if row["variant"] not in PAPER_HEAD or row.get("pcm_only_miou") is not None:
        return row
    label = row["variant"] if row["kind"] is None else f"{row['variant']}/{row['kind']}"
    tag = f"seed{row['seed']}/{label}"
    weights = out / "runs" / tag / "model_final.pth"
    if not weights.is_file():
        return row
    run_overrides = (*variant_overrides(row["variant"], row["seed"], row["kind"], (), data, settings, overrides),
                     "model.head=pcm")  # the start weights do not matter here: the trained ones are loaded
    cams = infer_cams(weights, config, run_overrides, data.voc, names, out / "cams_pcm_only" / tag, settings)
    row = {**row, "pcm_only_miou": score_cams(label, cams, data.voc, names, settings.betas).miou}
    (out / "rows" / f"{tag.replace('/', '_')}.json").write_text(json.dumps(row) + "\n")
    return row


def run_one(out: Path, config: Path, name: str, seed: int, kind: str | None, start: tuple[str, ...], data,
            names: list[str], settings: DemoSettings, overrides: tuple[str, ...]) -> dict:  # fmt: skip
    """Train, infer and score one variant; returns its row. Finished steps (and rows) are reused."""
    label = name if kind is None else f"{name}/{kind}"
    tag = f"seed{seed}/{label}"
    row_path = out / "rows" / f"{tag.replace('/', '_')}.json"
    if row_path.is_file():
        return json.loads(row_path.read_text())
    run_overrides = variant_overrides(name, seed, kind, start, data, settings, overrides)
    t0 = time.perf_counter()
    weights = train_model(config, run_overrides, out / "runs" / tag)
    t_train = time.perf_counter() - t0
    summary = json.loads((weights.parent / "train_summary.json").read_text())["means"]
    cams = infer_cams(weights, config, run_overrides, data.voc, names, out / "cams" / tag, settings)
    scores = score_cams(label, cams, data.voc, names, settings.betas)
    raw_miou = None
    if name not in HEADLESS:
        raw = infer_cams(weights, config, run_overrides, data.voc, names, out / "cams_raw" / tag, settings, use="cam")
        raw_miou = score_cams(label, raw, data.voc, names, settings.betas).miou
    found = premise(weights, config, run_overrides, data.voc, names, kinds=("superpixel",))["superpixel"]
    row = {"variant": name, "kind": kind, "seed": seed, **scores.to_json(), "beta_inside": scores.beta_inside,
           "raw_miou": raw_miou, "premise": found["share"], "premise_detail": found,
           "ohem_discards": summary.get("ohem/discards_nonzero"), "train_summary": summary,
           "train_s": t_train, "total_s": time.perf_counter() - t0}  # fmt: skip
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row) + "\n")
    return row


def seed_start(out: Path, config: Path, backbone: str, seed: int, data, settings: DemoSettings,
               overrides: tuple[str, ...]) -> tuple[str, ...]:  # fmt: skip
    """The overrides that make every variant of a seed start from the same weights: the seed's warm-up
    (tiny) or the config's ImageNet weights (efficientnet_lite0: nothing to add)."""
    if backbone != "tiny":
        return ()
    seeded = (*data.overrides(settings), f"train.seed={seed}", *overrides)
    init = initial_weights(out / f"init_seed{seed}.pth", config, seeded)
    start = warm_up(out / "runs" / f"seed{seed}" / "warmup", config, (*seeded, f"model.weights={init}"),
                    settings.warmup_epochs)  # fmt: skip
    return (f"model.weights={start}",)


def start_premise(out: Path, config: Path, seed: int, start: tuple[str, ...], data, names: list[str],
                  settings: DemoSettings) -> dict:  # fmt: skip
    """The premise share of a seed's start (superpixel and grid patches), cached beside the rows."""
    path = out / "rows" / f"seed{seed}_start_premise.json"
    if path.is_file():
        return json.loads(path.read_text())
    from cpn_dist.config import load_config

    run_overrides = (*data.overrides(settings), *start, f"train.seed={seed}")
    weights = load_config(config, list(run_overrides)).model.weights
    found = premise(weights, config, run_overrides, data.voc, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found) + "\n")
    return found


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
            values = [r[m] for r in rs if r.get(m) is not None]
            if not values:
                entry[m] = None
                continue
            entry[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values), "values": values}  # fmt: skip
        entry["delta_miou"] = [r["miou"] - base[r["seed"]]["miou"] for r in rs if r["seed"] in base]
        entry["delta_body_recall"] = [r["body_recall"] - base[r["seed"]]["body_recall"]
                                      for r in rs if r["seed"] in base]  # fmt: skip
        entry["beta_inside"] = all(r["beta_inside"] for r in rs)
        entry["train_s"] = statistics.fmean(r["train_s"] for r in rs)
        out[label] = entry
    return out


def table(summary: dict[str, dict], title: str) -> Table:
    t = Table("variant", "mIoU %", "Δ vs baseline (per seed)", "raw CAM mIoU %", "PCM only %", "best β", "body rec. %",
              "marker rec. %", "body CAM", "premise %", "OHEM drops ≠0", "image-indep.", "train s",
              title=title)  # fmt: skip

    def pm(entry, key, scale=100.0, digits=1):
        v = entry[key]
        return "—" if v is None else f"{v['mean'] * scale:.{digits}f} ± {v['std'] * scale:.{digits}f}"

    for label, e in summary.items():
        deltas = " ".join(f"{d * 100:+.1f}" for d in e["delta_miou"]) if not label.startswith("baseline") else ""
        betas = f"{e['best_beta']['min']:.3f}–{e['best_beta']['max']:.3f}" + ("" if e["beta_inside"] else " (edge)")
        drops = "—" if e["ohem_discards"] is None else f"{e['ohem_discards']['mean'] * 100:.0f} %"
        t.add_row(label, pm(e, "miou"), deltas, pm(e, "raw_miou"), pm(e, "pcm_only_miou"), betas, pm(e, "body_recall"),
                  pm(e, "marker_recall"), pm(e, "body_magnitude", 1, 3), pm(e, "premise", 100, 0), drops,
                  pm(e, "image_independence", 1, 2), f"{e['train_s']:.0f}")  # fmt: skip
    return t


def markdown(summary: dict[str, dict]) -> str:
    """The summary as a markdown table (what BENCHMARKS.md shows): mean ± std over seeds, per-seed Δ."""

    def pm(e, key, scale=100.0, digits=1):
        v = e[key]
        return "—" if v is None else f"{v['mean'] * scale:.{digits}f} ± {v['std'] * scale:.{digits}f}"

    lines = ["| variant | seeds | mIoU % | Δ mIoU vs baseline, per seed | raw CAM mIoU % | PCM only mIoU % | best β | "
             "body recall % | marker recall % | premise % | OHEM drops ≠ 0 | image independence |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, e in summary.items():
        deltas = " / ".join(f"{d * 100:+.1f}" for d in e["delta_miou"]) if not label.startswith("baseline") else "—"
        betas = f"{e['best_beta']['min']:.3f}–{e['best_beta']['max']:.3f}"
        drops = "—" if e["ohem_discards"] is None else f"{e['ohem_discards']['mean'] * 100:.0f} % of steps"
        seeds = ", ".join(map(str, e["seeds"]))
        lines.append(f"| {label} | {seeds} | {pm(e, 'miou')} | {deltas} | {pm(e, 'raw_miou')} | "
                     f"{pm(e, 'pcm_only_miou')} | {betas} | "
                     f"{pm(e, 'body_recall')} | {pm(e, 'marker_recall')} | {pm(e, 'premise', 100, 0)} | {drops} | "
                     f"{pm(e, 'image_independence', 1, 2)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=list(CONFIGS), default="tiny")
    ap.add_argument("--task", choices=("parts", "parts-reliable"), default="parts-reliable")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=["superpixel"], choices=KINDS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--eval-images", type=int, default=200, help="first N images of the train split scored")
    ap.add_argument("--size", type=int, default=64, help="long side of the task's images: the same task scaled "
                    "(object and marker sizes are fractions of the image; crop, scale range and grid cells scale too)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a shared 2-core machine)")
    ap.add_argument("--out", type=Path, default=None, help="default results/quality_<task>_<backbone>")
    ap.add_argument("--report-only", action="store_true", help="only assemble the table from the finished rows")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run (e.g. train.epochs=2)")
    args = ap.parse_args()
    import torch

    from cpn_dist.training.launch import quiet_libraries

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console = Console(width=200)
    sized = "" if args.size == 64 else f"_{args.size}px"
    out = args.out or RESULTS / f"quality_{args.task}_{args.backbone}{sized}"
    config = CONFIGS[args.backbone]
    settings = replace(DemoSettings(), task=args.task, eval_images=args.eval_images, size=args.size)
    started = time.perf_counter()
    data = make_data(out, settings)
    names = eval_names(data.voc, settings)
    overrides = (*size_overrides(config, args.size), *args.overrides)
    rows, starts = [], {}
    for seed in args.seeds:
        if args.report_only:
            rows += [json.loads(p.read_text()) for p in sorted((out / "rows").glob(f"seed{seed}_*.json"))
                     if not p.name.endswith("start_premise.json")]  # fmt: skip
            path = out / "rows" / f"seed{seed}_start_premise.json"
            starts[seed] = json.loads(path.read_text()) if path.is_file() else None
            continue
        t0 = time.perf_counter()
        start = seed_start(out, config, args.backbone, seed, data, settings, overrides)
        starts[seed] = start_premise(out, config, seed, start, data, names, settings)
        console.print(f"seed {seed}: start ready ({time.perf_counter() - t0:.0f} s); premise "
                      + ", ".join(f"{k} {v['share'] * 100:.1f} %" for k, v in starts[seed].items()))  # fmt: skip
        for name in args.variants:
            for kind in [None] if name == "baseline" else args.kinds:
                row = run_one(out, config, name, seed, kind, start, data, names, settings, overrides)
                rows.append(row)
                raw = "" if row["raw_miou"] is None else f" (raw {row['raw_miou'] * 100:.2f})"
                console.print(f"[dim]{time.perf_counter() - started:6.0f} s[/] seed {seed} {row['name']}: mIoU "
                              f"{row['miou'] * 100:.2f}{raw} at β {row['best_beta']:.3f}, body "
                              f"{row['body_recall'] * 100:.1f} %, marker {row['marker_recall'] * 100:.1f} %, premise "
                              f"{row['premise'] * 100:.0f} % ({row['total_s']:.0f} s)")  # fmt: skip
    rows = [with_pcm_only(out, config, with_image_independence(out, r, names), data, names, settings, overrides)
            for r in rows]
    rows.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["kind"] or "", r["seed"]))  # Table 2's order
    summary = summarise(rows)
    console.print(table(summary, f"{args.task}, {args.backbone}, {len(args.seeds)} seed(s): mean ± std over seeds"))
    for seed, found in starts.items():
        if found:
            console.print(f"seed {seed} start: premise " + ", ".join(
                f"{k} {v['share'] * 100:.1f} % of {v['pairs']} pairs (body lift {v['body_lift']:.3f})"
                for k, v in found.items()))  # fmt: skip
    wall = time.perf_counter() - started
    console.print(f"wall time {wall:.0f} s")
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads,
        "python": sys.version.split()[0], "torch": torch.__version__, "backbone": args.backbone, "task": args.task,
        "size": args.size,
        "config": str(config), "settings": settings.__dict__, "overrides": list(overrides), "seeds": args.seeds,
        "kinds": args.kinds, "wall_s": wall, "start_premise": starts, "rows": rows, "summary": summary,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_quality_{args.task}_{args.backbone}{sized}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(summary))
    console.print(f"written {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
