"""CAM files, and the released rule that turns them into class maps.

A CAM file is ``NAME.npy`` holding ``np.save`` of a dict ``{class index 0..C-2: H×W float32}`` with one
entry per labelled class (the format of the released ``infer_cam.py``, read by most WSSS tools; C is
the dataset's class count with background, 21 for PASCAL VOC), or the compact ``NAME.npz`` of
:mod:`cpn_dist.labels.cam_store`. Every reader opens either through :func:`read_cams` (``NAME.npy``
first); :func:`load_cams` dispatches on the suffix. Which dataset a CAM folder is of is recorded in
its ``dataset.json`` (:mod:`cpn_dist.data.datasets.info`; none: VOC, as for the released files), and every
function that needs C takes it as an argument whose default is VOC's.

The released evaluator (``evaluation_cam.py``) turns such a dict into a class map at a background
score β by filling a C×H×W array with zeros, putting β in channel 0 and the CAMs in channels
``key + 1``, and taking ``np.argmax``: background wins when β ≥ every foreground score (first index
wins ties), unlabelled classes score 0. :func:`foreground_max` computes that argmax once for all β:
the per-pixel maximum of the C-1 zero-filled foreground channels and the class index holding it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from cpn_dist.atomic import write_atomic
from cpn_dist.data.datasets.voc import (  # VOC's counts: the default where nothing records one
    NUM_CLASSES,
    NUM_FOREGROUND,
)
from cpn_dist.errors import CpnError
from cpn_dist.safe_npy import ForbiddenGlobal, NpyError, read_npy_object

CAM_SUFFIXES = (".npy", ".npz")  # released (and IRN) format, compact store


def normalise_released(total: np.ndarray) -> np.ndarray:
    """The released ``infer_cam.py`` normalisation of a summed multi-scale CAM (K×H×W), per class,
    in float32: negatives → 0; with min/max taken then, pixels below min + 1e-5 are set to 0 before
    (x − min − 1e-5) / (max − min + 1e-5), so the arg-min pixels end up negative; finally halved.
    A class whose sum is all zero becomes −0.5 everywhere."""
    x = np.array(total, dtype=np.float32, copy=True)
    x[x < 0] = 0
    high = np.max(x, axis=(-2, -1), keepdims=True)
    low = np.min(x, axis=(-2, -1), keepdims=True)
    x[x < low + np.float32(1e-5)] = 0
    x = (x - low - np.float32(1e-5)) / (high - low + np.float32(1e-5))
    return x / np.float32(2)


def save_cams(path: str | Path, cams: dict) -> None:
    """Write a CAM dict with ``np.save`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    # a unique temporary name (mkstemp), removed when the write fails
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")

    def write(_: Path) -> None:
        with os.fdopen(fd, "wb") as f:
            np.save(f, cams, allow_pickle=True)

    try:
        write_atomic(path, write, Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cam_file(folder: str | Path, name: str) -> Path:
    """The CAM file of image ``name`` in ``folder``: ``NAME.npy`` (released or IRN layout) or ``NAME.npz``
    (compact store), ``NAME.npy`` first; ``NAME.npy`` when neither exists (so that the error names it)."""
    folder = Path(folder)
    for suffix in CAM_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return folder / f"{name}{CAM_SUFFIXES[0]}"


def cam_names(folder: str | Path) -> list[str]:
    """The image ids of the CAM files in ``folder`` (``NAME.npy`` and ``NAME.npz``), sorted."""
    folder = Path(folder)
    return sorted({p.stem for suffix in CAM_SUFFIXES for p in folder.glob(f"*{suffix}") if not p.name.startswith(".")})


def read_cams(folder: str | Path, name: str, num_foreground: int = NUM_FOREGROUND) -> dict[int, np.ndarray]:
    """The CAM dict of image ``name`` in ``folder`` in whichever format it is stored (:func:`cam_file`)."""
    return load_cams(cam_file(folder, name), num_foreground)


def load_cams(path: str | Path, num_foreground: int = NUM_FOREGROUND) -> dict[int, np.ndarray]:
    """Read a CAM file as ``{class index 0..num_foreground-1: H×W float32}`` (``num_foreground``: C-1 of the
    folder's dataset, VOC's 20 by default): a compact ``.npz`` (:func:`cpn_dist.labels.cam_store.load_compact`,
    dequantised and upsampled to the image size), the released layout (a dict of class index → H×W float
    map) or IRN's (``keys``: class indices, ``high_res``: K×H×W maps; other members ignored). The file is
    unpickled without running code (:mod:`cpn_dist.safe_npy`); anything else — random bytes, a pickle that
    names other code, another object — is refused in one line."""
    if Path(path).suffix == ".npz":
        from cpn_dist.labels.cam_store import load_compact

        return _checked(path, load_compact(path), num_foreground)
    try:
        obj = read_npy_object(path)
    except FileNotFoundError:
        raise CpnError(f"{path}: CAM file not found") from None
    except OSError as exc:
        raise CpnError(f"{path}: unreadable CAM file ({exc.strerror or exc})") from None
    except ForbiddenGlobal as exc:
        raise CpnError(f"{path}: not a CAM file ({exc}); refused") from None
    except NpyError as exc:
        raise CpnError(f"{path}: not a CAM file ({exc})") from None
    if not isinstance(obj, dict):
        raise CpnError(f"{path}: not a CAM file (expected a dict {{class index: H×W map}}, got {_kind(obj)})")
    if "high_res" in obj and "keys" in obj:  # IRN layout (`cpn infer --format irn`, IRN's make_cam.py)
        obj = _irn_cams(path, obj)
    return _checked(path, obj, num_foreground)


def _checked(path, obj: dict, num_foreground: int) -> dict[int, np.ndarray]:
    """``obj`` as ``{class index: H×W float32}``, every key a class index below ``num_foreground`` and every
    map real-valued, two-dimensional and of one shape; else one line naming the file."""
    cams: dict[int, np.ndarray] = {}
    shape = None
    for key, value in obj.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) < num_foreground:
            hint = (" (the default, VOC's 20 classes: a CAM folder of another dataset records it in dataset.json, "
                    "or give --dataset)") if num_foreground == NUM_FOREGROUND else ""  # fmt: skip
            raise CpnError(f"{path}: CAM key {key!r} is not a class index 0..{num_foreground - 1}{hint}")
        arr = _numeric(value)
        if arr is None or arr.ndim != 2 or (shape is not None and arr.shape != shape):
            raise CpnError(f"{path}: CAM of class {key} is {_kind(value)}, expected H×W float maps of one shape")
        shape = arr.shape
        cams[int(key)] = arr.astype(np.float32, copy=False)
    return cams


def _kind(obj) -> str:
    """A short description of what a CAM file holds where a dict or a map belongs."""
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} array of shape {obj.shape}"
    return f"a {type(obj).__name__}"


def _numeric(value) -> np.ndarray | None:
    """``value`` as a real-valued array (a numpy array or a CPU tensor), or None when it is none."""
    if not hasattr(value, "__array__"):  # a list, a string, a dict …
        return None
    arr = np.asarray(value)
    return arr if arr.dtype.kind in "fiub" else None


def _irn_cams(path, obj: dict) -> dict:
    """The ``{class: map}`` dict of IRN's layout: ``keys`` (K class indices) and ``high_res`` (K×H×W)."""
    keys, maps = _numeric(obj["keys"]), _numeric(obj["high_res"])
    if keys is None or keys.ndim != 1 or keys.dtype.kind not in "iu":
        raise CpnError(f"{path}: not a CAM file (IRN layout whose 'keys' is not a list of class indices)")
    if maps is None or maps.ndim != 3 or len(maps) != len(keys):
        raise CpnError(f"{path}: not a CAM file (IRN layout whose 'high_res' is not {len(keys)}×H×W maps)")
    return dict(zip(keys.tolist(), maps))


def foreground_max(cams: dict[int, np.ndarray], shape: tuple[int, int],
                   num_foreground: int = NUM_FOREGROUND) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per pixel, the largest foreground score and the class index (1..C-1, C-1 = ``num_foreground``)
    holding it, as the released evaluator's argmax over zero-filled channels sees them: unlabelled classes
    score 0 and the lowest class index wins ties. Returns ``(score float32 H×W, cls uint8 H×W)``."""
    keys = sorted(cams)
    if keys:
        stack = np.stack([cams[k] for k in keys]).astype(np.float32, copy=False)
        if stack.shape[1:] != tuple(shape):
            raise CpnError(f"CAM shape {stack.shape[1:]} differs from the image/label shape {tuple(shape)}")
        pos = np.argmax(stack, axis=0)
        score = np.take_along_axis(stack, pos[None], axis=0)[0]
        cls = np.asarray(keys, dtype=np.uint8)[pos] + 1
    else:
        score = np.full(shape, -np.inf, dtype=np.float32)
        cls = np.zeros(shape, dtype=np.uint8)
    unlabelled = next((c for c in range(num_foreground) if c not in cams), None)
    if unlabelled is not None:
        # An unlabelled channel holds 0: it takes over where every labelled score is < 0, and on
        # a tie at 0 the lower class index of the two wins.
        first_zero = np.uint8(unlabelled + 1)
        zero_wins = (score < 0) | ((score == 0) & (first_zero < cls))
        score = np.where(score < 0, np.float32(0), score)
        cls = np.where(zero_wins, first_zero, cls)
    return score.astype(np.float32, copy=False), cls.astype(np.uint8, copy=False)


CAM_NORMS = ("max", "none")


def normalise_cams(cams: dict[int, np.ndarray], norm: str = "max") -> dict[int, np.ndarray]:
    """``"max"``: each class map divided by its maximum, as AffinityNet's ``infer_cls.py`` normalises
    its CAMs (peak 1) — the scale its background powers α were chosen for. The released CPN format
    peaks at 0.5, so this doubles it; a map whose maximum is not positive (a labelled class with no
    response, −0.5 everywhere) is left as it is. ``"none"``: the stored values."""
    if norm == "none":
        return cams
    if norm != "max":
        raise ValueError(f"CAM normalisation '{norm}': choose from {', '.join(CAM_NORMS)}")
    out = {}
    for key, cam in cams.items():
        peak = float(np.max(cam)) if cam.size else 0.0
        out[key] = (cam / np.float32(peak)).astype(np.float32) if peak > 1e-5 else cam
    return out


def powered_background(fg_max: np.ndarray, bg_power: float) -> np.ndarray:
    """AffinityNet's background score ``(1 − max_c CAM_c)^α``, α the background power (CPN eq. 16), from
    the per-pixel foreground maximum (zero-filled, as :func:`foreground_max` gives it; clipped to [0, 1]
    first, so the released format's negative arg-min pixels score 1, not more). float32 H×W."""
    return np.power(1.0 - np.clip(fg_max, 0.0, 1.0), bg_power).astype(np.float32)


def background_score(cams: dict[int, np.ndarray], shape: tuple[int, int], beta: float | None = None,
                     bg_power: float | None = None) -> np.ndarray:  # fmt: skip
    """The background channel of a CAM dict, H×W float32: the constant score ``beta`` (the released
    evaluator, ``cpn eval``), or ``(1 − max_c CAM_c)^α`` with α = ``bg_power`` (AffinityNet/PSA). Give
    exactly one."""
    if (beta is None) == (bg_power is None):
        raise ValueError("give exactly one of beta (constant background) and bg_power ((1 - max)^bg_power)")
    if bg_power is None:
        return np.full(shape, beta, dtype=np.float32)
    return powered_background(foreground_max(cams, shape)[0], bg_power)


def class_map(cams: dict[int, np.ndarray], beta: float | None, shape: tuple[int, int],
              bg_power: float | None = None, num_foreground: int = NUM_FOREGROUND) -> np.ndarray:  # fmt: skip
    """The released evaluator's class map at background score ``beta``: argmax over
    ``[β, CAM_1 … CAM_{C-1}]`` (β compared as float32, as it is stored there; C-1 = ``num_foreground``).
    uint8 H×W, 0..C-1. With ``bg_power`` α (and ``beta=None``) the background is ``(1 − max_c CAM_c)^α``
    instead."""
    if (beta is None) == (bg_power is None):
        raise ValueError("give exactly one of beta (constant background) and bg_power ((1 - max)^bg_power)")
    score, cls = foreground_max(cams, shape, num_foreground)
    background = np.float32(beta) if bg_power is None else powered_background(score, bg_power)
    return np.where(score > background, cls, np.uint8(0)).astype(np.uint8)


def released_class_map(cams: dict[int, np.ndarray], beta: float, shape: tuple[int, int],
                       num_classes: int = NUM_CLASSES) -> np.ndarray:  # fmt: skip
    """The released evaluator's computation, literally: a zero C×H×W float32 tensor (C = ``num_classes``),
    β in channel 0, CAMs in channels key+1, ``np.argmax``. Slow; kept as the reference that tests compare
    against."""
    tensor = np.zeros((num_classes, *shape), np.float32)
    for key, value in cams.items():
        tensor[key + 1] = value
    tensor[0] = beta
    return np.argmax(tensor, axis=0).astype(np.uint8)


def image_independence(cams_dir: str | Path, names: list[str], size: int = 32,
                       num_foreground: int = NUM_FOREGROUND) -> float:  # fmt: skip
    """How much the CAMs of different images look alike: the mean Pearson correlation, over pairs of
    different images, of each image's CAM (the per-pixel maximum over its classes) resized to
    ``size``×``size``. Object CAMs at varying places score near 0 (≈ 0.1 from the central bias of the
    synthetic tasks); a CAM that has collapsed to one image-independent pattern (a ramp, bands) scores
    near 1. Images without a labelled class are left out."""
    from PIL import Image

    maps = []
    for name in names:
        cams = read_cams(cams_dir, name, num_foreground)
        if cams:
            m = np.max(np.stack(list(cams.values())), axis=0).astype(np.float32)
            maps.append(np.asarray(Image.fromarray(m).resize((size, size), Image.BILINEAR)).ravel())
    if len(maps) < 2:
        raise CpnError(f"{cams_dir}: fewer than two CAM files with a class to compare")
    z = np.stack(maps).astype(np.float64)
    z -= z.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    c = z @ z.T
    n = len(maps)
    return float((c.sum() - np.trace(c)) / (n * (n - 1)))
