"""Joint augmentation: the SLIC map follows the image through resize, flip and crop."""

import numpy as np
import pytest
from PIL import Image

from cpn_dist.config import DataConfig
from cpn_dist.data.loading.augment import augment, crop_box, draw_augmentation, resized_size

W, H = 120, 90
NO_JITTER = DataConfig(crop=64, scale_range=[40, 160], mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
                       color_jitter=[0.0, 0.0, 0.0, 0.0])  # fmt: skip


def position_ids() -> np.ndarray:
    """A 'SLIC map' whose id encodes the pixel position: id = y·W + x."""
    return (np.arange(H)[:, None] * W + np.arange(W)[None, :]).astype(np.uint16)


def ramp_image() -> Image.Image:
    """An image whose red/green channels encode the position: R = 2x, G = 2y."""
    yy, xx = np.mgrid[0:H, 0:W]
    return Image.fromarray(np.stack([2 * xx, 2 * yy, np.full_like(xx, 128)], -1).astype(np.uint8))


def draws(params: DataConfig, n: int = 60):
    for seed in range(n):
        yield draw_augmentation(np.random.default_rng(seed), params, W, H)


def test_slic_map_is_the_nearest_neighbour_of_the_image_geometry():
    ids = position_ids()
    flips = set()
    for d in draws(NO_JITTER):
        image, valid, out = augment(ramp_image(), ids, d, NO_JITTER, pad_id=65535)
        rw, rh = resized_size(W, H, d.long_side)
        box = crop_box(rw, rh, NO_JITTER.crop, d)
        flips.add(d.flip)
        rows, cols = np.nonzero(valid)
        ys, xs = np.divmod(out[rows, cols], W)
        # the continuous original-image position of each crop pixel's centre
        X = box.src_left + cols - box.left
        X = rw - 1 - X if d.flip else X
        u = (X + 0.5) * W / rw
        v = (box.src_top + rows - box.top + 0.5) * H / rh
        assert np.all(np.abs(xs + 0.5 - u) <= 0.5 + 1e-9) and np.all(np.abs(ys + 0.5 - v) <= 0.5 + 1e-9)
        # the image went through the same geometry: its ramp decodes to the same positions
        assert np.abs(image[0, rows, cols] * 255 / 2 - xs).max() <= 1.5
        assert np.abs(image[1, rows, cols] * 255 / 2 - ys).max() <= 1.5
        assert np.abs(image[0, rows, cols] * 255 / 2 - xs).mean() < 0.6
        # padding: outside the image, ids are the padding id and the image is 0
        assert np.all(out[~valid] == 65535) and np.all(image[:, ~valid] == 0)
        assert valid.sum() == box.h * box.w
    assert flips == {True, False}


def test_padding_when_the_image_is_smaller_than_the_crop():
    # the long side is at most the crop, the short side always below it
    params = DataConfig(crop=150, scale_range=[100, 150], color_jitter=[0.3, 0.3, 0.3, 0.1])
    for d in draws(params, 10):
        image, valid, out = augment(ramp_image(), position_ids(), d, params, pad_id=7777)
        rw, rh = resized_size(W, H, d.long_side)
        assert valid.sum() == rw * rh  # the whole image lands in the crop
        rows, cols = np.nonzero(valid)
        assert rows.max() - rows.min() + 1 == rh and cols.max() - cols.min() + 1 == rw
        assert np.all(image[:, ~valid] == 0) and np.all(out[~valid] == 7777)


def test_image_path_equals_resize_flip_crop_normalise_reference():
    params = DataConfig(crop=64, scale_range=[40, 160], color_jitter=[0.0, 0.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    mean, std = np.array(params.mean), np.array(params.std)
    for d in draws(params, 20):
        image, valid, _ = augment(source, None, d, params)
        rw, rh = resized_size(W, H, d.long_side)
        full = source.resize((rw, rh), Image.BICUBIC)  # the released order: resize, flip, (jitter), crop
        if d.flip:
            full = full.transpose(Image.FLIP_LEFT_RIGHT)
        box = crop_box(rw, rh, params.crop, d)
        arr = np.asarray(full, dtype=np.float64)[box.src_top:box.src_top + box.h, box.src_left:box.src_left + box.w]
        ref = np.zeros((3, params.crop, params.crop), dtype=np.float32)
        ref[:, box.top:box.top + box.h, box.left:box.left + box.w] = ((arr / 255 - mean) / std).transpose(2, 0, 1)
        assert np.array_equal(image, ref)


def test_jitter_changes_only_the_image_and_is_reproducible():
    params = DataConfig(crop=64, scale_range=[60, 100])
    d = draw_augmentation(np.random.default_rng(5), params, W, H)
    plain = DataConfig(crop=64, scale_range=[60, 100], color_jitter=[0.0, 0.0, 0.0, 0.0])
    d_plain = draw_augmentation(np.random.default_rng(5), plain, W, H)  # same draws, jitter factors 1 and 0
    assert (d_plain.long_side, d_plain.flip, d_plain.crop_x) == (d.long_side, d.flip, d.crop_x)
    assert (d_plain.brightness, d_plain.hue) == (1.0, 0.0) and d.brightness != 1.0
    a, va, ia = augment(ramp_image(), position_ids(), d, params)
    b, vb, ib = augment(ramp_image(), position_ids(), d, params)
    c, vc, ic = augment(ramp_image(), position_ids(), d_plain, plain)
    assert np.array_equal(a, b) and np.array_equal(ia, ib)
    assert np.array_equal(ia, ic) and np.array_equal(va, vc)  # same geometry without jitter
    assert not np.array_equal(a, c)


def test_a_slic_map_of_the_wrong_size_is_an_error():
    d = draw_augmentation(np.random.default_rng(0), NO_JITTER, W, H)
    with pytest.raises(ValueError, match="SLIC map is 90×120, image is 120×90"):
        augment(ramp_image(), position_ids().T.copy(), d, NO_JITTER)
