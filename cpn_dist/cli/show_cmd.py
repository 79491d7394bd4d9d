"""``cpn show``: a PNG grid — image, ground truth, CAMs of the true classes, pseudo label — for a few images."""

from __future__ import annotations

from pathlib import Path

from cpn_dist.cli import add_command, add_dataset_argument, check_beta, console, output_file
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "show", "write a PNG grid: image, ground truth, CAM heat maps of the true classes, pseudo label",
    )  # fmt: skip
    p.add_argument("--cams", required=True, metavar="DIR", help="CAM files NAME.npy (released format) or NAME.npz "
                   "(compact)")  # fmt: skip
    p.add_argument("--voc-root", required=True, metavar="DIR", help="VOC root: JPEGImages/ (and SegmentationClass/)")
    p.add_argument("--list", metavar="FILE", help="image ids to pick from (default: every CAM file)")
    p.add_argument("--count", type=int, default=6, help="images in the grid (default 6)")
    p.add_argument("--seed", type=int, default=0, help="which images: a seeded random pick (default 0)")
    p.add_argument("--beta", type=float, default=0.3, help="background score of the pseudo label (default 0.3)")
    p.add_argument("--pseudo", metavar="DIR", help="show these pseudo-label PNGs instead of labels at --beta")
    p.add_argument("--max-cams", type=int, default=3, help="CAM columns (default 3)")
    p.add_argument("--out", required=True, metavar="FILE", help="output PNG")
    add_dataset_argument(p)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    import numpy as np

    from cpn_dist.cli.crf_cmd import cams_dataset, image_names
    from cpn_dist.data.datasets.voc import read_label_png
    from cpn_dist.data.inputs import read_image
    from cpn_dist.demo.show import GridRow, image_grid
    from cpn_dist.labels.cams import cam_file, load_cams
    from cpn_dist.labels.pseudo import pseudo_label

    if args.count < 1:
        raise CpnError("--count must be >= 1")
    check_beta(args.beta, "--beta")
    out_file = output_file(args.out, "--out")
    names = image_names(args)
    if not names:
        raise CpnError(f"{args.list or args.cams}: no images to show")
    dataset = cams_dataset(args)
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(names, size=min(args.count, len(names)), replace=False).tolist())
    root = Path(args.voc_root)
    rows = []
    for name in picked:
        image = np.asarray(read_image(root / "JPEGImages" / f"{name}.jpg"))
        gt_path = root / "SegmentationClass" / f"{name}.png"
        gt = read_label_png(gt_path) if gt_path.is_file() else None
        path = cam_file(args.cams, name)
        cams = load_cams(path, dataset.num_foreground)
        if cams and next(iter(cams.values())).shape != image.shape[:2]:
            raise CpnError(f"{path}: CAM size differs from the image's")
        if args.pseudo:
            pseudo = read_label_png(Path(args.pseudo) / f"{name}.png")
        else:
            pseudo = pseudo_label(cams, args.beta, image.shape[:2], num_foreground=dataset.num_foreground)
        rows.append(GridRow(name, image, gt, cams, pseudo))
    out = image_grid(rows, out_file, max_cams=args.max_cams, foreground=dataset.foreground)
    console.print(f"grid of {len(rows)} images written to [bold]{out}[/]")
    return 0
