"""Read MXNet NDArray files (``.params``) without mxnet, and rename the ResNet38 ImageNet weights.

The file format (``mx.nd.save`` of a dict; little endian):

* header: uint64 list magic ``0x112``, uint64 reserved, uint64 array count;
* each array: a uint32 tag — ``0xF993FAC9`` (v2: int32 storage type, 0 = dense, then the shape as
  uint32 ndim + ndim × int64), ``0xF993FAC8`` (v1: uint32 ndim + ndim × int64), or, in files
  from before both, the tag *is* ndim and ndim × uint32 dims follow; then, if ndim > 0, int32 device
  type, int32 device id, int32 dtype flag (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8,
  6 int64) and the raw data;
* uint64 name count, then each name as uint64 length + bytes (``arg:…`` / ``aux:…``).

The ResNet38 (Wu et al.) parameters are named ``res{stage}{a|b<i>}_branch{…}_weight``,
``bn{stage}{a|b<i>}_branch{…}_{gamma,beta,moving_mean,moving_var}``, ``conv1a_weight``,
``bn7_*`` and ``linear1000_*`` (the ImageNet classifier, dropped); :func:`convert_resnet38_params`
maps them to the released PyTorch names (``b{stage}`` for block ``a``, ``b{stage}_{i}`` for ``b<i>``).
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import numpy as np
import torch

from cpn_dist.errors import CpnError

log = logging.getLogger(__name__)

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}
BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise CpnError(f"{self.path}: truncated MXNet NDArray file (at byte {self.pos})")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise CpnError(f"{self.path}: truncated MXNet NDArray file (at byte {self.pos})")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out


def _read_array(r: _Reader) -> np.ndarray:
    (tag,) = r.take("<I")
    if tag == V2_MAGIC:
        (stype,) = r.take("<i")
        if stype != 0:
            raise CpnError(f"{r.path}: sparse NDArrays are not supported (storage type {stype})")
        (ndim,) = r.take("<I")
        shape = r.take(f"<{ndim}q")
    elif tag == V1_MAGIC:
        (ndim,) = r.take("<I")
        shape = r.take(f"<{ndim}q")
    elif tag == V3_MAGIC:
        raise CpnError(f"{r.path}: NDArray format v3 (numpy shape semantics) is not supported")
    else:
        if tag > 32:
            raise CpnError(f"{r.path}: not an MXNet NDArray file (bad array tag {tag:#x})")
        shape = r.take(f"<{tag}I")
    if len(shape) == 0:
        return np.zeros((0,), np.float32)
    _dev_type, _dev_id, flag = r.take("<iii")
    if flag not in DTYPES:
        raise CpnError(f"{r.path}: unknown NDArray dtype flag {flag}")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    count = int(np.prod(shape))
    return np.frombuffer(r.raw(count * dtype.itemsize), dtype=dtype).reshape(shape).copy()


def read_ndarray_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ``mx.nd.save`` file into {name: array} (names keep their ``arg:``/``aux:`` prefixes)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    magic, _reserved = r.take("<QQ")
    if magic != LIST_MAGIC:
        raise CpnError(f"{path}: not an MXNet NDArray file (magic {magic:#x}, expected {LIST_MAGIC:#x})")
    (count,) = r.take("<Q")
    arrays = [_read_array(r) for _ in range(count)]
    (n_names,) = r.take("<Q")
    names = []
    for _ in range(n_names):
        (length,) = r.take("<Q")
        names.append(r.raw(length).decode("utf-8"))
    if n_names != count:
        raise CpnError(f"{path}: {count} arrays but {n_names} names")
    return dict(zip(names, arrays))


_BLOCK = re.compile(r"^(res|bn)(\d)(a|b(\d+))_(branch\w+?)_(weight|gamma|beta|moving_mean|moving_var)$")
_TOP = re.compile(r"^(conv1a|bn7)_(weight|gamma|beta|moving_mean|moving_var)$")


def resnet38_torch_name(mx_name: str) -> str | None:
    """The PyTorch name of one ResNet38 MXNet parameter; None for the ImageNet classifier."""
    name = mx_name.split(":", 1)[-1]
    if name.startswith("linear1000"):
        return None
    m = _BLOCK.match(name)
    if m:
        kind, stage, _, index, branch, field = m.groups()
        block = f"b{stage}" if index is None else f"b{stage}_{index}"
        layer = "conv" if kind == "res" else "bn"
        return f"{block}.{layer}_{branch}.{'weight' if kind == 'res' else BN_NAMES[field]}"
    m = _TOP.match(name)
    if m:
        layer, field = m.groups()
        return f"{layer}.{'weight' if layer == 'conv1a' else BN_NAMES[field]}"
    raise CpnError(f"unrecognised ResNet38 MXNet parameter name '{mx_name}'")


def convert_resnet38_params(path: str | Path) -> dict[str, torch.Tensor]:
    """The ResNet38 ImageNet ``.params`` as a state dict with the released PyTorch names."""
    out: dict[str, torch.Tensor] = {}
    for name, array in read_ndarray_file(path).items():
        torch_name = resnet38_torch_name(name)
        if torch_name is None:
            continue
        out[torch_name] = torch.from_numpy(array.astype(np.float32, copy=False))
    log.info("converted %d ResNet38 parameters from %s", len(out), path)
    return out
