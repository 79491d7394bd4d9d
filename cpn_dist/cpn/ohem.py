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

1. each rank, for each of its micro-steps, computes :func:`cpn_dist.cpn.loss.ohem_candidates` (a
   no-grad pass when accumulating; the grad pass's outputs when not): a detached float32 copy of the
   CPCR elements, 2 × N·C·H·W values per micro-step;
2. :func:`global_ohem_selection` finds the exact k-th largest value of the whole global batch with
   a radix select on the float bit patterns: two ``all_reduce``\\ s of 65,536-bin histograms (16 bits
   of the key each, every CPCR term at once), whatever the batch size — no approximation, no all-gather. It runs
   on the device without a host sync and brings the result to the host in one transfer at the end;
3. each micro-step's :func:`cpn_dist.cpn.loss.cpn_loss` call takes the selection (``ohem=``) and
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
    """Elements kept: ``int(numel × ratio)``, at least 1 (per image numel = C·H·W, C classes with background:
    the released ``int(21·H·W·0.2)`` on VOC)."""
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
    """Per row of ``rows`` (R×n): the k-th largest value and the tie weight of the threshold rule.
    The threshold is the smallest of ``torch.topk``'s k values (one radix-select kernel over all rows on
    CUDA; faster than ``kthvalue`` on CPU too), so no per-row work is launched."""
    with torch.no_grad():
        threshold = torch.topk(rows, k, dim=1, sorted=False)[0].amin(dim=1, keepdim=True)
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
    """Map float32 values to int32 keys with the same order (``-0.0`` counts as ``+0.0``): the bit pattern,
    with the magnitude bits of negative values flipped, read as a signed integer."""
    bits = (values.float() + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _key_to_float(key: int) -> torch.Tensor:
    bits = key ^ 0x7FFFFFFF if key < 0 else key
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0]


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


DIGIT_BITS = 16  # two passes of 65,536-bin histograms over the 32-bit keys
_BINS = 1 << DIGIT_BITS


def _digit_counts(digit: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Counts of ``digit`` (int32 in 0 … 2^16 − 1) where ``keep`` (all when None). On CUDA a
    ``scatter_add_`` (``bincount`` reads its maximum back to size its output: a host sync); on the CPU,
    ``bincount``, several times faster, with the digits not kept sent to an extra bin (cheaper than
    compacting them away: usually most CPCR elements are 0 and are kept)."""
    if digit.device.type == "cpu":
        if keep is None:
            return torch.bincount(digit, minlength=_BINS)
        return torch.bincount(torch.where(keep, digit, _BINS), minlength=_BINS + 1)[:_BINS]
    ones = torch.ones_like(digit, dtype=torch.int64) if keep is None else keep.to(torch.int64)
    return torch.zeros(_BINS, dtype=torch.int64, device=digit.device).scatter_add_(
        0, digit.reshape(-1).to(torch.int64), ones.reshape(-1))


def _radix_select(keys: list[list[torch.Tensor]], need: torch.Tensor, group) -> tuple[torch.Tensor, ...]:
    """Exact k-th largest key of each term over every chunk on every rank: 2 all-reduces of T×65,536
    counts — the high 16 bits of the (signed int32) key, then the low 16 bits of the keys that share the
    high ones found — entirely on the keys' device (no host sync). ``need``: k per term (int64, T).
    Returns (key, above, equal) per term as int64 tensors of length T."""
    terms = len(keys)
    need = need.clone()
    high = torch.zeros_like(need)
    above = torch.zeros_like(need)
    equal = torch.zeros_like(need)
    low_mask = _BINS - 1
    for first in (True, False):
        counts = []
        for t in range(terms):
            if first:  # signed high half, shifted to 0 … 2^16 − 1 so that the bin order is the key order
                counts.append(sum(_digit_counts((c >> DIGIT_BITS) + (_BINS // 2), None) for c in keys[t]))
            else:
                counts.append(sum(_digit_counts(c & low_mask, (c >> DIGIT_BITS) + (_BINS // 2) == high[t])
                                  for c in keys[t]))  # fmt: skip
        hist = _all_reduce(torch.stack(counts), group)
        from_top = hist.flip(1).cumsum(1)  # from_top[t, j]: keys in the bins (2^16 − 1) − j … 2^16 − 1
        j = (from_top < need[:, None]).sum(1)  # bins above the one that holds the need-th largest key
        seen = torch.where(j > 0, from_top.gather(1, (j - 1).clamp_min(0)[:, None])[:, 0], torch.zeros_like(j))
        digit = low_mask - j
        above += seen
        need -= seen
        equal = hist.gather(1, digit[:, None])[:, 0]
        if first:
            high = digit
    key = ((high - _BINS // 2) << DIGIT_BITS) | digit  # back to the signed int32 key
    return key, above, equal


def global_ohem_selection(candidates: Sequence[OhemCandidates], ratio: float, group=None) -> OhemSelection:
    """The exact top-``ratio`` selection of every CPCR term over the global batch.

    ``candidates``: this rank's micro-steps (one :class:`OhemCandidates` each). Collective: every rank
    of ``group`` (default: the world; no process group = one process) must call it with the same
    number of terms. ``k = int(ratio × global element count)`` per term. Everything runs on the
    candidates' device; the result comes to the host in one transfer at the end.
    """
    if not candidates:
        raise ValueError("global_ohem_selection needs at least one micro-step's candidates")
    device = candidates[0].values[0].device
    terms = len(candidates[0].values)
    counts = [torch.tensor(sum(c.numel for c in candidates), device=device),
              torch.tensor(len(candidates), device=device)]  # fmt: skip
    counts += [sum((c.values[t] != 0).sum() for c in candidates) for t in range(terms)]
    numel, chunks, *nonzero = _all_reduce(torch.stack(counts), group)
    # k = int(numel × ratio) in float64, as ohem_k computes it on the host, clamped to 1 … numel
    k = torch.minimum(torch.maximum((numel.double() * ratio).floor().long(), torch.ones_like(numel)), numel)
    keys = [[_order_keys(c.values[t]) for c in candidates] for t in range(terms)]
    found = _radix_select(keys, k.expand(terms), group)
    k, chunks, *flat = torch.cat([torch.stack([k, chunks]), *found, torch.stack(nonzero)]).tolist()  # one transfer
    key, above, equal, nonzero = (flat[i * terms:(i + 1) * terms] for i in range(4))
    selections = tuple(
        TermSelection(threshold=_key_to_float(key[t]).to(device), above=above[t], equal=equal[t], k=k,
                      nonzero=nonzero[t])
        for t in range(terms)
    )  # fmt: skip
    return OhemSelection(selections, chunks)
