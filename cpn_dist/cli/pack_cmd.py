"""``cpn pack``: turn a VOC split into webdataset shards with precomputed SLIC maps."""

from __future__ import annotations

import os

from rich.table import Table

from cpn_dist.cli import add_command, console, print_table
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "pack", "pack a VOC split into webdataset shards with precomputed SLIC superpixel maps",
        "Read a split list, its image-level labels (XML annotations or --labels) and GT masks (when present), "
        "run SLIC once per image and segment count in worker processes, and write {split}-NNNNNN.tar shards "
        "and meta.json. Bad images are skipped and reported. Re-packing gives byte-identical shards.",
    )  # fmt: skip
    p.add_argument("--voc-root", required=True, help="the VOC2012 folder (JPEGImages/, Annotations/, ImageSets/)")
    p.add_argument("--split", required=True,
                   help="split name (ImageSets/Segmentation/SPLIT.txt) or the path of any list file")  # fmt: skip
    p.add_argument("--out", default="shards/voc", help="output folder (default shards/voc)")
    p.add_argument("--slic-segments", type=int, nargs="+", default=[200, 300], metavar="N",
                   help="SLIC segment counts to store, one map each (default 200 300)")  # fmt: skip
    p.add_argument("--compactness", type=float, default=10.0, help="SLIC compactness (default 10)")
    p.add_argument("--shard-size", type=int, default=1000, help="list entries per shard (default 1000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="labels instead of the XMLs: JSON mapping id to 20 labels (0/1) or to class names, "
                        "or the released cls_labels.npy")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace this split's existing shards")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted pack, keeping its completed shards; on a complete split, rebuild "
                        "the shards that are missing or damaged")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="exit non-zero when any image was skipped")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from cpn_dist.data.pack import pack_split
    from cpn_dist.data.pack_source import find_source
    from cpn_dist.progress import Progress

    total = len(find_source(args.voc_root, args.split, args.labels).ids)
    with Progress(f"pack {args.split}", total) as bar:
        report = pack_split(
            args.voc_root, args.split, args.out, labels_file=args.labels, segments=args.slic_segments,
            compactness=args.compactness, shard_size=args.shard_size, workers=args.workers,
            overwrite=args.overwrite, resume=args.resume, progress=bar.advance,
        )  # fmt: skip
    meta = report.meta
    if report.already_complete or report.rebuilt:
        done = (f"already complete ({meta['count']} samples, {len(meta['shards'])} shards intact)"
                if report.already_complete else f"rebuilt {', '.join(report.rebuilt)} "
                f"({report.shards_reused} other shards intact; {meta['count']} samples)")  # fmt: skip
        console.print(f"[green]{report.out}[/]: split {report.split}: {done}", soft_wrap=True)
        return 0
    summary = Table(title=f"packed {report.split} into {report.out}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    rate = report.images_processed / report.seconds if report.seconds > 0 else 0.0
    rows = [
        ("samples", f"{meta['count']} of {meta['source']['listed']} listed"),
        ("shards", f"{len(meta['shards'])} ({report.shards_written} written, {report.shards_reused} kept by --resume)"),
        ("with GT mask", f"{meta['with_seg']} ({meta['source']['masks'] or 'no mask folder'})"),
        ("labels from", meta["source"]["labels"]),
        ("SLIC", ", ".join(f"N={n}: K {v['min']}–{v['max']} (mean {v['mean']:.0f})"
                           for n, v in meta["slic"]["superpixels"].items()) or "-"),  # fmt: skip
        ("SLIC time", f"{report.slic_ms_per_image:.1f} ms per image (all {len(meta['slic']['segments'])} counts)"),
        ("mean RGB", ", ".join(f"{v:.4f}" for v in meta["mean_rgb"])),
        ("skipped", str(len(meta["skipped"]))),
        ("time", f"{report.seconds:.1f} s ({rate:.1f} images/s)"),
    ]
    for k, v in rows:
        summary.add_row(k, v)
    print_table(summary)
    if meta["skipped"]:
        table = Table("image", "reason", title=f"{len(meta['skipped'])} skipped image(s)", title_style="yellow")
        for item in meta["skipped"][:50]:
            table.add_row(item["id"], item["reason"])
        if len(meta["skipped"]) > 50:
            table.add_row("…", f"{len(meta['skipped']) - 50} more in meta.json")
        print_table(table)
        if args.strict:
            raise CpnError(f"{report.out}: {len(meta['skipped'])} image(s) skipped (--strict)")
    return 0
