"""AffinityNet's loss (Ahn & Kwak, CVPR 2018, eqs. 7-9; the released ``train_aff.py``):

    L_bg  = −Σ_{bg pairs} log(a + 1e-5)      / (|bg| + 1e-5)
    L_fg  = −Σ_{fg pairs} log(a + 1e-5)      / (|fg| + 1e-5)
    L_neg = −Σ_{neg pairs} log(1 + 1e-5 − a) / (|neg| + 1e-5)
    L     = L_bg / 4 + L_fg / 4 + L_neg / 2

Each part is averaged over its own pairs of the WHOLE batch (the released code sums over the batch
of 8 and divides by the batch's pair count). The counts differ between the images of a batch, so the
mean over micro-batches of per-micro-batch means is not that value. To keep one optimizer step
independent of how the global batch is split over processes and accumulation steps, the three pair
counts are taken over the global batch first (they depend on the labels only, so no forward is
needed: a sum over the window and one all-reduce of three numbers), and each micro-step returns its
*chunk estimate* ``chunks × Σ(its pairs' terms) / (global count + 1e-5)`` where ``chunks`` = processes ×
accumulation steps. The mean of the chunk estimates is exactly the released whole-batch loss, so
DDP's mean over ranks and the engine's 1/accumulation give its gradient. With one chunk this is the
released formula literally.
"""

from __future__ import annotations

import torch

EPS = 1e-5
WEIGHTS = {"bg": 0.25, "fg": 0.25, "neg": 0.5}


def pair_counts(bg: torch.Tensor, fg: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The numbers of bg-positive, fg-positive and negative pairs (float64 tensor of 3)."""
    return torch.stack([bg.sum(), fg.sum(), neg.sum()]).double()


def affinity_loss(aff: torch.Tensor, bg: torch.Tensor, fg: torch.Tensor, neg: torch.Tensor,
                  counts: torch.Tensor | None = None, chunks: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{"total", "bg", "fg", "neg"}`` float32 scalars for affinities ``aff`` (N×P, in (0, 1]) and the
    pair masks of :func:`~cpn_dist.affinity.pairs.pair_labels`. ``counts`` are the global batch's pair
    counts (default: this batch's) and ``chunks`` the number of equal micro-batches it was split into."""
    aff = aff.float()
    if counts is None:
        counts = pair_counts(bg, fg, neg)
    counts = counts.to(aff.device)
    pos_log = -torch.log(aff + EPS)
    neg_log = -torch.log(1.0 + EPS - aff)
    sums = (
        (pos_log * bg).sum(),
        (pos_log * fg).sum(),
        (neg_log * neg).sum(),
    )
    terms = {name: (chunks * s / (counts[i] + EPS)).float() for i, (name, s) in enumerate(zip(WEIGHTS, sums))}
    terms["total"] = sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)
    return terms
