"""The β sweep: known answers on hand-made CAMs, and one pass == the released per-β definition."""

import json

import numpy as np
import pytest

from cpn_dist.data.datasets.voc import save_label_png
from cpn_dist.errors import CpnError
from cpn_dist.labels.betas import parse_betas
from cpn_dist.labels.cams import class_map, load_cams, released_class_map, save_cams
from cpn_dist.labels.evaluate import (
    N_LABELS,
    direct_confusion,
    iou_from_confusion,
    score_labels,
    sweep,
)
from tests.conftest import run_cpn


def _hand_made(root):
    """One 4×5 image, GT and CAMs written so that every pixel's fate at each β is known.

    classes: 0 aeroplane (VOC 1), 14 person (VOC 15); GT row by row below; the last pixel is void.
    """
    gt = np.array([[0, 0, 1, 1, 15],
                   [0, 0, 1, 1, 15],
                   [15, 15, 15, 0, 0],
                   [1, 15, 0, 0, 255]], dtype=np.uint8)  # fmt: skip
    plane = np.array([[0.10, 0.25, 0.45, 0.30, 0.00],
                      [0.00, 0.35, 0.50, 0.20, 0.00],
                      [0.00, 0.00, 0.40, 0.00, 0.00],
                      [0.45, 0.00, 0.00, 0.00, 0.90]], dtype=np.float32)  # fmt: skip
    person = np.array([[0.00, 0.00, 0.10, 0.30, 0.40],
                       [0.00, 0.00, 0.00, 0.00, 0.45],
                       [0.28, 0.33, 0.35, -0.5, 0.00],
                       [0.00, 0.31, 0.00, 0.00, 0.00]], dtype=np.float32)  # fmt: skip
    (root / "cams").mkdir()
    (root / "gt").mkdir()
    save_cams(root / "cams" / "a.npy", {0: plane, 14: person})
    save_label_png(gt, root / "gt" / "a.png")
    (root / "list.txt").write_text("a\n")
    return gt, plane, person


def _expected_confusion(gt, plane, person, beta):
    """Count by hand-rules: foreground max over {plane, person, 0}, plane wins the tie at 0.30."""
    conf = np.zeros((N_LABELS, N_LABELS), np.int64)
    for g, a, p in zip(gt.ravel(), plane.ravel(), person.ravel()):
        if g == 255:
            continue
        m = max(a, p, 0.0)
        pred = 0 if np.float32(beta) >= m else (1 if a >= p else 15)
        conf[g, pred] += 1
    return conf


def test_hand_made_cam_gives_the_known_confusion_matrix(tmp_path):
    gt, plane, person = _hand_made(tmp_path)
    # written out for β = 0.3: foreground pixels are those with max > 0.3
    at_030 = np.zeros((N_LABELS, N_LABELS), np.int64)
    at_030[0, 0] = 7  # (0,0) (0,1) (1,0) (2,3) (2,4) (3,2) (3,3); (2,3) has max(0, −0.5, unlabelled 0) = 0
    at_030[0, 1] = 1  # (1,1) plane 0.35
    at_030[1, 1] = 3  # (0,2) 0.45, (1,2) 0.50, (3,0) 0.45
    at_030[1, 0] = 1  # (0,3): plane 0.30 = person 0.30 = β → background
    at_030[1, 0] += 1  # (1,3) plane 0.20
    at_030[15, 15] = 4  # (0,4) 0.40, (1,4) 0.45, (2,1) 0.33, (3,1) 0.31
    at_030[15, 1] = 1  # (2,2): plane 0.40 > person 0.35
    at_030[15, 0] = 1  # (2,0) person 0.28
    assert at_030.sum() == 19
    np.testing.assert_array_equal(_expected_confusion(gt, plane, person, 0.30), at_030)

    betas = [0.0, 0.2, 0.3, 0.31, 0.35, 0.45, 0.5, 1.0]
    result = sweep(tmp_path / "cams", tmp_path / "gt", ["a"], betas)
    for j, beta in enumerate(betas):
        expected = _expected_confusion(gt, plane, person, beta)
        np.testing.assert_array_equal(result.confusion[j, :N_LABELS], expected, err_msg=f"beta={beta}")
        assert result.confusion[j, N_LABELS:].sum() == 0
    np.testing.assert_array_equal(result.confusion[2, :N_LABELS], at_030)
    # IoU at β = 0.3 by hand: background TP 7, T 8, P 10 → 7/11; aeroplane 3/(5+5-3); person 4/(6+4-4)
    iou = result.iou[2]
    assert iou[0] == pytest.approx(7 / 11) and iou[1] == pytest.approx(3 / 7) and iou[15] == pytest.approx(4 / 6)
    assert result.miou[2] == pytest.approx((7 / 11 + 3 / 7 + 4 / 6) / 21)
    # at β = 1.0 everything is background
    assert result.confusion[-1, :, 1:].sum() == 0


def test_released_class_map_rules():
    """Ties go to the background (β ≥ every score) and to the lower class; unlabelled classes score 0."""
    a = np.array([[0.3, -0.2, 0.0, 0.5]], np.float32)
    b = np.array([[0.3, -0.4, 0.0, 0.5]], np.float32)
    cams = {3: a, 1: b}
    for beta in (-1.0, -0.3, 0.0, 0.3, 0.4):
        np.testing.assert_array_equal(class_map(cams, beta, a.shape), released_class_map(cams, beta, a.shape))
    np.testing.assert_array_equal(class_map(cams, 0.3, a.shape), [[0, 0, 0, 2]])
    np.testing.assert_array_equal(class_map(cams, -0.3, a.shape), [[2, 1, 1, 2]])  # unlabelled class 0 → VOC 1


def test_one_pass_sweep_equals_direct_per_beta_on_random_cams(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cams").mkdir()
    (tmp_path / "gt").mkdir()
    names, data = [], {}
    for i in range(12):
        h, w = rng.integers(20, 40, size=2)
        classes = sorted(rng.choice(20, size=rng.integers(1, 4), replace=False).tolist())
        # quantised scores make exact ties with each other and with the thresholds common
        cams = {c: (np.round(rng.uniform(-0.5, 0.5, (h, w)) * 50) / 50).astype(np.float32) for c in classes}
        gt = rng.choice([0, *[c + 1 for c in classes], 255, 7], size=(h, w)).astype(np.uint8)
        name = f"img{i:02d}"
        save_cams(tmp_path / "cams" / f"{name}.npy", cams)
        save_label_png(gt, tmp_path / "gt" / f"{name}.png")
        names.append(name)
        data[name] = (cams, gt)
    betas = parse_betas("-0.10:0.52:0.02") + [0.3, 0.25]  # unsorted, with a duplicate
    result = sweep(tmp_path / "cams", tmp_path / "gt", names, betas, workers=2)
    for j, beta in enumerate(betas):
        direct = sum(direct_confusion(*data[n], beta) for n in names)
        np.testing.assert_array_equal(result.confusion[j], direct, err_msg=f"beta={beta}")
        iou, miou = iou_from_confusion(direct)
        assert result.miou[j] == miou  # bit-identical
    assert result.images == 12


def test_parse_betas_matches_the_released_sweep():
    assert parse_betas("0.20:0.60:0.01") == [i / 100 for i in range(20, 60)]
    assert parse_betas("0.1,0.3") == [0.1, 0.3]


def test_label_png_scoring(tmp_path):
    gt, plane, person = _hand_made(tmp_path)
    (tmp_path / "pred").mkdir()
    pred = class_map({0: plane, 14: person}, 0.3, gt.shape)
    pred[3, 3] = 200  # a prediction outside the classes counts in T only
    save_label_png(pred, tmp_path / "pred" / "a.png")
    result = score_labels(tmp_path / "pred", tmp_path / "gt", ["a"])
    valid = gt != 255
    for c in range(N_LABELS):  # the released evaluator's sums, written out
        t = np.sum((gt == c) & valid)
        p = np.sum((pred == c) & valid)
        tp = np.sum((gt == c) & (pred == gt) & valid)
        assert result.iou[0, c] == tp / (t + p - tp + 1e-10)
    assert result.iou[0, 0] == pytest.approx(6 / (8 + 9 - 6))  # (3,3) moved from background to 200


def test_eval_cli_writes_table_json_and_plot(tmp_path):
    _hand_made(tmp_path)
    out = tmp_path / "sweep.json"
    plot = tmp_path / "sweep.png"
    proc = run_cpn("eval", "--cams", str(tmp_path / "cams"), "--gt", str(tmp_path / "gt"),
                   "--list", str(tmp_path / "list.txt"), "--betas", "0.20:0.60:0.05",
                   "--json", str(out), "--plot", str(plot), check=True)  # fmt: skip
    assert "best" in proc.stdout and "person" in proc.stdout
    data = json.loads(out.read_text())
    assert data["betas"] == parse_betas("0.20:0.60:0.05") and len(data["miou"]) == 8
    best = data["best"]
    assert best["miou"] == max(data["miou"]) and 0 <= best["miou"] <= 1
    assert set(best["iou"]) >= {"background", "aeroplane", "person"}
    assert all(0 <= v <= 1 for v in best["iou"].values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cli_names_a_missing_cam_file(tmp_path):
    _hand_made(tmp_path)
    (tmp_path / "list.txt").write_text("a\nb\n")
    save_label_png(np.zeros((4, 5), np.uint8), tmp_path / "gt" / "b.png")
    proc = run_cpn("eval", "--cams", str(tmp_path / "cams"), "--gt", str(tmp_path / "gt"),
                   "--list", str(tmp_path / "list.txt"))  # fmt: skip
    assert proc.returncode == 1 and "b.npy: CAM file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_cam_file_round_trip(tmp_path):
    cams = {2: np.ones((3, 4), np.float32), 7: np.zeros((3, 4), np.float32)}
    save_cams(tmp_path / "x.npy", cams)
    back = load_cams(tmp_path / "x.npy")
    assert sorted(back) == [2, 7] and back[2].dtype == np.float32
    assert not list(tmp_path.glob(".*tmp"))


def test_ground_truth_from_shards_equals_the_png_folder(synth_voc, tmp_path):
    from scipy import ndimage

    from cpn_dist.data.datasets.voc import read_label_png, read_split

    shards = tmp_path / "shards"
    run_cpn("pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(shards), "--slic-segments", "20",
            "--workers", "1", "--shard-size", "3", check=True)  # fmt: skip
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")
    (tmp_path / "cams").mkdir()
    rng = np.random.default_rng(1)
    for name in names:
        gt = read_label_png(synth_voc / "SegmentationClass" / f"{name}.png")
        cams = {c - 1: (0.5 * ndimage.gaussian_filter((gt == c).astype(np.float32), 4)
                        + rng.uniform(0, 0.2, gt.shape)).astype(np.float32)
                for c in set(np.unique(gt).tolist()) - {0, 255}}  # fmt: skip
        save_cams(tmp_path / "cams" / f"{name}.npy", cams)
    betas = parse_betas("0.20:0.60:0.05")
    from_pngs = sweep(tmp_path / "cams", synth_voc / "SegmentationClass", names, betas)
    from_shards = sweep(tmp_path / "cams", shards, names, betas, workers=2)
    np.testing.assert_array_equal(from_shards.confusion, from_pngs.confusion)
    assert from_pngs.confusion.sum() > 0
    # a listed image the shards do not hold is named
    with pytest.raises(CpnError, match="ground truth of 1 listed image"):
        sweep(tmp_path / "cams", shards, [*names, "2099_000000"], betas)


def test_image_independence_is_one_for_a_collapsed_cam_and_low_for_object_cams(tmp_path):
    from cpn_dist.labels.cams import image_independence, save_cams

    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 0.5, 40, dtype=np.float32), (30, 1))
    names = [f"im{i}" for i in range(12)]
    for folder, make in (("collapsed", lambda i: ramp + rng.normal(0, 1e-3, ramp.shape).astype(np.float32)),
                         ("objects", lambda i: _blob(rng))):  # fmt: skip
        (tmp_path / folder).mkdir()
        for i, name in enumerate(names):
            save_cams(tmp_path / folder / f"{name}.npy", {3: make(i)})
    assert image_independence(tmp_path / "collapsed", names) > 0.99
    assert image_independence(tmp_path / "objects", names) < 0.3


def _blob(rng):
    y, x = np.mgrid[0:30, 0:40]
    cy, cx = rng.uniform(5, 25), rng.uniform(5, 35)
    return (0.5 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 20.0)).astype(np.float32)
