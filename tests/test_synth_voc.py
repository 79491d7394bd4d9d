"""The synthetic VOC, checked from its files alone (no project code reads them back here)."""

import hashlib
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from tests.conftest import run_cpn

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]  # fmt: skip
# Reference colours of the VOC 2012 palette (from the devkit's colour map).
VOC_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 8: (64, 0, 0),
               15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}  # fmt: skip


def _ids(root, split):
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def test_layout_and_splits(synth_voc):
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        assert (synth_voc / sub).is_dir()
    train, val, aug = (_ids(synth_voc, s) for s in ("train", "val", "train_aug"))
    assert len(set(val) | set(aug)) == 40 and not set(val) & set(aug)
    assert set(train) < set(aug) and len(train) > 0 and len(val) > 0
    for name in val + aug:
        for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "xml"), ("SegmentationClass", "png")):
            assert (synth_voc / sub / f"{name}.{ext}").is_file()
    assert len(list((synth_voc / "JPEGImages").iterdir())) == 40


def test_xml_masks_palette_and_void_borders(synth_voc):
    sizes = set()
    counts = []
    for xml in sorted((synth_voc / "Annotations").glob("*.xml")):
        name = xml.stem
        root = ET.parse(xml).getroot()
        assert root.findtext("filename") == f"{name}.jpg"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        objects = root.findall("object")
        counts.append(len(objects))
        xml_classes = {o.findtext("name") for o in objects}
        assert xml_classes <= set(VOC_CLASSES)

        image = Image.open(synth_voc / "JPEGImages" / f"{name}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (width, height)
        sizes.add(image.size)

        mask_image = Image.open(synth_voc / "SegmentationClass" / f"{name}.png")
        assert mask_image.mode == "P" and mask_image.size == (width, height)
        palette = np.array(mask_image.getpalette()[: 256 * 3]).reshape(256, 3)
        for index, colour in VOC_COLOURS.items():
            assert tuple(palette[index]) == colour
        mask = np.array(mask_image)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        assert 0 in values and 255 in values
        mask_classes = {VOC_CLASSES[v - 1] for v in values if 1 <= v <= 20}
        assert mask_classes == xml_classes, name

        # Void borders: no two different non-void labels touch (4-neighbourhood) anywhere.
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:, :], mask[:-1, :])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), name
        for obj in objects:
            box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1
    assert len(sizes) > 5, "image sizes should vary"


def test_appearance_depends_on_class(synth_voc):
    """Object pixels of different classes differ in colour more than pixels of the same class."""
    means: dict[int, list[np.ndarray]] = {}
    for png in sorted((synth_voc / "SegmentationClass").glob("*.png")):
        mask = np.array(Image.open(png))
        rgb = np.asarray(Image.open(synth_voc / "JPEGImages" / f"{png.stem}.jpg"), dtype=np.float64)
        for c in set(np.unique(mask).tolist()) - {0, 255}:
            means.setdefault(c, []).append(rgb[mask == c].mean(0))
    repeated = {c: np.array(v) for c, v in means.items() if len(v) >= 2}
    within = np.mean([np.linalg.norm(v - v.mean(0), axis=1).mean() for v in repeated.values()])
    centres = np.array([v.mean(0) for v in repeated.values()])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]])
    assert between > 2 * within


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path, synth_voc):
    again = tmp_path / "again"
    run_cpn("synth-voc", "--out", str(again), "--images", "40", "--seed", "3", "--workers", "2", check=True)
    assert _digest(again) == _digest(synth_voc)
    other = tmp_path / "other"
    run_cpn("synth-voc", "--out", str(other), "--images", "40", "--seed", "4", check=True)
    assert _digest(other) != _digest(synth_voc)
    # image i does not depend on how many images are made
    few = tmp_path / "few"
    run_cpn("synth-voc", "--out", str(few), "--images", "5", "--seed", "3", check=True)
    name = "2012_000004.jpg"
    assert (few / "JPEGImages" / name).read_bytes() == (synth_voc / "JPEGImages" / name).read_bytes()


def test_refuses_to_overwrite(synth_voc):
    proc = run_cpn("synth-voc", "--out", str(synth_voc), "--images", "2")
    assert proc.returncode != 0 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr


def test_check_voc_accepts_synthetic_and_catches_mismatch(tmp_path, synth_voc):
    run_cpn("check-voc", str(synth_voc), check=True)
    broken = tmp_path / "broken"
    run_cpn("synth-voc", "--out", str(broken), "--images", "6", check=True)
    name = _ids(broken, "train_aug")[0]
    mask = np.array(Image.open(broken / "SegmentationClass" / f"{name}.png"))
    mask[mask == np.unique(mask)[1]] = 0  # erase one class from the mask only
    Image.fromarray(mask).save(broken / "SegmentationClass" / f"{name}.png")
    proc = run_cpn("check-voc", str(broken))
    assert proc.returncode == 1 and name in proc.stdout
