"""``cpn eval``: score CAMs (every background score β in one pass) or label PNGs against ground truth."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.table import Table

from cpn_dist.atomic import write_json
from cpn_dist.cli import add_command, add_dataset_argument, console, output_file, print_table
from cpn_dist.errors import CpnError

log = logging.getLogger("cpn_dist.eval")


def register(sub) -> None:
    p = add_command(
        sub, "eval", "score CAMs at every background score β in one pass (or label PNGs) against ground truth",
        "Per-class IoU as the released evaluation_cam.py defines them (GT 255 ignored, background wins when "
        "β ≥ every foreground score), for every β of the sweep at once, over the dataset's classes (21 VOC, 81 "
        "COCO; --dataset, else the folders' dataset.json). The mIoU averages over the classes present in the "
        "ground truth or the prediction (chainercv's nanmean; on VOC train/val every class is present); "
        "--mean all averages over every class, as the released evaluator.",
    )  # fmt: skip
    p.add_argument("--cams", required=True, metavar="DIR",
                   help="CAM files NAME.npy (released format) or NAME.npz (compact), or label PNGs NAME.png")
    p.add_argument("--gt", required=True, metavar="DIR",
                   help="ground truth: a folder of VOC label PNGs, or shards holding seg.png")  # fmt: skip
    p.add_argument("--split", help="split inside a shard folder given as --gt (default: its only split)")
    p.add_argument("--list", required=True, metavar="FILE", help="image ids, one per line (or the released list)")
    p.add_argument("--betas", default=None, help="START:STOP:STEP or a comma list (default 0.20:0.60:0.01 on VOC, "
                   "0.01:0.50:0.01 on other datasets)")  # fmt: skip
    p.add_argument("--mean", choices=("present", "all"), default="present",
                   help="the classes the mIoU averages over: present in the ground truth or the prediction "
                        "(default), or all (the released evaluator)")  # fmt: skip
    add_dataset_argument(p, "the classes scored (default: the dataset.json of --cams or --gt, or the shards' "
                            "meta.json; none: voc)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    p.add_argument("--json", metavar="FILE", help="write the scores as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG of mIoU against β (default: beside --json, .png)")
    p.set_defaults(handler=_run)


def _prediction_kind(folder: Path, first: str) -> str:
    if any((folder / f"{first}{suffix}").is_file() for suffix in (".npy", ".npz")):
        return "cams"
    if (folder / f"{first}.png").is_file():
        return "labels"
    raise CpnError(f"{folder}: neither {first}.npy / {first}.npz (CAMs) nor {first}.png (labels) found")


def averaged_note(best: dict, classes: int) -> str:
    """Which classes the mIoU averaged, for the table: all of them, or how many and which were absent."""
    averaged = best["averaged"]
    if len(averaged) == classes:
        return f"mIoU over all {classes} classes"
    absent = [name for name in best["iou"] if name not in averaged]
    shown = ", ".join(absent[:8]) + (f", … ({len(absent)} in all)" if len(absent) > 8 else "")
    return f"mIoU over the {len(averaged)} of {classes} classes present in the ground truth or the prediction " \
           f"(absent: {shown})"


def _run(args) -> int:
    from cpn_dist.data.datasets.recorded import folders_dataset
    from cpn_dist.data.datasets.voc import read_split
    from cpn_dist.demo.show import sweep_plot
    from cpn_dist.labels.betas import default_betas, parse_betas
    from cpn_dist.labels.evaluate import default_workers, ground_truth, score_labels, sweep
    from cpn_dist.progress import Progress

    names = read_split(args.list)
    if not names:
        raise CpnError(f"{args.list}: the list holds no image ids")
    json_path = output_file(args.json, "--json")  # folders made (and checked) before the work
    plot = output_file(args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None), "--plot")
    folder = Path(args.cams)
    if not folder.is_dir():
        raise CpnError(f"{folder}: prediction folder not found")
    kind = _prediction_kind(folder, names[0])
    dataset = folders_dataset(args.dataset, folder, args.gt)
    args.betas = args.betas or default_betas(dataset)
    betas = parse_betas(args.betas) if kind == "cams" else None
    workers = args.workers or default_workers()
    gt = ground_truth(args.gt, args.split)
    with Progress("eval", len(names)) as progress:
        if kind == "cams":
            result = sweep(folder, gt, names, betas, workers=workers, on_images=progress.advance, dataset=dataset,
                           mean=args.mean)  # fmt: skip
        else:
            result = score_labels(folder, gt, names, workers=workers, on_images=progress.advance, dataset=dataset,
                                  mean=args.mean)  # fmt: skip

    best = result.summary()
    title = f"{len(names)} images, " + (f"best β = {best['beta']:.3f}" if kind == "cams" else "label PNGs")
    table = Table("class", "IoU %", title=title)
    averaged = set(best["averaged"])
    for name, value in best["iou"].items():
        table.add_row(name, f"{value * 100:.2f}" if name in averaged else "absent")
    table.add_section()
    table.add_row("[bold]mIoU[/]", f"[bold]{best['miou'] * 100:.2f}[/]")
    table.add_row("background (bg.)", f"{best['background'] * 100:.2f}")
    table.add_row("foreground (f.)", f"{best['foreground'] * 100:.2f}")
    print_table(table)
    console.print(averaged_note(best, dataset.num_classes), highlight=False, soft_wrap=True)
    if kind == "cams" and len(result.betas) > 1:
        curve = Table(*(["β", "mIoU %"] * 4), title="mIoU against β")
        cells = [(f"{b:.3f}", f"{m * 100:.2f}") for b, m in zip(result.betas, result.miou)]
        for i in range(0, len(cells), 4):
            row = [x for pair in cells[i:i + 4] for x in pair]
            curve.add_row(*row, *([""] * (8 - len(row))))
        print_table(curve)
        if best["beta"] in (min(result.betas), max(result.betas)):
            log.warning("the best β %g lies on the edge of the sweep (%s): a better one may lie outside; widen "
                        "--betas", best["beta"], args.betas)  # fmt: skip

    data = result.to_json()
    if kind == "labels":
        data["betas"], data["best"]["beta"] = [None], None
    if json_path:
        write_json(json_path, data)
        console.print(f"scores written to [bold]{json_path}[/]")
    if plot and kind == "cams":
        sweep_plot(result.betas, result.miou, plot, title=f"mIoU against β ({len(names)} images)")
        console.print(f"plot written to [bold]{plot}[/]")
    return 0
