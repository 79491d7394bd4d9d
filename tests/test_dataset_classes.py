"""Every stage on the dataset's C classes (issue 21): models built for COCO's 81 from the shards, weights that
record their classes, CAM and label folders of 81 classes read by every command, the mean IoU over the classes
present, and the compact CAM store read by every reader."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cpn_dist.config import load_config
from cpn_dist.data.datasets.info import FOLDER_FILE, coco, read_folder_dataset, voc
from cpn_dist.data.datasets.voc import read_label_png, read_split, save_label_png
from cpn_dist.errors import CpnError
from cpn_dist.labels.betas import parse_betas
from cpn_dist.labels.cam_store import load_compact, save_compact
from cpn_dist.labels.cams import load_cams, save_cams
from cpn_dist.labels.evaluate import sweep
from tests.conftest import run_cpn
from tests.train_support import pack_shards, tiny_config

CAT, TOOTHBRUSH = 15, 79  # COCO CAM keys: class 16 (COCO id 17) and the last class, 80 (id 90)


def _coco_shards(folder):
    """A folder whose meta.json records COCO, as `cpn pack --coco-root` writes it (no split needed here)."""
    folder.mkdir(parents=True)
    meta = {"format": "cpn-shards", "format_version": 1, "dataset": "coco", "classes": list(coco().foreground),
            "splits": {}}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _coco_cams(voc_root, names, out, record=True):
    """COCO CAM files for synthetic VOC images: on each image's first object class the cat (key 15), on the
    others the toothbrush (key 79), 0.45 inside, a ramp below 0.3 outside; and their COCO ground truth
    (16 and 80) under out/../gt. Returns the gt folder."""
    gt_dir = out.parent / f"{out.name}_gt"
    out.mkdir(parents=True)
    gt_dir.mkdir()
    for name in names:
        gt = read_label_png(voc_root / "SegmentationClass" / f"{name}.png")
        classes = sorted(set(np.unique(gt).tolist()) - {0, 255})
        ramp = np.linspace(0.0, 0.3, gt.shape[1], dtype=np.float32)[None].repeat(gt.shape[0], 0)
        cat = np.isin(gt, classes[:1])
        brush = np.isin(gt, classes[1:])
        cams = {CAT: np.where(cat, 0.45, ramp).astype(np.float32)}
        if brush.any():
            cams[TOOTHBRUSH] = np.where(brush, 0.45, ramp[:, ::-1]).astype(np.float32)
        save_cams(out / f"{name}.npy", cams)
        coco_gt = np.where(cat, CAT + 1, np.where(brush, TOOTHBRUSH + 1, gt)).astype(np.uint8)
        save_label_png(coco_gt, gt_dir / f"{name}.png")
    if record:
        (out / FOLDER_FILE).write_text(json.dumps(coco().to_json()))
    return gt_dir


@pytest.fixture(scope="module")
def coco_folder(synth_voc, tmp_path_factory):
    """Four synthetic images with 81-class CAMs (dataset.json: coco), their COCO ground truth and list."""
    root = tmp_path_factory.mktemp("coco_cams")
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:4]
    gt = _coco_cams(synth_voc, names, root / "cams")
    (root / "list.txt").write_text("\n".join(names) + "\n")
    return {"root": root, "cams": root / "cams", "gt": gt, "list": root / "list.txt", "names": names,
            "voc": synth_voc}  # fmt: skip


# ---- models ------------------------------------------------------------------------------------------------
def test_cpn_affinitynet_and_deeplab_are_built_for_81_classes_from_a_coco_like_meta(tmp_path):
    from cpn_dist.affinity.task import AffinityTask
    from cpn_dist.cpn.model import build_model
    from cpn_dist.cpn.task import CPNTask
    from cpn_dist.segmentation.task import SegmentationTask

    shards = [f"data.shards={_coco_shards(tmp_path / 'coco')}"]
    x = torch.randn(2, 3, 40, 40)
    torch.manual_seed(0)
    cpn = CPNTask(load_config("demo", shards)).build_model().eval()
    cam, refined = cpn(x)
    assert cpn.fc8.out_channels == 81 and cam.shape == refined.shape == (2, 81, 40, 40)
    _, released_head = build_model("tiny", "official", num_classes=81).eval()(x)  # the released PRCM: C**-0.5
    assert released_head.shape == (2, 81, 40, 40) and torch.isfinite(released_head).all()
    seg = SegmentationTask(load_config("demo_segmentation", shards)).build_model()
    assert seg.eval()(x).shape == (2, 81, 40, 40)
    # labels up to class 80 train the segmentation model and AffinityNet; 81 names the image
    label = torch.full((2, 40, 40), 255, dtype=torch.long)
    label[:, :16, :16], label[:, 24:, 24:] = 80, 0
    seg_task = SegmentationTask(load_config("demo_segmentation", shards))
    seg_task.prepare_window(seg, [{"label": label, "key": ["a", "b"]}], torch.device("cpu"))
    bad = label.clone()
    bad[1, 30, 30] = 81
    with pytest.raises(CpnError, match=r"b\.png: label value 81 is neither a class 0\.\.80 nor 255"):
        seg_task.prepare_window(seg, [{"label": bad, "key": ["a", "b"]}], torch.device("cpu"))
    aff = AffinityTask(load_config("demo_affinity", [*shards, "model.weights=null"]))
    bg, fg, neg = aff.pairs({"label": label}, torch.device("cpu"))
    assert fg.any() and bg.any() and neg.any()  # class 80 pairs with itself, against background
    # VOC unchanged: a pack that records no dataset builds the released 21 classes
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "meta.json").write_text(json.dumps({"format": "cpn-shards", "splits": {}}))
    assert CPNTask(load_config("demo", [f"data.shards={tmp_path / 'voc'}"])).build_model().fc8.out_channels == 21


# ---- weights ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_weights(tmp_path_factory):
    """A tiny 81-class CPN's weights as training writes them on COCO shards, and the same without a record."""
    from cpn_dist.cpn.model import build_model
    from cpn_dist.training.checkpoint import save_weights
    from cpn_dist.training.run_start import weights_metadata

    root = tmp_path_factory.mktemp("coco_weights")
    cfg = load_config("demo", [f"data.shards={_coco_shards(root / 'shards')}"])
    torch.manual_seed(0)
    state = build_model("tiny", "paper", num_classes=81).state_dict()
    save_weights(state, root / "coco.pth", metadata=weights_metadata(cfg))
    torch.save(state, root / "plain.pth")  # released-style: records nothing
    return root


def test_weights_record_the_dataset_and_commands_build_its_classes_from_them(coco_weights, synth_voc, tmp_path):
    from cpn_dist.cpn.infer import infer_samples
    from cpn_dist.cpn.model import model_for_weights
    from cpn_dist.data.inputs import Sample
    from cpn_dist.models.weights import read_weights

    recorded = read_weights(coco_weights / "coco.pth")[1]
    assert recorded["dataset"] == coco().to_json()
    for weights in ("coco.pth", "plain.pth"):  # the record; the width of fc8
        model, _, dataset = model_for_weights(coco_weights / weights, "tiny", "paper")
        assert dataset == coco() and model.fc8.out_channels == 81
    check = run_cpn("weights", "check", str(coco_weights / "plain.pth"), "--backbone", "tiny", "--head", "paper",
                    check=True)  # fmt: skip
    assert "81 classes (coco)" in " ".join(check.stdout.split())
    # the library writes 81-class CAM files from (C-1)-vectors of labels
    labels = np.zeros(80, np.float32)
    labels[[CAT, TOOTHBRUSH]] = 1
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    infer_samples(model, [Sample("img", image, labels, None)], tmp_path / "cams", loader_threads=0)
    cams = load_cams(tmp_path / "cams" / "img.npy", 80)
    assert sorted(cams) == [CAT, TOOTHBRUSH] and cams[CAT].shape == (30, 40)
    with pytest.raises(CpnError, match="img: 20 image-level labels, but the model scores 80 object classes"):
        infer_samples(model, [Sample("img", image, labels[:20], None)], tmp_path / "again", loader_threads=0)
    # the command: the classes of the weights, checked against the input's and --dataset
    name = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[0]
    (tmp_path / "list.txt").write_text(name + "\n")
    base = ["infer", "--voc-root", str(synth_voc), "--list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "o")]
    for weights in ("coco.pth", "plain.pth"):
        proc = run_cpn(*base, "--checkpoint", str(coco_weights / weights), "--backbone", "tiny", "--head", "paper")
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "labels of voc (21 classes), but the model scores coco (81 classes)" in proc.stderr
    flag = run_cpn(*base, "--checkpoint", str(coco_weights / "plain.pth"), "--backbone", "tiny", "--head", "paper",
                   "--dataset", "voc")  # fmt: skip
    assert flag.returncode == 1 and len(flag.stderr.strip().splitlines()) == 1
    assert "--dataset voc (21 classes) contradicts" in flag.stderr and "classifier of 81 classes (coco)" in flag.stderr
    assert not (tmp_path / "o").exists()


def test_a_trained_model_records_its_shards_dataset_in_its_weights_and_checkpoints(synth_voc, tmp_path):
    from cpn_dist.models.weights import read_weights

    config = tiny_config(tmp_path / "tiny.yaml", pack_shards(synth_voc, tmp_path / "shards"),
                         train={"max_steps": 2, "checkpoint_every": 2})  # fmt: skip
    run_cpn("train", "--config", str(config), f"output.dir={tmp_path / 'run'}", check=True)
    assert read_weights(tmp_path / "run" / "model_final.pth")[1]["dataset"] == voc().to_json()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["dataset"] == voc().to_json()
    assert read_weights(checkpoint)[1]["dataset"] == voc().to_json()


# ---- evaluation ---------------------------------------------------------------------------------------------
def test_eval_scores_81_classes_with_cocos_names(coco_folder, tmp_path):
    out = tmp_path / "scores.json"
    args = ["eval", "--gt", str(coco_folder["gt"]), "--list", str(coco_folder["list"]), "--betas", "0.3,0.4"]
    run_cpn(*args, "--cams", str(coco_folder["cams"]), "--json", str(out), check=True)
    data = json.loads(out.read_text())
    assert data["classes"] == list(coco().classes) and len(data["iou"]) == 81
    # every object pixel scores 0.45 in its own class and below 0.3 elsewhere: perfect at both β
    assert data["miou"] == pytest.approx([1.0, 1.0]) and data["best"]["iou"]["toothbrush"] == pytest.approx(1.0)
    assert data["mean"] == "present" and set(data["best"]["averaged"]) == {"background", "cat", "toothbrush"}
    # a folder that records nothing: --dataset coco says it; without it the CAM key is no VOC class
    bare = tmp_path / "bare"
    shutil.copytree(coco_folder["cams"], bare)
    (bare / FOLDER_FILE).unlink()
    again = tmp_path / "again.json"
    run_cpn(*args, "--cams", str(bare), "--dataset", "coco", "--json", str(again), check=True)
    assert json.loads(again.read_text())["miou"] == data["miou"]
    wrong = run_cpn(*args, "--cams", str(bare))
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
    assert "is not a class index 0..19" in wrong.stderr and "give --dataset" in wrong.stderr
    contradicted = run_cpn(*args, "--cams", str(coco_folder["cams"]), "--dataset", "voc")
    assert contradicted.returncode == 1 and "records coco (81 classes)" in contradicted.stderr


def _three_class_folder(root):
    """The hand-made 4×5 image of tests/test_evaluate.py: aeroplane and person CAMs, 3 classes present."""
    gt = np.array([[0, 0, 1, 1, 15], [0, 0, 1, 1, 15], [15, 15, 15, 0, 0], [1, 15, 0, 0, 255]], np.uint8)
    plane = np.array([[0.10, 0.25, 0.45, 0.30, 0.00], [0.00, 0.35, 0.50, 0.20, 0.00],
                      [0.00, 0.00, 0.40, 0.00, 0.00], [0.45, 0.00, 0.00, 0.00, 0.90]], np.float32)  # fmt: skip
    person = np.array([[0.00, 0.00, 0.10, 0.30, 0.40], [0.00, 0.00, 0.00, 0.00, 0.45],
                       [0.28, 0.33, 0.35, -0.5, 0.00], [0.00, 0.31, 0.00, 0.00, 0.00]], np.float32)  # fmt: skip
    (root / "cams").mkdir()
    (root / "gt").mkdir()
    save_cams(root / "cams" / "a.npy", {0: plane, 14: person})
    save_label_png(gt, root / "gt" / "a.png")
    (root / "list.txt").write_text("a\n")


def test_the_mean_runs_over_the_classes_present_and_mean_all_over_every_class(tmp_path):
    _three_class_folder(tmp_path)
    at_030 = (7 / 11 + 3 / 7 + 4 / 6)  # IoU at β = 0.3 of background, aeroplane, person (tests/test_evaluate.py)
    args = ["eval", "--cams", str(tmp_path / "cams"), "--gt", str(tmp_path / "gt"), "--list",
            str(tmp_path / "list.txt"), "--betas", "0.3"]  # fmt: skip
    present = run_cpn(*args, "--json", str(tmp_path / "p.json"), check=True)
    every = run_cpn(*args, "--json", str(tmp_path / "a.json"), "--mean", "all", check=True)
    p, a = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "pa")
    assert p["best"]["miou"] == pytest.approx(at_030 / 3) and p["mean"] == "present"
    assert p["best"]["averaged"] == ["background", "aeroplane", "person"] and p["averaged"] == [3]
    assert a["best"]["miou"] == pytest.approx(at_030 / 21) and len(a["best"]["averaged"]) == 21
    assert "mIoU over the 3 of 21 classes present" in present.stdout and "absent: bicycle" in present.stdout
    assert "mIoU over all 21 classes" in every.stdout
    # the library keeps the released mean unless told
    assert sweep(tmp_path / "cams", tmp_path / "gt", ["a"], [0.3]).miou[0] == pytest.approx(at_030 / 21)


def test_with_every_class_present_both_means_are_the_released_number_bit_for_bit(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "cams").mkdir()
    (tmp_path / "gt").mkdir()
    names = []
    for i in range(7):  # three classes per image: all 20 occur in the ground truth
        classes = [(3 * i + k) % 20 for k in range(3)]
        gt = rng.choice([0, *[c + 1 for c in classes], 255], size=(24, 30)).astype(np.uint8)
        save_cams(tmp_path / "cams" / f"i{i}.npy", {c: rng.uniform(-0.5, 0.5, (24, 30)).astype(np.float32)
                                                    for c in classes})  # fmt: skip
        save_label_png(gt, tmp_path / "gt" / f"i{i}.png")
        names.append(f"i{i}")
    betas = parse_betas("0.00:0.50:0.05")
    present = sweep(tmp_path / "cams", tmp_path / "gt", names, betas, mean="present")
    released = sweep(tmp_path / "cams", tmp_path / "gt", names, betas, mean="all")
    assert present.averaged.all() and np.array_equal(present.miou, released.miou)
    assert np.array_equal(released.miou, np.mean(released.iou, axis=-1))  # the released evaluator's mean


# ---- label commands on 81 classes ---------------------------------------------------------------------------
def _label_runs(cams, voc_root, out, list_file, aff_weights, *extra):
    """cpn pseudo / crf / show / affinity-labels / rw over one CAM folder, into out/{command}."""
    common = ["--cams", str(cams), "--list", str(list_file), *extra]
    images = ["--voc-root", str(voc_root)]
    return {
        "pseudo": ["pseudo", *common, "--beta", "0.3", "--out", str(out / "pseudo")],
        "pseudo_crf": ["pseudo", *common, "--beta", "0.3", "--crf", *images, "--out", str(out / "pseudo_crf")],
        "crf": ["crf", *common, "--beta", "0.3", *images, "--out", str(out / "crf")],
        "show": ["show", *common, *images, "--beta", "0.3", "--out", str(out / "show.png")],
        "affinity-labels": ["affinity-labels", *common, *images, "--out", str(out / "affinity")],
        "rw": ["rw", *common, *images, "--checkpoint", str(aff_weights), "--backbone", "tiny", "--out",
               str(out / "rw"), "--logt", "2"],
    }  # fmt: skip


@pytest.fixture(scope="module")
def affinity_weights(tmp_path_factory):
    from cpn_dist.affinity.model import build_affinity_model

    path = tmp_path_factory.mktemp("aff") / "aff.pth"
    torch.manual_seed(0)
    torch.save(build_affinity_model("tiny").state_dict(), path)
    return path


def test_label_commands_read_an_81_class_cam_folder_and_record_its_classes(coco_folder, affinity_weights, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(coco_folder["cams"], bare)
    (bare / FOLDER_FILE).unlink()
    for cams, extra, out in ((coco_folder["cams"], (), tmp_path / "recorded"), (bare, ("--dataset", "coco"),
                                                                                 tmp_path / "flag")):  # fmt: skip
        for args in _label_runs(cams, coco_folder["voc"], out, coco_folder["list"], affinity_weights, *extra).values():
            run_cpn(*args, check=True)
        for name in coco_folder["names"]:
            gt = read_label_png(coco_folder["gt"] / f"{name}.png")
            pseudo = read_label_png(out / "pseudo" / f"{name}.png")
            np.testing.assert_array_equal(pseudo[gt != 255], gt[gt != 255])  # perfect at β 0.3
            crf = load_cams(out / "crf" / f"{name}.npy", 81)  # {0: background, c + 1: class c}
            assert CAT + 1 in crf and set(crf) <= {0, CAT + 1, TOOTHBRUSH + 1}
            for folder in ("pseudo_crf", "affinity", "rw"):
                assert set(np.unique(read_label_png(out / folder / f"{name}.png"))) <= {0, CAT + 1, TOOTHBRUSH + 1,
                                                                                        255}  # fmt: skip
        assert (out / "show.png").read_bytes()[:4] == b"\x89PNG"
        for folder in ("pseudo", "pseudo_crf", "crf", "affinity", "rw"):
            assert read_folder_dataset(out / folder) == coco(), folder
    labelled = np.concatenate([read_label_png(tmp_path / "recorded" / "rw" / f"{n}.png").ravel()
                               for n in coco_folder["names"]])  # fmt: skip
    assert TOOTHBRUSH + 1 in labelled and CAT + 1 in labelled
    refused = run_cpn("pseudo", "--cams", str(bare), "--beta", "0.3", "--out", str(tmp_path / "voc_pseudo"))
    assert refused.returncode == 1 and "is not a class index 0..19" in refused.stderr


# ---- the compact store --------------------------------------------------------------------------------------
def test_every_reader_gives_from_compact_files_what_it_gives_from_the_equivalent_npy(coco_folder, affinity_weights,
                                                                                      tmp_path):  # fmt: skip
    compact, decoded = tmp_path / "compact", tmp_path / "decoded"
    compact.mkdir()
    decoded.mkdir()
    for folder in (compact, decoded):
        shutil.copy(coco_folder["cams"] / FOLDER_FILE, folder)
    for name in coco_folder["names"]:
        save_compact(compact / f"{name}.npz", load_cams(coco_folder["cams"] / f"{name}.npy", 80), stride=4)
        save_cams(decoded / f"{name}.npy", load_compact(compact / f"{name}.npz"))  # what the .npz holds, as .npy
    assert not list(compact.glob("*.npy"))
    outs = {}
    for cams in (compact, decoded):
        out = tmp_path / f"out_{cams.name}"
        for args in _label_runs(cams, coco_folder["voc"], out, coco_folder["list"], affinity_weights).values():
            run_cpn(*args, check=True)
        run_cpn("eval", "--cams", str(cams), "--gt", str(coco_folder["gt"]), "--list", str(coco_folder["list"]),
                "--json", str(out / "eval.json"), check=True)  # fmt: skip
        outs[cams.name] = out
    a, b = outs["compact"], outs["decoded"]
    assert json.loads((a / "eval.json").read_text()) == json.loads((b / "eval.json").read_text())
    for name in coco_folder["names"]:
        for folder in ("pseudo", "pseudo_crf", "affinity", "rw"):
            np.testing.assert_array_equal(read_label_png(a / folder / f"{name}.png"),
                                          read_label_png(b / folder / f"{name}.png"), err_msg=folder)  # fmt: skip
        crf_a, crf_b = load_cams(a / "crf" / f"{name}.npy", 81), load_cams(b / "crf" / f"{name}.npy", 81)
        assert crf_a.keys() == crf_b.keys() and all(np.array_equal(crf_a[k], crf_b[k]) for k in crf_a)
    np.testing.assert_array_equal(np.asarray(Image.open(a / "show.png")), np.asarray(Image.open(b / "show.png")))
    # within its quantisation, the compact files score what the full-resolution float32 ones do
    full = sweep(coco_folder["cams"], coco_folder["gt"], coco_folder["names"], [0.3], dataset=coco(), mean="present")
    assert json.loads((a / "eval.json").read_text())["best"]["miou"] == pytest.approx(full.miou[0], abs=0.05)


def test_infer_format_compact_writes_npz_files_that_decode_to_the_released_maps(synth_voc, tmp_path):
    from cpn_dist.cpn.model import build_model
    from cpn_dist.labels.cam_store import decode_cams, encode_cams

    torch.manual_seed(0)
    torch.save(build_model("tiny", "official").state_dict(), tmp_path / "cpn.pth")
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:3]
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    base = ["infer", "--checkpoint", str(tmp_path / "cpn.pth"), "--backbone", "tiny", "--head", "official",
            "--voc-root", str(synth_voc), "--list", str(tmp_path / "list.txt"), "--scales", "1.0"]  # fmt: skip
    run_cpn(*base, "--out", str(tmp_path / "released"), check=True)
    run_cpn(*base, "--out", str(tmp_path / "compact"), "--format", "compact", "--compact-stride", "2", check=True)
    assert sorted(p.name for p in (tmp_path / "compact").iterdir()) == sorted([FOLDER_FILE, *(f"{n}.npz" for n in
                                                                                               names)])  # fmt: skip
    assert read_folder_dataset(tmp_path / "compact") == read_folder_dataset(tmp_path / "released") == voc()
    for name in names:
        released = load_cams(tmp_path / "released" / f"{name}.npy")
        expected = decode_cams(encode_cams(released, 2, "uint8"))
        got = load_cams(tmp_path / "compact" / f"{name}.npz")
        assert got.keys() == released.keys() and all(np.allclose(got[k], expected[k], atol=1e-6) for k in got)
    # re-inferred in the released format, the folder holds no stale .npz that a reader could take instead
    run_cpn(*base, "--out", str(tmp_path / "compact"), "--overwrite", check=True)
    assert not list((tmp_path / "compact").glob("*.npz")) and len(list((tmp_path / "compact").glob("*.npy"))) == 3
    wrong = run_cpn(*base, "--out", str(tmp_path / "x"), "--compact-stride", "2")
    assert wrong.returncode == 1 and "--compact-stride and --compact-dtype go with --format compact" in wrong.stderr


def test_the_pipelines_cams_step_writes_the_compact_store_and_scores_average_as_mean_iou_says(synth_voc, tmp_path):
    import yaml

    from cpn_dist.cpn.model import build_model
    from cpn_dist.pipeline import Pipeline, load_pipeline_config

    torch.manual_seed(0)
    torch.save(build_model("tiny", "official").state_dict(), tmp_path / "cpn.pth")
    cpn = tiny_config(tmp_path / "cpn.yaml", tmp_path / "unused")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "voc_root": str(synth_voc), "work_dir": str(tmp_path / "work"), "configs": {"cpn": str(cpn)},
        "splits": {"train": "val", "eval": "val"}, "weights": {"cpn": str(tmp_path / "cpn.pth")},
        "cams": {"scales": [1.0], "betas": "0.0:0.6:0.1", "format": "compact"}, "workers": 1}))  # fmt: skip
    Pipeline(load_pipeline_config(config)).run(only=["cams", "eval_cams"])
    cams = tmp_path / "work" / "cams"
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")
    assert sorted(p.stem for p in cams.glob("*.npz")) == sorted(names) and not list(cams.glob("*.npy"))
    assert read_folder_dataset(cams) == voc()
    scores = json.loads((tmp_path / "work" / "scores" / "cams.json").read_text())
    assert scores["mean"] == "present" and scores["classes"] == list(voc().classes)
    result = Pipeline(load_pipeline_config(config, ["mean_iou=all"])).run(only=["cams", "eval_cams"])
    statuses = {r.name: r.status for r in result.steps}
    assert statuses["cams"] == "done before" and statuses["eval_cams"] == "ran"  # a stale score, not new CAMs
    assert json.loads((tmp_path / "work" / "scores" / "cams.json").read_text())["mean"] == "all"
