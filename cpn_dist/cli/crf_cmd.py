"""``cpn crf``: dense-CRF refinement of CAMs at a background score β, written as class probabilities."""

from __future__ import annotations

import argparse
from pathlib import Path

from cpn_dist.cli import add_command, add_dataset_argument, console
from cpn_dist.errors import CpnError

# The keys of a CRF section (:class:`cpn_dist.config.CrfConfig`), each a ``--crf-*`` flag. Named here so that
# building the parser imports no pydantic (`cpn --help` stays quick); a test checks they are CrfConfig's keys.
CRF_KEYS = {"iterations": int, "gaussian_sxy": float, "gaussian_compat": float, "bilateral_sxy": float,
            "bilateral_srgb": float, "bilateral_compat": float}  # fmt: skip


class _CrfFlag(argparse.Action):
    """A ``--crf-*`` flag whose help shows the default from :class:`cpn_dist.config.CrfConfig`, read when
    the help is shown, not when the parser is built."""

    def __init__(self, *args, key: str, from_config: str | None, **kwargs) -> None:
        self.key, self.from_config = key, from_config
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)

    @property
    def help(self) -> str:
        from cpn_dist.config.run import CrfConfig

        default = CrfConfig.model_fields[self.key].default
        shown = f"{self.from_config}.{self.key}, PSA: {default}" if self.from_config else str(default)
        return ("mean-field iterations " if self.key == "iterations" else "") + f"({shown})"

    @help.setter
    def help(self, value) -> None:  # argparse sets it; the property above answers
        pass


def add_crf_arguments(p, title: str = "dense CRF (defaults: AffinityNet/PSA)", from_config: str | None = None) -> None:
    """The ``--crf-*`` flags, one per key of :class:`cpn_dist.config.CrfConfig`. ``from_config``: the config
    section whose values are their defaults (named in the help; :func:`crf_params` then takes its ``base``
    from there); otherwise the defaults are ``CrfConfig()``'s, PSA's."""
    g = p.add_argument_group(title)
    for key, kind in CRF_KEYS.items():
        g.add_argument(f"--crf-{key.replace('_', '-')}", dest=f"crf_{key}", type=kind, default=None,
                       action=_CrfFlag, key=key, from_config=from_config)  # fmt: skip


def crf_params(args, base=None):
    """The CRF section (:class:`cpn_dist.config.CrfConfig`) of the ``--crf-*`` flags; flags left unset take
    ``base``'s values (default ``CrfConfig()``, PSA's). A bad value is a CpnError naming the flag."""
    from pydantic import ValidationError

    from cpn_dist.config.run import CrfConfig, describe_error

    base = CrfConfig() if base is None else base
    given = {key: getattr(args, f"crf_{key}") for key in CRF_KEYS if getattr(args, f"crf_{key}") is not None}
    if not given:
        return base
    try:
        return type(base).model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0])
        raise CpnError(describe_error(err, type(base)).replace(key, f"--crf-{key.replace('_', '-')}", 1)) from None


def add_folder_arguments(p) -> None:
    p.add_argument("--cams", required=True, metavar="DIR", help="CAM files NAME.npy (released format) or NAME.npz "
                   "(compact)")  # fmt: skip
    p.add_argument("--list", metavar="FILE", help="image ids, one per line (default: every CAM file in --cams)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    add_dataset_argument(p)


def image_names(args) -> list[str]:
    from cpn_dist.data.datasets.voc import read_split
    from cpn_dist.labels.cams import cam_names

    if args.list:
        return read_split(args.list)
    folder = Path(args.cams)
    if not folder.is_dir():
        raise CpnError(f"{folder}: CAM folder not found")
    return cam_names(folder)


def cams_dataset(args):
    """The dataset of ``--cams`` (``--dataset``, else its dataset.json, else VOC)."""
    from cpn_dist.data.datasets.recorded import folders_dataset

    return folders_dataset(args.dataset, args.cams)


def run_with_progress(label: str, job, names: list[str], workers: int | None, overwrite: bool, suffix: str) -> int:
    from cpn_dist.labels.evaluate import default_workers
    from cpn_dist.labels.pseudo import pending, run_folder
    from cpn_dist.progress import Progress

    todo = pending(names, job.out_dir, suffix, overwrite)
    if len(todo) < len(names):
        skipped = len(names) - len(todo)
        console.print(f"{skipped} of {len(names)} images already done in {job.out_dir} (--overwrite redoes them)")
    with Progress(label, len(todo)) as progress:
        done = run_folder(job, todo, workers or default_workers(), on_images=progress.advance)
    console.print(f"wrote {done} files to [bold]{job.out_dir}[/]")
    return done


def register(sub) -> None:
    p = add_command(
        sub, "crf", "dense-CRF refinement of CAMs at a background score β (class probabilities, .npy)",
        "Turns each CAM dict into probabilities [β, CAMs of the labelled classes] normalised per pixel, "
        "runs the dense CRF on the image, and writes NAME.npy holding {0: background, c+1: class c} "
        "(the AffinityNet/PSA layout of CRF labels).",
    )  # fmt: skip
    add_folder_arguments(p)
    p.add_argument("--voc-root", required=True, metavar="DIR", help="VOC root holding JPEGImages/")
    p.add_argument("--beta", type=float, required=True, help="background score β")
    add_crf_arguments(p)
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from cpn_dist.cli import check_beta
    from cpn_dist.labels.pseudo import Job

    check_beta(args.beta, "--beta")
    names = image_names(args)
    if not names:
        raise CpnError(f"{args.list or args.cams}: no images to refine")
    job = Job(args.cams, args.out, (args.beta,), crf_params(args), args.voc_root, output="npy",
              dataset=cams_dataset(args))  # fmt: skip
    run_with_progress("crf", job, names, args.workers, args.overwrite, ".npy")
    return 0
