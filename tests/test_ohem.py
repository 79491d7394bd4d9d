"""Exact OHEM: the threshold rule, the radix selection, and the global selection over 2 real gloo
processes (and 2 accumulation micro-steps) against the single-process full batch."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from cpn_dist.cpn.loss import cpcr_elements
from cpn_dist.cpn.ohem import global_ohem_selection, ohem_candidates_from_elements, ohem_k, selection_weights
from tests.reference import ohem_worker as W


@pytest.mark.parametrize("ratio", [0.013, 0.2, 0.5, 1.0])
def test_split_selection_equals_topk_with_ties(ratio):
    g = torch.Generator().manual_seed(0)
    values = torch.randint(-3, 5, (1000,), generator=g).float()  # many ties, negatives, zeros
    values[::7] = -0.0
    k = ohem_k(ratio, values.numel())
    top = torch.topk(values, k)[0]
    for split in ([1000], [300, 500, 200], [1] * 10 + [990]):
        sel = global_ohem_selection([ohem_candidates_from_elements([p, p * 0.5]) for p in values.split(split)], ratio)
        assert sel.chunks == len(split)
        for term, scale in zip(sel.terms, (1.0, 0.5)):
            x = values * scale
            assert term.threshold == top[-1] * scale and term.k == k
            assert term.above == int((x > term.threshold).sum()) and term.equal == int((x == term.threshold).sum())
            w = selection_weights(x, term.threshold, term.tie_weight)
            assert abs(w.sum().item() - k) < 1e-3
            assert abs((w * x).sum().item() - (top * scale).sum().item()) < 1e-3


def test_selection_of_real_cpcr_elements_ties_at_zero():
    g = torch.Generator().manual_seed(1)
    cams = tuple(torch.randn(2, 21, 8, 8, generator=g) for _ in range(3))
    refined = tuple(torch.randn(2, 21, 8, 8, generator=g) for _ in range(3))
    labels = torch.zeros(2, 20)
    labels[0, 4] = labels[1, 9] = 1
    e1, e2 = cpcr_elements(cams, refined, labels, torch.tensor([0.4, 0.7]), recipe="official")
    sel = global_ohem_selection([ohem_candidates_from_elements([e1, e2])], 0.2)
    assert sel.terms[0].threshold == 0 and sel.terms[0].equal > 1000  # the common case: threshold 0, many ties


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_global_ohem_over_two_processes_equals_the_full_batch(tmp_path):
    mp.start_processes(W.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    batch = W.global_batch()
    everything = [torch.arange(W.GLOBAL)]
    for recipe, scope in W.CASES:
        model = W.make_model()
        total, picked, selection = W.run_step(model, batch, everything, recipe, scope)
        full_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        for accumulation in (1, 2):
            case = (recipe, scope, accumulation)
            got = ranks[0][case]
            assert abs(got["loss"] - total) < 1e-6, case
            assert ranks[1][case]["loss"] == got["loss"]
            assert set(got["grads"]) == set(full_grads)
            for name, g in full_grads.items():
                assert (got["grads"][name] - g).abs().max() <= 1e-6 * max(1.0, g.abs().max().item()), (case, name)
            if scope == "batch":
                expected = [(float(s.threshold), s.above, s.equal, s.k) for s in selection.terms]
                assert got["selection"] == expected and ranks[1][case]["selection"] == expected
                assert got["chunks"] == 2 * accumulation
                # the selected set (weights per element) of the chunks, in global order, is the full one
                chunks = [m for r in ranks for m in r[case]["picked"]]
                for term in range(2):
                    assert torch.equal(torch.cat([c[term] for c in chunks]), picked[0][term]), case
