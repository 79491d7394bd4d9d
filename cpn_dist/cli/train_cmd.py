"""``cpn train``: train CPN in this process (the same code as ``accelerate launch -m cpn_dist.train``)."""

from __future__ import annotations

from cpn_dist.cli import add_command, console


def register(sub) -> None:
    p = add_command(
        sub, "train", "train the config's stage (cpn, affinity, …) on packed shards (one process; use "
        "`accelerate launch -m cpn_dist.train` for more)",
    )  # fmt: skip
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    import logging

    from cpn_dist.config import load_config
    from cpn_dist.train import quiet_libraries, train

    logging.getLogger("cpn_dist").setLevel(logging.INFO)
    quiet_libraries()
    final = train(load_config(args.config, args.overrides), resume=args.resume)
    console.print(f"final weights: [bold]{final}[/]")
    return 0
