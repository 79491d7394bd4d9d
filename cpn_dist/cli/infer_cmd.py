"""``cpn infer``: multi-scale, flipped CAM inference into CAM files (the released format, or the compact
store), over the classes the weights score; the output folder records them (``dataset.json``)."""

from __future__ import annotations

from pathlib import Path

from cpn_dist.cli import add_command, add_dataset_argument, add_threads_argument, console, use_threads
from cpn_dist.cli.inference import (
    add_allow_pickle,
    check_found,
    infer_source,
    parse_scales,
    per_process,
    run_share,  # fmt: skip
)
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(
        sub, "infer", "multi-scale + flip CAM inference into NAME.npy files (the released infer_cam.py format)",
        "Computes what the released infer_cam.py computes (refined CAM, 4 scales × 2 flips summed, "
        "released normalisation, labelled classes only) for every image, batching equal-sized inputs. "
        "The model scores the classes its weights record (or, for released weights, as many as their fc8 has: "
        "21 VOC, 81 COCO); OUT/dataset.json records them for the commands that read the CAMs. "
        "Distributed: accelerate launch [--multi_gpu --num_processes N] -m cpn_dist.cpn.infer ARGS "
        "gives each process every N-th image.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="weights: ours or the released CPN .pth")
    add_allow_pickle(p)
    p.add_argument("--config", metavar="FILE",
                   help="run config (model.backbone, model.head, data.mean/std); default: the one our weights "
                        "record (released weights: the defaults)")  # fmt: skip
    p.add_argument("--backbone", choices=("resnet38d", "efficientnet_lite0", "tiny"),
                   help="for weights that record no model (released ones): overrides the config's model.backbone")
    p.add_argument("--head", choices=("official", "paper", "pcm", "none"),
                   help="for weights that record no model (released ones): overrides the config's model.head")
    add_dataset_argument(p, "the classes of weights that record none (default: from their fc8's width; must agree "
                            "with it)")  # fmt: skip
    src = p.add_argument_group("input (one of)")
    src.add_argument("--voc-root", metavar="DIR", help="VOC root (JPEGImages/, Annotations/)")
    src.add_argument("--shards", metavar="SRC", help="packed shards: a folder, a .tar or a webdataset pattern")
    src.add_argument("--split", help="split inside a shard folder (default: its only split)")
    src.add_argument("--list", metavar="FILE", help="image ids, one per line or the released list format "
                     "(required with --voc-root; restricts --shards)")  # fmt: skip
    src.add_argument("--labels", metavar="FILE", help="image labels: released cls_labels.npy or JSON {id: [20 × 0/1] "
                     "or [class names]} (default: the VOC XMLs)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for NAME.npy (NAME.npz: compact)")
    p.add_argument("--scales", default="0.5,1.0,1.5,2.0", help="comma list (default 0.5,1.0,1.5,2.0)")
    p.add_argument("--no-flip", action="store_true", help="do not add the flipped inputs")
    p.add_argument("--use", choices=("refined", "cam"), default="refined",
                   help="refined CAM (released) or the raw CAM")  # fmt: skip
    p.add_argument("--format", choices=("released", "irn", "compact"), default="released",
                   help="released: NAME.npy {class: H×W}; irn: keys/cam/high_res with IRN's max normalisation; "
                        "compact: NAME.npz, the released maps averaged over blocks and quantised (every command "
                        "reads it; about 30× smaller for COCO)")  # fmt: skip
    p.add_argument("--compact-stride", type=int, default=None, metavar="N",
                   help="--format compact: the block size in pixels (default 4)")
    p.add_argument("--compact-dtype", choices=("uint8", "float16"), default=None,
                   help="--format compact: the codes' type (default uint8)")
    p.add_argument("--save-raw", action="store_true", help="also write the unnormalised sum to OUT/raw/NAME.npy")
    p.add_argument("--batch-size", type=int, default=8, help="most equal-sized inputs per forward (default 8)")
    p.add_argument("--images-per-step", type=int, default=4, help="images prepared together (default 4)")
    p.add_argument("--loader-threads", type=int, default=2, help="threads decoding and resizing images (default 2)")
    add_threads_argument(p)
    p.add_argument("--overwrite", action="store_true", help="redo images whose CAM file exists")
    p.set_defaults(handler=_run)


def _model(args, device):
    """The CPN of ``--checkpoint``: the model its weights record, or (released weights) the one of
    ``--config`` and ``--backbone``/``--head``; over the classes the weights score (their record, their fc8's
    width, ``--dataset``). Returns (model, load report, config, dataset)."""
    from cpn_dist.config.weights import load_checked, weights_config
    from cpn_dist.cpn.model import build_model
    from cpn_dist.data.datasets.recorded import weights_dataset
    from cpn_dist.models.weights import read_weights

    state, meta = read_weights(args.checkpoint, args.allow_pickle)
    flags = {"model.backbone": ("--backbone", args.backbone), "model.head": ("--head", args.head)}
    cfg = weights_config(args.checkpoint, meta, "cpn", args.config, flags)
    dataset = weights_dataset(args.checkpoint, meta, state, "cpn", args.dataset)
    model = build_model(cfg.model.backbone, cfg.model.head, dropout=0.0, num_classes=dataset.num_classes)
    report = load_checked(model, state, args.checkpoint, meta, cfg, "cpn", "--backbone/--head (or --config)")
    model.to(device).eval()
    return model, report, cfg, dataset


def _source_dataset(args):
    """The dataset of the input's labels: the shards' (their meta.json), VOC for a VOC folder (or the one a
    VOC-layout view of another dataset records in its dataset.json, as the pipeline's COCO view)."""
    from cpn_dist.data.datasets.info import read_folder_dataset, voc
    from cpn_dist.data.inputs import is_shard_source
    from cpn_dist.data.shards.reader import shards_dataset

    if args.shards and is_shard_source(args.shards):
        return shards_dataset(args.shards)
    if args.labels:
        return None  # a labels file says nothing: each sample's count is checked
    return (read_folder_dataset(args.voc_root) if args.voc_root else None) or voc()


def _run(args) -> int:
    from accelerate import PartialState

    from cpn_dist.cpn.infer import InferSettings, infer_samples
    from cpn_dist.data.datasets.info import FOLDER_FILE, read_folder_dataset
    from cpn_dist.data.datasets.recorded import record_dataset, same_classes
    from cpn_dist.devices import use_cpu
    from cpn_dist.labels.cams import cam_names

    if args.batch_size < 1 or args.images_per_step < 1:
        raise CpnError("--batch-size and --images-per-step must be >= 1")
    if args.format != "compact" and (args.compact_stride is not None or args.compact_dtype is not None):
        raise CpnError("--compact-stride and --compact-dtype go with --format compact")
    if args.compact_stride is not None and args.compact_stride < 1:
        raise CpnError(f"--compact-stride must be >= 1, got {args.compact_stride}")
    state = PartialState(cpu=use_cpu())
    rank, world = state.process_index, state.num_processes
    source = infer_source(args)
    out = Path(args.out)
    model, report, cfg, dataset = _model(args, state.device)
    given = _source_dataset(args)
    if given is not None:
        same_classes(dataset, given, "labels", str(args.shards or args.voc_root))
    recorded = read_folder_dataset(out) if out.is_dir() else None
    if recorded is not None:  # CAMs of another dataset in the folder would be read with the wrong classes
        same_classes(dataset, recorded, "CAM files", str(out / FOLDER_FILE))
    use_threads(args)
    compact = {k: v for k, v in (("compact_stride", args.compact_stride), ("compact_dtype", args.compact_dtype))
               if v is not None}  # fmt: skip
    settings = InferSettings(
        scales=parse_scales(args.scales), flip=not args.no_flip, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),
        use=args.use, batch_size=args.batch_size, fmt=args.format, save_raw=args.save_raw, **compact,
    )  # fmt: skip
    done = frozenset() if args.overwrite or not out.is_dir() else frozenset(cam_names(out))
    if state.is_main_process:
        console.print(report.summary(), highlight=False)
        console.print(f"classes: {dataset.name} ({dataset.num_classes} with background)", highlight=False)
        if done:
            console.print(f"{len(done)} CAM files already in {out} are kept (--overwrite redoes them)")
    state.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)
    record_dataset(out, dataset)

    total = None
    if getattr(source, "names", None) is not None:
        mine = source.names[rank::world]
        total = sum(1 for n in mine if n not in done)
    everyone = run_share(state, "infer", total, lambda on_image: infer_samples(
        model, source.samples(rank=rank, world=world, skip=done, image=True, labels=True), out, settings,
        device=state.device, images_per_step=args.images_per_step, loader_threads=args.loader_threads,
        on_image=on_image))  # fmt: skip
    if state.is_main_process:
        names = [n for _, n in everyone]
        wanted = getattr(source, "names", None)
        check_found(str(args.shards or args.voc_root), sorted(set(wanted) - set(names) - done) if wanted else [])
        console.print(f"wrote {len(names)} CAM files to [bold]{out}[/]{per_process(everyone, world)}")
    state.wait_for_everyone()
    return 0
