"""Stage 2 end to end through the CLI: `cpn affinity-labels` (from shards and from a VOC root),
`cpn train` with `stage: affinity`, `cpn rw` (1 and 2 processes) and `cpn eval` of its PNGs; and the
affinity-label rule itself."""

import json

import numpy as np
import pytest
from scipy import ndimage

from cpn_dist.affinity.labels import AffinityLabelParams, affinity_label
from cpn_dist.config import CrfConfig
from cpn_dist.data.datasets.voc import PALETTE, read_label_png, read_split
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import save_cams
from cpn_dist.labels.pseudo import confident_label, paired_pseudo_label
from tests.conftest import run_cpn
from tests.train_support import accelerate_cpu, launch, pack_shards

X = 255


def test_psa_label_rule_on_hand_made_cams():
    cams = {6: np.array([[0.5, 0.2, 0.01, -0.5]], np.float32)}
    image = np.zeros((1, 4, 3), np.uint8)
    label = affinity_label(cams, image, AffinityLabelParams(bg_powers=(4, 32), crf=None, cam_norm="none"))
    # 0.5 > (1-0.5)^4: confident class; 0.2 < 0.8^4 but > 0.8^32: unsure; 0.01 < 0.99^32: background
    np.testing.assert_array_equal(label, [[7, X, 0, 0]])
    # PSA's scale (the default): divided by the peak 0.5 first, so 0.2 → 0.4 > 0.6^4 is confident too
    label = affinity_label(cams, image, AffinityLabelParams(bg_powers=(4, 32), crf=None))
    np.testing.assert_array_equal(label, [[7, 7, 0, 0]])
    # the rule: the foreground-confident map's class, background of the other map wins, else ignore
    fg_map, bg_map = np.array([[3, 3, 0, 0]], np.uint8), np.array([[3, 0, 3, 0]], np.uint8)
    np.testing.assert_array_equal(confident_label(fg_map, bg_map), [[3, 0, X, 0]])
    # the β pair goes through the same rule as `cpn pseudo --betas`
    by_beta = affinity_label(cams, image,
                             AffinityLabelParams(bg_powers=None, betas=(0.1, 0.3), crf=None, cam_norm="none"))
    np.testing.assert_array_equal(by_beta, paired_pseudo_label(cams, 0.1, 0.3, (1, 4)))
    np.testing.assert_array_equal(by_beta, [[7, X, 0, 0]])
    # no labelled class: confident background everywhere
    np.testing.assert_array_equal(affinity_label({}, image, AffinityLabelParams(crf=None)), [[0, 0, 0, 0]])
    with pytest.raises(CpnError, match="low α < high α"):
        AffinityLabelParams(bg_powers=(32, 4))


def test_crf_labels_follow_the_image_edge():
    """A CAM blob shifted off the object: the CRF-refined la/ha maps put the confident labels on
    the object, and the ignore band lies between the maps' boundaries."""
    h, w = 48, 64
    image = np.full((h, w, 3), 60, np.uint8)
    image[12:36, 20:44] = (220, 40, 40)
    truth = np.zeros((h, w), bool)
    truth[12:36, 20:44] = True
    cam = ndimage.gaussian_filter(np.roll(truth, 3, axis=1).astype(np.float32), 4)
    cam = 0.5 * cam / cam.max()
    label = affinity_label({2: cam}, image, AffinityLabelParams(crf=CrfConfig()))
    assert set(np.unique(label)) <= {0, 3, X}
    assert (label[truth] != 0).all()  # nothing on the object is called background
    assert (label[~truth] != 3).all()  # nothing off the object is called the class
    assert (label[truth] == 3).mean() > 0.8 and (label[~truth] == 0).mean() > 0.9


@pytest.fixture(scope="module")
def stage2(synth_voc, tmp_path_factory):
    """Shards of the synthetic VOC and CAMs made from its ground truth (blurred, shifted, the
    released scale): a stand-in for `cpn infer`'s output."""
    root = tmp_path_factory.mktemp("stage2")
    shards = pack_shards(synth_voc, root / "shards")
    split = synth_voc / "ImageSets" / "Segmentation"
    names = read_split(split / "train_aug.txt")
    cams = root / "cams"
    cams.mkdir()
    for name in names:
        gt = read_label_png(synth_voc / "SegmentationClass" / f"{name}.png")
        maps = {}
        for c in sorted(set(np.unique(gt).tolist()) - {0, X}):
            m = ndimage.shift(ndimage.gaussian_filter((gt == c).astype(np.float32), 5), (4, 4), order=0)
            maps[c - 1] = (0.5 * m / max(m.max(), 1e-6)).astype(np.float32)
        save_cams(cams / f"{name}.npy", maps)
    return {"root": root, "shards": shards, "cams": cams, "names": names, "list": split / "train_aug.txt",
            "voc": synth_voc}  # fmt: skip


def test_affinity_labels_from_shards_equal_those_from_the_voc_root_and_skip_finished(stage2):
    out_s, out_v = stage2["root"] / "labels_shards", stage2["root"] / "labels_voc"
    run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--shards", str(stage2["shards"]), "--out",
            str(out_s), "--workers", "2", check=True)  # fmt: skip
    some = stage2["root"] / "few.txt"  # not in the shared synthetic VOC, which other tests hash
    some.write_text("\n".join(stage2["names"][:5]) + "\n")
    run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--voc-root", str(stage2["voc"]), "--list", str(some),
            "--out", str(out_v), "--workers", "1", check=True)  # fmt: skip
    assert sorted(p.stem for p in out_s.glob("*.png")) == sorted(stage2["names"])
    for name in stage2["names"][:5]:
        a, b = read_label_png(out_s / f"{name}.png"), read_label_png(out_v / f"{name}.png")
        np.testing.assert_array_equal(a, b)
        gt = read_label_png(stage2["voc"] / "SegmentationClass" / f"{name}.png")
        assert a.shape == gt.shape and set(np.unique(a)) <= set(np.unique(gt)) | {X}
    from PIL import Image

    with Image.open(out_s / f"{stage2['names'][0]}.png") as im:  # a VOC-palette PNG
        assert im.mode == "P" and np.array_equal(np.array(im.getpalette()[:6]).reshape(2, 3), PALETTE[:2])
    # finished images are kept unless --overwrite; a listed image the source lacks names itself
    victim = out_v / f"{stage2['names'][0]}.png"
    victim.write_bytes(b"not a png")
    again = run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--voc-root", str(stage2["voc"]), "--list",
                    str(some), "--out", str(out_v), check=True)  # fmt: skip
    assert "5 of 5 images already done" in again.stdout and victim.read_bytes() == b"not a png"
    run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--voc-root", str(stage2["voc"]), "--list", str(some),
            "--out", str(out_v), "--overwrite", check=True)  # fmt: skip
    np.testing.assert_array_equal(read_label_png(victim), read_label_png(out_s / victim.name))
    val = stage2["list"].parent / "val.txt"  # no CAMs were made for these; the shards lack them too
    bad = run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--voc-root", str(stage2["voc"]), "--list",
                  str(val), "--out", str(stage2["root"] / "x"))  # fmt: skip
    assert bad.returncode != 0 and "CAM file not found" in bad.stderr
    bad = run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--shards", str(stage2["shards"]), "--list",
                  str(val), "--out", str(stage2["root"] / "x"))  # fmt: skip
    assert bad.returncode != 0 and "8 listed image(s) not found in the image source" in bad.stderr


@pytest.fixture(scope="module")
def trained(stage2):
    labels = stage2["root"] / "labels_train"
    run_cpn("affinity-labels", "--cams", str(stage2["cams"]), "--shards", str(stage2["shards"]), "--out",
            str(labels), "--workers", "2", check=True)  # fmt: skip
    run = stage2["root"] / "run"
    run_cpn("train", "--config", "configs/demo_affinity.yaml", f"data.shards={stage2['shards']}", "data.workers=0",
            "data.crop=48", "data.scale_range=[48,64]", f"affinity.labels={labels}", "batch.global_size=4",
            "batch.micro_size=2", "train.max_steps=4", f"output.dir={run}", "log.image_every=2", "model.weights=null",
            check=True)  # fmt: skip
    return run


def test_train_stage_affinity_writes_affinitynet_weights(trained):
    from cpn_dist.affinity.model import build_affinity_model
    from cpn_dist.models import load_weights

    state = json.loads(sorted((trained / "checkpoints").glob("step_*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["accumulation"] == 2
    report = load_weights(build_affinity_model("tiny"), trained / "model_final.pth")
    assert not report.missing and not report.unexpected
    events = list((trained / "affinity").rglob("events.out.tfevents.*"))
    assert events  # TensorBoard under the task's name


def test_rw_writes_labels_that_eval_scores_and_walked_cams_it_sweeps(stage2, trained, tmp_path):
    out, walked = tmp_path / "rw", tmp_path / "walked"
    run_cpn("rw", "--checkpoint", str(trained / "model_final.pth"), "--config", "configs/demo_affinity.yaml",
            "--cams", str(stage2["cams"]), "--shards", str(stage2["shards"]), "--out", str(out), "--save-cams",
            str(walked), check=True)  # fmt: skip
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(stage2["names"])
    scored = run_cpn("eval", "--cams", str(out), "--gt", str(stage2["voc"] / "SegmentationClass"), "--list",
                     str(stage2["list"]), "--json", str(tmp_path / "rw.json"), check=True)  # fmt: skip
    assert "label PNGs" in scored.stdout
    assert 0.0 < json.loads((tmp_path / "rw.json").read_text())["best"]["miou"] <= 1.0
    run_cpn("eval", "--cams", str(walked), "--gt", str(stage2["voc"] / "SegmentationClass"), "--list",
            str(stage2["list"]), "--json", str(tmp_path / "walked.json"), check=True)  # fmt: skip
    assert len(json.loads((tmp_path / "walked.json").read_text())["betas"]) == 40
    # the PSA label is the argmax of the walked scores with the walked background
    for name in stage2["names"][:3]:
        label = read_label_png(out / f"{name}.png")
        gt = read_label_png(stage2["voc"] / "SegmentationClass" / f"{name}.png")
        assert label.shape == gt.shape and set(np.unique(label)) <= set(np.unique(gt)) - {X} | {0}
    again = run_cpn("rw", "--checkpoint", str(trained / "model_final.pth"), "--backbone", "tiny", "--cams",
                    str(stage2["cams"]), "--shards", str(stage2["shards"]), "--out", str(out), check=True)  # fmt: skip
    assert f"{len(stage2['names'])} of {len(stage2['names'])} images already done" in again.stdout


@pytest.mark.slow
def test_rw_on_two_processes_writes_each_image_once_and_equals_one_process(stage2, trained, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--checkpoint", str(trained / "model_final.pth"), "--backbone", "tiny", "--cams", str(stage2["cams"]),
              "--voc-root", str(stage2["voc"]), "--list", str(stage2["list"])]  # fmt: skip
    run_cpn("rw", *common, "--out", str(one), check=True)
    proc = launch([*accelerate_cpu(2), "-m", "cpn_dist.affinity.random_walk", *common, "--out", str(two)])
    assert "per process: 16, 16" in proc.stdout
    for name in stage2["names"]:
        np.testing.assert_array_equal(read_label_png(one / f"{name}.png"), read_label_png(two / f"{name}.png"))


def test_rw_names_a_cam_that_does_not_fit_its_image(stage2, trained, tmp_path):
    cams = tmp_path / "cams"
    cams.mkdir()
    name = stage2["names"][0]
    save_cams(cams / f"{name}.npy", {0: np.zeros((5, 5), np.float32)})
    bad = run_cpn("rw", "--checkpoint", str(trained / "model_final.pth"), "--backbone", "tiny", "--cams", str(cams),
                  "--voc-root", str(stage2["voc"]), "--out", str(tmp_path / "o"))  # fmt: skip
    assert bad.returncode != 0 and f"{name}.npy: CAMs are 5×5" in bad.stderr
