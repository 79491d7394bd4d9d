"""Joint augmentation of an image and its SLIC map, as the released training code does it:
random long-side resize, horizontal flip, colour jitter (image only), normalise, random crop with
zero padding (after normalising, so padding is the dataset mean).

The SLIC map follows the image through resize, flip and crop by nearest neighbour, computed as one
index lookup from crop pixels to original pixels (pixel-centre convention, the same geometry PIL
uses for the bicubic image resize). Only the crop window of the resized image is jittered and
normalised; brightness, saturation and hue act per pixel so this equals jittering the whole image.
Contrast blends with the mean grey level, which we take over the crop window's image pixels rather
than over the whole resized image (a negligible difference that saves most of the jitter time).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance

if TYPE_CHECKING:
    from cpn_dist.config.run import DataConfig


@dataclass(frozen=True)
class Draw:
    """Every random choice of one sample's augmentation (drawn in this order)."""

    long_side: int
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float
    jitter_order: tuple[int, ...]
    crop_x: int  # offset of the crop window in the resized image (> 0) or of the image in the crop (padding)
    crop_y: int


def resized_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) after scaling the long side to ``long_side`` (Python rounding, as the released code)."""
    if width < height:
        return int(round(width * long_side / height)), long_side
    return long_side, int(round(height * long_side / width))


def draw_augmentation(rng: np.random.Generator, params: DataConfig, width: int, height: int) -> Draw:
    """The random choices of one sample's augmentation under the run config's ``data`` section (``crop``,
    ``scale_range``, ``color_jitter``)."""
    lo, hi = params.scale_range
    long_side = int(rng.integers(lo, hi + 1))
    flip = bool(rng.random() < 0.5)
    b, c, s, h = params.color_jitter
    brightness = float(rng.uniform(max(0.0, 1 - b), 1 + b))
    contrast = float(rng.uniform(max(0.0, 1 - c), 1 + c))
    saturation = float(rng.uniform(max(0.0, 1 - s), 1 + s))
    hue = float(rng.uniform(-h, h))
    order = tuple(int(i) for i in rng.permutation(4))
    w, h2 = resized_size(width, height, long_side)
    crop_x = int(rng.integers(0, abs(w - params.crop) + 1))
    crop_y = int(rng.integers(0, abs(h2 - params.crop) + 1))
    return Draw(long_side, flip, brightness, contrast, saturation, hue, order, crop_x, crop_y)


@dataclass(frozen=True)
class CropBox:
    """Where the image lands in the C×C crop: rows/cols ``[top, top+h) × [left, left+w)`` of the crop
    hold rows/cols ``[src_top, src_top+h) × [src_left, src_left+w)`` of the (flipped) resized image."""

    top: int
    left: int
    src_top: int
    src_left: int
    h: int
    w: int


def crop_box(resized_w: int, resized_h: int, crop: int, draw: Draw) -> CropBox:
    """The released RandomCrop: a window of the image when it is larger than the crop, the image at a
    random place in a zero container when it is smaller (per axis)."""
    if resized_w > crop:
        left, src_left = 0, draw.crop_x
    else:
        left, src_left = draw.crop_x, 0
    if resized_h > crop:
        top, src_top = 0, draw.crop_y
    else:
        top, src_top = draw.crop_y, 0
    return CropBox(top, left, src_top, src_left, min(crop, resized_h), min(crop, resized_w))


def _hue_lut(shift: float) -> list[int]:
    # PIL's HSV hue is 0..255 for 0..360 degrees; shifting wraps around, as torchvision's adjust_hue.
    delta = int(round(shift * 255))
    return [(i + delta) % 256 for i in range(256)]


def jitter(image: Image.Image, draw: Draw) -> Image.Image:
    """Brightness, contrast, saturation and hue jitter in the drawn order (torchvision ColorJitter on PIL)."""
    for op in draw.jitter_order:
        if op == 0 and draw.brightness != 1.0:
            image = ImageEnhance.Brightness(image).enhance(draw.brightness)
        elif op == 1 and draw.contrast != 1.0:
            image = ImageEnhance.Contrast(image).enhance(draw.contrast)
        elif op == 2 and draw.saturation != 1.0:
            image = ImageEnhance.Color(image).enhance(draw.saturation)
        elif op == 3 and draw.hue != 0.0:
            h, s, v = image.convert("HSV").split()
            image = Image.merge("HSV", (h.point(_hue_lut(draw.hue)), s, v)).convert("RGB")
    return image


@lru_cache(maxsize=8)
def _normalise_luts(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Per channel, the normalised float32 value of each uint8 level."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    return tuple(((levels - m) / s).astype(np.float32) for m, s in zip(mean, std))


def slic_lookup(out_len: int, start: int, resized_len: int, orig_len: int, flip: bool = False) -> np.ndarray:
    """Original-image indices of ``out_len`` consecutive pixels of the (flipped) resized axis
    starting at ``start``: nearest neighbour by pixel centres, ``floor((i + 0.5) · orig / resized)``."""
    i = np.arange(start, start + out_len)
    if flip:
        i = resized_len - 1 - i
    return np.minimum(((i + 0.5) * (orig_len / resized_len)).astype(np.int64), orig_len - 1)


def augment(
    image: Image.Image, slic: np.ndarray | None, draw: Draw, params: DataConfig, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply ``draw`` to an RGB image and (optionally) its H×W SLIC map (``params``: the run config's ``data``
    section: ``crop``, ``mean``, ``std``).

    Returns ``(image, valid, ids)``: the normalised 3×C×C float32 crop (0 on padding), the C×C bool
    map of pixels that come from the image, and the C×C intp superpixel ids (``pad_id`` on padding)."""
    c = params.crop
    width, height = image.size
    rw, rh = resized_size(width, height, draw.long_side)
    box = crop_box(rw, rh, c, draw)
    resized = image.resize((rw, rh), Image.BICUBIC)
    # the crop window of the flipped image, in the unflipped resized image
    x0 = rw - box.src_left - box.w if draw.flip else box.src_left
    window = resized.crop((x0, box.src_top, x0 + box.w, box.src_top + box.h))
    if draw.flip:
        window = window.transpose(Image.FLIP_LEFT_RIGHT)
    window = jitter(window, draw)

    out = np.zeros((3, c, c), dtype=np.float32)
    pixels = np.asarray(window)
    for ch, lut in enumerate(_normalise_luts(tuple(params.mean), tuple(params.std))):  # (x/255 - mean) / std by lookup
        np.take(lut, pixels[..., ch], out=out[ch, box.top:box.top + box.h, box.left:box.left + box.w])
    valid = np.zeros((c, c), dtype=bool)
    valid[box.top:box.top + box.h, box.left:box.left + box.w] = True

    ids = None
    if slic is not None:
        if slic.shape != (height, width):
            raise ValueError(f"SLIC map is {slic.shape[1]}×{slic.shape[0]}, image is {width}×{height}")
        rows = slic_lookup(box.h, box.src_top, rh, height)
        cols = slic_lookup(box.w, box.src_left, rw, width, flip=draw.flip)
        ids = np.full((c, c), pad_id, dtype=np.intp)
        ids[box.top:box.top + box.h, box.left:box.left + box.w] = slic.take(rows, axis=0).take(cols, axis=1)
    return out, valid, ids
