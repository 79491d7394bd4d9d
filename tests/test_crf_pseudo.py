"""Dense CRF and pseudo labels: valid distributions, edges respected, VOC-palette PNGs."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cpn_dist.data.datasets.voc import PALETTE, read_label_png, read_split
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import class_map, load_cams, save_cams
from cpn_dist.labels.crf import cam_probabilities, dense_crf
from cpn_dist.labels.evaluate import score_labels, sweep
from cpn_dist.labels.pseudo import paired_pseudo_label, pseudo_label
from tests.conftest import run_cpn

# colours of the VOC devkit colour map, written out independently of cpn_dist
VOC_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 15: (192, 128, 128), 255: (224, 224, 192)}


def _two_regions(h=40, w=64, edge=32, seed=0):
    """A dark left half and a bright right half, and soft class probabilities whose boundary is
    blurred and shifted 5 px to the right of the real edge."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 40.0)
    image[:, edge:] = 200.0
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((h, w), np.int64)
    truth[:, edge:] = 1
    soft = ndimage.gaussian_filter(np.roll(truth, 5, axis=1).astype(np.float64), (0, 6))
    p1 = np.clip(soft, 0.2, 0.8)
    return image, truth, np.stack([1 - p1, p1]).astype(np.float32)


def test_crf_output_is_a_distribution_and_sharpens_along_the_edge():
    image, truth, probs = _two_regions()
    q = dense_crf(image, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    assert np.all(q >= 0) and np.allclose(q.sum(axis=0), 1.0, atol=1e-5)
    # the label boundary moves onto the image edge
    assert (probs.argmax(0) == truth).mean() < 0.95
    assert (q.argmax(0) == truth).mean() == 1.0
    # and the probabilities get sharper: near-certain on both sides of the edge
    def entropy(p):
        return -(p * np.log(np.clip(p, 1e-12, None))).sum(0).mean()

    assert entropy(q) < 0.2 * entropy(probs)
    # the steepest change of the class-1 probability sits at the edge (columns 31 | 32)
    jump = np.abs(np.diff(q[1].mean(axis=0)))
    assert int(np.argmax(jump)) == 31
    # with a flat image there is no edge to snap to: the boundary stays where the unary puts it
    flat = np.full_like(image, 120)
    assert (dense_crf(flat, probs).argmax(0) == truth).mean() < 0.95


def test_crf_parameters_are_checked():
    import argparse

    from cpn_dist.cli.crf_cmd import add_crf_arguments, crf_params

    p = argparse.ArgumentParser()
    add_crf_arguments(p)
    with pytest.raises(CpnError, match="--crf-iterations: must be >= 1, got 0"):
        crf_params(p.parse_args(["--crf-iterations", "0"]))
    with pytest.raises(CpnError, match="--crf-bilateral-srgb: must be > 0.0, got 0.0"):
        crf_params(p.parse_args(["--crf-bilateral-srgb", "0"]))


def test_cam_probabilities_cover_background_and_labelled_classes():
    cams = {4: np.array([[0.4, -0.5]], np.float32), 11: np.array([[0.1, 0.2]], np.float32)}
    probs, classes = cam_probabilities(cams, 0.3)
    assert classes == [0, 5, 12]
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-6)
    assert probs.min() > 0
    np.testing.assert_allclose(probs[:, 0, 0], np.array([0.3, 0.4, 0.1]) / 0.8, rtol=1e-6)


def test_paired_label_rule():
    cams = {0: np.array([[0.1, 0.25, 0.45]], np.float32)}
    single = pseudo_label(cams, 0.3, (1, 3))
    np.testing.assert_array_equal(single, [[0, 0, 1]])
    paired = paired_pseudo_label(cams, 0.2, 0.4, (1, 3))
    np.testing.assert_array_equal(paired, [[0, 255, 1]])  # bg even at 0.2, unsure, fg even at 0.4
    with pytest.raises(CpnError):
        paired_pseudo_label(cams, 0.4, 0.2, (1, 3))


@pytest.fixture(scope="module")
def cams_from_masks(synth_voc, tmp_path_factory):
    """Released-format CAMs made from the synthetic masks: each labelled class's mask, blurred,
    scaled into 0..0.5; a blob of the wrong class-free region adds a false positive."""
    out = tmp_path_factory.mktemp("cams")
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")
    for name in names:
        gt = read_label_png(synth_voc / "SegmentationClass" / f"{name}.png")
        classes = sorted(set(np.unique(gt).tolist()) - {0, 255})
        cams = {}
        for c in classes:
            blur = ndimage.gaussian_filter((gt == c).astype(np.float32), 3)
            cams[c - 1] = (0.5 * blur / blur.max()).astype(np.float32)
        save_cams(out / f"{name}.npy", cams)
    (out.parent / "val.txt").write_text("".join(f"{n}\n" for n in names))
    return out, names


def test_pseudo_pngs_use_the_voc_palette_and_score_like_eval(synth_voc, cams_from_masks, tmp_path):
    cams_dir, names = cams_from_masks
    out = tmp_path / "pseudo"
    run_cpn("pseudo", "--cams", str(cams_dir), "--out", str(out), "--beta", "0.25", "--workers", "2", check=True)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names)
    for name in names:
        im = Image.open(out / f"{name}.png")
        assert im.mode == "P"
        palette = np.array(im.getpalette()[: 256 * 3], dtype=np.uint8).reshape(256, 3)
        for index, colour in VOC_COLOURS.items():
            assert tuple(palette[index]) == colour
        np.testing.assert_array_equal(palette, PALETTE)
        cams = load_cams(cams_dir / f"{name}.npy")
        label = np.array(im)
        np.testing.assert_array_equal(label, class_map(cams, 0.25, label.shape))
    # the PNGs score exactly what the sweep reports at that β
    gt = synth_voc / "SegmentationClass"
    from_pngs = score_labels(out, gt, names)
    from_sweep = sweep(cams_dir, gt, names, [0.2, 0.25, 0.3])
    np.testing.assert_array_equal(from_pngs.confusion[0, :, :21], from_sweep.confusion[1])
    assert from_pngs.miou[0] == from_sweep.miou[1] and from_sweep.miou[1] > 0.5


def test_pseudo_pair_with_crf_and_crf_command(synth_voc, cams_from_masks, tmp_path):
    cams_dir, names = cams_from_masks
    few = tmp_path / "few.txt"
    few.write_text("".join(f"{n}\n" for n in names[:3]))
    out = tmp_path / "pair"
    run_cpn("pseudo", "--cams", str(cams_dir), "--list", str(few), "--out", str(out), "--betas", "0.1", "0.4",
            "--crf", "--voc-root", str(synth_voc), "--crf-iterations", "5", check=True)  # fmt: skip
    for name in names[:3]:
        label = np.array(Image.open(out / f"{name}.png"))
        gt = read_label_png(synth_voc / "SegmentationClass" / f"{name}.png")
        classes = set(np.unique(gt).tolist()) - {255}
        assert set(np.unique(label).tolist()) <= classes | {255}
        assert (label == 255).any() and (label == 0).any()
        confident = (label != 255) & (gt != 255)
        assert (label[confident] == gt[confident]).mean() > 0.9

    crf_out = tmp_path / "crf"
    run_cpn("crf", "--cams", str(cams_dir), "--list", str(few), "--out", str(crf_out), "--beta", "0.25",
            "--voc-root", str(synth_voc), "--workers", "1", check=True)  # fmt: skip
    for name in names[:3]:
        probs = np.load(crf_out / f"{name}.npy", allow_pickle=True).item()
        cams = load_cams(cams_dir / f"{name}.npy")
        assert sorted(probs) == [0] + [c + 1 for c in sorted(cams)]
        stack = np.stack(list(probs.values()))
        assert np.all(stack >= 0) and np.allclose(stack.sum(0), 1.0, atol=1e-4)

    # done images are skipped unless --overwrite
    victim = out / f"{names[0]}.png"
    victim.write_bytes(b"user file")
    run_cpn("pseudo", "--cams", str(cams_dir), "--list", str(few), "--out", str(out), "--beta", "0.3", check=True)
    assert victim.read_bytes() == b"user file"
    run_cpn("pseudo", "--cams", str(cams_dir), "--list", str(few), "--out", str(out), "--beta", "0.3",
            "--overwrite", check=True)  # fmt: skip
    assert victim.read_bytes()[:4] == b"\x89PNG"


def test_pseudo_crf_needs_images(cams_from_masks, tmp_path):
    cams_dir, _ = cams_from_masks
    proc = run_cpn("pseudo", "--cams", str(cams_dir), "--out", str(tmp_path / "o"), "--beta", "0.3", "--crf")
    assert proc.returncode == 1 and "--voc-root" in proc.stderr and "Traceback" not in proc.stderr


def test_show_writes_a_grid_png(synth_voc, cams_from_masks, tmp_path):
    cams_dir, names = cams_from_masks
    out = tmp_path / "grid.png"
    run_cpn("show", "--cams", str(cams_dir), "--voc-root", str(synth_voc), "--count", "3", "--out", str(out),
            check=True)  # fmt: skip
    grid = np.asarray(Image.open(out).convert("RGB"))
    # 3 rows of panels at 2.2 inches × 100 dpi; columns: image, GT, up to 3 CAMs, pseudo label
    assert grid.shape[0] == 3 * 220 and grid.shape[1] >= 4 * 260
    # the VOC colours of the ground truth / pseudo labels appear in the picture
    colours = {tuple(c) for c in grid.reshape(-1, 3)[:: 7].tolist()}
    assert (224, 224, 192) in colours  # void border of the ground truth
