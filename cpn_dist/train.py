"""Train any stage: ``accelerate launch -m cpn_dist.train --config configs/X.yaml [KEY=VALUE ...]`` (or
``cpn train`` in one process). The config's ``stage`` picks the task (:mod:`cpn_dist.training.tasks`); the loop
itself is :mod:`cpn_dist.training.engine`.
"""

from __future__ import annotations

import logging

import torch

from cpn_dist.devices import set_torch_threads
from cpn_dist.errors import CpnError
from cpn_dist.training.launch import quiet_libraries
from cpn_dist.training.tasks import train

__all__ = ["main", "run_main", "train"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, "cpn_dist.train", "Train the Complementary Patch Network.", train)


def run_main(argv: list[str] | None, prog: str, description: str, train_fn) -> int:
    """The ``python -m cpn_dist.<stage>`` entry point: parse, choose torch's threads, train, one-line errors,
    clean exit."""
    import argparse

    from cpn_dist.cli import add_threads_argument
    from cpn_dist.config.load import load_config

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--restart", action="store_true",
                        help="delete output.dir's checkpoints and final weights and train from step 0")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        cfg = load_config(args.config, args.overrides)
        set_torch_threads(args.threads, announce=False)  # the engine says it with the run's layout
        train_fn(cfg, resume=args.resume, restart=args.restart)
    except CpnError as exc:
        if not getattr(exc, "shown_by_main", False):
            log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("stopped at once (a second Ctrl-C): no checkpoint of the current step")
        return 130
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
