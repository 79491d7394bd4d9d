"""``cpn segment``: multi-scale + flip inference of the segmentation model into VOC-palette label PNGs,
optionally CRF-refined, optionally in the VOC test-server layout."""

from __future__ import annotations

from pathlib import Path

from cpn_dist.cli import add_command, add_dataset_argument, add_threads_argument, console, use_threads
from cpn_dist.cli.inference import add_allow_pickle
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "segment", "segmentation model → label PNGs (multi-scale + flip, optional CRF, VOC test-server layout)",
        "Averages the softmax of the model over every scale and its flip, writes the argmax as VOC-palette "
        "PNGs, and with --crf-out the dense-CRF refinement too. --test-server ROOT also writes the final maps "
        "as ROOT/results/VOC2012/Segmentation/comp5_test_cls/NAME.png (tar ROOT/results for the server). "
        "Distributed: accelerate launch [--multi_gpu --num_processes N] -m cpn_dist.segmentation.infer ARGS "
        "gives each process every N-th image.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="weights of a `stage: segmentation` run")
    add_allow_pickle(p)
    p.add_argument("--config", metavar="FILE",
                   help="run config (model.backbone, segmentation.*, data.mean/std); default: the one the weights "
                        "record (needed for weights that record none)")  # fmt: skip
    add_dataset_argument(p, "the classes of weights that record none (default: from their classifier's width; must "
                            "agree with it)")  # fmt: skip
    src = p.add_argument_group("input (one of)")
    src.add_argument("--voc-root", metavar="DIR", help="VOC root (JPEGImages/)")
    src.add_argument("--shards", metavar="SRC", help="packed shards: a folder, a .tar or a webdataset pattern")
    src.add_argument("--split", help="split inside a shard folder (default: its only split)")
    src.add_argument("--list", metavar="FILE", help="image ids (required with --voc-root; restricts --shards)")
    out = p.add_argument_group("output (at least one)")
    out.add_argument("--out", metavar="DIR", help="label PNGs without CRF")
    out.add_argument("--crf-out", metavar="DIR", help="label PNGs after the dense CRF (segmentation.crf.* settings)")
    out.add_argument("--test-server", metavar="ROOT",
                     help="final maps (after the CRF with --crf-out) in the VOC server layout under ROOT")  # fmt: skip
    p.add_argument("--scales", help="comma list (default: the config's segmentation.test_scales)")
    p.add_argument("--no-flip", action="store_true", help="do not add the flipped inputs")
    p.add_argument("--batch-size", type=int, default=8, help="most equal-sized inputs per forward (default 8)")
    p.add_argument("--images-per-step", type=int, default=4, help="images prepared together (default 4)")
    p.add_argument("--loader-threads", type=int, default=2, help="threads decoding and resizing images (default 2)")
    p.add_argument("--crf-workers", type=int, default=0, help="processes running the CRF (default 0: inline)")
    add_threads_argument(p)
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    p.set_defaults(handler=_run, labels=None)


def _outputs(args):
    from cpn_dist.segmentation.infer import Outputs

    if not (args.out or args.crf_out or args.test_server):
        raise CpnError("give at least one output: --out DIR, --crf-out DIR or --test-server ROOT")
    return Outputs(Path(args.out) if args.out else None, Path(args.crf_out) if args.crf_out else None,
                   Path(args.test_server) if args.test_server else None)  # fmt: skip


def _config(args):
    """The run config: the one the weights record, or ``--config`` (which must agree with it)."""
    from cpn_dist.config.weights import weights_config
    from cpn_dist.models.weights import read_weights

    state, meta = read_weights(args.checkpoint, args.allow_pickle)
    if meta is None and args.config is None:
        raise CpnError(f"{args.checkpoint}: records no model (an older run?); give its --config")
    return weights_config(args.checkpoint, meta, "segmentation", args.config), state, meta


def _model(args, cfg, state, meta, device, dataset):
    from cpn_dist.config.weights import load_checked
    from cpn_dist.segmentation.model import model_from_config

    model = model_from_config(cfg, dropout=False, num_classes=dataset.num_classes)
    report = load_checked(model, state, args.checkpoint, meta, cfg, "segmentation", "the --config")
    if report.missing:
        raise CpnError(f"{args.checkpoint}: not a segmentation checkpoint for this config "
                       f"({len(report.missing)} model keys missing, e.g. '{report.missing[0]}')")  # fmt: skip
    return model.to(device).eval(), report


def _run(args) -> int:
    from accelerate import PartialState

    from cpn_dist.cli.inference import check_found, infer_source, parse_scales, per_process, run_share
    from cpn_dist.data.datasets.recorded import weights_dataset
    from cpn_dist.devices import use_cpu
    from cpn_dist.segmentation.infer import segment_samples, segment_settings

    if args.batch_size < 1 or args.images_per_step < 1 or args.crf_workers < 0:
        raise CpnError("--batch-size and --images-per-step must be >= 1, --crf-workers >= 0")
    outputs = _outputs(args)
    cfg, weights, meta = _config(args)
    overrides = {"flip": cfg.segmentation.test_flip and not args.no_flip, "batch_size": args.batch_size}
    if args.scales:
        overrides["scales"] = parse_scales(args.scales)
    settings = segment_settings(cfg, **overrides)
    if args.crf_out is None:
        settings = segment_settings(cfg, **overrides, crf=None)
    elif settings.crf is None:
        raise CpnError(f"--crf-out: {args.config or args.checkpoint} sets segmentation.crf.enabled: false")
    state = PartialState(cpu=use_cpu())
    rank, world = state.process_index, state.num_processes
    source = infer_source(args)
    dataset = weights_dataset(args.checkpoint, meta, weights, "segmentation", args.dataset)
    model, report = _model(args, cfg, weights, meta, state.device, dataset)
    use_threads(args)
    names = getattr(source, "names", None)
    done = frozenset()
    if not args.overwrite and names is not None:
        done = frozenset(n for n in names if outputs.done(n))
    if state.is_main_process:
        console.print(report.summary(), highlight=False)
        if done:
            console.print(f"{len(done)} images already segmented are kept (--overwrite redoes them)")
    state.wait_for_everyone()

    total = sum(1 for n in names[rank::world] if n not in done) if names is not None else None
    everyone = run_share(state, "segment", total, lambda on_image: segment_samples(
        model, source.samples(rank=rank, world=world, skip=done, image=True, labels=False), outputs, settings,
        device=state.device, images_per_step=args.images_per_step, loader_threads=args.loader_threads,
        crf_workers=args.crf_workers, on_image=on_image, dataset=dataset))  # fmt: skip
    if state.is_main_process:
        got = [n for _, n in everyone]
        missing = sorted(set(names) - set(got) - done) if names is not None else []
        check_found(str(args.shards or args.voc_root), missing)
        where = ", ".join(str(d) for d in (outputs.labels, outputs.crf, outputs.final_dir()) if d is not None)
        console.print(f"segmented {len(got)} images into [bold]{where}[/]{per_process(everyone, world)}")
    state.wait_for_everyone()
    return 0
