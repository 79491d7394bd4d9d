"""`cpn pack --coco-root`, `cpn coco-masks`, `cpn check-coco`, `cpn synth-coco`, packing on several machines
(`--part` / `--join`), and the class count the data side takes from the shards (VOC 21, COCO 81)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpn_dist.data.datasets.coco import CocoProtocol, class_mask, read_coco_split
from cpn_dist.data.datasets.voc import read_label_png
from cpn_dist.data.shards.reader import read_shard_samples
from cpn_dist.errors import CpnError
from tests.conftest import ROOT, run_cpn

CHELSEA = ROOT / "tests" / "reference" / "chelsea_instances.json"


def pack(root: Path, out: Path, *extra: str, split: str = "train2014", check: bool = True):
    return run_cpn("pack", "--coco-root", str(root), "--split", split, "--out", str(out), "--slic-segments", "20",
                   "--shard-size", "5", "--workers", "1", *extra, check=check)  # fmt: skip


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """A 30-image synthetic COCO (24 train, 6 val) made through the CLI: crowds, overlaps, RLEs and images
    without annotations in train2014."""
    out = tmp_path_factory.mktemp("coco") / "COCO"
    run_cpn("synth-coco", "--out", str(out), "--images", "30", "--size", "64", "--seed", "3", check=True)
    return out


@pytest.fixture(scope="module")
def packed(coco, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "shards"
    for split in ("train2014", "val2014"):
        pack(coco, out, split=split)
    return out


def test_a_coco_pack_records_the_dataset_and_protocol_and_its_samples_hold_80_labels_and_the_class_masks(coco, packed):
    meta = json.loads((packed / "meta.json").read_text())
    assert meta["dataset"] == "coco" and len(meta["classes"]) == 80 and meta["classes"][15] == "cat"
    assert sorted(meta["splits"]) == ["train2014", "val2014"]
    for split, entry in meta["splits"].items():
        assert entry["protocol"] == {"name": "recam", "crowd_labels": True, "crowd_mask": "background",
                                     "overlap": "last", "empty": "keep"}  # fmt: skip
        assert entry["settings"]["overlap"] == "last" and len(entry["class_counts"]) == 80
        parsed = read_coco_split(coco, split)
        assert entry["count"] == entry["with_seg"] == len(parsed.images)  # recam keeps every image
        samples = list(read_shard_samples(packed, split=split))
        assert [s["key"] for s in samples] == [im.key for im in parsed.images]
        for sample, image in zip(samples, parsed.images):
            assert sample["labels"].shape == (80,) and sample["labels"].tolist() == image.labels(CocoProtocol(), 80)
            np.testing.assert_array_equal(sample["seg"], class_mask(image, CocoProtocol()))
        assert sum(entry["class_counts"].values()) == sum(s["labels"].sum() for s in samples)
    with open(next(packed.glob("train2014-*.tar")), "rb") as fh:  # cls.json as stored: 80 values
        import tarfile

        with tarfile.open(fileobj=fh) as tar:
            cls = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".cls.json"))).read())
    assert len(cls) == 80 and set(cls) <= {0, 1}


def test_verify_and_info_work_on_a_coco_pack(packed):
    proc = run_cpn("shards", "verify", str(packed), check=True)
    assert "ok train2014: 24 samples" in proc.stdout and "ok val2014: 6 samples" in proc.stdout
    info = " ".join(run_cpn("shards", "info", str(packed), check=True).stdout.split())
    assert "dataset coco (81 classes with background)" in info and "toothbrush" in info
    assert "recam (crowd labels: yes, crowd pixels: background, overlaps: last on top" in info


def _pack_in_process(root: Path, out: Path, protocol: CocoProtocol):
    from cpn_dist.data.shards.pack import pack_coco_split

    pack_coco_split(root, "train2014", out, protocol=protocol, segments=(20,), shard_size=50)
    return {s["key"]: s for s in read_shard_samples(out)}


def test_each_protocol_choice_changes_what_it_names_in_the_packed_masks_and_labels(coco, tmp_path):
    images = {im.key: im for im in read_coco_split(coco, "train2014").images}
    default = _pack_in_process(coco, tmp_path / "recam", CocoProtocol())
    changed = {
        "crowd_labels": CocoProtocol(crowd_labels=False),
        "crowd_mask ignore": CocoProtocol(crowd_mask="ignore"),
        "crowd_mask class": CocoProtocol(crowd_mask="class"),
        "overlap": CocoProtocol(overlap="smallest"),
        "empty": CocoProtocol(empty="drop"),
    }
    for i, (what, protocol) in enumerate(changed.items()):
        samples = _pack_in_process(coco, tmp_path / f"p{i}", protocol)
        for key, sample in samples.items():  # every sample is what the protocol makes of its annotations
            assert sample["labels"].tolist() == images[key].labels(protocol, 80), (what, key)
            np.testing.assert_array_equal(sample["seg"], class_mask(images[key], protocol))
        labels_differ = [k for k in samples if (samples[k]["labels"] != default[k]["labels"]).any()]
        masks_differ = [k for k in samples if (samples[k]["seg"] != default[k]["seg"]).any()]
        if what == "crowd_labels":
            assert labels_differ and not masks_differ
        elif what == "empty":
            empty = {k for k, im in images.items() if not im.instances}
            assert empty and set(samples) == set(default) - empty and not labels_differ and not masks_differ
        else:
            assert masks_differ and not labels_differ, what
            if what == "crowd_mask ignore":
                assert all((samples[k]["seg"] == 255).any() for k in masks_differ)


def test_resume_with_another_protocol_is_refused_in_one_line_naming_the_flags(coco, packed, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    before = folder_bytes(out)
    line = one_line(pack(coco, out, "--resume", "--overlap", "smallest", check=False))
    assert "split train2014 was packed with other settings (--overlap: last → smallest)" in line
    assert "--overwrite" in line
    line = one_line(pack(coco, out, "--resume", "--coco-protocol", "toco", check=False))
    assert "--crowd-mask: background → class" in line and "--empty: keep → drop" in line
    assert folder_bytes(out) == before
    assert "already complete" in pack(coco, out, "--resume").stdout


def test_a_missing_or_unreadable_image_is_skipped_and_listed(coco, tmp_path):
    root = tmp_path / "COCO"
    shutil.copytree(coco, root)
    images = read_coco_split(root, "train2014").images
    (root / "train2014" / images[2].file_name).unlink()
    (root / "train2014" / images[7].file_name).write_bytes(b"")
    proc = pack(root, tmp_path / "shards")
    assert "2 skipped image(s)" in proc.stdout and images[2].key in proc.stdout
    entry = json.loads((tmp_path / "shards" / "meta.json").read_text())["splits"]["train2014"]
    assert entry["skipped"] == [{"id": images[2].key, "reason": "image not found"},
                                {"id": images[7].key, "reason": "empty file"}]  # fmt: skip
    assert entry["count"] == len(images) - 2
    strict = pack(root, tmp_path / "strict", "--strict", check=False)
    assert strict.returncode == 1 and "2 image(s) skipped (--strict)" in strict.stderr


def test_a_bad_annotation_file_or_a_missing_image_folder_is_one_line_and_writes_nothing(coco, tmp_path):
    root = tmp_path / "COCO"
    shutil.copytree(coco, root)
    (root / "annotations" / "instances_val2014.json").write_text("{not json")
    line = one_line(pack(root, tmp_path / "a", split="val2014", check=False))
    assert "instances_val2014.json: not a COCO annotation file (JSON error at line 1" in line
    shutil.rmtree(root / "train2014")
    line = one_line(pack(root, tmp_path / "b", check=False))
    assert "train2014: COCO image folder not found" in line
    line = one_line(pack(tmp_path / "nowhere", tmp_path / "c", check=False))
    assert "nowhere: COCO folder not found" in line
    assert not any((tmp_path / d).exists() for d in "abc")


def test_the_chelsea_photo_packs_to_one_sample_labelled_cat(tmp_path):
    from skimage import data

    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    Image.fromarray(data.chelsea()).save(root / "val2014" / "chelsea.jpg", quality=90)
    shutil.copy(CHELSEA, root / "annotations" / "instances_val2014.json")
    pack(root, tmp_path / "shards", split="val2014")
    [sample] = list(read_shard_samples(tmp_path / "shards"))
    assert sample["key"] == "chelsea" and np.flatnonzero(sample["labels"]).tolist() == [15]  # class 16 - 1
    assert sample["seg"].shape == (300, 451) and set(np.unique(sample["seg"]).tolist()) == {0, 16}
    assert 0.7 < (sample["seg"] == 16).mean() < 0.9


def test_coco_masks_writes_the_packed_masks_as_pngs_with_the_dataset_and_the_list(coco, packed, tmp_path):
    out = tmp_path / "gt"
    proc = run_cpn("coco-masks", "--coco-root", str(coco), "--split", "train2014", "--out", str(out), "--workers",
                   "2", check=True)  # fmt: skip
    assert "24 masks of train2014 (24 written, 0 kept)" in proc.stdout
    samples = list(read_shard_samples(packed, split="train2014"))
    assert (out / "train2014.txt").read_text().split() == [s["key"] for s in samples]
    for s in samples:
        np.testing.assert_array_equal(read_label_png(out / f"{s['key']}.png"), s["seg"])
    assert Image.open(out / f"{samples[0]['key']}.png").mode == "P"
    assert json.loads((out / "dataset.json").read_text())["name"] == "coco"
    (out / f"{samples[3]['key']}.png").unlink()  # a stopped run: the missing masks are written, the rest kept
    again = run_cpn("coco-masks", "--coco-root", str(coco), "--split", "train2014", "--out", str(out), check=True)
    assert "(1 written, 23 kept)" in again.stdout
    line = one_line(run_cpn("coco-masks", "--coco-root", str(coco), "--split", "train2014", "--out", str(out),
                            "--empty", "drop"))  # fmt: skip
    assert "holds masks made otherwise (--empty: keep → drop)" in line and "--overwrite" in line


def test_check_coco_passes_a_good_folder_and_lists_each_problem_of_a_damaged_one(coco, tmp_path):
    good = run_cpn("check-coco", str(coco), check=True)
    assert "ok: 30 images of train2014, val2014" in good.stdout
    root = tmp_path / "COCO"
    shutil.copytree(coco, root)
    images = read_coco_split(root, "train2014").images
    (root / "train2014" / images[0].file_name).unlink()
    (root / "train2014" / images[1].file_name).write_bytes(b"not an image")
    Image.new("RGB", (10, 10)).save(root / "train2014" / images[2].file_name)
    val = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    val["annotations"][0]["segmentation"] = []
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
    proc = run_cpn("check-coco", str(root))
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1 and "3 problem(s) in train2014" in proc.stderr
    assert f"{images[0].file_name} │ image not found" in out and "unreadable image" in out
    assert f"image is 10×10, the annotations say {images[2].width}×{images[2].height}" in out
    assert "val2014: 1 warning(s)" in out and "empty segmentation" in out
    missing = run_cpn("check-coco", str(tmp_path / "nowhere"))
    assert "nowhere: COCO folder not found" in one_line(missing)


def test_synth_coco_refuses_a_folder_that_is_not_empty(coco):
    line = one_line(run_cpn("synth-coco", "--out", str(coco), "--images", "4"))
    assert "folder exists and is not empty (use --overwrite" in line


@pytest.mark.parametrize("separate", [False, True], ids=["one shared folder", "a folder per part"])
def test_parts_packed_apart_and_joined_equal_a_one_machine_pack_byte_for_byte(coco, packed, tmp_path, separate):
    one = tmp_path / "one"
    pack(coco, one)  # 24 images, 5 per shard: shards 0..4
    joined = tmp_path / "joined"
    part_out = [tmp_path / "part0", tmp_path / "part1"] if separate else [joined, joined]
    first = pack(coco, part_out[0], "--part", "0/2")
    assert "part 0/2 of split train2014: 3 shards" in " ".join(first.stdout.split())
    assert not (part_out[0] / "meta.json").exists()
    early = pack(coco, part_out[0], "--join", *(["--parts-from", str(part_out[0])] if separate else []), check=False)
    line = one_line(early)
    assert "cannot join split train2014: 2 of 5 shards not ready (train2014-000001.tar not packed" in line
    pack(coco, part_out[1], "--part", "1/2")
    parts_from = ["--parts-from", *map(str, part_out)] if separate else []
    proc = pack(coco, joined, "--join", *parts_from)
    assert "joined train2014" in proc.stdout
    assert folder_bytes(joined) == folder_bytes(one)  # every shard and meta.json, byte for byte
    assert not list(joined.glob(".*"))  # the parts' statistics are gone with the join


def test_a_part_resumes_its_own_shards_and_parts_with_other_settings_are_refused(coco, tmp_path):
    out = tmp_path / "shards"
    pack(coco, out, "--part", "1/2")
    (out / "train2014-000003.tar").unlink()
    resumed = pack(coco, out, "--part", "1/2", "--resume")
    assert "2 shards (train2014-000001.tar, train2014-000003.tar; 1 written, 1 kept by --resume)" in resumed.stdout
    line = one_line(pack(coco, out, "--part", "0/2", "--overlap", "smallest", check=False))
    assert "the other parts of this pack used other settings (--overlap: last → smallest)" in line
    line = one_line(pack(coco, out, "--part", "2/2", check=False))
    assert "--part 2/2: expected i/N with 0 <= i < N" in line


def test_a_folder_holds_one_dataset(coco, packed, synth_voc, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    line = one_line(run_cpn("pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(out),
                            "--slic-segments", "20"))  # fmt: skip
    assert "the folder holds coco splits (81 classes); pack voc (21 classes) into another --out folder" in line


def test_a_voc_meta_json_gains_only_the_dataset_key(synth_voc, tmp_path):
    run_cpn("pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(tmp_path / "voc"),
            "--slic-segments", "20", "--workers", "1", check=True)  # fmt: skip
    meta = json.loads((tmp_path / "voc" / "meta.json").read_text())
    assert list(meta) == ["format", "format_version", "dataset", "classes", "splits", "tool"]
    assert meta["dataset"] == "voc" and len(meta["classes"]) == 20
    entry = meta["splits"]["val"]
    assert list(entry) == ["count", "shards", "members", "with_seg", "slic", "mean_rgb", "class_counts", "source",
                           "shard_size", "skipped", "settings"]  # fmt: skip
    assert list(entry["source"]) == ["voc_root", "list", "listed", "labels", "masks"]
    assert list(entry["settings"]) == ["split", "list_sha256", "segments", "compactness", "shard_size", "labels",
                                       "masks", "skimage"]  # fmt: skip


def test_the_data_side_takes_the_class_count_from_the_shards(packed, synth_voc, tmp_path):
    from cpn_dist.config import load_config
    from cpn_dist.data.inputs import ShardSource
    from cpn_dist.data.loading.train_sample import TrainSampleMaker
    from cpn_dist.data.shards.reader import iter_raw_samples, resolve_shards, shards_dataset

    data = load_config(None, [f"data.shards={packed}", "data.split=train2014", "data.crop=32",
                              "data.scale_range=[32,48]", "data.patch.segments=20"]).data  # fmt: skip
    dataset = shards_dataset(data)
    assert dataset.name == "coco" and dataset.num_classes == 81 and dataset.classes[16] == "cat"
    assert shards_dataset(packed) == dataset == resolve_shards(str(packed), "train2014").dataset
    assert shards_dataset(next(packed.glob("val2014-*.tar"))) == dataset  # one tar: the meta.json beside it
    maker = TrainSampleMaker.from_config(data, seed=0, epoch=0)
    raw = next(iter_raw_samples(resolve_shards(str(packed), "train2014").urls))
    assert maker(raw)["labels"].shape == (80,)
    source = ShardSource(packed, "val2014")
    assert source.dataset == dataset and all(s.labels.shape == (80,) for s in source.samples(image=False, gt=True))
    run_cpn("pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(tmp_path / "voc"),
            "--slic-segments", "20", "--workers", "1", check=True)  # fmt: skip
    assert shards_dataset(tmp_path / "voc").num_classes == 21
    # a VOC decoder given COCO labels fails naming the member, not silently
    with pytest.raises(CpnError, match=r"cls\.json does not decode \(cls\.json must be a list of 20 values"):
        TrainSampleMaker(data, data.patch, 0, 0, num_foreground=20)(raw)


def test_commands_of_coco_data_import_no_torch(coco, packed, tmp_path):
    from tests.test_cli_checks import watch

    runs = [
        ["synth-coco", "--out", str(tmp_path / "c"), "--images", "3", "--size", "48"],
        ["check-coco", str(coco), "--workers", "1"],
        ["coco-masks", "--coco-root", str(coco), "--split", "val2014", "--out", str(tmp_path / "gt"), "--workers", "1"],
        ["pack", "--coco-root", str(coco), "--split", "val2014", "--out", str(tmp_path / "s"), "--slic-segments", "20",
         "--part", "0/2", "--workers", "1"],
        ["shards", "verify", str(packed)],
    ]  # fmt: skip
    for args in runs:
        _, torch_imported = watch(*args)
        assert not torch_imported, f"cpn {' '.join(args)} imported torch"


def test_a_protocol_flag_without_coco_root_and_labels_with_it_are_one_line(coco, synth_voc, tmp_path):
    line = one_line(run_cpn("pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(tmp_path / "a"),
                            "--overlap", "smallest"))  # fmt: skip
    assert "--overlap: a COCO protocol flag; give it with --coco-root" in line
    line = one_line(pack(coco, tmp_path / "b", "--labels", str(tmp_path / "l.json"), check=False))
    assert "--labels: VOC only" in line

