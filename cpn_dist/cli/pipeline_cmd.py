"""``cpn pipeline``: run every step — pack, CPN, CAMs, β sweep, pseudo labels, AffinityNet + random
walk, DeepLab, segmentation with CRF — and print the mIoU after each stage."""

from __future__ import annotations

from rich.table import Table

from cpn_dist.cli import add_command, add_threads_argument, console, print_table, step_printer, use_threads


def register(sub) -> None:
    from cpn_dist.pipeline.stages import STEPS  # no pydantic, no torch: `cpn --help` stays quick

    p = add_command(
        sub, "pipeline", "run every step from a VOC or COCO folder to the scored segmentation model (resumable, "
        "skippable)",
        f"Steps: {', '.join(STEPS)} (with coco_root: coco_view first). A finished step is skipped on the next run "
        "(its stamp is in WORK/steps/); "
        "an interrupted one resumes. Distributed: accelerate launch [--multi_gpu --num_processes N] "
        "-m cpn_dist.pipeline --config FILE.",
    )  # fmt: skip
    p.add_argument("--config", required=True, metavar="FILE", help="pipeline config (configs/pipeline_*.yaml)")
    p.add_argument("--only", metavar="STEPS", help="comma list: run only these steps")
    p.add_argument("--skip", metavar="STEPS", help="comma list: leave these steps out")
    p.add_argument("--redo", metavar="STEP", help="run this step and every later one afresh (outputs overwritten)")
    add_threads_argument(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the pipeline config")
    p.set_defaults(handler=_run)


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def score_table(scores, title: str = "mIoU after each stage") -> Table:
    table = Table(title=title)
    table.add_column("stage", no_wrap=True)
    for name in ("scored on", "images", "mIoU %", "bg. %", "f. %", "note"):
        table.add_column(name, justify="right" if "%" in name or name == "images" else "left")
    for s in scores:
        table.add_row(s.stage, s.split, str(s.images), f"{s.miou * 100:.2f}", f"{s.background * 100:.2f}",
                      f"{s.foreground * 100:.2f}", s.note)  # fmt: skip
    return table


def _run(args) -> int:
    import logging

    from cpn_dist.config.load import load_pipeline_config
    from cpn_dist.pipeline.run import Pipeline
    from cpn_dist.training.launch import quiet_libraries

    logging.getLogger("cpn_dist").setLevel(logging.INFO)
    quiet_libraries()
    pipeline = Pipeline(load_pipeline_config(args.config, args.overrides))
    use_threads(args)
    on_step = step_printer(lambda: pipeline.dist is None or pipeline.dist.main)
    result = pipeline.run(only=_names(args.only), skip=_names(args.skip) or (), redo=args.redo, on_step=on_step)
    if pipeline.dist is not None and not pipeline.dist.main:
        return 0
    steps = Table("step", "status", "seconds", title=f"{pipeline.work}: steps")
    for r in result.steps:
        steps.add_row(r.name, r.status, f"{r.seconds:.1f}" if r.status == "ran" else "")
    print_table(steps)
    print_table(score_table(result.scores))
    console.print(f"pipeline time {result.seconds:.1f} s; scores in [bold]{pipeline.work / 'summary.json'}[/]")
    return 0
