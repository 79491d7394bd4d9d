"""Complementary Patch pairs: partition of the valid pixels, λ, per-patch constancy, sampling rules."""

import numpy as np
import pytest
from PIL import Image

from cpn_dist.config import DataConfig, PatchConfig
from cpn_dist.data.loading.augment import augment, draw_augmentation
from cpn_dist.data.loading.cp_pair import draw_patch_mask, grid_ids, hidden_patches, make_cp_pair
from cpn_dist.data.shards.pack_sample import superpixels

PARAMS = DataConfig(crop=96, scale_range=[60, 140])


@pytest.fixture(scope="module")
def crops():
    """Augmented crops (with and without padding) of a random image and its real SLIC map."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((120, 90), Image.NEAREST))  # blocky: meaningful SLIC
    slic = superpixels(image, 40, 10.0)
    k = int(slic.max()) + 1
    out = []
    for seed in range(12):
        d = draw_augmentation(np.random.default_rng(seed), PARAMS, 120, 90)
        x, valid, ids = augment(Image.fromarray(image), slic, d, PARAMS, pad_id=k)
        out.append((x, valid, ids, k))
    assert any(not v.all() for _, v, _, _ in out) and any(v.all() for _, v, _, _ in out)  # both cases covered
    return out


@pytest.mark.parametrize("kind", ["superpixel", "grid"])
@pytest.mark.parametrize("sampling", ["bernoulli", "released"])
@pytest.mark.parametrize("lambda_mode", ["pixels", "patches"])
def test_pair_partitions_the_valid_pixels_and_lambda_matches(crops, kind, sampling, lambda_mode):
    params = PatchConfig(kind=kind, grid_sizes=[8, 24], sampling=sampling, lambda_mode=lambda_mode)
    for i, (x, valid, ids, k) in enumerate(crops):
        pair = make_cp_pair(x, valid, ids, k, np.random.default_rng(i), params)
        m = pair.mask[0]
        assert pair.mask.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        visible, hidden_px = (m == 1), valid & (m == 0)
        assert not np.any(visible & ~valid)  # padding is never visible in I_h ...
        assert np.array_equal(visible | hidden_px, valid) and not np.any(visible & hidden_px)  # m, 1−m partition
        # ... and never hidden: I_hbar is zero on padding as well
        assert np.all(pair.image_h[:, ~valid] == 0) and np.all(pair.image_hbar[:, ~valid] == 0)
        assert np.array_equal((pair.image_h + pair.image_hbar)[:, valid], x[:, valid])  # I_h + I_hbar = I exactly
        assert np.all(pair.image_h[:, hidden_px] == 0) and np.all(pair.image_hbar[:, visible] == 0)
        # λ, from its definition, computed independently
        if kind == "superpixel":
            patch = np.where(valid, ids, -1)
        else:
            # the drawn cell size is the one with as many cells as there are patches
            grid = next(g for g, n in (grid_ids(x.shape[-1], s) for s in params.grid_sizes) if n == len(pair.hidden))
            patch = np.where(valid, grid, -1)
        present = [p for p in np.unique(patch) if p >= 0]
        n_hidden = sum(bool(m[patch == p].max() == 0) for p in present)
        expected = visible.sum() / valid.sum() if lambda_mode == "pixels" else 1 - n_hidden / len(present)
        assert pair.lam == pytest.approx(expected, abs=1e-12)
        assert _constant_on(m, patch)  # the mask is constant on every patch


def _constant_on(m: np.ndarray, patch: np.ndarray) -> bool:
    ids = patch[patch >= 0]
    vals = m[patch >= 0]
    lo = np.full(ids.max() + 1, 2.0)
    hi = np.full(ids.max() + 1, -1.0)
    np.minimum.at(lo, ids, vals)
    np.maximum.at(hi, ids, vals)
    seen = lo <= 1
    return bool(np.all(lo[seen] == hi[seen]))


def test_hidden_fraction_of_the_two_sampling_rules():
    rng = np.random.default_rng(0)
    k = 300
    bern = np.mean([hidden_patches(rng, k, 0.3, "bernoulli").mean() for _ in range(400)])
    released = np.mean([hidden_patches(rng, k, 0.5, "released").mean() for _ in range(400)])
    assert bern == pytest.approx(0.3, abs=0.01)
    # floor((K+1)/2) draws with replacement from 0..K: 1 − (1 − 1/(K+1))^((K+1)/2) ≈ 39 % hidden
    expected = 1 - (1 - 1 / (k + 1)) ** ((k + 1) // 2)
    assert released == pytest.approx(expected, abs=0.01) and 0.38 < released < 0.40


def test_grid_cells_and_padding_are_never_counted(crops):
    x, valid, ids, k = next(c for c in crops if not c[1].all())
    params = PatchConfig(kind="grid", grid_sizes=[32], lambda_mode="patches")
    pm = draw_patch_mask(valid, None, 0, np.random.default_rng(3), params)
    grid, n = grid_ids(96, 32)
    assert n == 9 and grid[95, 95] == 8 and grid[0, 40] == 1
    cells_with_pixels = set(np.unique(grid[valid]).tolist())
    assert set(np.flatnonzero(pm.present).tolist()) == cells_with_pixels
    n_hidden = int(np.sum(pm.hidden[list(cells_with_pixels)]))
    assert pm.lam == pytest.approx(1 - n_hidden / len(cells_with_pixels))


def test_same_generator_same_pair(crops):
    x, valid, ids, k = crops[0]
    params = PatchConfig()
    a = make_cp_pair(x, valid, ids, k, np.random.default_rng(9), params)
    b = make_cp_pair(x, valid, ids, k, np.random.default_rng(9), params)
    c = make_cp_pair(x, valid, ids, k, np.random.default_rng(10), params)
    assert np.array_equal(a.mask, b.mask) and a.lam == b.lam
    assert not np.array_equal(a.mask, c.mask)
