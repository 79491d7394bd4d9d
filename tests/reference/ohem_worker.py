"""The trainer's global-OHEM step, run by each of several gloo processes (tests/test_ohem.py)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from cpn_dist.cpn.loss import cpcr_elements, cpn_loss, global_ohem_selection, ohem_candidates
from cpn_dist.cpn.ohem import selection_weights

# (recipe, ohem_scope) cases; each run with A = 1 (2 images per rank) and A = 2 (1 image per micro-step)
CASES = [("paper", "batch"), ("official", "batch"), ("official", "image")]
GLOBAL = 4
SIZE = 32


def global_batch():
    """The global batch every process agrees on: images of the triplet, labels, λ."""
    g = torch.Generator().manual_seed(7)
    image = torch.randn(GLOBAL, 3, SIZE, SIZE, generator=g)
    mask = (torch.rand(GLOBAL, 1, SIZE, SIZE, generator=g) > 0.4).float()
    labels = torch.zeros(GLOBAL, 20)
    for i, classes in enumerate(([2], [4, 9], [14], [1, 3, 18])):
        labels[i, classes] = 1
    lam = mask.mean(dim=(1, 2, 3))
    return torch.cat([image, image * mask, image * (1 - mask)]), labels, lam


def make_model():
    from cpn_dist.cpn.model import build_model

    torch.manual_seed(0)
    return build_model("tiny", "official", dropout=0.0).train()


def forward(model, triplet, idx):
    x = torch.cat([triplet[idx], triplet[GLOBAL + idx], triplet[2 * GLOBAL + idx]])
    cam, refined = model(x)
    return cam.chunk(3), refined.chunk(3)


def run_step(model, batch, indices, recipe, scope, group=None):
    """One optimizer step's gradient over the micro-steps ``indices`` of this rank (list of index
    tensors), as the trainer does it. Returns (sum of returned totals, per-micro-step weights, selection)."""
    triplet, labels, lam = batch
    accumulation = len(indices)
    selection = None
    if scope == "batch":
        with torch.no_grad():  # the no-grad pass over the window
            cands = [ohem_candidates(*forward(model, triplet, i), labels[i], lam[i], recipe) for i in indices]
        selection = global_ohem_selection(cands, ratio=0.2, group=group)
    total, picked = 0.0, []
    for i in indices:
        cams, refined = forward(model, triplet, i)
        out = cpn_loss(cams, refined, labels[i], lam[i], recipe=recipe, ohem_scope=scope, ohem=selection)
        (out["total"] / accumulation).backward()
        total += out["total"].item()
        if selection is not None:
            e = cpcr_elements(cams, refined, labels[i], lam[i], recipe)
            picked.append([selection_weights(x.detach(), s.threshold, s.tie_weight)
                           for x, s in zip(e, selection.terms)])  # fmt: skip
    return total, picked, selection


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share this machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batch = global_batch()
        per_rank = GLOBAL // world
        mine = torch.arange(rank * per_rank, (rank + 1) * per_rank)
        results = {}
        for recipe, scope in CASES:
            for accumulation in (1, 2):
                model = make_model()
                indices = list(mine.chunk(accumulation))
                total, picked, selection = run_step(model, batch, indices, recipe, scope)
                grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                for g in grads.values():  # DDP: mean over ranks
                    dist.all_reduce(g)
                    g /= world
                loss = torch.tensor([total])
                dist.all_reduce(loss)
                results[(recipe, scope, accumulation)] = {
                    "loss": loss.item() / (world * accumulation),  # mean of the chunk values
                    "grads": grads,
                    "picked": picked,
                    "selection": None if selection is None else
                    [(float(s.threshold), s.above, s.equal, s.k) for s in selection.terms],
                    "chunks": None if selection is None else selection.chunks,
                }
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
