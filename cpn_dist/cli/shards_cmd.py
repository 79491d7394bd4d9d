"""``cpn shards verify|info``: check a packed folder, or show its meta.json."""

from __future__ import annotations

from rich.table import Table

from cpn_dist.cli import add_command, console, print_findings, print_table
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(sub, "shards", "check packed shards or show what they hold")
    actions = p.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    v = add_command(actions, "verify", "decode every sample and check members, sizes, labels and counts")
    v.add_argument("dir", help="a folder written by `cpn pack`")
    v.add_argument("--split", default=None, help="check only this split (default: every packed split)")
    v.add_argument("--strict", action="store_true", help="also fail on warnings (labels that disagree with masks)")
    v.set_defaults(handler=_verify)
    i = add_command(actions, "info", "print meta.json as tables")
    i.add_argument("dir", help="a folder written by `cpn pack`")
    i.set_defaults(handler=_info)


def _verify(args) -> int:
    from cpn_dist.data.shards.verify import total_samples, verify_shards
    from cpn_dist.progress import Progress

    total = total_samples(args.dir, args.split)
    with Progress("verify", total, unit="samples") as bar:
        checks = verify_shards(args.dir, args.split, progress=bar.advance)
    failed = False
    for check in checks:
        print_findings(check.split, check.problems, check.warnings)
        failed |= bool(check.problems) or (args.strict and bool(check.warnings))
        status = "[red]FAILED[/]" if check.problems else "[green]ok[/]"
        console.print(f"{status} {check.split}: {check.samples} samples in {check.shards} shards, "
                      f"{len(check.problems)} problems, {len(check.warnings)} warnings")  # fmt: skip
    if failed:
        raise CpnError(f"{args.dir}: shard verification failed")
    return 0


def _info(args) -> int:
    from cpn_dist.cli.coco_cmd import describe_protocol
    from cpn_dist.data.datasets.info import from_meta
    from cpn_dist.data.shards.reader import read_meta

    meta = read_meta(args.dir)
    dataset = from_meta(meta)
    console.print(f"[bold]{args.dir}[/] — {meta.get('tool', '?')}, format {meta['format']} v{meta['format_version']}, "
                  f"dataset {dataset.name} ({dataset.num_classes} classes with background)")  # fmt: skip
    for split, e in meta["splits"].items():
        t = Table(title=f"split {split}", show_header=False, title_justify="left")
        t.add_column(style="bold")
        t.add_column()
        slic = e["slic"]
        rows = [
            ("samples", f"{e['count']} of {e['source']['listed']} listed"),
            ("shards", f"{len(e['shards'])}: {e['shards'][0]['name']} … {e['shards'][-1]['name']}"
                       if e["shards"] else "0"),  # fmt: skip
            ("shard size", str(e["shard_size"])),
            ("members", " ".join(e["members"]) + (f" (+ seg.png in {e['with_seg']})" if e["with_seg"] else "")),
            ("SLIC", f"segments {slic['segments']}, compactness {slic['compactness']}, {slic['library']}"),
            *((f"  N={n}", f"K {v['min']}–{v['max']}, mean {v['mean']}") for n, v in slic["superpixels"].items()),
            ("mean RGB", ", ".join(f"{v:.4f}" for v in e["mean_rgb"])),
            ("source", f"{_source_files(e['source'])} (labels: {e['source']['labels']}, masks: "
                       f"{e['source']['masks']})"),  # fmt: skip
            *([("protocol", describe_protocol(e["protocol"]))] if "protocol" in e else []),
            ("skipped", str(len(e["skipped"]))),
        ]
        for k, v in rows:
            t.add_row(k, v)
        print_table(t)
        counts = Table("class", "images", title=f"{split}: images per class", title_justify="left")
        for name, n in e["class_counts"].items():
            counts.add_row(name, str(n))
        print_table(counts)
        if e["skipped"]:
            sk = Table("image", "reason", title=f"{split}: skipped", title_justify="left")
            for item in e["skipped"][:50]:
                sk.add_row(item["id"], item["reason"])
            print_table(sk)
    return 0


def _source_files(source: dict) -> str:
    """What a split was packed from: a VOC split list, or a COCO annotation file (and the images it dropped)."""
    if "list" in source:
        return source["list"]
    dropped = f", {source['dropped']} images without annotations dropped" if source.get("dropped") else ""
    return f"{source['annotations']} ({source['listed']} images{dropped})"
