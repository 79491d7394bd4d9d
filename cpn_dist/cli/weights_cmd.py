"""``cpn weights``: convert the MXNet ResNet38 ImageNet weights, and check a weights file against a model."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from cpn_dist.atomic import write_atomic
from cpn_dist.cli import add_command, console, print_table
from cpn_dist.cli.inference import add_allow_pickle
from cpn_dist.errors import CpnError


def register(sub) -> None:
    p = add_command(sub, "weights", "convert and check model weights (released ResNet38 / CPN, ours)")
    w_sub = p.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    conv = add_command(w_sub, "convert", "convert the MXNet ResNet38 ImageNet .params to a PyTorch .pth (no mxnet)")
    conv.add_argument("params", help="the MXNet file, e.g. ilsvrc-cls_rna-a1_cls1000_ep-0001.params")
    conv.add_argument("out", help="output .pth (a state dict with the released PyTorch names)")
    conv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    conv.set_defaults(handler=_convert)
    check = add_command(w_sub, "check", "load a weights file into a model and report matched/missing/unexpected keys")
    check.add_argument("path", help=".pth (released ResNet38 init, released CPN, ours), MXNet .params, or imagenet "
                       "(the packaged weights of efficientnet_lite0)")
    check.add_argument("--backbone", choices=["resnet38d", "efficientnet_lite0", "tiny"],
                       help="model to check against (default: the one our weights record; else resnet38d)")
    check.add_argument("--head", choices=["official", "paper", "pcm", "none"],
                       help="CPN head (default: the one our weights record; else official)")
    add_allow_pickle(check)
    check.set_defaults(handler=_check)


def _convert(args) -> int:
    import torch

    from cpn_dist.models.mxnet import convert_resnet38_params

    src, out = Path(args.params), Path(args.out)
    if not src.is_file():
        raise CpnError(f"{src}: file not found")
    if out.exists() and not args.overwrite:
        raise CpnError(f"{out}: exists (use --overwrite to replace it)")
    state = convert_resnet38_params(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: torch.save(state, tmp), out.with_name(out.name + ".tmp"))
    n = sum(t.numel() for t in state.values())
    console.print(f"wrote {out}: {len(state)} tensors, {n:,} values")
    return 0


def _check(args) -> int:
    import torch

    from cpn_dist.config.weights import built_as, weights_config
    from cpn_dist.data.datasets.info import voc
    from cpn_dist.data.datasets.recorded import weights_dataset
    from cpn_dist.models.weights import match_state_dict, read_weights, resolve_weights

    state, meta = read_weights(resolve_weights(args.path, args.backbone or "resnet38d"), args.allow_pickle)
    stage = meta.get("stage", "cpn") if meta else "cpn"
    flags = {"model.backbone": ("--backbone", args.backbone), "model.head": ("--head", args.head)}
    if meta is None:  # released weights: the released model unless told otherwise
        flags = {"model.backbone": ("--backbone", args.backbone or "resnet38d"),
                 "model.head": ("--head", args.head or "official")}  # fmt: skip
    elif stage != "cpn" and args.head:
        raise CpnError(f"--head: {args.path} holds {stage} weights, which have no CPN head")
    cfg = weights_config(args.path, meta, stage, None, flags if stage == "cpn" else {"model.backbone": flags[
        "model.backbone"]})  # fmt: skip
    dataset = weights_dataset(args.path, meta, state, stage) or voc()
    with torch.device("meta"):  # shapes only: no memory for the 100M-parameter ResNet38d
        model = _build(cfg, dataset.num_classes)
    _, report = match_state_dict(state, model, args.path)
    recorded = " (as the file records)" if meta else ""
    classes = f"; {dataset.num_classes} classes ({dataset.name})" if stage != "affinity" else ""
    table = Table(title=f"{args.path} → {built_as(cfg, stage)}{recorded}{classes}")
    table.add_column("keys")
    table.add_column("count", justify="right")
    table.add_column("examples")
    table.add_row("loaded", str(len(report.loaded)), ", ".join(report.loaded[:3]))
    table.add_row("missing (keep their init)", str(len(report.missing)), ", ".join(report.missing[:6]))
    table.add_row("unexpected (ignored)", str(len(report.unexpected)), ", ".join(report.unexpected[:6]))
    print_table(table)
    return 0


def _build(cfg, num_classes: int):
    """The model of a run config's stage, over ``num_classes`` classes (no matter to AffinityNet)."""
    if cfg.stage == "affinity":
        from cpn_dist.affinity.model import build_affinity_model

        return build_affinity_model(cfg.model.backbone)
    if cfg.stage == "segmentation":
        from cpn_dist.segmentation.model import model_from_config

        return model_from_config(cfg, num_classes=num_classes)
    from cpn_dist.cpn.model import build_model

    return build_model(cfg.model.backbone, cfg.model.head, num_classes=num_classes)
