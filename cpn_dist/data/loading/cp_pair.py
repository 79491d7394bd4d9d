"""Complementary Patch (CP) pairs (paper Sec. 3.1–3.2).

An image I (normalised, crop padding = 0) is split into N patches — SLIC superpixels or square
grid cells — and a set of them is hidden. With m = 1 on valid pixels whose patch is visible,
I_h = I·m and I_hbar = I·(1−m), so I_h + I_hbar = I and hidden pixels sit at the normalisation mean
(0), i.e. the dataset mean colour. λ weighs I_h (λ̄ = 1 − λ weighs I_hbar, eq. 6):

- ``lambda_mode="pixels"`` (released code): the visible fraction of the valid pixels of I_h;
- ``lambda_mode="patches"`` (paper): 1 − N_h/N over the patches that have valid pixels.

Crop padding is never hidden and never counted. Which patches are hidden:

- ``sampling="bernoulli"`` (paper): each patch independently with probability p_h;
- ``sampling="released"``: floor((K+1)/2) draws with replacement from 0..K, where draw d ≥ 1 hides
  patch d−1 and d = 0 hides nothing (the released code numbers superpixels 1..K), so ~39 % of the
  patches are hidden whatever p_h is.

The mask is one lookup ``visible[ids]`` over the crop, no loop over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cpn_dist.config.run import PatchConfig


@dataclass(frozen=True)
class PatchMask:
    """Which pixels of I_h are visible, and λ."""

    mask: np.ndarray  # C×C bool m: valid and visible in I_h
    lam: float  # λ
    hidden: np.ndarray  # [N] bool, which patches are hidden in I_h
    present: np.ndarray  # [N] bool, which patches have valid pixels in the crop


@dataclass(frozen=True)
class CPPair:
    image_h: np.ndarray  # 3×C×C float32, I·m
    image_hbar: np.ndarray  # 3×C×C float32, I·(1−m)
    mask: np.ndarray  # 1×C×C float32, m
    lam: float  # λ
    hidden: np.ndarray  # [N] bool


@lru_cache(maxsize=16)
def grid_ids(crop: int, cell: int) -> tuple[np.ndarray, int]:
    """(C×C cell index, number of cells) of a grid of ``cell``-pixel squares from the crop's
    top-left corner (the last row/column of cells may be cut by the crop border)."""
    n = -(-crop // cell)
    idx = np.arange(crop) // cell
    ids = (idx[:, None] * n + idx[None, :]).astype(np.intp)
    ids.flags.writeable = False
    return ids, n * n


def hidden_patches(rng: np.random.Generator, n: int, hide_prob: float, sampling: str) -> np.ndarray:
    """Which of ``n`` patches are hidden in I_h (see the module docstring for the two rules)."""
    if sampling == "bernoulli":
        return rng.random(n) < hide_prob
    if sampling == "released":
        draws = rng.integers(0, n + 1, size=(n + 1) // 2)
        hidden = np.zeros(n, dtype=bool)
        hidden[draws[draws > 0] - 1] = True
        return hidden
    raise ValueError(f"unknown sampling rule {sampling!r}")


def visible_mask(ids: np.ndarray, n: int, hidden: np.ndarray, lambda_mode: str) -> PatchMask:
    """m and λ for patch ids ``ids`` (C×C, values 0..n; n marks crop padding) and hidden patches."""
    visible = np.zeros(n + 1, dtype=bool)  # slot n = padding: never visible in I_h, never hidden
    visible[:n] = ~hidden
    m = visible[ids]
    counts = np.bincount(ids.ravel(), minlength=n + 1)
    present = counts[:n] > 0
    if lambda_mode == "pixels":
        lam = np.count_nonzero(m) / (ids.size - counts[n])
    elif lambda_mode == "patches":
        lam = 1.0 - np.count_nonzero(hidden & present) / np.count_nonzero(present)
    else:
        raise ValueError(f"unknown lambda mode {lambda_mode!r}")
    return PatchMask(m, float(lam), hidden, present)


def draw_patch_mask(
    valid: np.ndarray,
    slic_ids: np.ndarray | None,
    n_superpixels: int,
    rng: np.random.Generator,
    params: PatchConfig,
) -> PatchMask:
    """Draw the hidden patches of one sample (``params``: the run config's ``data.patch``): superpixels of
    ``slic_ids`` (C×C, ``n_superpixels`` on padding), or grid cells of a size drawn from ``params.grid_sizes``."""
    if params.kind == "superpixel":
        if slic_ids is None:
            raise ValueError("superpixel patches need the SLIC ids")
        ids, n = slic_ids, n_superpixels
    elif params.kind == "grid":
        cell = params.grid_sizes[int(rng.integers(len(params.grid_sizes)))]
        grid, n = grid_ids(valid.shape[-1], cell)
        ids = np.where(valid, grid, n)
    else:
        raise ValueError(f"unknown patch kind {params.kind!r}")
    hidden = hidden_patches(rng, n, params.hide_prob, params.sampling)
    return visible_mask(ids, n, hidden, params.lambda_mode)


def split_image(image, mask):
    """(I_h, I_hbar) = (I·m, I − I·m) for numpy arrays or torch tensors; I − I·m equals I·(1−m)
    exactly because m is 0 or 1 (and I is 0 on crop padding)."""
    image_h = image * mask
    return image_h, image - image_h


def make_cp_pair(
    image: np.ndarray,
    valid: np.ndarray,
    slic_ids: np.ndarray | None,
    n_superpixels: int,
    rng: np.random.Generator,
    params: PatchConfig,
) -> CPPair:
    """The whole CP pair of one 3×C×C image (the loader does the same, with the two products done
    once per batch in :func:`~cpn_dist.data.loading.train_sample.collate`)."""
    pm = draw_patch_mask(valid, slic_ids, n_superpixels, rng, params)
    mask = pm.mask.astype(np.float32)[None]
    image_h, image_hbar = split_image(image, mask)
    return CPPair(image_h, image_hbar, mask, pm.lam, pm.hidden)
