"""``cpn demo``: the built-in demo — the plain CAM against CPN on the synthetic parts task, end to end."""

from __future__ import annotations

import time

from rich.table import Table

from cpn_dist.cli import add_command, add_threads_argument, console, print_table, step_printer, use_threads


def register(sub) -> None:
    p = add_command(
        sub, "demo", "train the plain CAM and CPN on a synthetic parts task (or a VOC or COCO folder), compare their "
        "CAMs",
        "Synthetic parts task (a weakly textured body with a small class-coloured marker), --voc-root DIR or "
        "--coco-root DIR → "
        "pack → train the baseline CAM (L_cls only, no head), hiding as augmentation and CPN from one shared "
        "start → multi-scale CAMs → β sweep → a table (mIoU, fg/bg IoU, best β; on a parts task body and "
        "marker recall, CAM magnitude and CPN's premise; for CPN its refined and its raw CAM), OUT/results.json "
        "and OUT/demo.png. "
        "Finished steps are kept on a re-run.",
    )  # fmt: skip
    p.add_argument("--out", default="demo", help="output folder (default demo/)")
    p.add_argument("--config", default=None, help="run config of the models: a path or a packaged name (default demo)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--voc-root", default=None,
                      help="a VOC 2012 layout folder (JPEGImages/, Annotations/, SegmentationClass/, "
                           "ImageSets/Segmentation/) to use instead of synthetic data: trains on train_aug when "
                           "listed, else train; scores CAMs on train")  # fmt: skip
    data.add_argument("--coco-root", default=None, metavar="DIR",
                      help="a COCO 2014 folder (train2014/, annotations/instances_train2014.json) instead: trains "
                           "on train2014 (ReCAM's labels) and scores CAMs on it over the 81 classes")  # fmt: skip
    p.add_argument("--task", default=None, choices=("parts", "parts-reliable"),
                   help="the synthetic task (default parts-reliable); ignored with --voc-root")
    p.add_argument("--images", type=int, default=None, help="synthetic images (default 1000)")
    p.add_argument("--size", type=int, default=None,
                   help="long side of the synthetic images (default 64: an 8×8 CAM grid); the same task scaled, "
                        "with the crop, scale range and grid cells scaled with it (128: 16×16, about 4× the "
                        "training time)")  # fmt: skip
    p.add_argument("--eval-images", type=int, default=None, help="score only the first N images of the split")
    p.add_argument("--mean", choices=("present", "all"), default="present",
                   help="the classes the mIoU averages over: present in the ground truth or the prediction "
                        "(default), or all (the released evaluator)")  # fmt: skip
    add_threads_argument(p)
    p.add_argument("--overwrite", action="store_true", help="redo every step, even the finished ones")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides for every model")
    p.set_defaults(handler=_run)


def scores_table(scores: dict, title: str = "CAM quality") -> Table:
    """The comparison table of :func:`cpn_dist.demo.run.run_demo`'s scores (percentages); a model with a head
    has its refined CAM's row (the headline), then its raw CAM's; the part columns only when the data has
    part maps."""
    parts = any(s.body_recall is not None for s in scores.values())
    columns = ["model", "mIoU", "fg IoU", "bg IoU", "best β"]
    if parts:
        columns += ["body rec.", "marker rec.", "body CAM", "marker CAM", "premise sp / grid"]
    table = Table(*columns, title=title + " (IoU and recall in %)")
    rows = [row for s in scores.values() for row in (s, s.raw) if row is not None]
    for s in rows:
        edge = "" if s.beta_inside else " (edge)"
        row = [s.name, f"{s.miou * 100:.1f}", f"{s.foreground * 100:.1f}", f"{s.background * 100:.1f}",
               f"{s.best_beta:.3f}{edge}"]  # fmt: skip
        if parts:
            premise = s.premise or {}
            shares = " / ".join(f"{premise[k]['share'] * 100:.0f} %" if k in premise else "—"
                                for k in ("superpixel", "grid"))  # fmt: skip
            row += [f"{s.body_recall * 100:.1f}", f"{s.marker_recall * 100:.1f}", f"{s.body_magnitude:.2f}",
                    f"{s.marker_magnitude:.2f}", shares]  # fmt: skip
        table.add_row(*row)
    return table


def _run(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    from cpn_dist.demo.run import run_demo
    from cpn_dist.demo.settings import DEMO_CONFIG, DemoSettings
    from cpn_dist.training.launch import quiet_libraries

    quiet_libraries()
    use_threads(args)
    settings = replace(DemoSettings(), mean=args.mean)
    if args.task:
        settings = replace(settings, task=args.task)
    if args.images:
        settings = replace(settings, images=args.images)
    if args.size:
        settings = replace(settings, size=args.size)
    if args.eval_images:
        settings = replace(settings, eval_images=args.eval_images)
    started = time.perf_counter()

    scores = run_demo(Path(args.out), settings, config=args.config or DEMO_CONFIG, overrides=args.overrides,
                      overwrite=args.overwrite, on_step=step_printer(), voc_root=args.voc_root,
                      coco_root=args.coco_root)  # fmt: skip
    print_table(scores_table(scores))
    console.print(f"β swept over {len(settings.betas)} values, {settings.betas[0]:.3f} … {settings.betas[-1]:.3f}"
                  " (finer below 0.005).")  # fmt: skip
    if any(s.body_recall is not None for s in scores.values()):
        console.print("Body / marker rec.: share of the part's pixels labelled with the object's class at the best "
                      "β. Body / marker CAM: mean CAM of the object's class on the part, relative to its peak. "
                      "Premise: share of CP pairs whose marker-less branch still has a positive raw CAM on the "
                      "object's body (superpixel / grid patches).")  # fmt: skip
    if any(s.raw is not None for s in scores.values()):
        console.print("A model with a refinement head is scored on its refined CAM (PCM + PRCM), as the paper scores "
                      "it at inference; its raw CAM row scores the same model's CAM before the head, at the raw "
                      "CAM's own best β.")  # fmt: skip
    out = Path(args.out)
    console.print(f"results: [bold]{out / 'results.json'}[/], figure: [bold]{out / 'demo.png'}[/]; "
                  f"wall time {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0
