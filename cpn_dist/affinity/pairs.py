"""Pixel pairs within a radius on the stride-8 feature grid: their layout, their affinities, and
their labels (AffinityNet, Ahn & Kwak, CVPR 2018, Sec. 3.2).

**Offsets.** As PSA's ``ExtractAffinityLabelInRadius``: ``(0, dx)`` for ``dx = 1 … r−1``, then
``(dy, dx)`` for ``dy = 1 … r−1`` and ``dx = −(r−1) … r−1`` with ``dx² + dy² < r²`` — one offset per
unordered pair of positions closer than ``r`` (34 offsets for ``r = 5``), each pair listed once,
from the earlier position (row-major) to the later one.

**Layout.** For offset ``k = (dy, dx)`` the pairs are every position ``(y, x)`` whose partner
``(y + dy, x + dx)`` lies on the grid, in row-major order; the offsets' pairs are concatenated in
offset order: a vector of ``P = Σ_k (h − dy_k)(w − |dx_k|)`` pairs. PSA instead keeps only the
"from" positions of one fixed window (rows ``0 … h−r``, columns ``r−1 … w−r``) so that every offset
has the same count and its pairs stack into a ``34 × K`` tensor; that drops the pairs among the
positions of the last ``r−1`` rows and of the outer ``r−1`` columns (about a fifth of the pairs of a
56×56 grid). Here every in-bounds pair takes part, in training and in the random walk alike.

**Labels** (PSA's rule) from a label grid with 0 = background, 1..C-1 = class, 255 = ignore (C the
dataset's classes with background, 21 for VOC):
positive background pair — both ends 0; positive foreground pair — both ends the same class 1..C-1;
negative pair — both ends labelled (not 255) with different labels. Pairs with an ignored end are
in no set.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from cpn_dist.data.datasets.voc import IGNORE, NUM_CLASSES  # VOC's class count: the default

STRIDE = 8  # the backbone's output stride


def search_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """The ``(dy, dx)`` offsets of PSA's search window (every unordered pair closer than ``radius`` once)."""
    if radius < 2:
        raise ValueError(f"the radius must be >= 2 (pairs closer than it), got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return tuple(offsets)


def _windows(h: int, w: int, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Row/column slices of the "from" and "to" ends of offset (dy, dx) on an h×w grid."""
    rows = max(0, h - dy)
    x0 = min(w, max(0, -dx))
    x1 = max(x0, w - max(0, dx))
    return (slice(0, rows), slice(x0, x1)), (slice(dy, dy + rows), slice(x0 + dx, x1 + dx))


def pair_count(h: int, w: int, radius: int) -> int:
    return sum(max(0, h - dy) * max(0, w - abs(dx)) for dy, dx in search_offsets(radius))


@lru_cache(maxsize=64)
def _pair_index(h: int, w: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.arange(h * w).view(h, w)
    starts, ends = [], []
    for dy, dx in search_offsets(radius):
        a, b = _windows(h, w, dy, dx)
        starts.append(grid[a].reshape(-1))
        ends.append(grid[b].reshape(-1))
    return torch.cat(starts), torch.cat(ends)


def pair_index(h: int, w: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row-major) grid indices ``(from, to)`` of every pair, in the layout above (int64, P each)."""
    return _pair_index(h, w, radius)


def pair_affinities(embedding: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinities ``a_ij = exp(−mean_c |f_i^c − f_j^c|)`` of every pair (N×P, float32) from an
    N×C×h×w embedding. The released code averages the L1 distance over the C channels (the paper
    writes the sum, ‖f_i − f_j‖₁); we follow the code, whose trained weights assume it."""
    f = embedding.float()
    h, w = f.shape[-2:]
    parts = []
    for dy, dx in search_offsets(radius):
        (ya, xa), (yb, xb) = _windows(h, w, dy, dx)
        dist = (f[:, :, ya, xa] - f[:, :, yb, xb]).abs().mean(dim=1)
        parts.append(torch.exp(-dist).flatten(1))
    return torch.cat(parts, dim=1)


def reduce_labels(label: torch.Tensor, stride: int = STRIDE, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """N×H×W labels (0..C-1, 255; C = ``num_classes``) → N×⌈H/s⌉×⌈W/s⌉: each grid cell takes the most
    frequent value of its s×s block (255 counted as a value, ties to the lower label, so a class beats
    ignore). Blocks past the image border are padded with 255. PSA instead average-pools its two CRF
    probability maps before taking their argmax; a label PNG has no probabilities left, so the block vote
    plays that role."""
    n, hh, ww = label.shape
    h, w = -(-hh // stride), -(-ww // stride)
    ignore = num_classes  # the vote's bin of 255: 0..C-1, then C = ignore
    values = label.long().clone()
    values[values == IGNORE] = ignore
    if (values < 0).any() or (values > ignore).any():
        raise ValueError(f"labels must be 0..{num_classes - 1} or 255")
    values = F.pad(values, (0, w * stride - ww, 0, h * stride - hh), value=ignore)
    cell = (torch.arange(h * stride, device=label.device) // stride)[:, None] * w + \
        (torch.arange(w * stride, device=label.device) // stride)[None, :]  # fmt: skip
    index = values * (h * w) + cell
    votes = torch.zeros(n, (ignore + 1) * h * w, device=label.device)
    votes.scatter_add_(1, index.view(n, -1), torch.ones(n, index[0].numel(), device=label.device))
    winner = votes.view(n, ignore + 1, h, w).argmax(dim=1)
    winner[winner == ignore] = IGNORE
    return winner


def pair_labels(grid: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(bg_pos, fg_pos, neg)`` bool N×P masks of the pairs of an N×h×w label grid (rule above)."""
    h, w = grid.shape[-2:]
    bg, fg, neg = [], [], []
    for dy, dx in search_offsets(radius):
        (ya, xa), (yb, xb) = _windows(h, w, dy, dx)
        a, b = grid[:, ya, xa].flatten(1), grid[:, yb, xb].flatten(1)
        labelled = (a != IGNORE) & (b != IGNORE)
        same = a == b
        bg.append(same & (a == 0))
        fg.append(same & labelled & (a != 0))
        neg.append(~same & labelled)
    return torch.cat(bg, 1), torch.cat(fg, 1), torch.cat(neg, 1)
