"""``cpn pack``: turn a VOC or COCO split into webdataset shards with precomputed SLIC maps."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.table import Table

from cpn_dist.cli import add_command, console, print_table
from cpn_dist.cli.coco_cmd import add_protocol_flags, describe_protocol, protocol_flags_given, protocol_from_args
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "pack", "pack a VOC or COCO split into webdataset shards with precomputed SLIC superpixel maps",
        "Read a split (a VOC split list, or the images of a COCO instances file), its image-level labels (XML "
        "annotations or --labels; COCO: the annotations, by --coco-protocol) and GT masks (VOC: when present; "
        "COCO: made from the instances), run SLIC once per image and segment count in worker processes, and "
        "write {split}-NNNNNN.tar shards and meta.json (which records the dataset). Bad images are skipped and "
        "reported. Re-packing gives byte-identical shards. --part i/N packs a slice of the shards on one "
        "machine; --join then writes meta.json.",
    )  # fmt: skip
    root = p.add_mutually_exclusive_group(required=True)
    root.add_argument("--voc-root", help="the VOC2012 folder (JPEGImages/, Annotations/, ImageSets/)")
    root.add_argument("--coco-root", metavar="DIR",
                      help="a COCO 2014 folder: images in DIR/SPLIT/, annotations in "
                           "DIR/annotations/instances_SPLIT.json")  # fmt: skip
    p.add_argument("--split", required=True,
                   help="VOC: split name (ImageSets/Segmentation/SPLIT.txt) or the path of any list file; "
                        "COCO: train2014 or val2014")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default shards/voc, or shards/coco)")
    p.add_argument("--slic-segments", type=int, nargs="+", default=[200, 300], metavar="N",
                   help="SLIC segment counts to store, one map each (default 200 300)")  # fmt: skip
    p.add_argument("--compactness", type=float, default=10.0, help="SLIC compactness (default 10)")
    p.add_argument("--shard-size", type=int, default=1000, help="list entries per shard (default 1000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="VOC labels instead of the XMLs: JSON mapping id to 20 labels (0/1) or to class names, "
                        "or the released cls_labels.npy")  # fmt: skip
    add_protocol_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace this split's existing shards")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted pack, keeping its completed shards; on a complete split, rebuild "
                        "the shards that are missing or damaged")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="exit non-zero when any image was skipped")
    p.add_argument("--part", metavar="I/N", default=None,
                   help="pack only the shards s with s mod N == I (one of N machines; same flags on each, into one "
                        "shared --out or one folder each); meta.json is written by --join")  # fmt: skip
    p.add_argument("--join", action="store_true",
                   help="after every --part: check that each shard of the split is packed and intact, and write "
                        "meta.json (byte-identical to a one-machine pack)")  # fmt: skip
    p.add_argument("--parts-from", nargs="+", default=None, metavar="DIR",
                   help="with --join: the --out folders of parts packed elsewhere; their shards are moved into "
                        "--out first")  # fmt: skip
    p.set_defaults(handler=_run)


def _source(args: argparse.Namespace):
    """The pack source the flags name (the COCO annotation file is read once, here)."""
    from cpn_dist.data.shards.pack_source import find_coco_source, find_source

    if args.coco_root is None:
        given = protocol_flags_given(args)
        if given:
            raise CpnError(f"{given[0]}: a COCO protocol flag; give it with --coco-root")
        return find_source(args.voc_root, args.split, args.labels)
    if args.labels is not None:
        raise CpnError("--labels: VOC only; COCO labels come from the annotations (--coco-protocol)")
    return find_coco_source(args.coco_root, args.split, protocol_from_args(args))


def _run(args) -> int:
    from cpn_dist.data.shards.pack import check_options, pack_source
    from cpn_dist.data.shards.pack_parts import gather_parts, parse_part, part_images
    from cpn_dist.progress import Progress

    part = parse_part(args.part) if args.part is not None else None
    if args.join and part is not None:
        raise CpnError("--join and --part: --join writes meta.json after every part; give one of them")
    if args.parts_from and not args.join:
        raise CpnError("--parts-from: only with --join")
    check_options(args.slic_segments, args.compactness, args.shard_size, args.workers, args.overwrite,
                  args.resume, args.join)  # fmt: skip
    out = Path(args.out or ("shards/coco" if args.coco_root else "shards/voc"))
    source = _source(args)
    if args.parts_from:
        gather_parts(out, source.split, [Path(d) for d in args.parts_from])
    total = 0 if args.join else part_images(len(source.ids), args.shard_size, part)
    what = f"pack {source.split}" + (f" part {part[0]}/{part[1]}" if part else "")
    with Progress(what, total) as bar:
        report = pack_source(
            source, out, segments=args.slic_segments, compactness=args.compactness, shard_size=args.shard_size,
            workers=args.workers, overwrite=args.overwrite, resume=args.resume, part=part, join=args.join,
            progress=bar.advance,
        )  # fmt: skip
    meta = report.meta
    if report.already_complete or report.rebuilt:
        done = (f"already complete ({meta['count']} samples, {len(meta['shards'])} shards intact)"
                if report.already_complete else f"rebuilt {', '.join(report.rebuilt)} "
                f"({report.shards_reused} other shards intact; {meta['count']} samples)")  # fmt: skip
        console.print(f"[green]{report.out}[/]: split {report.split}: {done}", soft_wrap=True)
        return 0
    if report.part is not None:
        _print_part(report)
    else:
        _print_summary(report)
    _print_skipped(report, args.strict)
    return 0


def _print_part(report) -> None:
    i, n = report.part
    meta = report.meta
    shards = meta["shards"]
    listed = f"{shards[0]} … {shards[-1]}" if len(shards) > 2 else ", ".join(shards) or "none"
    console.print(f"[green]{report.out}[/]: part {i}/{n} of split {report.split}: {len(shards)} shards ({listed}; "
                  f"{report.shards_written} written, {report.shards_reused} kept by --resume), {meta['count']} "
                  f"samples, {len(meta['skipped'])} skipped, {report.seconds:.1f} s; when every part is done: "
                  "the same command with --join instead of --part", soft_wrap=True)  # fmt: skip


def _print_summary(report) -> None:
    meta = report.meta
    source = meta["source"]
    title = f"{'joined' if report.joined else 'packed'} {report.split} into {report.out}"
    summary = Table(title=title, show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    rate = report.images_processed / report.seconds if report.seconds > 0 else 0.0
    listed = f"{meta['count']} of {source['listed']} listed"
    if source.get("dropped"):
        listed += f" ({source['dropped']} without annotations dropped by the protocol)"
    rows = [
        ("samples", listed),
        ("shards", f"{len(meta['shards'])} ({report.shards_written} written, {report.shards_reused} "
                   f"{'packed by the parts' if report.joined else 'kept by --resume'})"),  # fmt: skip
        ("with GT mask", f"{meta['with_seg']} ({source['masks'] or 'no mask folder'})"),
        ("labels from", source["labels"]),
    ]
    if "protocol" in meta:
        rows.append(("protocol", describe_protocol(meta["protocol"])))
    rows += [
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


def _print_skipped(report, strict: bool) -> None:
    skipped = report.meta["skipped"]
    if not skipped:
        return
    table = Table("image", "reason", title=f"{len(skipped)} skipped image(s)", title_style="yellow")
    for item in skipped[:50]:
        table.add_row(item["id"], item["reason"])
    if len(skipped) > 50:
        table.add_row("…", f"{len(skipped) - 50} more in meta.json")
    print_table(table)
    if strict:
        raise CpnError(f"{report.out}: {len(skipped)} image(s) skipped (--strict)")
