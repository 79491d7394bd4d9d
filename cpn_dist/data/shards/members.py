"""The members of one shard sample (``{key}.jpg``, ``.cls.json``, ``.slic{N}.png``, ``.seg.png``; the format is
described in :mod:`cpn_dist.data.shards.reader`): their names, encoding, and the one decoder of a raw sample."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cpn_dist.errors import CpnError

SLIC_MEMBER = re.compile(r"slic(\d+)\.png")


def slic_member(segments: int) -> str:
    return f"slic{segments}.png"


def sample_members(segments: Iterable[int], with_seg: bool) -> list[str]:
    """Member suffixes of one sample, in tar order."""
    return ["jpg", "cls.json", *(slic_member(n) for n in sorted(segments)), *(["seg.png"] if with_seg else [])]


def encode_labels(labels: np.ndarray) -> bytes:
    return json.dumps([int(v) for v in np.asarray(labels).reshape(-1)], separators=(",", ":")).encode()


def voc_foreground() -> int:
    """C - 1 of the data a sample decodes as when its shards record no dataset: PASCAL VOC's."""
    from cpn_dist.data.datasets.info import voc

    return voc().num_foreground


def decode_labels(data: bytes, num_foreground: int | None = None) -> np.ndarray:
    """The C-1 image-level labels of a ``cls.json`` member as float32 {0, 1}; ``num_foreground`` is C-1 of
    the shards' dataset (``meta.json``; None: VOC's, for shards that record none)."""
    n = voc_foreground() if num_foreground is None else num_foreground
    values = json.loads(data)
    if not isinstance(values, list) or len(values) != n or any(v not in (0, 1) for v in values):
        raise ValueError(f"cls.json must be a list of {n} values in {{0, 1}}")
    return np.asarray(values, dtype=np.float32)


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 or uint16 2-D array (fixed compression: same bytes every time)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """An RGB PIL image from encoded bytes (fully loaded, so truncation raises here)."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_slic(data: bytes) -> np.ndarray:
    """A SLIC map member as an H×W uint16 array of superpixel ids."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"SLIC map must be a single-channel PNG, got mode {im.mode}")
    return arr.astype(np.uint16, copy=False)


def decode_seg(data: bytes) -> np.ndarray:
    """A ``seg.png`` member as H×W uint8 class indices."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"seg.png must be a palette or 8-bit PNG, got mode {im.mode}")
        return np.array(im, dtype=np.uint8)


# what a missing member is called in errors
_WHAT = {"seg.png": "seg.png (ground truth)"}


class SampleDecodeError(CpnError):
    """A raw sample lacks a member it needs, or a member does not decode; the message names the shard,
    the sample key and the member."""

    def __init__(self, where: str, key: str, member: str, problem: Exception | None = None):
        what = f": {member} does not decode ({problem})" if problem else f" has no {_WHAT.get(member, member)} member"
        super().__init__(f"{where}: sample {key}{what}")
        self.key, self.member, self.problem = key, member, problem


def decode_member(name: str, data: bytes, num_foreground: int | None = None) -> Any:
    """One member by its name: ``jpg`` → RGB PIL image, ``cls.json`` → float32 [C-1] (``num_foreground``:
    see :func:`decode_labels`), ``slic{N}.png`` → H×W uint16, ``seg.png`` → H×W uint8."""
    if name == "jpg":
        return decode_image(data)
    if name == "cls.json":
        return decode_labels(data, num_foreground)
    if name == "seg.png":
        return decode_seg(data)
    if SLIC_MEMBER.fullmatch(name):
        return decode_slic(data)
    raise ValueError(f"no decoder for member {name}")


def decode_members(raw: dict[str, Any], members: Sequence[str], optional: Iterable[str] = (),
                   where: str | None = None, num_foreground: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The decoded ``members`` of a raw webdataset sample (``{"__key__", "__url__", name: bytes}``), by
    name, decoded in the order given (see :func:`decode_member`); members of ``optional`` the sample
    lacks are None. ``num_foreground``: C-1 of the shards' dataset, the length ``cls.json`` must have
    (None: VOC's). A missing member, or one that does not decode, is a :class:`SampleDecodeError`
    naming ``where`` (default: the sample's ``__url__``), the key and the member."""
    key = raw["__key__"]
    where = where if where is not None else raw.get("__url__", "?")
    optional = set(optional)
    out: dict[str, Any] = {}
    for name in members:
        if name not in raw:
            if name in optional:
                out[name] = None
                continue
            raise SampleDecodeError(where, key, name)
        try:
            out[name] = decode_member(name, raw[name], num_foreground)
        except (OSError, ValueError) as exc:
            raise SampleDecodeError(where, key, name, exc) from None
    return out
