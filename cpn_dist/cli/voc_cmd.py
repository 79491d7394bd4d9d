"""``cpn check-voc``: check a PASCAL VOC 2012 folder before packing it."""

from __future__ import annotations

from rich.table import Table

from cpn_dist.cli import add_command, console, print_table
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "check-voc", "check a VOC 2012 folder: images decode, XMLs parse, masks match the XML classes",
    )  # fmt: skip
    p.add_argument("root", help="the VOC2012 folder (holding JPEGImages/, Annotations/, ImageSets/)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="split lists to check (default: those of train, val, train_aug that exist)")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from cpn_dist.data.datasets.voc import check_voc

    report = check_voc(args.root, tuple(args.splits) if args.splits else None)
    if report["problems"]:
        table = Table("image", "problem", title=f"{len(report['problems'])} problem(s) in {args.root}")
        for name, reason in report["problems"][:50]:
            table.add_row(name, reason)
        print_table(table)
        raise CpnError(f"{args.root}: {len(report['problems'])} of {report['images']} images have problems")
    console.print(f"[green]ok[/]: {report['images']} images of {', '.join(report['splits'])}, {report['masks']} masks, "
                  "classes agree in every one")  # fmt: skip
    return 0
