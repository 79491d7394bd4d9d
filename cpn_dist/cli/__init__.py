"""The ``cpn`` command line: one entry point, one module per subcommand.

Each module in :data:`COMMANDS` has ``register(subparsers)``, which adds its parser and sets
``handler``. Handlers import heavy libraries (torch, accelerate) lazily so ``cpn --help`` is quick.
A :class:`~cpn_dist.errors.CpnError` is shown as one red line and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich_argparse import RichHelpFormatter

from cpn_dist import __version__
from cpn_dist.errors import CpnError

# Subcommand modules, in the order `cpn --help` lists them.
COMMANDS = (
    "config_cmd", "synth_cmd", "voc_cmd", "eval_cmd", "pack_cmd", "shards_cmd", "crf_cmd", "pseudo_cmd",
    "infer_cmd", "show_cmd", "weights_cmd", "train_cmd", "affinity_cmd", "rw_cmd",
    "segment_cmd", "pipeline_cmd", "demo_cmd",
)  # fmt: skip

console = Console()
err_console = Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
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


def add_command(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand parser with the shared rich formatter."""
    return sub.add_parser(name, help=help, description=description or help, formatter_class=RichHelpFormatter)


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=verbosity > 1, rich_tracebacks=False)],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
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
    try:
        return int(args.handler(args) or 0)
    except CpnError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
