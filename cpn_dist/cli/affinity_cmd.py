"""``cpn affinity-labels``: the confident fg / bg / ignore labels AffinityNet trains on, from CAMs."""

from __future__ import annotations

from pathlib import Path

from cpn_dist.cli import add_command, add_dataset_argument, check_pair, console, renamed_flag
from cpn_dist.errors import CpnError


def add_image_source_arguments(p) -> None:
    """--cams, --voc-root / --shards [--split], --list, --dataset: the CAMs and images of a stage-2 step."""
    p.add_argument("--cams", required=True, metavar="DIR", help="CAM files NAME.npy (released format) or NAME.npz "
                   "(compact)")  # fmt: skip
    src = p.add_argument_group("images (one of)")
    src.add_argument("--voc-root", metavar="DIR", help="VOC root holding JPEGImages/")
    src.add_argument("--shards", metavar="SRC", help="packed shards: a folder, a .tar or a webdataset pattern")
    src.add_argument("--split", help="split inside a shard folder (default: its only split)")
    p.add_argument("--list", metavar="FILE", help="image ids, one per line (default: every CAM file in --cams)")
    add_dataset_argument(p)


def stage2_names(args) -> list[str]:
    """The images of a stage-2 step: --list, or every CAM file in --cams."""
    from cpn_dist.cli.crf_cmd import image_names

    if bool(args.voc_root) == bool(args.shards):
        raise CpnError("give exactly one image source: --voc-root DIR or --shards SRC")
    names = image_names(args)
    if not names:
        raise CpnError(f"{args.list or args.cams}: no images")
    return names


def image_source(args, names: list[str]):
    """The images ``names`` from the VOC root or the shards of the arguments."""
    from cpn_dist.data.inputs import ShardSource, VocSource

    return VocSource(args.voc_root, names) if args.voc_root else ShardSource(args.shards, args.split, names)


def register(sub) -> None:
    from cpn_dist.cli.crf_cmd import add_crf_arguments

    p = add_command(
        sub, "affinity-labels", "affinity labels from CAMs: confident foreground / background / ignore PNGs",
        "Two dense-CRF label maps per image with AffinityNet's background score (1 - max CAM)^α: a low background "
        "power α (confident foreground) and a high one (confident background); combined as PSA does: the low-α "
        "map's class where it says foreground, 0 where the high-α map says background, 255 elsewhere. "
        "Writes OUT/ID.png (VOC palette), the folder `affinity.labels` of `stage: affinity` training.",
    )  # fmt: skip
    add_image_source_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for ID.png")
    p.add_argument("--config", metavar="FILE", help="run config: affinity.low_bg_power / high_bg_power as defaults")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--bg-powers", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="background powers α of the two maps (default 4 32, PSA)")  # fmt: skip
    which.add_argument("--betas", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="constant background scores β instead of the powers (IRN's way)")  # fmt: skip
    renamed_flag(p, "--alphas", "--bg-powers", nargs=2)
    p.add_argument("--no-crf", action="store_true", help="skip the dense CRF (not PSA's recipe)")
    p.add_argument("--cam-norm", choices=("max", "none"),
                   help="divide each CAM by its maximum first: PSA's scale (default: the config's affinity.cam_norm)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose label exists")
    add_crf_arguments(p, from_config="affinity.crf")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from cpn_dist.affinity.labels import AffinityLabelParams, done_names, write_affinity_labels
    from cpn_dist.cli.crf_cmd import crf_params
    from cpn_dist.config.load import load_config
    from cpn_dist.data.datasets.recorded import folders_dataset
    from cpn_dist.labels.evaluate import default_workers
    from cpn_dist.progress import Progress

    for flag, pair in (("--betas", args.betas), ("--bg-powers", args.bg_powers)):
        if pair:
            check_pair(pair, flag)
    cfg = load_config(args.config).affinity
    powers = None if args.betas else tuple(args.bg_powers or (cfg.low_bg_power, cfg.high_bg_power))
    params = AffinityLabelParams(bg_powers=powers, betas=tuple(args.betas) if args.betas else None,
                                 crf=None if args.no_crf else crf_params(args, cfg.crf),
                                 cam_norm=args.cam_norm or cfg.cam_norm)  # fmt: skip
    names = stage2_names(args)
    dataset = folders_dataset(args.dataset, args.cams)
    source = image_source(args, names)
    done = done_names(names, args.out, args.overwrite)
    if done:
        console.print(f"{len(done)} of {len(names)} images already done in {args.out} (--overwrite redoes them)")
    with Progress("affinity-labels", len(names) - len(done)) as progress:
        written = write_affinity_labels(source, args.cams, args.out, params, names,
                                        workers=args.workers or default_workers(), overwrite=args.overwrite,
                                        on_image=progress.on_item, dataset=dataset)  # fmt: skip
    rule = f"background powers {powers[0]:g}/{powers[1]:g}" if powers else f"β {args.betas[0]:g}/{args.betas[1]:g}"
    console.print(f"wrote {len(written)} affinity labels ({rule}{', no CRF' if args.no_crf else ', CRF'}) "
                  f"to [bold]{Path(args.out)}[/]")  # fmt: skip
    return 0
