"""``cpn train``: train CPN in this process (the same code as ``accelerate launch -m cpn_dist.train``)."""

from __future__ import annotations

from cpn_dist.cli import add_command, add_threads_argument, console, use_threads

EXAMPLES = """\
examples:
  cpn train --config demo                                   # a packaged config, by name
  cpn train --config configs/voc_cpn_paper.yaml optim.lr=0.02 output.dir=runs/lr002
  cpn train --config my.yaml                                # again after a crash: resumes from the last checkpoint
  cpn train --config my.yaml --resume latest train.max_steps=20000   # continue, refusing a changed config
  cpn train --config my.yaml --restart                      # delete output.dir's checkpoints, start over
  accelerate launch --multi_gpu --num_processes 8 -m cpn_dist.train --config my.yaml

Every key, its default and meaning: cpn config keys. The resolved config: cpn config show CONFIG [KEY=VALUE …].
Ctrl-C or SIGTERM: the step finishes, a checkpoint is written, and the same command continues from it.
"""


def register(sub) -> None:
    p = add_command(
        sub, "train", "train the config's stage (cpn, affinity, …) on packed shards (one process; use "
        "`accelerate launch -m cpn_dist.train` for more)", epilog=EXAMPLES,
    )  # fmt: skip
    p.add_argument("--config", required=True, help="YAML run config: a path or a packaged name (demo, …)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", default=None,
                     help="'latest' or a checkpoint folder; refused if the config changed what the run computes")
    how.add_argument("--restart", action="store_true",
                     help="delete output.dir's checkpoints and final weights first and train from step 0")
    add_threads_argument(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    import logging

    from cpn_dist.config.load import load_config
    from cpn_dist.training.launch import quiet_libraries
    from cpn_dist.training.tasks import train

    logging.getLogger("cpn_dist").setLevel(logging.INFO)
    quiet_libraries()
    cfg = load_config(args.config, args.overrides)
    use_threads(args, announce=False)  # said with the run's layout, once the config and weights are good
    final = train(cfg, resume=args.resume, restart=args.restart)
    console.print(f"final weights: [bold]{final}[/]")
    return 0
