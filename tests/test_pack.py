"""`cpn pack`, `cpn shards verify|info` and the shard reader, on the synthetic VOC."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpn_dist.data.datasets.voc import read_label_png, read_split, read_xml_objects
from cpn_dist.data.shards.pack import KILL_AFTER_ENV
from cpn_dist.data.shards.reader import read_shard_samples
from tests.conftest import run_cpn

SEGMENTS = ("20", "50")


def pack(voc: Path, out: Path, *extra: str, split: str = "train_aug", check: bool = True):
    return run_cpn("pack", "--voc-root", str(voc), "--split", split, "--out", str(out),
                   "--slic-segments", *SEGMENTS, "--shard-size", "10", *extra, check=check)  # fmt: skip


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def packed(synth_voc, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "shards"
    pack(synth_voc, out, "--workers", "2")
    return out


def test_tar_lists_the_documented_members(packed, synth_voc):
    ids = read_split(synth_voc / "ImageSets/Segmentation/train_aug.txt")
    names = subprocess.run(["tar", "-tf", str(packed / "train_aug-000000.tar")], capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    expected = [f"{key}.{m}" for key in ids[:10] for m in ("jpg", "cls.json", "slic20.png", "slic50.png", "seg.png")]
    assert names == expected
    shards = sorted(p.name for p in packed.glob("*.tar"))
    assert shards == [f"train_aug-{i:06d}.tar" for i in range(-(-len(ids) // 10))]
    with tarfile.open(packed / "train_aug-000001.tar") as tar:
        for info in tar:
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
    meta = json.loads((packed / "meta.json").read_text())
    entry = meta["splits"]["train_aug"]
    assert entry["count"] == len(ids) and sum(s["count"] for s in entry["shards"]) == len(ids)
    assert entry["members"] == ["jpg", "cls.json", "slic20.png", "slic50.png"] and entry["with_seg"] == len(ids)
    assert entry["slic"]["segments"] == [20, 50] and entry["slic"]["compactness"] == 10.0
    assert entry["skipped"] == [] and len(meta["classes"]) == 20
    assert sum(entry["class_counts"].values()) >= len(ids)
    assert all(0.0 < v < 1.0 for v in entry["mean_rgb"])


def test_verify_and_info_pass_on_a_fresh_pack(packed):
    proc = run_cpn("shards", "verify", str(packed), check=True)
    assert "ok train_aug: 32 samples" in proc.stdout and "0 problems" in proc.stdout
    info = run_cpn("shards", "info", str(packed), check=True).stdout
    assert "train_aug" in info and "segments [20, 50]" in info and "aeroplane" in info


def test_reader_returns_the_source_files(packed, synth_voc):
    samples = list(read_shard_samples(packed))
    ids = read_split(synth_voc / "ImageSets/Segmentation/train_aug.txt")
    assert [s["key"] for s in samples] == ids
    for s in samples[:5]:
        key = s["key"]
        original = np.asarray(Image.open(synth_voc / "JPEGImages" / f"{key}.jpg").convert("RGB"))
        assert s["image"].dtype == np.uint8 and np.array_equal(s["image"], original)
        assert np.array_equal(s["seg"], read_label_png(synth_voc / "SegmentationClass" / f"{key}.png"))
        names = read_xml_objects(synth_voc / "Annotations" / f"{key}.xml")
        assert s["labels"].dtype == np.float32 and s["labels"].sum() == len(set(names))
        assert sorted(s["slic"]) == [20, 50]
        for ids_map in s["slic"].values():
            assert ids_map.dtype == np.uint16 and ids_map.shape == original.shape[:2]
            assert np.array_equal(np.unique(ids_map), np.arange(ids_map.max() + 1))  # ids 0..K-1
    # the jpg member holds the original bytes, untouched
    with tarfile.open(packed / "train_aug-000000.tar") as tar:
        data = tar.extractfile(f"{ids[0]}.jpg").read()
    assert data == (synth_voc / "JPEGImages" / f"{ids[0]}.jpg").read_bytes()


def test_killed_pack_resumes_to_the_same_bytes_as_a_clean_pack(packed, synth_voc, tmp_path):
    out = tmp_path / "shards"
    args = ["pack", "--voc-root", str(synth_voc), "--split", "train_aug", "--out", str(out),
            "--slic-segments", *SEGMENTS, "--shard-size", "10", "--workers", "2"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "cpn_dist", *args], capture_output=True, text=True,
                          env={**os.environ, KILL_AFTER_ENV: "1"})  # fmt: skip
    assert proc.returncode == -9  # SIGKILL, in the middle of the second shard
    assert (out / "train_aug-000000.tar").is_file() and not (out / "train_aug-000001.tar").exists()
    assert (out / ".train_aug-000001.tar.partial").is_file() and not (out / "meta.json").exists()
    again = pack(synth_voc, out, "--workers", "2", check=False)  # no --resume: refuses to touch it
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = pack(synth_voc, out, "--resume", "--workers", "1")
    assert "1 kept by --resume" in resumed.stdout
    assert not list(out.glob(".*")), "temporary files and the work folder are removed"
    assert shard_bytes(out) == shard_bytes(packed)  # tars and meta.json, byte for byte


def test_repack_is_byte_identical_and_needs_overwrite(packed, synth_voc, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    refused = pack(synth_voc, out, check=False)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
    pack(synth_voc, out, "--overwrite", "--workers", "1")
    assert shard_bytes(out) == shard_bytes(packed)
    done = pack(synth_voc, out, "--resume")
    assert "already complete" in done.stdout


def test_truncated_jpeg_and_missing_annotation_are_skipped_and_reported(synth_voc, tmp_path):
    voc = tmp_path / "VOC2012"
    shutil.copytree(synth_voc, voc)
    ids = read_split(voc / "ImageSets/Segmentation/train_aug.txt")
    jpg = voc / "JPEGImages" / f"{ids[3]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    (voc / "Annotations" / f"{ids[12]}.xml").unlink()
    out = tmp_path / "shards"
    proc = pack(voc, out, "--workers", "2")
    assert "2 skipped image(s)" in proc.stdout
    assert ids[3] in proc.stdout and "truncated JPEG" in proc.stdout
    assert ids[12] in proc.stdout and "annotation not found" in proc.stdout
    entry = json.loads((out / "meta.json").read_text())["splits"]["train_aug"]
    assert entry["skipped"] == [{"id": ids[3], "reason": "truncated JPEG"},
                                {"id": ids[12], "reason": "annotation not found"}]  # fmt: skip
    assert entry["count"] == len(ids) - 2
    assert [s["count"] for s in entry["shards"]][:2] == [9, 9]
    keys = [s["key"] for s in read_shard_samples(out)]
    assert ids[3] not in keys and ids[12] not in keys and len(keys) == len(ids) - 2
    run_cpn("shards", "verify", str(out), check=True)
    strict = pack(voc, tmp_path / "strict", "--strict", check=False)
    assert strict.returncode == 1 and "2 image(s) skipped (--strict)" in strict.stderr


def test_missing_inputs_fail_at_once_naming_the_path(synth_voc, tmp_path):
    proc = pack(tmp_path / "nowhere", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "nowhere: VOC folder not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = pack(synth_voc, tmp_path / "out", split="no_such_split", check=False)
    assert proc.returncode == 1 and "no_such_split.txt: split list not found" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = run_cpn("shards", "verify", str(tmp_path / "nothing"))
    assert proc.returncode == 1 and "shard folder not found" in proc.stderr


def test_labels_file_and_list_file(synth_voc, tmp_path):
    ids = read_split(synth_voc / "ImageSets/Segmentation/val.txt")[:3]
    lst = tmp_path / "mine.txt"
    lst.write_text("".join(f"/JPEGImages/{i}.jpg {i}\n" for i in ids))  # released list style
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({ids[0]: ["cat", "dog"], ids[1]: [0] * 19 + [1], ids[2]: ["person"]}))
    out = tmp_path / "shards"
    run_cpn("pack", "--voc-root", str(synth_voc), "--split", str(lst), "--out", str(out), "--slic-segments", "30",
            "--labels", str(labels), "--workers", "1", check=True)  # fmt: skip
    samples = list(read_shard_samples(out, split="mine"))
    assert [s["key"] for s in samples] == ids
    assert np.flatnonzero(samples[0]["labels"]).tolist() == [7, 11]  # cat, dog
    assert np.flatnonzero(samples[1]["labels"]).tolist() == [19]
    assert list(samples[0]["slic"]) == [30]


def test_verify_finds_a_damaged_shard(packed, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    shard = out / "train_aug-000002.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if info.name.endswith(".slic50.png") and info.name.startswith(members[0][0].name.split(".")[0]):
                continue  # drop one SLIC map
            if info.name.endswith(".seg.png") and info.name.startswith(members[-1][0].name.split(".")[0]):
                img = Image.new("P", (7, 5))  # a mask of the wrong size
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                data = buf.getvalue()
                info.size = len(data)
            if info.name.endswith((".jpg", ".cls.json")) and info.name.startswith(members[0][0].name.split(".")[0]):
                data = b"{not an image, not json"  # the first sample's image and labels do not decode
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    proc = run_cpn("shards", "verify", str(out))
    assert proc.returncode == 1 and "shard verification failed" in proc.stderr
    assert "missing member slic50.png" in proc.stdout and "seg.png is 7×5" in proc.stdout
    assert "jpg does not decode" in proc.stdout and "cls.json does not decode" in proc.stdout


def test_cli_arguments_are_checked(synth_voc, tmp_path):
    proc = run_cpn("pack", "--voc-root", str(synth_voc), "--split", "train_aug", "--out", str(tmp_path / "o"),
                   "--slic-segments", "1")  # fmt: skip
    assert proc.returncode == 1 and "--slic-segments" in proc.stderr
    assert os.path.exists(synth_voc)


def test_skip_reasons_are_deterministic_and_an_empty_file_is_called_empty(synth_voc, tmp_path):
    voc = tmp_path / "VOC2012"
    shutil.copytree(synth_voc, voc)
    ids = read_split(voc / "ImageSets/Segmentation/train_aug.txt")
    (voc / "JPEGImages" / f"{ids[1]}.jpg").write_bytes(b"")
    (voc / "JPEGImages" / f"{ids[2]}.jpg").write_bytes(b"not an image at all")
    (voc / "Annotations" / f"{ids[4]}.xml").write_bytes(b"")
    metas = []
    for run in ("a", "b"):
        pack(voc, tmp_path / run, "--workers", "2")
        metas.append((tmp_path / run / "meta.json").read_text())
    skipped = {s["id"]: s["reason"] for s in json.loads(metas[0])["splits"]["train_aug"]["skipped"]}
    assert skipped[ids[1]] == "empty file"
    assert skipped[ids[2]] == "unreadable JPEG (cannot identify image file)"
    assert skipped[ids[4]] == "empty annotation file"
    assert metas[0].replace(str(tmp_path / "a"), "OUT") == metas[1].replace(str(tmp_path / "b"), "OUT")
    assert "0x" not in metas[0]


def _one_line(proc) -> str:
    """stdout with line breaks and runs of spaces made single spaces (rich wraps long lines)."""
    return " ".join(proc.stdout.split())


def test_resume_rebuilds_the_missing_and_damaged_shards_of_a_complete_pack_byte_for_byte(packed, synth_voc, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    (out / "train_aug-000001.tar").unlink()
    damaged = out / "train_aug-000002.tar"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: the same size, other bytes
    damaged.write_bytes(bytes(data))
    intact = (out / "train_aug-000000.tar").stat().st_mtime_ns
    resumed = pack(synth_voc, out, "--resume", "--workers", "1")
    assert "rebuilt train_aug-000001.tar, train_aug-000002.tar (2 other shards intact" in _one_line(resumed)
    assert shard_bytes(out) == shard_bytes(packed)  # tars and meta.json, byte for byte
    assert (out / "train_aug-000000.tar").stat().st_mtime_ns == intact  # an intact shard is not rewritten
    assert not list(out.glob(".*"))
    assert "already complete (32 samples, 4 shards intact)" in _one_line(pack(synth_voc, out, "--resume"))


def test_resume_checks_a_pack_without_checksums_by_decoding_it(packed, synth_voc, tmp_path):
    """A split packed before meta.json recorded settings and checksums: its settings are read back from
    its entry, its shards decoded; the damaged ones are rebuilt and meta.json is left as it was."""
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    meta = json.loads((out / "meta.json").read_text())
    entry = meta["splits"]["train_aug"]
    entry.pop("settings", None)
    for shard in entry["shards"]:
        shard.pop("size", None), shard.pop("sha256", None)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    old_meta = (out / "meta.json").read_bytes()
    (out / "train_aug-000000.tar").unlink()
    truncated = out / "train_aug-000003.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    refused = pack(synth_voc, out, "--resume", "--slic-segments", "20", "40", check=False)
    assert refused.returncode == 1 and "--slic-segments: [20, 50] → [20, 40]" in refused.stderr
    resumed = pack(synth_voc, out, "--resume", "--workers", "1")
    assert "rebuilt train_aug-000000.tar, train_aug-000003.tar" in _one_line(resumed)
    tars = {k: v for k, v in shard_bytes(packed).items() if k.endswith(".tar")}
    assert shard_bytes(out) == {**tars, "meta.json": old_meta}


def test_resume_refuses_other_settings_in_one_line_naming_them_and_overwrite(packed, synth_voc, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    before = shard_bytes(out)
    for flags, named in ((["--slic-segments", "20", "40"], "--slic-segments: [20, 50] → [20, 40]"),
                         (["--compactness", "5"], "--compactness: 10.0 → 5.0"),
                         (["--shard-size", "5"], "--shard-size: 10 → 5")):  # fmt: skip
        proc = pack(synth_voc, out, "--resume", *flags, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "split train_aug was packed with other settings" in lines[0] and named in lines[0]
        assert "--overwrite" in lines[0]
    assert shard_bytes(out) == before  # nothing rebuilt, nothing deleted
    # an interrupted pack says the same
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-m", "cpn_dist", "pack", "--voc-root", str(synth_voc), "--split",
                           "train_aug", "--out", str(killed), "--slic-segments", *SEGMENTS, "--shard-size", "10",
                           "--workers", "1"], capture_output=True, text=True, env={**os.environ, KILL_AFTER_ENV: "1"})
    assert proc.returncode == -9
    proc = pack(synth_voc, killed, "--resume", "--slic-segments", "20", "40", check=False)
    assert proc.returncode == 1 and "the interrupted pack used other settings" in proc.stderr
    assert "--slic-segments: [20, 50] → [20, 40]" in proc.stderr and "--overwrite" in proc.stderr


def test_verify_reports_a_shard_whose_bytes_changed_since_the_pack(packed, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    shard = out / "train_aug-000001.tar"
    with tarfile.open(shard) as tar:
        jpg = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    data = bytearray(shard.read_bytes())
    data[jpg.offset_data + jpg.size - 3] ^= 0x01  # a bit of JPEG entropy data: the image still decodes
    shard.write_bytes(bytes(data))
    proc = run_cpn("shards", "verify", str(out))
    assert proc.returncode == 1 and "train_aug-000001.tar" in proc.stdout
    assert "checksum differs from the one recorded when it was packed" in " ".join(proc.stdout.split())
