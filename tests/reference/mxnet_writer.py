"""Write MXNet NDArray list files (what ``mx.nd.save(fname, dict)`` writes) for the converter tests."""

from __future__ import annotations

import struct

import numpy as np

_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, np.dtype(np.int32): 4}


def write_ndarray_file(path, arrays: dict[str, np.ndarray], version: str = "v2") -> None:
    """``version``: "v2" (0xF993FAC9, storage type, int64 dims), "v1" (0xF993FAC8, int64 dims) or
    "legacy" (the first uint32 is ndim, uint32 dims: files from MXNet < 0.9)."""
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]
    for array in arrays.values():
        array = np.ascontiguousarray(array)
        if version == "v2":
            out.append(struct.pack("<Ii", 0xF993FAC9, 0))
            out.append(struct.pack(f"<I{array.ndim}q", array.ndim, *array.shape))
        elif version == "v1":
            out.append(struct.pack(f"<II{array.ndim}q", 0xF993FAC8, array.ndim, *array.shape))
        else:
            out.append(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
        out.append(struct.pack("<iii", 1, 0, _FLAGS[array.dtype]))  # cpu(0)
        out.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        raw = name.encode()
        out.append(struct.pack("<Q", len(raw)) + raw)
    with open(path, "wb") as f:
        f.write(b"".join(out))
