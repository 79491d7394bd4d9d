"""Reading a pickled ``.npy`` file without running code: the one reader of the pickled dicts the WSSS
tools exchange (CAM files, :mod:`cpn_dist.labels.cams`; the released ``cls_labels.npy``,
:func:`cpn_dist.data.datasets.voc.read_labels_file`).

``np.save`` of a dict writes a 0-d object array whose payload is a pickle; ``np.load(allow_pickle=True)``
unpickles it with ``pickle.load``, which calls whatever function the file names (``os.system`` …). Here
the ``.npy`` header is read with :mod:`numpy.lib.format` and the payload is unpickled by
:class:`_ArrayUnpickler`, whose ``find_class`` resolves only numpy's array, scalar and dtype
reconstruction (both the ``numpy.core`` and the ``numpy._core`` spelling) and ``_codecs.encode`` (bytes in
protocol-2 pickles); any other global is refused before it is called. Plain Python containers, numbers
and strings need no global.

One exception keeps the files of IRN's own ``make_cam.py`` readable (they store ``keys`` and ``cam`` as
torch tensors): a torch tensor's storage is rebuilt with ``torch.load(..., weights_only=True)``, which
runs no code either; torch is imported only when a file holds one.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format


class NpyError(ValueError):
    """A file that is not a readable ``.npy`` file (no header, truncated, a damaged pickle)."""


class ForbiddenGlobal(NpyError):
    """A pickle that names a global outside the allowlist: unpickling it would run that code."""

    def __init__(self, name: str):
        super().__init__(f"its pickle references {name}, which unpickling would run")
        self.name = name


def _numpy_core(submodule: str):
    """``numpy._core.X`` (numpy 2), or ``numpy.core.X`` (numpy 1), without numpy 2's deprecation warning."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) → the object a pickle of numpy arrays may name."""
    import codecs

    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                         ("_codecs", "encode"): codecs.encode, ("codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


def _dtype_class(module: str, name: str):
    """A dtype class such as ``numpy.dtypes.Float32DType`` (numpy >= 1.25 may pickle those), else None."""
    if module != "numpy.dtypes" or not name.endswith("DType"):
        return None
    found = getattr(importlib.import_module("numpy.dtypes"), name, None)
    return found if isinstance(found, type) and issubclass(found, np.dtype) else None


def _load_storage(data: bytes):
    """A torch storage pickled by ``Storage.__reduce__`` (its ``torch.save`` bytes), read weights-only."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor(*args):
    from torch._utils import _rebuild_tensor_v2

    return _rebuild_tensor_v2(*args)


_TORCH = {("torch.storage", "_load_from_bytes"): _load_storage, ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
          ("collections", "OrderedDict"): OrderedDict}  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals of numpy arrays (and torch tensors, see the
    module docstring); any other is a :class:`ForbiddenGlobal`."""

    _table: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str):
        if _ArrayUnpickler._table is None:
            _ArrayUnpickler._table = _allowed() | _TORCH
        found = _ArrayUnpickler._table.get((module, name)) or _dtype_class(module, name)
        if found is None:
            raise ForbiddenGlobal(f"{module}.{name}")
        return found


def read_npy_object(path: str | Path) -> Any:
    """The object a ``.npy`` file holds: for ``np.save`` of a Python object (a 0-d object array) that
    object, unpickled by the restricted unpickler; for an array of a plain dtype the array itself. A file
    that is not a ``.npy`` file, or does not unpickle, is a :class:`NpyError` (a :class:`ForbiddenGlobal`
    when the pickle names a global outside the allowlist); ``OSError`` (a missing file) passes through."""
    with open(path, "rb") as f:
        try:
            version = npy_format.read_magic(f)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError):
            raise NpyError("no .npy header") from None
        if not dtype.hasobject:
            f.seek(0)
            try:
                return npy_format.read_array(f, allow_pickle=False)
            except (ValueError, EOFError) as exc:
                raise NpyError(_first_line(exc)) from None
        try:
            array = _ArrayUnpickler(f, encoding="latin1").load()
        except ForbiddenGlobal:
            raise
        except Exception as exc:  # a damaged pickle may fail in any way; it ran nothing
            raise NpyError(f"damaged pickle: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise NpyError(f"the pickle holds a {type(array).__name__}, not the array its header announces")
    return array.item() if array.shape == () else array


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
