"""``cpn check-coco`` and ``cpn coco-masks``: check a COCO 2014 folder; write its ground-truth masks as
PNGs. Also the COCO protocol flags they share with ``cpn pack --coco-root`` (docs/coco.md)."""

from __future__ import annotations

import argparse
import os

from rich.table import Table

from cpn_dist.cli import add_command, console, print_table
from cpn_dist.data.datasets.coco_protocol import CROWD_MASKS, EMPTY_IMAGES, OVERLAPS, PROTOCOLS
from cpn_dist.errors import CpnError

# The flags that override the protocol's choices, by CocoProtocol field.
PROTOCOL_FLAGS = {"crowd_labels": "--crowd-labels", "crowd_mask": "--crowd-mask", "overlap": "--overlap",
                  "empty": "--empty"}  # fmt: skip


def add_protocol_flags(p) -> None:
    """``--coco-protocol`` and the four flags that override its choices (docs/coco.md)."""
    g = p.add_argument_group("COCO labels and masks (docs/coco.md)")
    g.add_argument("--coco-protocol", choices=tuple(PROTOCOLS), default="recam",
                   help="the published protocol: recam (ReCAM, CLIMS, LPCAM, BECO, AMN; default), sipe, toco; the "
                        "flags below override its choices")  # fmt: skip
    g.add_argument("--crowd-labels", action=argparse.BooleanOptionalAction, default=None,
                   help="crowd annotations count in the image-level labels (every protocol: yes)")
    g.add_argument("--crowd-mask", choices=CROWD_MASKS, default=None,
                   help="crowd pixels in the mask: background (recam, sipe), ignore (255) or class (toco)")
    g.add_argument("--overlap", choices=OVERLAPS, default=None,
                   help="where instances overlap: the one written last wins (recam, sipe), or the smallest on top "
                        "(toco)")  # fmt: skip
    g.add_argument("--empty", choices=EMPTY_IMAGES, default=None,
                   help="images without any annotation: keep, all background (recam), or drop (sipe, toco)")


def protocol_flags_given(args) -> list[str]:
    """The protocol flags given on the command line (``--coco-protocol`` only when not the default)."""
    given = [flag for field, flag in PROTOCOL_FLAGS.items() if getattr(args, field, None) is not None]
    return (["--coco-protocol"] if args.coco_protocol != "recam" else []) + given


def protocol_from_args(args):
    """The :class:`~cpn_dist.data.datasets.coco.CocoProtocol` of ``--coco-protocol`` with the overriding flags
    applied."""
    from dataclasses import replace

    overrides = {field: getattr(args, field) for field in PROTOCOL_FLAGS if getattr(args, field) is not None}
    return replace(PROTOCOLS[args.coco_protocol], **overrides)


def describe_protocol(protocol: dict) -> str:
    """A meta.json protocol record in words: ``recam (crowd labels: yes, crowd pixels: background, …)``."""
    return (f"{protocol.get('name', 'custom')} (crowd labels: {'yes' if protocol['crowd_labels'] else 'no'}, "
            f"crowd pixels: {protocol['crowd_mask']}, overlaps: {protocol['overlap']} on top, images without "
            f"annotations: {protocol['empty']})")  # fmt: skip


def register(sub) -> None:
    c = add_command(sub, "check-coco", "check a COCO 2014 folder: annotation files parse, every image decodes at its "
                                       "recorded size")  # fmt: skip
    c.add_argument("root", help="the COCO folder (train2014/, val2014/, annotations/instances_*.json)")
    c.add_argument("--splits", nargs="+", default=None,
                   help="splits to check (default: those of train2014, val2014 whose annotation file exists)")
    c.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                   help="processes decoding images (default: CPU count, at most 8)")  # fmt: skip
    c.set_defaults(handler=_check)
    m = add_command(
        sub, "coco-masks", "write a COCO split's ground-truth masks as PNGs (for `cpn eval --gt`)",
        "Write OUT/{key}.png (VOC palette; 0 background, 1..80 the classes, 255 ignored) for every image the "
        "protocol keeps, OUT/dataset.json and OUT/{split}.txt (the kept keys): `cpn eval --gt OUT --list "
        "OUT/{split}.txt` then scores COCO from PNGs. The masks equal the seg.png `cpn pack --coco-root` packs "
        "with the same protocol. Existing PNGs are kept (a stopped run finishes) unless --overwrite.",
    )  # fmt: skip
    m.add_argument("--coco-root", required=True, metavar="DIR", help="the COCO folder")
    m.add_argument("--split", required=True, help="train2014 or val2014 (annotations/instances_SPLIT.json)")
    m.add_argument("--out", required=True, metavar="DIR", help="output folder")
    m.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    m.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs (and allow another protocol)")
    add_protocol_flags(m)
    m.set_defaults(handler=_masks)


def _check(args) -> int:
    from cpn_dist.cli import print_findings
    from cpn_dist.data.datasets.coco_check import check_images, coco_folder, coco_splits, read_split_check
    from cpn_dist.progress import Progress

    root = coco_folder(args.root)
    checks = []
    for split in coco_splits(root, tuple(args.splits) if args.splits else None):
        check, images = read_split_check(root, split)
        with Progress(f"check-coco {split}", len(images)) as bar:
            check_images(check, images, args.workers, bar.advance)
        checks.append(check)
    for check in checks:
        print_findings(check.split, check.problems, check.warnings)
    summary = Table("split", "images", "annotations", "crowd", "without annotations", "problems", "warnings",
                    title=f"{args.root}")  # fmt: skip
    for c in checks:
        summary.add_row(c.split, str(c.images), str(c.annotations), str(c.crowd), str(c.without_annotations),
                        str(len(c.problems)), str(len(c.warnings)))  # fmt: skip
    print_table(summary)
    problems = sum(len(c.problems) for c in checks)
    if problems:
        raise CpnError(f"{args.root}: {problems} problem(s) in {', '.join(c.split for c in checks if c.problems)}")
    console.print(f"[green]ok[/]: {sum(c.images for c in checks)} images of {', '.join(c.split for c in checks)}")
    return 0


def _masks(args) -> int:
    from cpn_dist.data.datasets.coco_masks import plan_coco_masks, write_masks
    from cpn_dist.progress import Progress

    plan = plan_coco_masks(args.coco_root, args.split, args.out, protocol_from_args(args), args.overwrite)
    with Progress(f"coco-masks {args.split}", len(plan.kept), done=len(plan.kept) - len(plan.todo)) as bar:
        report = write_masks(plan, args.workers, bar.advance)
    console.print(f"[green]{report.out}[/]: {report.images} masks of {report.split} ({report.written} written, "
                  f"{report.kept} kept); list {report.list_path}", soft_wrap=True)  # fmt: skip
    return 0
