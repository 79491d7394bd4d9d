"""The CPN training step's pieces: which global-OHEM path a config takes, and the CP pair made on the device."""

import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.cpn.task import CPNTask, HeadOnlyWindow, triplet_input


@pytest.mark.parametrize(("overrides", "head_only"), [
    ((), True),  # paper recipe with its stop-gradient: L_cpcr trains only the head
    (("loss.recipe=official", "model.head=official"), True),
    (("loss.cpcr_stop_gradient=false",), False),  # eq. 15 literally: L_cpcr reaches the backbone
    (("loss.global_ohem_pass=full",), False),
])  # fmt: skip
def test_the_head_only_window_is_taken_exactly_when_cpcr_trains_only_the_head(overrides, head_only):
    task = CPNTask(load_config(None, ["model.backbone=tiny", "model.dropout=0.0", *overrides]))
    assert task.global_ohem and task.head_only_window == head_only
    contexts = task.prepare_window(None, [{}, {}, {}], torch.device("cpu")) if head_only else None
    if head_only:
        assert [index for _, index in contexts] == [0, 1, 2]
        assert all(isinstance(window, HeadOnlyWindow) and window is contexts[0][0] for window, _ in contexts)


def test_no_global_ohem_without_a_head_or_with_per_image_ohem():
    for overrides in (("model.head=none",), ("loss.ohem_scope=image",), ("loss.ohem_ratio=1.0",)):
        assert not CPNTask(load_config(None, ["model.backbone=tiny", *overrides])).global_ohem


def test_triplet_input_makes_the_cp_pair_from_image_and_mask():
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 8, 8, generator=g), "mask": (torch.rand(2, 1, 8, 8, generator=g) < 0.5).float()}
    x = triplet_input(batch, torch.device("cpu"))
    image, image_h, image_hbar = x.chunk(3)
    assert torch.equal(image, batch["image"]) and torch.equal(image_h, batch["image"] * batch["mask"])
    assert torch.equal(image_h + image_hbar, image) and torch.all(image_hbar[batch["mask"].expand_as(image) > 0] == 0)
    last = triplet_input(batch, torch.device("cpu"), channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, x)


def _batch(n=4, crop=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 20)
    for i in range(n):
        labels[i, torch.randperm(20, generator=g)[: 1 + i % 2]] = 1
    mask = (torch.rand(n, 1, crop, crop, generator=g) < 0.5).float()
    return {"image": torch.randn(n, 3, crop, crop, generator=g), "mask": mask, "labels": labels,
            "lam": mask.mean((1, 2, 3))}  # fmt: skip


@pytest.mark.parametrize("recipe", ["paper", "official"])
def test_bf16_autocast_keeps_every_loss_term_and_the_gradient_close_to_fp32(recipe):
    """Mixed precision changes the arithmetic, not the loss: each term within 5 % (relative) of fp32 and the
    gradient of all trainable parameters at cosine ≥ 0.98 (the head and the losses run in float32)."""
    from cpn_dist.cpn.model import build_model

    cfg = load_config(None, ["model.backbone=tiny", "model.dropout=0.0", f"loss.recipe={recipe}",
                             f"model.head={recipe}", "loss.ohem_scope=image"])  # fmt: skip
    batch = _batch()
    results = {}
    for precision in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = build_model("tiny", recipe, dropout=0.0).train()
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            terms, _ = CPNTask(cfg).loss(model, batch, torch.device("cpu"), None)
        terms["total"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[precision] = ({k: v.item() for k, v in terms.items()}, grads)
    (fp32, g32), (bf16, g16) = results[None], results[torch.bfloat16]
    for key in ("total", "cls", "tcp", "cpcr"):
        assert abs(bf16[key] - fp32[key]) <= 0.05 * abs(fp32[key]) + 1e-6, (key, fp32[key], bf16[key])
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) >= 0.98
    assert g32.abs().max() > 0
