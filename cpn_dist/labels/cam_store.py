"""The compact CAM store: a CAM file small enough for MS COCO's 82,783 training images.

The released format keeps one full-resolution float32 map per labelled class (``NAME.npy``, ~3.5 MB
for a 640×480 COCO image with three classes: ~300 GB for train2014). A compact file ``NAME.npz``
keeps the same maps

- on a grid of one value per ``stride``×``stride`` pixel block (the CAM of the largest inference scale,
  2.0, has a stride of 4 pixels: detail finer than that is not in the map), the values fitted by least
  squares so that the reader's bilinear upsampling reproduces the full-resolution map as closely as
  it can (:func:`fit_grid`; the plain block means, :func:`block_mean`, blur the map twice — once
  averaging, once interpolating — and shift its level sets: −0.5 mIoU points at stride 4 where the
  fit loses none, benchmarks/bench_cam_store.py), and
- quantised per class to 8 bits between the grid's minimum and maximum (``uint8``), or stored as
  ``float16``,

in a compressed ``np.savez_compressed`` archive (no pickle: read with ``allow_pickle=False``). Reading
it (:func:`decode_cams`) dequantises and upsamples each map bilinearly back to the image size (pixel
centres aligned as ``align_corners=False``), so every reader gets ``{class: H×W float32}`` as from the
released format. BENCHMARKS.md ("Compact CAM store") measures the size and the mIoU difference at
the best β on 640-pixel images: the default, stride 4 in uint8, is ~3 GB for train2014.

Arrays of a compact file: ``keys`` (int16, K), ``cams`` (uint8 or float16, K×h×w), ``low``/``high``
(float32, K: the range the uint8 codes span), ``size`` (int32: H, W), ``stride`` (int32).
"""

from __future__ import annotations

import io
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from cpn_dist.atomic import write_atomic
from cpn_dist.errors import CpnError

SUFFIX = ".npz"
DTYPES = ("uint8", "float16")
DEFAULT_STRIDE = 4
DEFAULT_DTYPE = "uint8"
_ARRAYS = ("keys", "cams", "low", "high", "size", "stride")


def block_mean(x: np.ndarray, stride: int) -> np.ndarray:
    """The mean of each ``stride``×``stride`` block of an H×W map (edge blocks: of the pixels they hold)."""
    if stride == 1:
        return x.astype(np.float32, copy=False)
    h, w = x.shape
    hh, ww = -(-h // stride), -(-w // stride)
    padded = np.zeros((hh * stride, ww * stride), np.float64)
    padded[:h, :w] = x
    counts = np.zeros_like(padded)
    counts[:h, :w] = 1
    sums = padded.reshape(hh, stride, ww, stride).sum(axis=(1, 3))
    n = counts.reshape(hh, stride, ww, stride).sum(axis=(1, 3))
    return (sums / n).astype(np.float32)


def fit_grid(x: np.ndarray, stride: int) -> np.ndarray:
    """The ⌈H/stride⌉×⌈W/stride⌉ grid whose bilinear upsampling (:func:`decode_cams`'s) is closest to the H×W
    map ``x`` in the least-squares sense, axis by axis (the upsampling is separable): ``P_rows · x · P_colsᵀ``
    (:func:`_fit_matrix`). Where the upsampling clamps — the pixels before the first block centre and after
    the last, which take that block's value whatever the map does there — the map does not pull on the fit,
    so a linear map comes back exactly between the first and the last block centre."""
    if stride == 1:
        return x.astype(np.float32, copy=False)
    h, w = x.shape
    rows = _fit_matrix(h, -(-h // stride), stride)
    cols = _fit_matrix(w, -(-w // stride), stride)
    return (rows @ x.astype(np.float32, copy=False) @ cols.T).astype(np.float32)


@lru_cache(maxsize=64)
def _fit_matrix(out_size: int, in_size: int, stride: int) -> np.ndarray:
    """in×out: the least-squares grid values of one axis from its ``out_size`` pixels — the pseudo-inverse of
    :func:`_upsample_matrix` over the pixels between the first and the last block centre (all of them when
    those alone do not determine every grid value, as on an axis shorter than two blocks)."""
    up = _upsample_matrix(out_size, in_size, stride).astype(np.float64)
    pos = (np.arange(out_size) + 0.5) / stride - 0.5
    inside = (pos >= 0) & (pos <= in_size - 1)
    if np.linalg.matrix_rank(up[inside]) < in_size:
        inside[:] = True
    fit = np.zeros((in_size, out_size))
    fit[:, inside] = np.linalg.pinv(up[inside])
    return fit.astype(np.float32)


def _upsample_weights(out_size: int, in_size: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear weights from block centres back to pixels, as (lower block, upper block, weight of the upper)
    per pixel: pixel y sits at (y + 0.5)/stride − 0.5 in block coordinates (half-pixel centres), clamped at
    the edges."""
    pos = np.clip((np.arange(out_size) + 0.5) / stride - 0.5, 0, in_size - 1)
    lo = np.floor(pos).astype(int)
    return lo, np.minimum(lo + 1, in_size - 1), (pos - lo).astype(np.float32)


def _upsample_matrix(out_size: int, in_size: int, stride: int) -> np.ndarray:
    """The out×in matrix of :func:`_upsample_weights`."""
    lo, hi, frac = _upsample_weights(out_size, in_size, stride)
    m = np.zeros((out_size, in_size), np.float32)
    m[np.arange(out_size), lo] += 1 - frac
    m[np.arange(out_size), hi] += frac
    return m


def upsample(grid: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """K×h×w block values → K×H×W (``size``) by the bilinear rule of :func:`_upsample_weights`, axis by axis
    (two gathers per axis: ~100× fewer operations than the dense matrix products)."""
    lo, hi, frac = _upsample_weights(size[0], grid.shape[1], stride)
    rows = grid[:, lo, :] * (1 - frac)[:, None] + grid[:, hi, :] * frac[:, None]
    lo, hi, frac = _upsample_weights(size[1], grid.shape[2], stride)
    return rows[:, :, lo] * (1 - frac) + rows[:, :, hi] * frac


def encode_cams(cams: dict[int, np.ndarray], stride: int = DEFAULT_STRIDE, dtype: str = DEFAULT_DTYPE) -> dict:
    """The arrays of a compact file for a CAM dict ``{class: H×W}`` (every map of one shape)."""
    if dtype not in DTYPES:
        raise ValueError(f"compact CAM dtype '{dtype}': choose from {', '.join(DTYPES)}")
    if stride < 1:
        raise ValueError(f"compact CAM stride must be >= 1, got {stride}")
    keys = sorted(cams)
    shape = next(iter(cams.values())).shape if cams else (0, 0)
    small = [fit_grid(np.asarray(cams[k], np.float32), stride) for k in keys]
    h, w = small[0].shape if small else (0, 0)
    stack = np.stack(small) if small else np.zeros((0, h, w), np.float32)
    low = stack.min(axis=(1, 2)) if keys else np.zeros(0, np.float32)
    high = stack.max(axis=(1, 2)) if keys else np.zeros(0, np.float32)
    if dtype == "uint8":
        span = np.where(high > low, high - low, 1.0)[:, None, None]
        codes = np.rint((stack - low[:, None, None]) / span * 255).astype(np.uint8)
    else:
        codes = stack.astype(np.float16)
    return {"keys": np.asarray(keys, np.int16), "cams": codes, "low": low.astype(np.float32),
            "high": high.astype(np.float32), "size": np.asarray(shape, np.int32),
            "stride": np.int32(stride)}  # fmt: skip


def decode_cams(arrays, path: str | Path = "CAM file") -> dict[int, np.ndarray]:
    """``{class: H×W float32}`` of a compact file's arrays: dequantised and upsampled to the image size."""
    missing = [k for k in _ARRAYS if k not in arrays]
    if missing:
        raise CpnError(f"{path}: not a compact CAM file (no {', '.join(missing)})")
    keys, codes = np.asarray(arrays["keys"]), np.asarray(arrays["cams"])
    size, stride = [int(v) for v in np.asarray(arrays["size"]).reshape(-1)], int(arrays["stride"])
    empty_grid = codes.ndim == 3 and len(keys) > 0 and min(*codes.shape[1:], *size) < 1
    if codes.ndim != 3 or len(keys) != codes.shape[0] or len(size) != 2 or stride < 1 or empty_grid:
        raise CpnError(f"{path}: a compact CAM file with inconsistent arrays")
    if codes.dtype == np.uint8:
        low, high = np.asarray(arrays["low"], np.float32), np.asarray(arrays["high"], np.float32)
        values = low[:, None, None] + codes.astype(np.float32) / np.float32(255) * (high - low)[:, None, None]
    elif codes.dtype == np.float16:
        values = codes.astype(np.float32)
    else:
        raise CpnError(f"{path}: compact CAM codes of dtype {codes.dtype} (expected uint8 or float16)")
    maps = upsample(values, (size[0], size[1]), stride).astype(np.float32, copy=False)
    return {int(k): m for k, m in zip(keys.tolist(), maps)}


def save_compact(path: str | Path, cams: dict[int, np.ndarray], stride: int = DEFAULT_STRIDE,
                 dtype: str = DEFAULT_DTYPE) -> None:  # fmt: skip
    """Write ``cams`` as a compact file at ``path`` (``NAME.npz``), atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **encode_cams(cams, stride, dtype))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")

    def write(_: Path) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())

    try:
        write_atomic(path, write, Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_compact(path: str | Path) -> dict[int, np.ndarray]:
    """Read a compact CAM file (no pickle is ever unpickled)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as archive:
            return decode_cams(archive, path)
    except FileNotFoundError:
        raise CpnError(f"{path}: CAM file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CpnError(f"{path}: not a CAM file ({type(exc).__name__})") from None
