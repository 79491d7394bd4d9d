"""`cpn infer`: equal to a slow, literal per-scale, per-flip loop written after the released
infer_cam.py, and distributed runs write every image exactly once."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cpn_dist.cpn.infer import InferSettings, infer_samples, scaled_size
from cpn_dist.data.datasets.voc import labels_from_names, read_split, read_xml_objects
from cpn_dist.data.inputs import Sample
from cpn_dist.labels.cams import load_cams
from tests.conftest import ROOT, run_cpn

SCALES = [0.5, 1.0, 1.5, 2.0]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from cpn_dist.cpn.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny", "official", dropout=0.0)
    with torch.no_grad():  # make BatchNorm statistics non-trivial so every layer matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def _load_model(path):
    from cpn_dist.cpn.model import build_model
    from cpn_dist.models import load_weights

    model = build_model("tiny", "official", dropout=0.0)
    load_weights(model, path)
    return model.eval()


def literal_released_loop(model, voc_root, name):
    """infer_cam.py, step by step, one input at a time (VOC12ClsDatasetMSF + _work + the normalisation)."""
    img = Image.open(voc_root / "JPEGImages" / f"{name}.jpg").convert("RGB")
    label = torch.from_numpy(labels_from_names(read_xml_objects(voc_root / "Annotations" / f"{name}.xml")))
    rounded_size = (int(round(img.size[0])), int(round(img.size[1])))
    ms_img_list = []
    for s in SCALES:
        target_size = (round(rounded_size[0] * s), round(rounded_size[1] * s))
        ms_img_list.append(img.resize(target_size, resample=Image.BICUBIC))
    for i in range(len(ms_img_list)):
        imgarr = np.asarray(ms_img_list[i])
        proc_img = np.empty_like(imgarr, np.float32)
        for c in range(3):
            proc_img[..., c] = (imgarr[..., c] / 255.0 - MEAN[c]) / STD[c]
        ms_img_list[i] = np.transpose(proc_img, (2, 0, 1))
    msf_img_list = []
    for arr in ms_img_list:
        msf_img_list.append(arr)
        msf_img_list.append(np.flip(arr, -1).copy())

    orig_img_size = np.asarray(img).shape[:2]
    cam_list = []
    for i, x in enumerate(msf_img_list):
        with torch.no_grad():
            _, cam = model(torch.from_numpy(np.ascontiguousarray(x))[None])
            cam = F.interpolate(cam[:, 1:, :, :], orig_img_size, mode="bilinear", align_corners=False)[0]
            cam = cam.cpu().numpy() * label.clone().view(20, 1, 1).numpy()
            if i % 2 == 1:
                cam = np.flip(cam, axis=-1)
            cam_list.append(cam)
    sum_cam = np.sum(cam_list, axis=0)
    sum_cam[sum_cam < 0] = 0
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    norm_cam = (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)
    norm_cam = norm_cam / 2
    return {i: norm_cam[i] for i in range(20) if label[i] > 1e-5}


def test_banker_rounding_of_scale_sizes():
    assert scaled_size(53, 55, 0.5) == (26, 28)  # 26.5 → 26, 27.5 → 28
    assert scaled_size(375, 500, 1.5) == (562, 750)  # 562.5 → 562


def test_infer_equals_the_literal_released_loop(synth_voc, tiny_checkpoint, tmp_path):
    from cpn_dist.data.inputs import VocSource

    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:3]
    model = _load_model(tiny_checkpoint)
    expected = {n: literal_released_loop(model, synth_voc, n) for n in names}
    source = VocSource(synth_voc, names)

    # one input per forward: the same arithmetic as the literal loop, bit for bit
    one = tmp_path / "one"
    infer_samples(model, source.samples(), one, InferSettings(batch_size=1), images_per_step=1)
    # batched (both flips and equal-sized images in one forward): equal to float tolerance
    batched = tmp_path / "batched"
    infer_samples(model, source.samples(), batched, InferSettings(batch_size=8), images_per_step=4)
    assert sum(float(m.max()) > 0.49 for cams in expected.values() for m in cams.values()) >= 3
    for n in names:
        want = expected[n]
        assert want, n
        for folder, exact in ((one, True), (batched, False)):
            got = load_cams(folder / f"{n}.npy")
            assert sorted(got) == sorted(want)
            for c in want:
                assert got[c].dtype == np.float32 and got[c].shape == want[c].shape
                if exact:
                    np.testing.assert_array_equal(got[c], want[c])
                else:
                    np.testing.assert_allclose(got[c], want[c], rtol=0, atol=1e-5)
                assert got[c].min() < 0 and got[c].max() <= 0.5  # arg-min pixels negative, halved


def test_infer_cli_labels_file_formats_and_skip(synth_voc, tiny_checkpoint, tmp_path):
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:3]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in names))  # released format
    # labels from a JSON file that differs from the XMLs: only the listed classes get maps
    labels = {n: [0] * 20 for n in names}
    labels[names[0]][3] = labels[names[0]][7] = 1
    labels[names[1]][0] = 1
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "cams"
    args = ["infer", "--checkpoint", str(tiny_checkpoint), "--backbone", "tiny", "--head", "official",
            "--voc-root", str(synth_voc), "--list", str(lst), "--out", str(out), "--scales", "0.5,1.0"]  # fmt: skip
    proc = run_cpn(*args, "--labels", str(tmp_path / "labels.json"), check=True)
    assert "wrote 3 CAM files" in proc.stdout
    assert sorted(load_cams(out / f"{names[0]}.npy")) == [3, 7]
    assert sorted(load_cams(out / f"{names[1]}.npy")) == [0]
    assert load_cams(out / f"{names[2]}.npy") == {}
    # the released cls_labels.npy format: a pickled dict {id: 20 floats}
    np.save(tmp_path / "cls_labels.npy", {n: np.asarray(v, np.float32) for n, v in labels.items()})
    before = (out / f"{names[0]}.npy").stat().st_mtime_ns
    proc = run_cpn(*args, "--labels", str(tmp_path / "cls_labels.npy"), check=True)
    assert "3 CAM files already" in proc.stdout and "wrote 0 CAM files" in proc.stdout
    assert (out / f"{names[0]}.npy").stat().st_mtime_ns == before
    run_cpn(*args, "--labels", str(tmp_path / "cls_labels.npy"), "--overwrite", "--format", "irn", "--save-raw",
            check=True)  # fmt: skip
    irn = np.load(out / f"{names[0]}.npy", allow_pickle=True).item()
    assert list(irn["keys"]) == [3, 7] and irn["high_res"].shape[0] == 2
    assert irn["high_res"].min() >= 0 and irn["high_res"].max() <= 1
    assert sorted(load_cams(out / "raw" / f"{names[0]}.npy")) == [3, 7]
    # a missing id in the labels file is named
    labels.pop(names[1])
    (tmp_path / "short.json").write_text(json.dumps(labels))
    proc = run_cpn(*args, "--labels", str(tmp_path / "short.json"), "--overwrite")
    assert proc.returncode == 1 and f"no labels for image '{names[1]}'" in proc.stderr


def test_distributed_infer_writes_each_image_exactly_once(synth_voc, tiny_checkpoint, tmp_path):
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")
    assert len(names) == 8
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{n}\n" for n in names))
    out = tmp_path / "cams"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "cpn_dist.cpn.infer", "--checkpoint", str(tiny_checkpoint), "--backbone", "tiny", "--head", "official",
           "--voc-root", str(synth_voc), "--list", str(lst), "--out", str(out), "--scales", "0.5,1.0"]  # fmt: skip
    if not os.path.exists(cmd[0]):
        cmd[0:2] = [sys.executable, "-m", "accelerate.commands.launch"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote 8 CAM files" in proc.stdout and "(per process: 4, 4)" in proc.stdout, proc.stdout
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted(names)
    assert not list(out.glob(".*"))  # no temporary files left behind
    # the same CAMs as one process
    single = tmp_path / "single"
    run_cpn("infer", "--checkpoint", str(tiny_checkpoint), "--backbone", "tiny", "--head", "official",
            "--voc-root", str(synth_voc), "--list", str(lst), "--out", str(single), "--scales", "0.5,1.0",
            check=True)  # fmt: skip
    for n in names:
        a, b = load_cams(out / f"{n}.npy"), load_cams(single / f"{n}.npy")
        assert sorted(a) == sorted(b)
        for c in a:
            np.testing.assert_allclose(a[c], b[c], rtol=0, atol=1e-5)


def test_infer_from_shards_equals_infer_from_the_voc_root(synth_voc, tiny_checkpoint, tmp_path):
    from cpn_dist.data.inputs import ShardSource

    shards = tmp_path / "shards"
    run_cpn("pack", "--voc-root", str(synth_voc), "--split", "val", "--out", str(shards), "--slic-segments", "20",
            "--workers", "1", "--shard-size", "3", check=True)  # fmt: skip
    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")
    # each process of a 2-process run streams every shard but decodes only its own slice
    halves = [[s.name for s in ShardSource(shards).samples(rank=r, world=2, image=False)] for r in (0, 1)]
    assert not set(halves[0]) & set(halves[1]) and sorted(halves[0] + halves[1]) == sorted(names)
    assert abs(len(halves[0]) - len(halves[1])) <= 1

    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{n}\n" for n in names[:5]))
    common = ["--checkpoint", str(tiny_checkpoint), "--backbone", "tiny", "--head", "official", "--scales", "0.5,1.0"]
    run_cpn("infer", *common, "--shards", str(shards), "--list", str(lst), "--out", str(tmp_path / "a"), check=True)
    run_cpn("infer", *common, "--voc-root", str(synth_voc), "--list", str(lst), "--out", str(tmp_path / "b"),
            check=True)  # fmt: skip
    assert sorted(p.stem for p in (tmp_path / "a").glob("*.npy")) == sorted(names[:5])
    lst.write_text(f"{names[0]}\n2099_000001\n")  # an id the shards do not hold is named
    proc = run_cpn("infer", *common, "--shards", str(shards), "--list", str(lst), "--out", str(tmp_path / "a"))
    assert proc.returncode == 1 and "1 listed image(s) not found, e.g. '2099_000001'" in proc.stderr
    for n in names[:5]:
        a, b = load_cams(tmp_path / "a" / f"{n}.npy"), load_cams(tmp_path / "b" / f"{n}.npy")
        assert sorted(a) == sorted(b) and a
        for c in a:
            np.testing.assert_allclose(a[c], b[c], rtol=0, atol=1e-5)


def test_the_raw_cam_comes_from_the_refined_cams_forward_passes_and_equals_a_raw_only_run(synth_voc, tiny_checkpoint,
                                                                                          tmp_path):  # fmt: skip
    from cpn_dist.cpn.model import build_model
    from cpn_dist.data.inputs import VocSource

    names = read_split(synth_voc / "ImageSets" / "Segmentation" / "val.txt")[:3]
    model = _load_model(tiny_checkpoint)
    forwards = []
    model.register_forward_hook(lambda module, inputs, output: forwards.append(inputs[0].shape[0]))
    settings = InferSettings(scales=(0.5, 1.0), batch_size=4)
    source = VocSource(synth_voc, names)
    infer_samples(model, source.samples(), tmp_path / "refined", settings)
    alone = list(forwards)
    infer_samples(model, source.samples(), tmp_path / "raw", replace(settings, use="cam"))
    forwards.clear()
    infer_samples(model, source.samples(), tmp_path / "both", settings, raw_cam_dir=tmp_path / "both_raw")
    assert forwards == alone  # both CAMs from the refined CAM's forward passes alone: no second pass
    differs = False
    for n in names:
        for folder, want in (("both", "refined"), ("both_raw", "raw")):
            got, expected = load_cams(tmp_path / folder / f"{n}.npy"), load_cams(tmp_path / want / f"{n}.npy")
            assert sorted(got) == sorted(expected) and got
            for c in got:
                np.testing.assert_array_equal(got[c], expected[c])  # bit for bit: the same batches
        refined, raw = load_cams(tmp_path / "both" / f"{n}.npy"), load_cams(tmp_path / "both_raw" / f"{n}.npy")
        differs |= any(not np.array_equal(refined[c], raw[c]) for c in refined)
    assert differs  # the head changes the CAM: the two folders are not one map written twice

    headless = build_model("tiny", "none", dropout=0.0).eval()
    with pytest.raises(ValueError, match="without a head"):
        infer_samples(headless, source.samples(), tmp_path / "x", settings, raw_cam_dir=tmp_path / "x_raw")


def test_torch_normalisation_is_bit_identical_to_the_released_numpy_one():
    from cpn_dist.cpn.infer import normalise_released_torch
    from cpn_dist.labels.cams import normalise_released

    g = torch.Generator().manual_seed(3)
    total = torch.randn(4, 37, 29, generator=g) * 3
    total[1] = 0  # a class whose sum is all zero: −0.5 everywhere
    total[2, :5] = total[2].min()  # ties at the minimum
    expected = normalise_released(total.numpy())
    got = normalise_released_torch(total).numpy()
    assert np.array_equal(got, expected)
    assert np.all(got[1] == -0.5)


def test_bf16_inference_is_close_to_fp32_and_fp16_is_refused_on_cpu(tmp_path):
    from cpn_dist.cpn.infer import InferSettings, infer_samples
    from cpn_dist.cpn.model import build_model
    from cpn_dist.devices import autocast

    torch.manual_seed(0)
    model = build_model("tiny", "paper", dropout=0.0).eval()
    rng = np.random.default_rng(0)
    sample = Sample("x", Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)),
                    np.eye(20, dtype=np.float32)[3], None)  # fmt: skip
    maps = {}
    for precision in ("fp32", "bf16"):
        infer_samples(model, [sample], tmp_path / precision, InferSettings(scales=(1.0,), precision=precision),
                      loader_threads=0)  # fmt: skip
        maps[precision] = np.load(tmp_path / precision / "x.npy", allow_pickle=True).item()[3]
    assert maps["fp32"].shape == maps["bf16"].shape == (40, 52)
    assert np.abs(maps["fp32"] - maps["bf16"]).max() < 0.05  # both in the released [−0.5, 0.5] scale
    with pytest.raises(ValueError, match="fp16"):
        autocast("cpu", "fp16")
