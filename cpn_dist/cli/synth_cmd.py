"""``cpn synth-voc`` / ``cpn synth-coco``: write the built-in synthetic dataset in PASCAL VOC 2012 or MS COCO
2014 layout."""

from __future__ import annotations

from cpn_dist.cli import add_command, console


def _add_common(p, root: str, size: int) -> None:
    """The flags both synthetic datasets take."""
    p.add_argument("--out", required=True, help=f"output folder (the {root} root)")
    p.add_argument("--images", type=int, required=True, help="number of images")
    p.add_argument("--size", type=int, default=size, help=f"long side of every image in pixels (default {size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")


def register(sub) -> None:
    p = add_command(
        sub, "synth-voc", "generate a synthetic dataset in PASCAL VOC 2012 layout",
        "Write JPEGImages/, Annotations/, SegmentationClass/ and ImageSets/Segmentation/"
        "{train,val,train_aug}.txt for N synthetic images of the 20 VOC classes. Deterministic per seed.",
    )  # fmt: skip
    _add_common(p, "VOC2012", 128)
    p.add_argument("--task", choices=("shapes", "parts", "parts-reliable"), default="shapes",
                   help="shapes: class-coloured striped shapes (default); parts: a weakly, noisily textured body "
                        "with a small class-coloured marker, plus SegmentationPart/ (1 body, 2 marker); "
                        "parts-reliable: the same with a reliable body texture (CPN's premise holds)")  # fmt: skip
    p.set_defaults(handler=_run)
    c = add_command(
        sub, "synth-coco", "generate a synthetic dataset in MS COCO 2014 layout",
        "Write train2014/, val2014/ (every fifth image) and annotations/instances_{train,val}2014.json for N "
        "synthetic images of the 80 COCO categories (their real ids, with the gaps): polygon and RLE "
        "segmentations, crowd annotations, overlapping instances, images without annotations. Deterministic "
        "per seed. Needs pycocotools (pip install 'cpn-dist[coco]').",
    )  # fmt: skip
    _add_common(c, "COCO", 160)
    c.set_defaults(handler=_run_coco)


def _run(args) -> int:
    from cpn_dist.data.synth.voc import synthesize_voc
    from cpn_dist.progress import Progress

    with Progress("synth-voc", args.images) as progress:
        root = synthesize_voc(
            args.out, args.images, size=args.size, seed=args.seed, workers=args.workers,
            overwrite=args.overwrite, on_image=progress.on_item, task=args.task,
        )  # fmt: skip
    console.print(f"wrote {args.images} images (task {args.task}, long side {args.size}, seed {args.seed}) "
                  f"to [bold]{root}[/]")  # fmt: skip
    return 0


def _run_coco(args) -> int:
    from cpn_dist.data.datasets.coco import pycocotools_mask
    from cpn_dist.data.synth.coco import synthesize_coco
    from cpn_dist.progress import Progress

    pycocotools_mask()  # or one line saying how to install pycocotools
    with Progress("synth-coco", args.images) as progress:
        root = synthesize_coco(args.out, args.images, size=args.size, seed=args.seed, workers=args.workers,
                               overwrite=args.overwrite, on_image=progress.on_item)  # fmt: skip
    console.print(f"wrote {args.images} COCO-layout images (long side {args.size}, seed {args.seed}) to "
                  f"[bold]{root}[/]")  # fmt: skip
    return 0
