"""``cpn rw``: AffinityNet's random walk of CAMs into pseudo-label PNGs (VOC palette)."""

from __future__ import annotations

from pathlib import Path

from cpn_dist.cli import add_command, add_threads_argument, console, renamed_flag, use_threads
from cpn_dist.cli.affinity_cmd import add_image_source_arguments, image_source, stage2_names
from cpn_dist.cli.inference import add_allow_pickle
from cpn_dist.errors import CpnError


def register(sub) -> None:
    from cpn_dist.affinity import METHODS

    p = add_command(
        sub, "rw", "random walk of CAMs along AffinityNet's affinities into pseudo-label PNGs",
        "Per image: AffinityNet affinities within the radius raised to the affinity power, normalised per column "
        "(the transition), t = 2^logt steps by repeated squaring, applied at stride 8 to the background score "
        "(1 - max CAM)^α of the background power α and the CAMs; upsampled; argmax. Writes OUT/ID.png (VOC "
        "palette), which `cpn eval` scores. "
        "Distributed: accelerate launch [--multi_gpu --num_processes N] -m cpn_dist.affinity.random_walk ARGS "
        "gives each process every N-th image.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="AffinityNet weights (ours or released)")
    add_allow_pickle(p)
    add_image_source_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for ID.png")
    p.add_argument("--config", metavar="FILE",
                   help="run config: model.backbone, data.mean/std, affinity.radius / rw_bg_power / "
                        "rw_affinity_power / rw_logt (default: the one our weights record; released weights: the "
                        "defaults)")  # fmt: skip
    p.add_argument("--backbone", choices=("resnet38d", "efficientnet_lite0", "tiny"),
                   help="for weights that record no model (PSA's): overrides the config's model.backbone")
    p.add_argument("--bg-power", type=float, help="background power α: the background score (1 - max CAM)^α "
                   "(default: the config's affinity.rw_bg_power, 16)")
    p.add_argument("--affinity-power", type=float,
                   help="the affinities raised to this power (default: the config's affinity.rw_affinity_power, 8)")
    renamed_flag(p, "--alpha", "--bg-power", nargs=None)
    renamed_flag(p, "--beta", "--affinity-power", nargs=None)
    p.add_argument("--logt", type=int, help="the walk takes 2^logt steps (default 8)")
    p.add_argument("--radius", type=int, help="affinity radius in stride-8 cells (default 5)")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="dense: repeated squaring of the n×n transition (GPU); sparse: 2^logt sparse steps "
                        "(CPU, big images); auto: dense on a GPU up to 8192 positions")  # fmt: skip
    p.add_argument("--cam-norm", choices=("max", "none"),
                   help="divide each CAM by its maximum first: PSA's scale (default: the config's affinity.cam_norm)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="equal-sized images walked together (default 8 on a GPU, 1 on the CPU)")  # fmt: skip
    p.add_argument("--save-cams", metavar="DIR",
                   help="also write the walked class scores as CAM files (released format) for `cpn eval`'s β sweep")
    add_threads_argument(p)
    p.add_argument("--overwrite", action="store_true", help="redo images whose label exists")
    p.set_defaults(handler=_run)


def _params(args, cfg):
    """The config's walk (``affinity.*``), with the flags given on the command line instead."""
    from dataclasses import replace

    from cpn_dist.affinity.random_walk import WalkParams

    names = ("bg_power", "affinity_power", "logt", "radius", "cam_norm")
    flags = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    return replace(WalkParams.from_config(cfg.affinity, args.method), **flags)


def _run(args) -> int:
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from cpn_dist.affinity.model import build_affinity_model
    from cpn_dist.affinity.random_walk import walk_samples
    from cpn_dist.cli.inference import check_found, per_process, run_share
    from cpn_dist.config.weights import load_checked, weights_config
    from cpn_dist.data.datasets.recorded import folders_dataset
    from cpn_dist.devices import use_cpu
    from cpn_dist.models.weights import read_weights

    weights, meta = read_weights(args.checkpoint, args.allow_pickle)
    flags = {"model.backbone": ("--backbone", args.backbone)}
    cfg = weights_config(args.checkpoint, meta, "affinity", args.config, flags)
    params = _params(args, cfg)
    names = stage2_names(args)
    dataset = folders_dataset(args.dataset, args.cams)
    state = PartialState(cpu=use_cpu())
    rank, world = state.process_index, state.num_processes
    out = Path(args.out)
    batch_size = args.batch_size or (8 if state.device.type == "cuda" else 1)
    if batch_size < 1:
        raise CpnError("--batch-size must be >= 1")
    model = build_affinity_model(cfg.model.backbone, dropout=0.0)
    report = load_checked(model, weights, args.checkpoint, meta, cfg, "affinity", "--backbone (or --config)")
    model.to(state.device).eval()
    use_threads(args)

    def finished(name: str) -> bool:
        saved = not args.save_cams or (Path(args.save_cams) / f"{name}.npy").is_file()
        return saved and (out / f"{name}.png").is_file()

    done = frozenset() if args.overwrite else frozenset(n for n in names if finished(n))
    if state.is_main_process:
        console.print(report.summary(), highlight=False)
        if done:
            console.print(f"{len(done)} of {len(names)} images already done in {out} (--overwrite redoes them)")
    state.wait_for_everyone()
    mine = [n for n in names[rank::world] if n not in done]  # each process reads only its share
    source = image_source(args, mine)
    written: list[str] = []

    def work(on_image):
        written.extend(walk_samples(
            model, source.samples(image=True, labels=False), args.cams, out, params, device=state.device,
            mean=tuple(cfg.data.mean), std=tuple(cfg.data.std), batch_size=batch_size, save_cams_dir=args.save_cams,
            on_image=on_image, dataset=dataset))  # fmt: skip
        return written

    everyone = run_share(state, "rw", len(mine), work)
    missing = sorted(set(mine) - set(written))
    lost = gather_object(missing) if world > 1 else missing
    if state.is_main_process:
        check_found(str(args.shards or args.voc_root), lost)
        console.print(f"wrote {len(everyone)} random-walk labels (background power {params.bg_power:g}, "
                      f"affinity power {params.affinity_power:g}, "
                      f"t = 2^{params.logt}, radius {params.radius}) to [bold]{out}[/]"
                      f"{per_process(everyone, world)}")  # fmt: skip
    state.wait_for_everyone()
    return 0
