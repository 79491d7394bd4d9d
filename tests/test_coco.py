"""MS COCO: the annotation reader, instance masks equal to pycocotools' annToMask, the class ids, each
protocol choice, one line for each bad input, and the synthetic COCO folder."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from cpn_dist.data.datasets.coco import (
    COCO_CATEGORIES,
    PROTOCOLS,
    CocoProtocol,
    class_mask,
    instance_mask,
    read_coco_split,
)
from cpn_dist.errors import CpnError
from tests.conftest import ROOT

CHELSEA = ROOT / "tests" / "reference" / "chelsea_instances.json"  # skimage's cat, outlined by hand


@pytest.fixture(scope="module")
def synth_coco(tmp_path_factory):
    from cpn_dist.data.synth.coco import synthesize_coco

    return synthesize_coco(tmp_path_factory.mktemp("coco") / "COCO", 60, size=96, seed=1)


def _coco_api(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its loading times
        return COCO(str(path))


def test_every_instance_mask_equals_pycocotools_annToMask_for_polygons_and_both_rles(synth_coco):
    kinds = {"polygon": 0, "rle": 0, "uncompressed rle": 0, "two polygons": 0}
    for split in ("train2014", "val2014"):
        coco = _coco_api(synth_coco / "annotations" / f"instances_{split}.json")
        parsed = read_coco_split(synth_coco, split)
        for image in parsed.images:
            for inst in image.instances:
                ann = coco.anns[inst.ann_id]
                ours = instance_mask(inst.segmentation, image.height, image.width)
                np.testing.assert_array_equal(ours, coco.annToMask(ann))
                seg = ann["segmentation"]
                if isinstance(seg, list):
                    kinds["two polygons" if len(seg) > 1 else "polygon"] += 1
                else:
                    kinds["uncompressed rle" if isinstance(seg["counts"], list) else "rle"] += 1
    assert all(kinds.values()), kinds  # every kind was compared


def test_category_ids_map_to_classes_1_to_80_in_id_order(synth_coco):
    parsed = read_coco_split(synth_coco, "train2014")
    assert len(COCO_CATEGORIES) == 80 and parsed.classes[0] == "background" and len(parsed.classes) == 81
    index = {name: i for i, name in enumerate(parsed.classes)}
    ids = dict((name, cid) for cid, name in COCO_CATEGORIES)
    # ReCAM's category_map: 1→1 … 11→11, 13→12, 17→16 (cat), 90→80
    assert [index[n] for n in ("person", "fire hydrant", "stop sign", "cat", "toothbrush")] == [1, 11, 12, 16, 80]
    assert [ids[n] for n in ("person", "fire hydrant", "stop sign", "cat", "toothbrush")] == [1, 11, 13, 17, 90]
    coco = _coco_api(synth_coco / "annotations" / "instances_train2014.json")
    for image in parsed.images:
        for inst in image.instances:
            assert parsed.classes[inst.cls] == coco.cats[coco.anns[inst.ann_id]["category_id"]]["name"]


def _one_image_file(tmp_path, anns, size=(20, 30), name="COCO_val2014_000000000001.jpg"):
    """A one-image val2014 COCO folder whose annotations are ``anns`` (ids filled in)."""
    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    h, w = size
    data = {"images": [{"id": 1, "file_name": name, "height": h, "width": w}],
            "annotations": [{"id": i + 1, "image_id": 1, **a} for i, a in enumerate(anns)],
            "categories": [{"id": cid, "name": n} for cid, n in COCO_CATEGORIES]}  # fmt: skip
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return root


def _box(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_each_protocol_choice_changes_what_it_names(tmp_path):
    from pycocotools import mask as mask_api

    crowd = np.zeros((20, 30), np.uint8)
    crowd[15:19, 2:8] = 1
    crowd_rle = mask_api.encode(np.asfortranarray(crowd))
    anns = [
        {"category_id": 18, "segmentation": _box(2, 2, 20, 12), "iscrowd": 0, "area": 180.0},  # dog, big
        {"category_id": 17, "segmentation": _box(10, 5, 16, 10), "iscrowd": 0, "area": 30.0},  # cat, small
        {"category_id": 1, "segmentation": {"size": [20, 30], "counts": crowd_rle["counts"].decode()},
         "iscrowd": 1, "area": 24.0},  # a crowd of people
        {"category_id": 18, "segmentation": _box(3, 3, 8, 6), "iscrowd": 0, "area": 15.0},  # dog, written last
    ]  # fmt: skip
    image = read_coco_split(_one_image_file(tmp_path, anns), "val2014").images[0]
    person, cat, dog = 1, 16, 17
    labels = image.labels(CocoProtocol(), 80)
    assert [i + 1 for i, v in enumerate(labels) if v] == [person, cat, dog]
    assert [i + 1 for i, v in enumerate(image.labels(CocoProtocol(crowd_labels=False), 80)) if v] == [cat, dog]

    last = class_mask(image, CocoProtocol())
    assert last[7, 12] == cat  # the cat was written after the big dog
    assert last[17, 4] == 0  # crowd pixels: background
    assert class_mask(image, CocoProtocol(crowd_mask="ignore"))[17, 4] == 255
    assert class_mask(image, CocoProtocol(crowd_mask="class"))[17, 4] == person
    smallest = class_mask(image, CocoProtocol(overlap="smallest"))
    assert smallest[7, 12] == cat and smallest[4, 5] == dog
    # of the big dog (180) and the cat (30) written in the other order, "last" lets the dog cover the cat
    swapped = read_coco_split(_one_image_file(tmp_path / "b", [anns[1], anns[0]]), "val2014").images[0]
    assert class_mask(swapped, CocoProtocol())[7, 12] == dog
    assert class_mask(swapped, CocoProtocol(overlap="smallest"))[7, 12] == cat


def test_equal_areas_under_smallest_on_top_keep_the_one_written_first_as_coco2voc_does(tmp_path):
    anns = [{"category_id": 17, "segmentation": _box(2, 2, 10, 10), "iscrowd": 0, "area": 64.0},
            {"category_id": 18, "segmentation": _box(6, 6, 14, 14), "iscrowd": 0, "area": 64.0}]  # fmt: skip
    image = read_coco_split(_one_image_file(tmp_path, anns), "val2014").images[0]
    assert class_mask(image, CocoProtocol(overlap="smallest"))[8, 8] == 16
    assert class_mask(image, CocoProtocol(overlap="last"))[8, 8] == 17


def test_images_without_annotations_are_kept_or_dropped(synth_coco):
    parsed = read_coco_split(synth_coco, "train2014")
    empty = [im for im in parsed.images if not im.instances]
    assert empty, "the synthetic COCO has images without annotations"
    assert len(parsed.kept(PROTOCOLS["recam"])) == len(parsed.images)
    assert len(parsed.kept(PROTOCOLS["sipe"])) == len(parsed.images) - len(empty)
    assert not class_mask(empty[0], PROTOCOLS["recam"]).any()


def test_a_bad_protocol_value_is_one_line():
    with pytest.raises(CpnError, match="overlap: 'largest' is not one of last, smallest"):
        CocoProtocol(overlap="largest")


def _write(tmp_path, text):
    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2014.json").write_text(text)
    return root


@pytest.mark.parametrize(
    "data, message",
    [
        (None, "COCO annotation file not found"),
        ("{not json", "not a COCO annotation file (JSON error at line 1"),
        ("[]", "not a COCO instances file"),
        ('{"images": [], "categories": []}', "no 'annotations' list"),
        ({"annotations": [{"id": 7, "image_id": 99, "category_id": 1, "segmentation": _box(0, 0, 2, 2)}]},
         "annotation 7: its image_id 99 is not among the file's images"),
        ({"annotations": [{"id": 8, "image_id": 1, "category_id": 12, "segmentation": _box(0, 0, 2, 2)}]},
         "annotation 8: category_id 12 is not among the file's categories (1..90)"),
        ({"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "segmentation": {"size": [5, 5],
                                                                                      "counts": [25]}}]},
         "annotation 9: RLE size [5, 5] differs from its image's [20, 30]"),
        ({"annotations": [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": "x"}]},
         "annotation 10: segmentation is neither polygons nor an RLE"),
    ],
)  # fmt: skip
def test_a_bad_annotation_file_is_one_line_naming_it(tmp_path, data, message):
    if data is None:
        root = tmp_path / "COCO"
        root.mkdir()
    elif isinstance(data, str):
        root = _write(tmp_path, data)
    else:
        base = {"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
                "categories": [{"id": cid, "name": n} for cid, n in COCO_CATEGORIES]}  # fmt: skip
        root = _write(tmp_path, json.dumps({**base, **data}))
    with pytest.raises(CpnError) as err:
        read_coco_split(root, "val2014")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "instances_val2014.json" in str(err.value)


def test_an_empty_segmentation_labels_its_image_draws_nothing_and_is_listed(tmp_path, caplog):
    anns = [{"category_id": 17, "segmentation": [], "iscrowd": 0, "area": 0.0},
            {"category_id": 18, "segmentation": _box(2, 2, 8, 8), "iscrowd": 0, "area": 36.0}]  # fmt: skip
    with caplog.at_level("WARNING"):
        parsed = read_coco_split(_one_image_file(tmp_path, anns), "val2014")
    image = parsed.images[0]
    assert parsed.empty_segmentations == [(1, "COCO_val2014_000000000001")]
    assert "empty segmentation" in caplog.text
    assert image.labels(CocoProtocol(), 80)[15] == 1  # the cat still labels the image
    assert set(np.unique(class_mask(image, CocoProtocol())).tolist()) == {0, 17}


def test_the_hand_drawn_chelsea_polygon_is_a_cat_covering_most_of_the_photo(tmp_path):
    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(CHELSEA, root / "annotations" / "instances_val2014.json")
    parsed = read_coco_split(root, "val2014")
    image = parsed.images[0]
    assert parsed.classes[image.instances[0].cls] == "cat" and image.instances[0].cls == 16
    mask = class_mask(image, PROTOCOLS["recam"])
    assert mask.shape == (300, 451) and 0.7 < (mask == 16).mean() < 0.9
