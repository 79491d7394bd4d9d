"""MS COCO end to end (issue 21): the packaged COCO configs trained on packed COCO shards, CAMs and their
scores over 81 classes; `cpn pipeline` on a COCO folder (its VOC-layout view, the CRF route, compact CAMs);
skimage's chelsea photo through pack, infer and eval; `cpn demo --coco-root`. One tiny synthetic COCO is
packed once for the module."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cpn_dist.data.datasets.info import coco, read_folder_dataset
from cpn_dist.data.datasets.voc import read_label_png, read_split
from cpn_dist.data.synth.coco import synthesize_coco
from cpn_dist.labels.cams import load_cams
from cpn_dist.pipeline import STAGE2, STEPS, TABLE, Pipeline, load_pipeline_config
from tests.conftest import ROOT, run_cpn
from tests.test_pipeline import TINY_SEGMENTATION
from tests.train_support import tiny_config

CHELSEA = ROOT / "tests" / "reference" / "chelsea_instances.json"  # skimage's cat, outlined by hand
CAT = 15  # COCO id 17 → class 16 → CAM key 15
# coco_cpn_paper as shipped, on the tiny backbone and 48-px crops
TINY_CPN = ("model.backbone=tiny", "model.weights=null", "data.crop=48", "data.scale_range=[44, 52]",
            "data.patch.segments=30", "data.workers=0", "train.max_steps=2")  # fmt: skip


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """40 synthetic COCO images at 48 px: 32 train2014 (crowds, overlaps, RLEs, images without annotations),
    8 val2014."""
    return synthesize_coco(tmp_path_factory.mktemp("coco") / "COCO", 40, size=48, seed=1)


@pytest.fixture(scope="module")
def trained(coco_root, tmp_path_factory):
    """train2014 packed by `cpn pack --coco-root`, and coco_cpn_paper trained 2 steps on it (global batch 16)."""
    root = tmp_path_factory.mktemp("trained")
    run_cpn("pack", "--coco-root", str(coco_root), "--split", "train2014", "--out", str(root / "shards"),
            "--slic-segments", "30", "--shard-size", "16", "--workers", "1", check=True)  # fmt: skip
    proc = run_cpn("train", "--config", "coco_cpn_paper", *TINY_CPN, f"data.shards={root / 'shards'}",
                   f"output.dir={root / 'run'}", check=True)  # fmt: skip
    return {"root": root, "shards": root / "shards", "weights": root / "run" / "model_final.pth", "log": proc}


def test_coco_cpn_paper_trains_on_coco_shards_and_its_cams_score_81_classes_with_cocos_names(trained, tmp_path):
    from cpn_dist.models.weights import read_weights

    meta = read_weights(trained["weights"])[1]
    assert meta["dataset"] == coco().to_json() and meta["config"]["batch"]["global_size"] == 16
    assert meta["config"]["optim"]["warmup_epochs"] == 0.5 and meta["config"]["optim"]["lr_scaling"] == "none"
    cams = tmp_path / "cams"
    run_cpn("infer", "--checkpoint", str(trained["weights"]), "--shards", str(trained["shards"]), "--split",
            "train2014", "--out", str(cams), "--scales", "1.0", "--loader-threads", "0", check=True)  # fmt: skip
    names = sorted(p.stem for p in cams.glob("*.npy"))
    assert len(names) == 32 and read_folder_dataset(cams) == coco()
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "scores.json"
    proc = run_cpn("eval", "--cams", str(cams), "--gt", str(trained["shards"]), "--split", "train2014", "--list",
                   str(tmp_path / "list.txt"), "--workers", "1", "--json", str(out), check=True)  # fmt: skip
    scores = json.loads(out.read_text())
    assert scores["classes"] == list(coco().classes) and len(scores["iou"]) == 81
    assert scores["betas"][0] == pytest.approx(0.01) and scores["mean"] == "present"  # the sweep off VOC
    averaged = set(scores["best"]["averaged"])
    assert "background" in averaged and averaged <= set(coco().classes) and len(averaged) > 2
    assert any(name in proc.stdout for name in averaged - {"background"})  # the table names COCO's classes
    assert 0.0 <= scores["best"]["miou"] <= 1.0


def test_the_chelsea_photo_goes_through_pack_infer_and_eval_as_a_cat(trained, tmp_path):
    from skimage import data

    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    Image.fromarray(data.chelsea()).save(root / "val2014" / "chelsea.jpg", quality=90)
    shutil.copy(CHELSEA, root / "annotations" / "instances_val2014.json")
    shards = tmp_path / "shards"
    run_cpn("pack", "--coco-root", str(root), "--split", "val2014", "--out", str(shards), "--slic-segments", "30",
            "--workers", "1", check=True)  # fmt: skip
    cams = tmp_path / "cams"
    run_cpn("infer", "--checkpoint", str(trained["weights"]), "--shards", str(shards), "--out", str(cams),
            "--scales", "0.25", "--loader-threads", "0", check=True)  # fmt: skip
    maps = load_cams(cams / "chelsea.npy", 80)
    assert sorted(maps) == [CAT] and maps[CAT].shape == (300, 451)  # only the labelled class, at full size
    (tmp_path / "list.txt").write_text("chelsea\n")
    out = tmp_path / "scores.json"
    run_cpn("eval", "--cams", str(cams), "--gt", str(shards), "--list", str(tmp_path / "list.txt"), "--betas",
            "0.0,0.3,1.0", "--workers", "1", "--json", str(out), check=True)  # fmt: skip
    scores = json.loads(out.read_text())
    assert set(scores["best"]["averaged"]) == {"background", "cat"} and scores["classes"][CAT + 1] == "cat"
    # β = 1 leaves the photo background: the cat (about 80 % of it) scores 0, the background its share
    cat, background = scores["iou"]["cat"][2], scores["iou"]["background"][2]
    assert cat == 0.0 and 0.1 < background < 0.3 and scores["averaged"][2] == 2
    assert scores["miou"][2] == pytest.approx(background / 2)


# ---- cpn pipeline on a COCO folder ------------------------------------------------------------------------
def _pipeline_config(tmp, coco_root, *extra: str):
    """pipeline_coco as shipped, made tiny: the tiny CPN and DeepLab, one scale, 2 steps each."""
    cpn = tiny_config(tmp / "cpn.yaml", tmp / "unused", train={"max_steps": 2})
    (tmp / "segmentation.yaml").write_text(json.dumps(TINY_SEGMENTATION))
    return load_pipeline_config("pipeline_coco", [
        f"coco_root={coco_root}", f"work_dir={tmp / 'work'}", f"shards={tmp / 'work' / 'shards'}",
        f"configs.cpn={cpn}", f"configs.segmentation={tmp / 'segmentation.yaml'}", "pack.segments=[20]",
        "pack.shard_size=16", "cams.scales=[1.0]", "workers=1", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def coco_pipeline(coco_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coco_pipeline")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Pipeline(_pipeline_config(tmp, coco_root)).run()
    finally:
        torch.set_num_threads(threads)
    return {"tmp": tmp, "work": tmp / "work", "result": result}


def test_the_pipeline_runs_end_to_end_on_a_coco_folder_through_its_view_and_the_crf_route(coco_pipeline, coco_root):
    work, result = coco_pipeline["work"], coco_pipeline["result"]
    statuses = {r.name: r.status for r in result.steps}
    assert statuses == {"coco_view": "ran", **{s: ("not configured" if s in STAGE2 else "ran") for s in STEPS}}
    view = work / "coco_view"
    train, val = (read_split(view / "ImageSets" / "Segmentation" / f"{s}.txt") for s in ("train2014", "val2014"))
    assert len(train) == 32 and len(val) == 8 and all(n.startswith("COCO_train2014_") for n in train)
    link = view / "JPEGImages" / f"{train[0]}.jpg"
    assert link.is_symlink() and link.resolve() == (coco_root / "train2014" / f"{train[0]}.jpg").resolve()
    assert read_folder_dataset(view / "SegmentationClass") == coco() and read_folder_dataset(work / "cams") == coco()
    # the view's masks are the packed ones
    from cpn_dist.data.shards.reader import read_shard_samples

    packed = {s["key"]: s for s in read_shard_samples(work / "shards")}
    assert sorted(packed) == sorted(train)
    for key in train[:5]:
        assert np.array_equal(read_label_png(view / "SegmentationClass" / f"{key}.png"), packed[key]["seg"])
    meta = json.loads((work / "shards" / "meta.json").read_text())
    assert meta["dataset"] == "coco" and meta["splits"]["train2014"]["protocol"]["name"] == "recam"
    # compact CAMs of train2014 holding exactly each image's labelled classes
    assert {p.stem for p in (work / "cams").glob("*.npz")} == set(train) and not list((work / "cams").glob("*.npy"))
    key = next(k for k in train if packed[k]["labels"].any())
    assert sorted(load_cams(work / "cams" / f"{key}.npz", 80)) == np.flatnonzero(packed[key]["labels"]).tolist()
    # the CRF route: CAM pseudo labels + CRF, then DeepLab on them, scored on val2014 and train2014
    assert {p.stem for p in (work / "pseudo").glob("*.png")} == set(train)
    rows = [(s.stage, s.split) for s in result.scores]
    assert rows == [("CAM", "train2014"), ("CAM pseudo labels + CRF", "train2014"), ("segmentation", "val2014"),
                    ("segmentation + CRF", "val2014"), ("segmentation", "train2014"),
                    ("segmentation + CRF", "train2014")]  # fmt: skip
    cams = json.loads((work / "scores" / "cams.json").read_text())
    assert cams["classes"] == list(coco().classes) and cams["betas"][0] == pytest.approx(0.01)
    assert all(0.0 <= s.miou <= 1.0 for s in result.scores)
    # the view is a --voc-root of the commands: cpn infer reads its labels and classes
    (coco_pipeline["tmp"] / "one.txt").write_text(f"{key}\n")
    run_cpn("infer", "--checkpoint", str(work / "cpn" / "model_final.pth"), "--voc-root", str(view), "--list",
            str(coco_pipeline["tmp"] / "one.txt"), "--out", str(coco_pipeline["tmp"] / "cams"), "--scales", "1.0",
            "--loader-threads", "0", check=True)  # fmt: skip
    assert sorted(load_cams(coco_pipeline["tmp"] / "cams" / f"{key}.npy", 80)) == sorted(load_cams(
        work / "cams" / f"{key}.npz", 80))  # fmt: skip


def test_a_coco_pipeline_rerun_is_done_before_and_another_protocol_remakes_the_view(coco_pipeline, coco_root):
    tmp = coco_pipeline["tmp"]
    again = Pipeline(_pipeline_config(tmp, coco_root)).run()
    assert {r.status for r in again.steps} == {"done before", "not configured"}
    stamp = json.loads((coco_pipeline["work"] / "steps" / "pack.json").read_text())["settings"]
    assert stamp["coco_root"] == str(coco_root) and stamp["coco_protocol"] == "recam" and "voc_root" not in stamp
    sipe = Pipeline(_pipeline_config(tmp, coco_root, "coco_protocol=sipe")).run(only=["coco_view"])
    assert {r.name: r.status for r in sipe.steps}["coco_view"] == "ran"
    view = coco_pipeline["work"] / "coco_view"
    kept = read_split(view / "ImageSets" / "Segmentation" / "train2014.txt")
    labels = json.loads((view / "cls_labels.json").read_text())
    assert 0 < len(kept) < 32 and all(any(labels[k]) for k in kept)  # images without annotations dropped
    assert json.loads((view / "coco_view.json").read_text())["empty"] == "drop"


def test_a_voc_pipeline_keeps_its_table_and_the_data_keys_are_checked_when_the_config_is_read(synth_voc, tmp_path):
    from cpn_dist.config import ConfigError

    voc = load_pipeline_config("pipeline_demo", [f"voc_root={synth_voc}", "weights.cpn=null"])
    assert Pipeline(voc).table is TABLE and "coco_view" not in STEPS
    for overrides, message in (
        (["voc_root=VOC"], "voc_root and coco_root: give one of them"),
        (["coco_root=null"], "voc_root: required: a VOC folder (or coco_root: a COCO 2014 folder)"),
        (["splits.test=test2014"], "splits.test: no test split with coco_root"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_pipeline_config("pipeline_coco", overrides)
    with pytest.raises(ConfigError, match="coco_protocol: only with coco_root"):
        load_pipeline_config("pipeline_voc", ["coco_protocol=sipe"])
    missing = run_cpn("pipeline", "--config", "pipeline_coco", f"coco_root={tmp_path / 'nope'}",
                      f"work_dir={tmp_path / 'work'}", "configs.cpn=demo", "configs.segmentation=demo_segmentation")
    assert one_line(missing) == f"error: {tmp_path / 'nope'}: COCO folder not found"


# ---- cpn demo --coco-root ---------------------------------------------------------------------------------
def test_demo_on_a_coco_folder_compares_the_three_models_over_its_81_classes(coco_root, tmp_path):
    out = tmp_path / "demo"
    tiny = ("train.max_steps=2", "data.workers=0", "data.crop=48", "data.scale_range=[44, 52]")
    proc = run_cpn("demo", "--coco-root", str(coco_root), "--out", str(out), "--eval-images", "8", *tiny, check=True)
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"baseline", "hiding", "cpn"}
    data = results["data"]
    assert data["coco_root"] == str(coco_root.resolve()) and data["dataset"] == "coco" and data["classes"] == 81
    assert data["train_split"] == data["eval_split"] == "train2014" and data["eval_images"] == 8
    for name, row in results["models"].items():
        assert 0.0 <= row["miou"] <= 100.0 and row["body_recall"] is None
        cams = out / "cams" / name
        assert read_folder_dataset(cams) == coco() and len(list(cams.glob("*.npy"))) == 8
    assert "cpn" in proc.stdout and (out / "demo.png").is_file()
    for args, message in (
        (["--coco-root", str(tmp_path / "nope")], f"{tmp_path / 'nope'}: COCO folder not found"),
        (["--coco-root", str(tmp_path)], "instances_train2014.json: COCO annotation file not found"),
    ):  # fmt: skip
        line = one_line(run_cpn("demo", *args, "--out", str(tmp_path / "bad")))
        assert line.startswith("error: ") and message in line
    both = run_cpn("demo", "--coco-root", str(coco_root), "--voc-root", str(tmp_path), "--out", str(tmp_path / "bad"))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert not (tmp_path / "bad").exists()


def test_an_image_missing_from_the_coco_folder_is_left_out_of_the_view_with_a_warning(coco_root, tmp_path, caplog):
    from cpn_dist.data.datasets.coco_protocol import PROTOCOLS
    from cpn_dist.data.datasets.coco_view import plan_view, write_view

    root = tmp_path / "COCO"
    shutil.copytree(coco_root, root)
    gone = sorted((root / "train2014").iterdir())[3]
    gone.unlink()
    plan = plan_view(root, ["train2014"], tmp_path / "view", PROTOCOLS["recam"])
    assert write_view(plan, root) == {"train2014": 31}
    listed = read_split(tmp_path / "view" / "ImageSets" / "Segmentation" / "train2014.txt")
    assert gone.stem not in listed and len(listed) == 31 and gone.stem not in json.loads(
        (tmp_path / "view" / "cls_labels.json").read_text())  # fmt: skip
    assert f"1 image(s) of the annotations not found (e.g. {gone.name})" in caplog.text
