"""The parts task of the synthetic VOC (`cpn synth-voc --task parts`), checked from its files."""

import colorsys
import hashlib

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cpn_dist.data.datasets.voc import check_voc, read_label_png, read_split
from cpn_dist.data.synth.voc import synthesize_voc
from tests.conftest import run_cpn


@pytest.fixture(scope="module")
def parts_voc(tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "VOC2012"
    run_cpn("synth-voc", "--task", "parts", "--out", str(out), "--images", "12", "--size", "64", "--seed", "2",
            check=True)  # fmt: skip
    return out


def _names(root):
    return read_split(root / "ImageSets" / "Segmentation" / "train_aug.txt") + read_split(
        root / "ImageSets" / "Segmentation" / "val.txt"
    )


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_valid_voc_with_a_part_map_per_image(parts_voc):
    report = check_voc(parts_voc)
    assert report["images"] == 12 and report["masks"] == 12 and report["problems"] == []
    names = _names(parts_voc)
    assert sorted(p.stem for p in (parts_voc / "SegmentationPart").glob("*.png")) == sorted(names)
    counts = [len(np.setdiff1d(np.unique(read_label_png(parts_voc / "SegmentationClass" / f"{n}.png")), [0, 255]))
              for n in names]  # fmt: skip
    assert set(counts) == {1, 2}


def test_parts_agree_with_the_class_mask(parts_voc):
    for name in _names(parts_voc):
        gt = read_label_png(parts_voc / "SegmentationClass" / f"{name}.png")
        part = read_label_png(parts_voc / "SegmentationPart" / f"{name}.png")
        assert part.shape == gt.shape
        assert set(np.unique(part).tolist()) <= {0, 1, 2, 255}
        assert ((part == 255) == (gt == 255)).all(), name  # the same void band
        assert (((part == 1) | (part == 2)) == ((gt >= 1) & (gt <= 20))).all(), name  # object = body ∪ marker
        for cls in set(np.unique(gt).tolist()) - {0, 255}:
            body, marker = ((gt == cls) & (part == 1)).sum(), ((gt == cls) & (part == 2)).sum()
            assert marker > 0 and body > 2 * marker, (name, cls)  # every object: a whole marker, a larger body


def test_markers_lie_inside_bodies_of_their_class(parts_voc):
    for name in _names(parts_voc):
        gt = read_label_png(parts_voc / "SegmentationClass" / f"{name}.png")
        part = read_label_png(parts_voc / "SegmentationPart" / f"{name}.png")
        components, n = ndimage.label(part == 2)
        assert n >= 1
        for k in range(1, n + 1):
            marker = components == k
            ring = ndimage.binary_dilation(marker, iterations=2) & ~marker
            classes = np.unique(gt[marker])
            assert len(classes) == 1 and 1 <= classes[0] <= 20
            assert (part[ring] == 1).all() and (gt[ring] == classes[0]).all(), (name, k)


def test_marker_is_saturated_and_body_is_not(parts_voc):
    marker_sat, body_sat = [], []
    for name in _names(parts_voc):
        rgb = np.asarray(Image.open(parts_voc / "JPEGImages" / f"{name}.jpg"), dtype=np.float64) / 255
        part = read_label_png(parts_voc / "SegmentationPart" / f"{name}.png")
        inner = ndimage.binary_erosion(part == 2, iterations=1)  # away from JPEG ringing at the edge
        for mask, out in ((inner, marker_sat), (part == 1, body_sat)):
            out += [colorsys.rgb_to_hsv(*p)[1] for p in rgb[mask]]
    assert np.median(marker_sat) > 0.7 and np.median(body_sat) < 0.25


def test_deterministic_and_a_stream_of_its_own(tmp_path, parts_voc):
    again = synthesize_voc(tmp_path / "again", 12, size=64, seed=2, workers=2, task="parts")
    assert _digest(again) == _digest(parts_voc)
    other = synthesize_voc(tmp_path / "other", 12, size=64, seed=3, task="parts")
    assert _digest(other) != _digest(parts_voc)
    shapes = synthesize_voc(tmp_path / "shapes", 1, size=64, seed=2)
    name = "2012_000000.jpg"
    assert (shapes / "JPEGImages" / name).read_bytes() != (parts_voc / "JPEGImages" / name).read_bytes()
    assert not (shapes / "SegmentationPart").exists()


def test_unknown_task_is_a_user_error(tmp_path):
    proc = run_cpn("synth-voc", "--task", "nope", "--out", str(tmp_path / "x"), "--images", "1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    from cpn_dist.errors import CpnError

    with pytest.raises(CpnError, match="task"):
        synthesize_voc(tmp_path / "y", 1, task="nope")
