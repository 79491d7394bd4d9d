"""What the commands that run a model on images share (``cpn infer``, ``cpn rw``, ``cpn segment``): the
images to run on, the test scales, and whether to run on the CPU. Imports no torch until called."""

from __future__ import annotations

from cpn_dist.errors import CpnError


def parse_scales(text: str) -> tuple[float, ...]:
    """The scales of a ``--scales`` comma list, each > 0."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise CpnError(f"--scales '{text}': expected a comma list of numbers, e.g. 0.5,1.0,1.5,2.0") from None
    if not scales or any(not s > 0 for s in scales):
        raise CpnError(f"--scales '{text}': every scale must be > 0")
    return scales


def infer_source(args):
    """The images of ``--voc-root DIR --list FILE [--labels FILE]`` or ``--shards SRC [--split] [--list]``."""
    from cpn_dist.data.inputs import ShardSource, VocSource
    from cpn_dist.data.voc import read_split

    if bool(args.voc_root) == bool(args.shards):
        raise CpnError("give exactly one input: --voc-root DIR --list FILE, or --shards SRC")
    names = read_split(args.list) if args.list else None
    if names is not None and not names:
        raise CpnError(f"{args.list}: the list holds no image ids (nothing to infer)")
    if args.voc_root:
        if names is None:
            raise CpnError("--voc-root needs --list FILE (the image ids to infer)")
        return VocSource(args.voc_root, names, args.labels)
    if args.labels:
        raise CpnError("--labels applies to --voc-root; shards carry their own labels (cls.json)")
    return ShardSource(args.shards, args.split, names)


def cpu_only() -> bool:
    """Whether to run on the CPU. PartialState() on a host without a GPU reports one process even
    under `accelerate launch --multi_gpu`; with cpu=True it joins the gloo group instead."""
    import os

    import torch

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
