"""Stage 2 pieces: pairs and their labels, the block vote onto the stride-8 grid, the affinity loss
against a literal implementation, AffinityNet's interface, and the random walk's properties."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from cpn_dist.affinity.loss import affinity_loss, pair_counts
from cpn_dist.affinity.model import build_affinity_model
from cpn_dist.affinity.pairs import (
    pair_affinities,
    pair_count,
    pair_index,
    pair_labels,
    reduce_labels,
    search_offsets,
)  # fmt: skip
from cpn_dist.affinity.random_walk import (
    WalkParams,
    dense_affinity,
    random_walk,
    transition_matrix,
    walk_dense,
    walk_samples,
)  # fmt: skip
from cpn_dist.data.datasets.voc import read_label_png
from cpn_dist.data.inputs import Sample
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import class_map, load_cams, save_cams

X = 255


def _pair_sets(grid: torch.Tensor, radius: int) -> tuple[set, set, set]:
    """The three pair masks of one h×w grid as sets of ((y, x), (y', x')) position pairs."""
    h, w = grid.shape
    start, end = pair_index(h, w, radius)
    masks = pair_labels(grid[None], radius)

    def pos(i):
        return divmod(int(i), w)

    return tuple({(pos(start[k]), pos(end[k])) for k in torch.nonzero(m[0])[:, 0]} for m in masks)


# ---- pairs ---------------------------------------------------------------------------------------


def test_search_offsets_are_psas_window():
    offsets = search_offsets(5)
    assert len(offsets) == 34
    assert offsets[:4] == ((0, 1), (0, 2), (0, 3), (0, 4))
    assert offsets[4:13] == tuple((1, dx) for dx in range(-4, 5))
    # every unordered pair closer than the radius exactly once, from the earlier position
    every = {(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25}
    assert set(offsets) | {(-dy, -dx) for dy, dx in offsets} == every
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in offsets)
    assert search_offsets(2) == ((0, 1), (1, -1), (1, 0), (1, 1))


def test_hand_made_label_map_gives_the_expected_pair_sets():
    grid = torch.tensor([[0, 0, 1, 1],
                         [0, X, 1, 2],
                         [0, 0, 2, 2]])  # fmt: skip
    bg, fg, neg = _pair_sets(grid, radius=2)  # 8-neighbourhood
    assert bg == {((0, 0), (0, 1)), ((2, 0), (2, 1)), ((0, 0), (1, 0)), ((1, 0), (2, 0)), ((1, 0), (2, 1)),
                  ((0, 1), (1, 0))}  # fmt: skip
    assert fg == {((0, 2), (0, 3)), ((2, 2), (2, 3)), ((0, 2), (1, 2)), ((1, 3), (2, 3)), ((0, 3), (1, 2)),
                  ((1, 3), (2, 2))}  # fmt: skip
    assert neg == {((0, 1), (0, 2)), ((1, 2), (1, 3)), ((2, 1), (2, 2)), ((0, 3), (1, 3)), ((1, 2), (2, 2)),
                   ((0, 1), (1, 2)), ((0, 2), (1, 3)), ((1, 2), (2, 3)), ((1, 2), (2, 1))}  # fmt: skip
    # the 8 pairs touching the ignored cell are in no set; 29 pairs in all
    assert pair_count(3, 4, 2) == 29 == len(bg) + len(fg) + len(neg) + 8


def test_pairs_are_every_pair_within_the_radius_once_and_contain_psas_window():
    rng = np.random.default_rng(0)
    h, w, r = 11, 13, 5
    grid = torch.from_numpy(rng.choice([0, 3, 7, X], size=(h, w)))
    bg, fg, neg = _pair_sets(grid, r)
    start, end = pair_index(h, w, r)
    listed = [(divmod(int(a), w), divmod(int(b), w)) for a, b in zip(start, end)]
    brute = {((y, x), (v, u)) for y in range(h) for x in range(w) for v in range(h) for u in range(w)
             if (y, x) < (v, u) and (v - y) ** 2 + (u - x) ** 2 < r * r}  # fmt: skip
    assert len(listed) == len(set(listed)) == len(brute) and set(listed) == brute
    lab = {p: int(grid[p]) for p in np.ndindex(h, w)}
    for a, b in brute:
        la, lb = lab[a], lab[b]
        assert ((a, b) in bg) == (la == lb == 0)
        assert ((a, b) in fg) == (la == lb and la not in (0, X))
        assert ((a, b) in neg) == (la != lb and X not in (la, lb))
    # PSA's ExtractAffinityLabelInRadius, written out literally, gives a subset: its fixed window
    g = grid.numpy()
    f = r - 1
    src = g[:-f, f:-f].reshape(-1)
    psa = {"bg": set(), "fg": set(), "neg": set()}
    rows, cols = np.mgrid[0:h - f, f:w - f]
    for dy, dx in search_offsets(r):
        dst = g[dy:dy + h - f, f + dx:f + dx + w - 2 * f].reshape(-1)
        valid = (src < 255) & (dst < 255)
        for k in range(src.size):
            a = (int(rows.reshape(-1)[k]), int(cols.reshape(-1)[k]))
            pair = (a, (a[0] + dy, a[1] + dx))
            if src[k] == dst[k] and src[k] == 0:
                psa["bg"].add(pair)
            elif src[k] == dst[k] and valid[k]:
                psa["fg"].add(pair)
            elif src[k] != dst[k] and valid[k]:
                psa["neg"].add(pair)
    assert psa["bg"] <= bg and psa["fg"] <= fg and psa["neg"] <= neg
    assert len(psa["bg"]) + len(psa["fg"]) + len(psa["neg"]) < len(bg) + len(fg) + len(neg)


def test_affinities_follow_the_pair_layout():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 6, 7)
    aff = pair_affinities(f, 3)
    start, end = pair_index(6, 7, 3)
    flat = f.flatten(2)
    expected = torch.exp(-(flat[:, :, start] - flat[:, :, end]).abs().mean(1))
    torch.testing.assert_close(aff, expected)
    assert aff.shape == (2, pair_count(6, 7, 3))


def test_block_vote_onto_the_stride_grid():
    label = torch.full((1, 10, 12), 0)
    label[0, :4, :4] = 5  # cell (0, 0): 16 of 5, 0 of 0 → 5
    label[0, 0, 4:8] = X  # cell (0, 1): 4 ignore, 12 background → 0
    label[0, :4, 8:12] = X
    label[0, :2, 8:12] = 3  # cell (0, 2): 8 of 3, 8 ignore → tie, the class wins
    label[0, 4:8, :4] = 2
    label[0, 4:6, :4] = 0  # cell (1, 0): 8 of 0, 8 of 2 → tie, the lower label (0) wins
    grid = reduce_labels(label, stride=4)
    # rows 8, 9 and the padding below them form the third row of cells: 8 zeros, 8 padding → 0
    assert grid.tolist() == [[[5, 0, 3], [0, 0, 0], [0, 0, 0]]]
    small = torch.tensor([[[1, 1, X], [1, X, X]]])
    assert reduce_labels(small, stride=2).tolist() == [[[1, X]]]  # padding counts as ignore
    with pytest.raises(ValueError):
        reduce_labels(torch.tensor([[[30]]]))


# ---- loss ----------------------------------------------------------------------------------------


def _literal_loss(aff, bg, fg, neg):
    """train_aff.py, line by line, with plain Python sums."""
    a, b, f, n = (t.double().reshape(-1).tolist() for t in (aff, bg, fg, neg))
    bg_count, fg_count, neg_count = sum(b) + 1e-5, sum(f) + 1e-5, sum(n) + 1e-5
    bg_loss = sum(-bi * math.log(ai + 1e-5) for ai, bi in zip(a, b)) / bg_count
    fg_loss = sum(-fi * math.log(ai + 1e-5) for ai, fi in zip(a, f)) / fg_count
    neg_loss = sum(-ni * math.log(1.0 + 1e-5 - ai) for ai, ni in zip(a, n)) / neg_count
    return bg_loss / 4 + fg_loss / 4 + neg_loss / 2, bg_loss, fg_loss, neg_loss


def test_loss_equals_the_literal_released_loss_and_its_chunks_average_to_it():
    rng = np.random.default_rng(1)
    grid = torch.from_numpy(rng.choice([0, 0, 4, 9, X], size=(4, 7, 8)))
    bg, fg, neg = pair_labels(grid, 3)
    aff = torch.rand(bg.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    aff[0, :5] = 1.0  # the log(1 + 1e-5 - a) end
    terms = affinity_loss(aff, bg, fg, neg)
    total, lb, lf, ln = _literal_loss(aff, bg, fg, neg)
    for key, want in (("total", total), ("bg", lb), ("fg", lf), ("neg", ln)):
        assert terms[key].item() == pytest.approx(want, rel=1e-5)
    # four chunks of one image with the global counts: their mean is the whole-batch loss, although
    # the chunks' own pair counts differ (so a mean of per-chunk means would not be)
    counts = pair_counts(bg, fg, neg)
    chunks = [affinity_loss(aff[i:i + 1], bg[i:i + 1], fg[i:i + 1], neg[i:i + 1], counts, chunks=4)
              for i in range(4)]  # fmt: skip
    assert sum(c["total"] for c in chunks).item() / 4 == pytest.approx(total, rel=1e-5)
    naive = sum(affinity_loss(aff[i:i + 1], bg[i:i + 1], fg[i:i + 1], neg[i:i + 1])["total"] for i in range(4)) / 4
    assert abs(naive.item() - total) > 1e-3


def test_loss_gradient_pulls_positive_pairs_together_and_negatives_apart():
    aff = torch.full((1, 3), 0.5, requires_grad=True)
    bg = torch.tensor([[True, False, False]])
    fg = torch.tensor([[False, True, False]])
    neg = torch.tensor([[False, False, True]])
    affinity_loss(aff, bg, fg, neg)["total"].backward()
    assert aff.grad[0, 0] < 0 and aff.grad[0, 1] < 0 and aff.grad[0, 2] > 0


# ---- model ---------------------------------------------------------------------------------------


def test_affinity_net_embedding_groups_and_backbone_init(tmp_path):
    from cpn_dist.cpn.model import build_model
    from cpn_dist.models import load_weights

    torch.manual_seed(0)
    model = build_affinity_model("tiny", dropout=0.0)
    emb = model(torch.randn(2, 3, 100, 90))
    assert emb.shape == (2, 448, 13, 12) and emb.dtype == torch.float32
    named = {id(p): n for n, p in model.named_parameters()}
    groups = [{named[id(p)] for p in g} for g in model.parameter_groups()]
    assert groups[2] == {"f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"}
    assert "conv1a.weight" not in set().union(*groups) and "b3.conv_branch2a.weight" in groups[0]
    # an ImageNet-style init holds backbone keys only: they load, the new layers keep their init
    backbone = {k: v for k, v in build_model("tiny", "none").state_dict().items() if not k.startswith("fc8")}
    torch.save(backbone, tmp_path / "init.pth")
    f9 = model.f9.weight.detach().clone()
    report = load_weights(model, tmp_path / "init.pth")
    assert set(report.missing) == {"f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"}
    assert not report.unexpected and torch.equal(model.f9.weight, f9)
    assert torch.equal(model.b7.conv_branch2b2.weight, backbone["b7.conv_branch2b2.weight"])
    # training moves the trainable backbone, not the frozen stem or BatchNorm
    model.train()
    aff = pair_affinities(model(torch.randn(2, 3, 48, 48)), 5)
    affinity_loss(aff, *pair_labels(torch.randint(0, 3, (2, 6, 6)), 5))["total"].backward()
    assert model.b3.conv_branch2a.weight.grad.abs().sum() > 0 and model.f9.weight.grad.abs().sum() > 0
    assert model.conv1a.weight.grad is None and not model.b4.bn_branch2a.training
    with pytest.raises(CpnError, match="model.backbone"):
        build_affinity_model("resnet50")


# ---- random walk ---------------------------------------------------------------------------------


def test_transition_columns_are_distributions_and_stay_so_after_the_walk():
    torch.manual_seed(0)
    h, w = 5, 6
    aff = torch.rand(1, pair_count(h, w, 3))
    dense = dense_affinity(aff, h, w, 3)
    assert torch.equal(dense, dense.transpose(1, 2)) and torch.all(dense.diagonal(dim1=1, dim2=2) == 1)
    far = (0 * w + 0, 4 * w + 5)  # 6.4 cells apart: no pair
    assert dense[0, far[0], far[1]] == 0
    trans = transition_matrix(dense, 8.0)
    torch.testing.assert_close(trans.sum(dim=1), torch.ones(1, h * w))
    power = walk_dense(torch.eye(h * w)[None], trans, logt=4)  # T^16 itself
    torch.testing.assert_close(power.sum(dim=1), torch.ones(1, h * w), rtol=0, atol=1e-5)
    assert (power >= 0).all()
    # so a constant score row stays constant: a constant background β is walked to β
    scores = torch.stack([torch.full((h * w,), 0.3), torch.rand(h * w)])[None]
    walked = random_walk(scores, aff, h, w, WalkParams(logt=4, radius=3, method="dense"))
    torch.testing.assert_close(walked[0, 0], torch.full((h * w,), 0.3), rtol=0, atol=1e-6)


def test_dense_and_sparse_walks_agree():
    torch.manual_seed(1)
    h, w = 7, 9
    aff = torch.rand(2, pair_count(h, w, 5))
    scores = torch.rand(2, 3, h * w)
    dense = random_walk(scores, aff, h, w, WalkParams(method="dense"))
    sparse = random_walk(scores, aff, h, w, WalkParams(method="sparse"))
    torch.testing.assert_close(dense, sparse, rtol=0, atol=1e-4)


def test_constant_affinity_smooths_a_cam_uniformly():
    """Affinity 1 between every pair: the walk converges to the stationary distribution, so every
    position ends with the same value, the degree-weighted mean of the input."""
    h, w, r = 8, 8, 5
    aff = torch.ones(1, pair_count(h, w, r))
    cam = torch.zeros(1, 1, h * w)
    cam[0, 0, :10] = 1.0  # a blob in one corner
    walked = random_walk(cam, aff, h, w, WalkParams(radius=r, method="dense"))[0, 0]
    degree = dense_affinity(aff, h, w, r)[0].sum(0)
    expected = (cam[0, 0] * degree).sum() / degree.sum()
    torch.testing.assert_close(walked, torch.full((h * w,), expected.item()), rtol=0, atol=1e-5)
    sparse = random_walk(cam, aff, h, w, WalkParams(radius=r, method="sparse"))[0, 0]
    torch.testing.assert_close(sparse, walked, rtol=0, atol=1e-5)


class _ColourEmbedding(torch.nn.Module):
    """A stand-in AffinityNet: the 8×8-pooled input times 20, so cells of one colour have affinity 1
    and cells of colours far apart affinity ~0."""

    def forward(self, x):
        return 20 * torch.nn.functional.avg_pool2d(x, 8)


def test_walk_spreads_a_weak_cam_over_its_region_but_not_across_the_boundary(tmp_path):
    size, edge = 96, 48  # left half dark, right half bright
    rgb = np.full((size, size, 3), 40, np.uint8)
    rgb[:, edge:] = 210
    cam = np.zeros((size, size), np.float32)
    cam[:72, :edge] = 0.4  # a weak CAM on three quarters of the left region only
    save_cams(tmp_path / "img.npy", {4: cam})
    before = class_map({4: cam}, None, cam.shape, bg_power=16)
    assert (before[72:, :edge] == 0).all()  # the CAM alone leaves a quarter of the region out
    sample = Sample("img", Image.fromarray(rgb), None, None)
    written = walk_samples(_ColourEmbedding(), [sample], tmp_path, tmp_path / "rw", WalkParams(),
                           save_cams_dir=tmp_path / "walked")  # fmt: skip
    assert written == ["img"]
    label = read_label_png(tmp_path / "rw" / "img.png")
    inner = label[:, : edge - 8]  # away from the bilinear blend of the two regions' border cells
    assert (inner == 5).all()  # VOC index of CAM key 4, over the whole region
    assert (label[:, edge:] == 0).all()  # nothing crosses the boundary
    walked = load_cams(tmp_path / "walked" / "img.npy")
    assert set(walked) == {4} and walked[4].shape == cam.shape
    assert walked[4][:, edge + 8:].max() < 1e-6 and walked[4][:, : edge - 8].min() > 0.25


# ---- config --------------------------------------------------------------------------------------


def test_affinity_configs_hold_psas_settings_and_bg_powers_are_checked():
    from cpn_dist.config import ConfigError, load_config
    from tests.conftest import ROOT

    c = load_config(ROOT / "configs" / "voc_affinity.yaml")
    assert (c.stage, c.model.backbone, c.data.crop, c.batch.global_size, c.train.epochs) == (
        "affinity", "resnet38d", 448, 8, 8)  # fmt: skip
    assert (c.optim.lr, c.optim.weight_decay, c.affinity.radius) == (0.1, 5e-4, 5)
    assert (c.affinity.low_bg_power, c.affinity.high_bg_power, c.affinity.rw_bg_power) == (4, 32, 16)
    assert (c.affinity.rw_affinity_power, c.affinity.rw_logt) == (8, 8)
    from cpn_dist.affinity.labels import AffinityLabelParams
    from cpn_dist.config import CrfConfig

    assert AffinityLabelParams.from_config(c.affinity).crf == CrfConfig()  # PSA's CRF
    assert AffinityLabelParams.from_config(c.affinity, crf=False).crf is None
    demo = load_config(ROOT / "configs" / "demo_affinity.yaml")
    assert demo.model.backbone == "tiny"
    scaled = AffinityLabelParams.from_config(demo.affinity).crf  # the kernels scaled to 64-pixel images
    assert (scaled.gaussian_sxy, scaled.bilateral_sxy, scaled.bilateral_srgb) == (0.384, 10.24, 13.0)
    with pytest.raises(ConfigError, match="affinity.crf.iterations"):
        load_config(None, ["affinity.crf.iterations=0"])
    with pytest.raises(ConfigError, match="affinity.low_bg_power: must be below high_bg_power"):
        load_config(None, ["affinity.low_bg_power=40"])
    with pytest.raises(ConfigError, match="affinity.radius"):
        load_config(None, ["affinity.radius=1"])


def test_batched_walk_of_mixed_sizes_equals_one_image_at_a_time(tmp_path):
    rng = np.random.default_rng(3)
    samples = []
    for i, (h, w) in enumerate([(40, 56), (40, 56), (33, 47), (40, 56)]):
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        rgb[:, : w // 2] = 30
        save_cams(tmp_path / f"im{i}.npy", {1: rng.random((h, w), dtype=np.float32) * 0.5,
                                             9: rng.random((h, w), dtype=np.float32) * 0.3})  # fmt: skip
        samples.append(Sample(f"im{i}", Image.fromarray(rgb), None, None))
    params = WalkParams(logt=5, method="dense")
    one = walk_samples(_ColourEmbedding(), samples, tmp_path, tmp_path / "one", params, batch_size=1,
                       save_cams_dir=tmp_path / "one_cams")  # fmt: skip
    many = walk_samples(_ColourEmbedding(), samples, tmp_path, tmp_path / "many", params, batch_size=3,
                        save_cams_dir=tmp_path / "many_cams")  # fmt: skip
    assert one == many == ["im0", "im1", "im2", "im3"]
    for name in one:
        np.testing.assert_array_equal(read_label_png(tmp_path / "one" / f"{name}.png"),
                                      read_label_png(tmp_path / "many" / f"{name}.png"))  # fmt: skip
        a, b = load_cams(tmp_path / "one_cams" / f"{name}.npy"), load_cams(tmp_path / "many_cams" / f"{name}.npy")
        assert a.keys() == b.keys() == {1, 9}
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def test_cams_are_brought_to_psas_scale_before_the_powered_background():
    from cpn_dist.labels.cams import background_score, normalise_cams

    cams = {3: np.array([[0.5, 0.25, -0.1]], np.float32), 8: np.full((1, 3), -0.5, np.float32)}
    norm = normalise_cams(cams, "max")
    np.testing.assert_allclose(norm[3], [[1.0, 0.5, -0.2]])
    np.testing.assert_array_equal(norm[8], cams[8])  # no positive peak: left alone (not sign-flipped)
    assert normalise_cams(cams, "none") is cams
    bg = background_score(norm, (1, 3), bg_power=16)
    np.testing.assert_allclose(bg, [[0.0, 0.5**16, 1.0]], rtol=1e-6)  # negative maxima clip to 1
    with pytest.raises(ValueError):
        normalise_cams(cams, "l2")


def test_affinity_label_crf_flags_default_to_the_config():
    import argparse

    from cpn_dist.cli.crf_cmd import CRF_KEYS, add_crf_arguments, crf_params
    from cpn_dist.config import CrfConfig

    assert {k: f.annotation for k, f in CrfConfig.model_fields.items()} == CRF_KEYS  # one flag per key
    p = argparse.ArgumentParser()
    add_crf_arguments(p, from_config="affinity.crf")
    base = CrfConfig(gaussian_sxy=0.5, bilateral_sxy=9.0)
    assert crf_params(p.parse_args([]), base) == base
    given = crf_params(p.parse_args(["--crf-bilateral-sxy", "20"]), base)
    assert given == base.model_copy(update={"bilateral_sxy": 20.0})
    plain = argparse.ArgumentParser()
    add_crf_arguments(plain)  # `cpn crf`, `cpn pseudo`: PSA's values are the flags' defaults
    assert crf_params(plain.parse_args([])) == CrfConfig()
    assert crf_params(plain.parse_args(["--crf-iterations", "3"])) == CrfConfig(iterations=3)
    assert "(affinity.crf.bilateral_sxy, PSA: 80.0)" in p.format_help().replace("\n", " ")
