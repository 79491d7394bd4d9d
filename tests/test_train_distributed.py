"""The distributed invariant (docs/design.md): with dropout off, the parameters after N optimizer steps do
not depend on how the global batch of 4 is split into world × micro × accumulation — for both
recipes and both OHEM scopes, under DDP (gloo, real processes) and DeepSpeed ZeRO-2."""

import sys

import pytest
import torch

from tests.train_support import (
    ACCELERATE,
    accelerate_cpu,
    assert_same_weights,
    free_port,
    launch,
    load_final,
    pack_shards,
    run_layout,
    tiny_config,
)  # fmt: skip

pytestmark = pytest.mark.slow

COMBOS = [(r, s) for r in ("paper", "official") for s in ("batch", "image")]
HARNESS = "tests/harness_train.py"


BATCH_COMBOS = [(r, "batch") for r in ("paper", "official")]


def _variants(micro: int, combos=COMBOS, full: bool = False) -> list[str]:
    """Harness variants; ``full``: the global OHEM window by a no-grad forward first (today's path before
    the head-only window), named ``…-full``."""
    tail, extra = ("-full", ",loss.global_ohem_pass=full") if full else ("", "")
    return [f"{r}-{s}-m{micro}{tail}:loss.recipe={r},loss.ohem_scope={s},batch.micro_size={micro}{extra}"
            for r, s in combos]  # fmt: skip


@pytest.fixture(scope="module")
def shards(synth_voc, tmp_path_factory):
    return pack_shards(synth_voc, tmp_path_factory.mktemp("train") / "shards")


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """Every split of the global batch of 4, each for both recipes and both OHEM scopes."""
    root = tmp_path_factory.mktemp("splits")
    config = tiny_config(root / "tiny.yaml", shards)
    one = root / "world1"
    launch([sys.executable, HARNESS, str(config), str(one), *_variants(4), *_variants(1),
            *_variants(1, BATCH_COMBOS, full=True)])  # 1×4×1, 1×1×4  # fmt: skip
    two = root / "world2"
    launch([*accelerate_cpu(2), HARNESS, str(config), str(two), *_variants(2), *_variants(1),
            *_variants(1, BATCH_COMBOS, full=True)])  # 2×2×1, 2×1×2  # fmt: skip
    return {"1x4x1": (one, 4), "1x1x4": (one, 1), "2x2x1": (two, 2), "2x1x2": (two, 1), "config": config,
            "root": root}  # fmt: skip


def _final(runs, split, recipe, scope):
    folder, micro = runs[split]
    return load_final(folder / f"{recipe}-{scope}-m{micro}")


LAYOUTS = {"1x4x1": (1, 4, 1, "NO"), "1x1x4": (1, 1, 4, "NO"), "2x2x1": (2, 2, 1, "MULTI_CPU"),
           "2x1x2": (2, 1, 2, "MULTI_CPU")}  # fmt: skip


def test_runs_really_used_the_layouts(runs):
    """Guard against a silently degenerate launch (e.g. two independent world-of-one processes)."""
    for split, layout in LAYOUTS.items():
        folder, micro = runs[split]
        for recipe, scope in COMBOS:
            assert run_layout(folder / f"{recipe}-{scope}-m{micro}") == layout


@pytest.mark.parametrize("recipe, scope", COMBOS)
def test_every_split_gives_the_same_parameters(runs, recipe, scope):
    reference = _final(runs, "1x4x1", recipe, scope)
    for split in ("1x1x4", "2x2x1", "2x1x2"):
        assert_same_weights(_final(runs, split, recipe, scope), reference)


@pytest.mark.parametrize("recipe", ["paper", "official"])
@pytest.mark.parametrize("split", ["1x1x4", "2x1x2"])
def test_head_only_window_equals_the_full_no_grad_pass(runs, recipe, split):
    """Global OHEM with accumulation: backpropagating L_cls + L_tcp per micro-step and re-running only the
    head for L_cpcr after the selection gives the weights of the no-grad pass over the window."""
    folder, micro = runs[split]
    full = load_final(folder / f"{recipe}-batch-m{micro}-full")
    assert_same_weights(load_final(folder / f"{recipe}-batch-m{micro}"), full)


def test_training_moved_the_weights_and_recipes_differ(runs):
    paper = _final(runs, "1x4x1", "paper", "batch")
    official = _final(runs, "1x4x1", "official", "batch")
    image = _final(runs, "1x4x1", "official", "image")
    assert any(not torch.allclose(paper[k], official[k]) for k in paper)
    assert any(not torch.allclose(official[k], image[k]) for k in paper)  # the OHEM scope matters


def test_deepspeed_zero2_matches_ddp(runs):
    """DeepSpeed ZeRO-2 on 2 processes gives the parameters of DDP on 2 processes. The tiny model, like
    ResNet38d, has empty "backbone bias" and "new bias" groups: had DeepSpeed's dropping of empty
    groups shifted the lr multipliers (1, 2, 10, 20) onto the wrong groups, the new layers would train
    at 1/5 or 1/10 of their rate and the weights would differ."""
    out = runs["root"] / "deepspeed"
    combos = [("official", "image"), ("paper", "batch")]
    cmd = [ACCELERATE, "launch", "--use_deepspeed", "--zero_stage", "2", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           HARNESS, str(runs["config"]), str(out), *_variants(2, combos), *_variants(1, combos)]  # fmt: skip
    launch(cmd)
    for recipe, scope in combos:
        for split, micro in (("2x2x1", 2), ("2x1x2", 1)):
            ddp = _final(runs, split, recipe, scope)
            run = out / f"{recipe}-{scope}-m{micro}"
            assert run_layout(run) == (2, micro, 2 // micro, "DEEPSPEED")
            assert_same_weights(load_final(run), ddp)


def test_deepspeed_checkpoint_resumes_exactly(runs):
    """Under DeepSpeed the checkpoint is the engine's own; resuming from step 2 reproduces step 3."""
    import shutil

    out = runs["root"] / "ds-resume"
    base = [ACCELERATE, "launch", "--use_deepspeed", "--zero_stage", "2", "--num_processes", "2", "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cpn_dist.train", "--config",
            str(runs["config"]), f"output.dir={out}", "batch.micro_size=1", "train.checkpoint_every=2"]  # fmt: skip
    launch([*base[:9], "--main_process_port", str(free_port()), *base[9:]])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    straight = load_final(out)
    shutil.rmtree(out / "checkpoints" / "step_00000003")
    (out / "model_final.pth").unlink()
    launch([*base[:9], "--main_process_port", str(free_port()), *base[9:], "--resume", "latest"])
    assert run_layout(out) == (2, 1, 2, "DEEPSPEED")
    assert_same_weights(load_final(out), straight)
    # and it equals the DDP run of the same split
    assert_same_weights(straight, _final(runs, "2x1x2", "official", "image"))
