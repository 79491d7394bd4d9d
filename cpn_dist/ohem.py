"""Online hard example mining (OHEM) of the CPCR elements: exact top-k, per image or over the global batch.

OHEM keeps the ``k`` largest CPCR elements and averages them: ``sum(top-k) / k``. Every selection here
is a *threshold rule* so that it is deterministic and independent of how the batch is split:

* ``t`` = the k-th largest element; elements ``> t`` are selected with weight 1;
* the ``equal`` elements ``== t`` share the remaining ``k - above`` slots: each gets weight
  ``(k - above) / equal``.

The weighted sum equals the sum of ``torch.topk(k)`` exactly (tied elements have the same value),
but unlike ``topk`` it does not depend on which of the tied elements a kernel happens to return,
so the gradient is the same whatever the split of the batch over ranks and micro-steps. Ties are the
rule rather than the exception: the CPCR maps are exactly 0 on unlabelled channels, so on images
with few classes the threshold is often 0 (whose elements have zero gradient through ``|·|``).

Global (``ohem_scope: batch``) selection over ``world_size × accumulation`` chunks of a global batch:

1. each rank, for each of its micro-steps, computes :func:`cpn_dist.losses.ohem_candidates` (a
   no-grad pass when accumulating; the grad pass's outputs when not): a detached float32 copy of the
   CPCR elements, 2 × N·21·H·W values per micro-step;
2. :func:`global_ohem_selection` finds the exact k-th largest value of the whole global batch with
   a radix select on the float bit patterns: four ``all_reduce``\\ s of 256-bin histograms (one per
   byte, every CPCR term at once), whatever the batch size — no approximation, no all-gather;
3. each micro-step's :func:`cpn_dist.losses.cpn_loss` call takes the selection (``ohem=``) and
   returns its *chunk estimate* ``chunks × (sum of its selected elements) / k``.

The mean of the chunk estimates over the ``chunks`` chunks equals the full-batch OHEM loss, so the
usual gradient averaging (DDP's mean over ranks, ``loss / accumulation`` per micro-step) reproduces the
single-process full-batch gradient. ``k = int(ratio × elements in the global batch)``, computed from
the collective count, so the trainer never has to pass the global batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

_SIGN = 1 << 31


@dataclass(frozen=True)
class OhemCandidates:
    """One micro-step's CPCR elements (detached, flattened, one tensor per CPCR term) for selection."""

    values: tuple[torch.Tensor, ...]

    @property
    def numel(self) -> int:
        return self.values[0].numel()


@dataclass(frozen=True)
class TermSelection:
    """The exact top-k of one CPCR term: ``threshold`` = the k-th largest value (0-d float32 tensor),
    ``above`` / ``equal`` = how many elements are > / == it; ``nonzero`` = how many elements of the
    global batch are non-zero (OHEM leaves a non-zero element out when ``nonzero > k``)."""

    threshold: torch.Tensor
    above: int
    equal: int
    k: int
    nonzero: int = 0

    @property
    def tie_weight(self) -> float:
        return (self.k - self.above) / self.equal


@dataclass(frozen=True)
class OhemSelection:
    """A global OHEM selection, one :class:`TermSelection` per CPCR term. ``chunks`` is the number of
    equal chunks (ranks × micro-steps) the global batch was split into: the scale of each chunk's
    estimate (see the module docstring)."""

    terms: tuple[TermSelection, ...]
    chunks: int


def ohem_k(ratio: float, numel: int) -> int:
    """Elements kept: ``int(numel × ratio)`` (the released ``int(21·H·W·0.2)`` per image), at least 1."""
    return max(1, min(numel, int(numel * ratio)))


def selection_weights(elements: torch.Tensor, threshold: torch.Tensor, tie_weight: torch.Tensor | float
                      ) -> torch.Tensor:  # fmt: skip
    """The (no-grad) weights of the threshold rule: 1 above ``threshold``, ``tie_weight`` on it, else 0.
    ``threshold`` and ``tie_weight`` broadcast against ``elements``."""
    with torch.no_grad():
        above = (elements > threshold).to(elements.dtype)
        tied = (elements == threshold).to(elements.dtype)
        return above + tied * tie_weight


def topk_rows(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``rows`` (R×n): the k-th largest value and the tie weight of the threshold rule."""
    with torch.no_grad():
        n = rows.shape[1]
        threshold = torch.kthvalue(rows, n - k + 1, dim=1, keepdim=True)[0]
        above = (rows > threshold).sum(dim=1, keepdim=True)
        equal = (rows == threshold).sum(dim=1, keepdim=True)
        return threshold, (k - above).to(rows.dtype) / equal.to(rows.dtype)


def topk_sum_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: the sum of the k largest values (threshold rule, differentiable), shape R."""
    threshold, tie = topk_rows(rows, k)
    return (rows * selection_weights(rows, threshold, tie)).sum(dim=1)


# ------------------------------------------------------------------------------------------------
# Global selection
def ohem_candidates_from_elements(elements: Sequence[torch.Tensor]) -> OhemCandidates:
    """Wrap one micro-step's CPCR element tensors (any shape) as candidates for the global selection."""
    return OhemCandidates(tuple(e.detach().float().reshape(-1) for e in elements))


def _order_keys(values: torch.Tensor) -> torch.Tensor:
    """Map float32 values to int64 keys in [0, 2^32) with the same order (``-0.0`` counts as ``+0.0``)."""
    bits = (values.float() + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + _SIGN


def _key_to_float(key: int) -> torch.Tensor:
    bits = key - _SIGN
    if bits < 0:
        bits ^= 0x7FFFFFFF
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0]


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _radix_select(keys: list[list[torch.Tensor]], ks: list[int], group, device) -> list[tuple[int, int, int]]:
    """Exact k-th largest key of each term over every chunk on every rank: 4 all-reduces of T×256 counts,
    one byte of the key per pass, most significant first. Returns (key, above, equal) per term."""
    terms = len(ks)
    prefix, need, above, equal = [0] * terms, list(ks), [0] * terms, [0] * terms
    for shift in (24, 16, 8, 0):
        hist = torch.zeros(terms, 256, dtype=torch.int64, device=device)
        for t in range(terms):
            for chunk in keys[t]:
                if shift != 24:  # keep the keys whose higher bytes equal the prefix found so far
                    chunk = chunk[(chunk >> (shift + 8)) == (prefix[t] >> (shift + 8))]
                hist[t] += torch.bincount((chunk >> shift) & 255, minlength=256)
        counts = _all_reduce(hist, group).tolist()
        for t in range(terms):
            seen, byte = 0, 255
            while seen + counts[t][byte] < need[t]:  # walk down from the largest bin
                seen += counts[t][byte]
                byte -= 1
            above[t] += seen
            need[t] -= seen
            prefix[t] |= byte << shift
            equal[t] = counts[t][byte]
    return list(zip(prefix, above, equal))


def global_ohem_selection(candidates: Sequence[OhemCandidates], ratio: float, group=None) -> OhemSelection:
    """The exact top-``ratio`` selection of every CPCR term over the global batch.

    ``candidates``: this rank's micro-steps (one :class:`OhemCandidates` each). Collective: every rank
    of ``group`` (default: the world; no process group = one process) must call it with the same
    number of terms. ``k = int(ratio × global element count)`` per term.
    """
    if not candidates:
        raise ValueError("global_ohem_selection needs at least one micro-step's candidates")
    device = candidates[0].values[0].device
    terms = len(candidates[0].values)
    nonzero = [sum((c.values[t] != 0).sum() for c in candidates) for t in range(terms)]
    sizes = torch.stack([torch.tensor(sum(c.numel for c in candidates), device=device),
                         torch.tensor(len(candidates), device=device), *nonzero])  # fmt: skip
    numel, chunks, *nonzero = (int(v) for v in _all_reduce(sizes, group).tolist())
    k = ohem_k(ratio, numel)
    keys = [[_order_keys(c.values[t]) for c in candidates] for t in range(terms)]
    found = _radix_select(keys, [k] * terms, group, device)
    selections = tuple(
        TermSelection(threshold=_key_to_float(key).to(device), above=above, equal=equal, k=k, nonzero=nz)
        for (key, above, equal), nz in zip(found, nonzero)
    )
    return OhemSelection(selections, chunks)
