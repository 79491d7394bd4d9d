"""``cpn pseudo``: pseudo-label PNGs (VOC palette, 255 = ignore) from CAMs at a background score β."""

from __future__ import annotations

from cpn_dist.cli import add_command, check_beta, check_pair
from cpn_dist.cli.crf_cmd import (
    add_crf_arguments,
    add_folder_arguments,
    cams_dataset,
    crf_params,
    image_names,
    run_with_progress,
)
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "pseudo", "pseudo-label PNGs (VOC palette) from CAMs at β, optionally CRF-refined or as a low/high β pair",
        "Without --crf the class map is exactly the one `cpn eval` scores at that β. With --betas LOW HIGH, "
        "pixels still foreground at HIGH keep their class, pixels background at LOW are background, the rest "
        "are 255 (ignored): the confident labels AffinityNet trains on.",
    )  # fmt: skip
    add_folder_arguments(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--beta", type=float, help="background score β")
    which.add_argument("--betas", type=float, nargs=2, metavar=("LOW", "HIGH"), help="a low/high β pair")
    p.add_argument("--crf", action="store_true", help="refine with the dense CRF (needs --voc-root)")
    p.add_argument("--voc-root", metavar="DIR", help="VOC root holding JPEGImages/ (for --crf)")
    add_crf_arguments(p)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from cpn_dist.labels.pseudo import Job

    betas = (args.beta,) if args.beta is not None else tuple(args.betas)
    for beta in betas:
        check_beta(beta, "--beta" if args.beta is not None else "--betas")
    names = image_names(args)
    if not names:
        raise CpnError(f"{args.list or args.cams}: no images to label")
    if len(betas) == 2:
        check_pair(betas, "--betas")
    if args.crf and not args.voc_root:
        raise CpnError("--crf needs --voc-root (the CRF looks at the images)")
    job = Job(args.cams, args.out, betas, crf_params(args) if args.crf else None, args.voc_root, output="png",
              dataset=cams_dataset(args))  # fmt: skip
    run_with_progress("pseudo", job, names, args.workers, args.overwrite, ".png")
    return 0
