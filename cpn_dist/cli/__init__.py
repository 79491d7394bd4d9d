"""The ``cpn`` command line: one entry point, one module per subcommand.

Each module in :data:`COMMANDS` has ``register(subparsers)``, which adds its parser and sets
``handler``. Registering imports no torch, and neither do ``cpn --version``, ``--help`` and the
commands that run no model (eval, pseudo, crf, show, pack, shards, check-voc, synth-voc, check-coco,
synth-coco, coco-masks, config):
handlers import heavy libraries (torch, accelerate) lazily, where a model runs (tests check it).
A :class:`~cpn_dist.errors.CpnError` is shown as one red line and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cpn_dist import __version__
from cpn_dist.errors import CpnError

# Subcommand modules, in the order `cpn --help` lists them.
COMMANDS = (
    "config_cmd", "synth_cmd", "voc_cmd", "coco_cmd", "eval_cmd", "pack_cmd", "shards_cmd", "crf_cmd", "pseudo_cmd",
    "infer_cmd", "show_cmd", "weights_cmd", "train_cmd", "affinity_cmd", "rw_cmd",
    "segment_cmd", "pipeline_cmd", "demo_cmd",
)  # fmt: skip



# Loggers the CLI shows at INFO without -v: progress lines of long work, what a log of a long run needs
# to tell work from a hang. (The torch thread choice is INFO of cpn_dist.devices: shown with -v; its
# warning on a loaded CPU always.)
ALWAYS_SHOWN = ("cpn_dist.progress",)


def _console(name: str):
    if "console" not in globals():
        from rich import get_console
        from rich.console import Console

        # stdout: rich's shared console, the one progress bars (cpn_dist.progress) draw on
        globals().update(console=get_console(), err_console=Console(stderr=True))
    return globals()[name]


def __getattr__(name: str):
    """``console`` (stdout) and ``err_console`` (stderr), the rich consoles of every command, made on
    first use: ``cpn --version`` never imports rich."""
    if name in ("console", "err_console"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    from rich_argparse import RichHelpFormatter

    parser = argparse.ArgumentParser(
        prog="cpn",
        description="Complementary Patch Network (ICCV 2021) for weakly supervised semantic "
        "segmentation: pack data, train, infer CAMs, evaluate, refine.",
        formatter_class=RichHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cpn-dist {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name in COMMANDS:
        importlib.import_module(f"cpn_dist.cli.{name}").register(sub)
    return parser


def add_command(sub, name: str, help: str, description: str | None = None,
                epilog: str | None = None) -> argparse.ArgumentParser:  # fmt: skip
    """Add a subcommand parser with the shared rich formatter (``epilog``: examples, kept as written)."""
    from rich_argparse import RawDescriptionRichHelpFormatter, RichHelpFormatter

    if epilog is None:
        return sub.add_parser(name, help=help, description=description or help, formatter_class=RichHelpFormatter)
    return sub.add_parser(name, help=help, description=description or help, epilog=epilog,
                          formatter_class=RawDescriptionRichHelpFormatter)  # fmt: skip


def output_file(path: str | None, flag: str):
    """The output file of ``flag`` with its folder created, checked before any work is done (None: none)."""
    from pathlib import Path

    if path is None:
        return None
    out = Path(path)
    if out.is_dir():
        raise CpnError(f"{flag} {out}: is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CpnError(f"{flag} {out}: {out.parent} exists and is not a folder") from None
    return out


class _Renamed(argparse.Action):
    """A flag that was renamed: using it is an error naming the new flag."""

    def __init__(self, *args, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(*args, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} was renamed to {self.new}")


def renamed_flag(p, old: str, new: str, nargs: int | None = None) -> None:
    """Declare ``old``, hidden, as a flag that fails naming its new name ``new``."""
    p.add_argument(old, action=_Renamed, new=new, nargs=nargs, dest=f"renamed_{old.lstrip('-')}")


def print_table(table) -> None:
    """Print a rich table on stdout: on a terminal as rich lays it out there; otherwise (a log file, a
    pipe) as wide as its content, where rich would cut headers and cells to 80 columns (``base…``)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = _console("console")
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update(width=10_000), table).maximum
    Console(file=console.file, width=max(natural, console.width)).print(table)  # print() caps at the width


def print_findings(split: str, problems: list[tuple[str, str]], warnings: list[tuple[str, str]]) -> None:
    """A table of a split's problems and one of its warnings (where, what), the first 50 of each (``cpn shards
    verify``, ``cpn check-coco``)."""
    from rich.table import Table

    for kind, items, style in (("problem", problems, "red"), ("warning", warnings, "yellow")):
        if not items:
            continue
        table = Table("where", kind, title=f"{split}: {len(items)} {kind}(s)", title_style=style)
        for where, what in items[:50]:
            table.add_row(where, what)
        if len(items) > 50:
            table.add_row("…", f"{len(items) - 50} more")
        print_table(table)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_dataset_argument(p, help: str = "the classes of the CAMs / labels (default: the dataset.json of the "
                         "folders read; none: voc)") -> None:  # fmt: skip
    """``--dataset voc|coco``: which classes (:func:`cpn_dist.data.datasets.info.by_name`) where nothing
    records them."""
    from cpn_dist.data.datasets.info import BUILT_IN

    p.add_argument("--dataset", choices=tuple(BUILT_IN), default=None, help=help)


def add_threads_argument(p) -> None:
    """``--threads N``: torch CPU threads per process (the commands that run a model)."""
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads per process (default: OMP_NUM_THREADS if set, else the usable cores "
                        "divided by the processes on this machine)")  # fmt: skip


def use_threads(args, announce: bool = True) -> int:
    """Set torch's CPU threads of this process (``--threads``, else the rule of
    :func:`cpn_dist.devices.thread_count`) and log the choice (``announce=False``: training logs it with
    the run's layout); call where the model work starts."""
    from cpn_dist.devices import set_torch_threads

    return set_torch_threads(getattr(args, "threads", None), announce=announce)


def check_beta(value: float | None, flag: str) -> None:
    """A background score β must be a finite number >= 0 (CAMs are >= 0 where they matter)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise CpnError(f"{flag} {value:g}: a background score β must be a number >= 0 (e.g. 0.3)")


def check_pair(pair, flag: str) -> None:
    """A ``LOW HIGH`` pair given to ``flag`` must rise; the message shows it the right way round."""
    low, high = pair
    if not low < high:
        example = f", e.g. {flag} {high:g} {low:g}" if high < low else ""
        raise CpnError(f"{flag} {low:g} {high:g}: LOW must be below HIGH{example}")


def step_printer(shown=lambda: True):
    """An ``on_step(name, event)`` for :class:`cpn_dist.pipeline.runner.StepRunner` that shows each step's start, its
    time when it ran, and any other event (done before, skipped, stale…); ``shown()``: whether this
    process prints (the main one)."""
    import time

    started: dict[str, float] = {}

    def on_step(name: str, event: str) -> None:
        if not shown():
            return
        console = _console("console")
        if event == "start":
            started[name] = time.perf_counter()
            console.rule(f"[bold]{name}[/]")
        elif event == "ran":
            console.print(f"[green]✓[/] {name} ({time.perf_counter() - started[name]:.1f} s)")
        else:
            console.print(f"[dim]· {name}: {event}[/]")

    return on_step


def passive_when_loaded(env, load: float | None = None, cores: int | None = None,
                        torch_loaded: bool | None = None) -> bool:  # fmt: skip
    """On a CPU already busier than its cores when a command starts, let OpenMP's idle threads sleep instead of
    spin (``OMP_WAIT_POLICY=PASSIVE``, read when torch loads): spinning threads of processes that share the
    cores slowed two trainings 5–6× (BENCHMARKS.md, "Torch threads when two trainings share 2 cores");
    passive waiting changes no result, only how idle threads wait. Nothing is changed when the user set the
    policy, when torch is already loaded, or on an idle machine. Returns whether it set the policy."""
    torch_loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if "OMP_WAIT_POLICY" in env or torch_loaded or not hasattr(os, "getloadavg"):
        return False
    load = os.getloadavg()[0] if load is None else load
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) \
        if cores is None else cores
    if load <= cores:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def setup_logging(verbosity: int) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=_console("err_console"), show_path=verbosity > 1, rich_tracebacks=False)],
    )  # fmt: skip
    for name in ALWAYS_SHOWN:
        logging.getLogger(name).setLevel(min(level, logging.INFO))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # answered before any subcommand module is imported
        print(f"cpn-dist {__version__}")
        return 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options too (`cpn train --config c.yaml --resume latest a.b=1`).
    if extra and isinstance(getattr(args, "overrides", None), list) and all("=" in a and not a.startswith("-")
                                                                            for a in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    setup_logging(args.verbose)
    passive_when_loaded(os.environ)
    try:
        return int(args.handler(args) or 0)
    except CpnError as exc:
        _console("err_console").print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _console("err_console").print("[yellow]interrupted[/]")
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Destroy the process group a command joined (`accelerate launch -m cpn_dist.cpn.infer`, `cpn rw`,
    `cpn segment`, `cpn pipeline` on N processes). Left to interpreter exit, gloo's threads were torn
    down unjoined now and then ("terminate called without an active exception", SIGABRT after the work
    was done: 1 run in 6 of the 2-process infer test on a loaded 2-core machine)."""
    torch = sys.modules.get("torch")  # a command that ran no model has not imported torch: nothing to do
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
