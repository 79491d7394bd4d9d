"""What the commands that run a model on images share (``cpn infer``, ``cpn rw``, ``cpn segment``): the
images to run on, the test scales, whether to run on the CPU, and the distributed driver (each process
runs its share with progress shown by the main process; the main process gathers who wrote what).
Imports no torch until called."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cpn_dist.errors import CpnError


def add_allow_pickle(p) -> None:
    """The ``--allow-pickle`` flag of the commands that read weights (the run config's ``model.allow_pickle``)."""
    p.add_argument("--allow-pickle", action="store_true",
                   help="load weights that need full unpickling: that RUNS CODE STORED IN THE FILE; only for files "
                        "whose source you trust (without it such a file is refused)")  # fmt: skip


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
    from cpn_dist.data.datasets.voc import read_split
    from cpn_dist.data.inputs import ShardSource, VocSource

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


def run_share(state, label: str, total: int | None, work: Callable[[Callable], Iterable[str]]) -> list[tuple[int, str]]:
    """Runs ``work(on_image)`` — this process's share of the images — with its progress shown by the main
    process (:class:`cpn_dist.progress.Progress`: a bar on a terminal, else log lines), then gathers every
    process's written image names as (rank, name) pairs, in rank order on every process. An image written
    by two processes is a slicing bug and raises."""
    from accelerate.utils import gather_object

    from cpn_dist.progress import Progress

    rank, world = state.process_index, state.num_processes
    what = f"{label} (process {rank + 1}/{world})" if world > 1 else label
    with Progress(what, total, shown=state.is_main_process) as progress:
        written = list(work(progress.on_item))
    everyone = gather_object([(rank, name) for name in written]) if world > 1 else [(0, n) for n in written]
    names = [n for _, n in everyone]
    if len(set(names)) != len(names):  # pragma: no cover - would be a slicing bug
        raise RuntimeError(f"{label}: an image was written by more than one process")
    return everyone


def check_found(where: str, missing: list[str]) -> None:
    """One line naming how many listed images the input did not have."""
    if missing:
        raise CpnError(f"{where}: {len(missing)} listed image(s) not found, e.g. '{missing[0]}'")


def per_process(everyone: list[tuple[int, str]], world: int) -> str:
    """`` (per process: a, b, …)`` for a multi-process run, else nothing."""
    if world == 1:
        return ""
    return f" (per process: {', '.join(str(sum(1 for r, _ in everyone if r == k)) for k in range(world))})"
