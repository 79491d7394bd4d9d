"""Stage 3: the DeepLab model, its split-invariant loss, training on perfect labels, multi-scale
inference against a literal loop, and the VOC test-server layout of `cpn segment`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from cpn_dist.config import load_config
from cpn_dist.data.datasets.voc import PALETTE, read_label_png, read_split
from cpn_dist.errors import CpnError
from cpn_dist.segmentation.loss import check_labels, segmentation_loss
from cpn_dist.segmentation.model import build_segmentation_model
from tests.conftest import run_cpn
from tests.train_support import pack_shards


# ---- model --------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["largefov", "aspp"])
def test_model_outputs_groups_and_frozen_parts(head):
    torch.manual_seed(0)
    model = build_segmentation_model("tiny", head, channels=16, rates=(1, 2)).train()
    x = torch.randn(2, 3, 60, 76)
    assert model(x).shape == (2, 21, 60, 76)
    assert model.score(x).shape == (2, 21, 8, 10)  # output stride 8
    groups = model.parameter_groups()
    head_params = {id(p) for p in model.seg_head.parameters()}
    assert groups[0] and all(id(p) not in head_params for p in groups[0] + groups[1])
    assert {id(p) for p in groups[2] + groups[3]} == head_params  # the head: lr x10 / x20
    grouped = {id(p) for g in groups for p in g}
    frozen = [n for n, p in model.named_parameters() if id(p) not in grouped]
    assert frozen and all(n.startswith(("conv1a", "b2.")) or ".bn" in n or n.startswith("bn7") for n in frozen)
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_backbone_weights_of_a_cpn_checkpoint_load_and_the_head_does_not(tmp_path):
    from cpn_dist.cpn.model import build_model
    from cpn_dist.models import load_weights

    cpn = build_model("tiny", "official")
    torch.save(cpn.state_dict(), tmp_path / "cpn.pth")
    model = build_segmentation_model("tiny", "largefov", channels=16)
    report = load_weights(model, tmp_path / "cpn.pth")
    assert "b7.conv_branch2b2.weight" in report.loaded and "fc8.weight" in report.unexpected
    assert report.missing and all(k.startswith("seg_head.") for k in report.missing)
    torch.testing.assert_close(model.b7.conv_branch2b2.weight, cpn.b7.conv_branch2b2.weight)


# ---- loss ---------------------------------------------------------------------------------------
def test_chunk_estimates_average_to_the_global_batch_cross_entropy():
    """Micro-batches with different numbers of labelled pixels: the mean of the chunk estimates is
    F.cross_entropy over the whole batch (a mean of per-chunk means would not be)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 21, 6, 5, generator=g)
    label = torch.randint(0, 21, (4, 6, 5), generator=g)
    label[0, :5] = 255  # image 0 almost unlabelled
    label[2, :, :2] = 255
    full = F.cross_entropy(logits, label, ignore_index=255)
    total = int((label != 255).sum())
    for chunk in (1, 2, 4):
        parts = [segmentation_loss(logits[i:i + chunk], label[i:i + chunk], total, 4 // chunk)
                 for i in range(0, 4, chunk)]  # fmt: skip
        torch.testing.assert_close(torch.stack([p["total"] for p in parts]).mean(), full)
    naive = torch.stack([F.cross_entropy(logits[i:i + 1], label[i:i + 1], ignore_index=255) for i in range(4)])
    assert not torch.allclose(naive.mean(), full)
    acc = torch.stack([p["pixel_acc"] for p in parts]).mean()
    torch.testing.assert_close(acc, ((logits.argmax(1) == label) & (label != 255)).sum().float() / total)


def test_a_label_outside_the_classes_names_the_image():
    label = torch.zeros(2, 4, 4, dtype=torch.int64)
    label[1, 2, 3] = 37
    with pytest.raises(CpnError, match="b.png: label value 37"):
        check_labels(label, ["a", "b"])
    label[1, 2, 3] = 255
    check_labels(label, ["a", "b"])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two torch threads on a busy 2-core machine are several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- training on perfect labels --------------------------------------------------------------------
@pytest.fixture(scope="module")
def perfect(tmp_path_factory):
    """The tiny DeepLab trained on the ground truth (SegmentationClass) of 16 synthetic images."""
    from cpn_dist.train import train

    root = tmp_path_factory.mktemp("seg")
    voc = root / "VOC2012"
    run_cpn("synth-voc", "--out", str(voc), "--images", "20", "--size", "192", "--seed", "3", check=True)
    shards = pack_shards(voc, root / "shards")
    cfg = {
        "stage": "segmentation",
        "data": {"shards": str(shards), "split": "train_aug", "crop": 128, "scale_range": [160, 224], "workers": 0,
                 "deterministic": True, "color_jitter": [0, 0, 0, 0]},
        "model": {"backbone": "tiny", "dropout": 0.0},
        "segmentation": {"labels": str(voc / "SegmentationClass"), "head": "aspp", "aspp_rates": [1, 2, 3],
                         "head_dropout": 0.0, "test_scales": [1.0]},
        "batch": {"global_size": 8, "micro_size": 8},
        "optim": {"lr": 0.03, "grad_clip": 1.0},
        "train": {"epochs": 125, "checkpoint_every": 10_000, "seed": 0},
        "output": {"dir": str(root / "run")},
        "log": {"every": 50, "image_every": 100},
    }  # fmt: skip
    (root / "seg.yaml").write_text(yaml.safe_dump(cfg))
    config = load_config(root / "seg.yaml")
    final = train(config)
    return {"root": root, "voc": voc, "config": config, "config_path": root / "seg.yaml", "weights": final}


def _trained_model(perfect):
    from cpn_dist.models import load_weights
    from cpn_dist.segmentation.model import model_from_config

    model = model_from_config(perfect["config"], dropout=False)
    assert not load_weights(model, perfect["weights"]).missing
    return model.eval()


def test_training_on_perfect_labels_reaches_90_percent_training_miou(perfect):
    """mIoU over the classes present in the 16 training images (absent classes have no pixels to get
    right; the VOC mean over all 21 would count them as 0), single scale + flip, with and without CRF."""
    from cpn_dist.data.inputs import VocSource
    from cpn_dist.labels.evaluate import iou_from_confusion, score_labels
    from cpn_dist.segmentation.infer import Outputs, segment_samples, segment_settings

    voc, out = perfect["voc"], perfect["root"] / "train_pred"
    names = read_split(voc / "ImageSets" / "Segmentation" / "train_aug.txt")
    settings = segment_settings(perfect["config"])
    samples = VocSource(voc, names).samples(labels=False)
    segment_samples(_trained_model(perfect), samples, Outputs(out / "plain", out / "crf"), settings)
    for folder in ("plain", "crf"):
        conf = score_labels(out / folder, voc / "SegmentationClass", names).confusion[0][:21, :21]
        iou, _ = iou_from_confusion(conf)
        present = conf.sum(axis=1) > 0
        assert present.sum() >= 10  # background and most classes occur
        assert iou[present].mean() > 0.90, f"{folder}: {dict(enumerate(np.round(iou, 3)))}"


# ---- inference ------------------------------------------------------------------------------------
def _literal(model, image: Image.Image, scales, mean, std) -> np.ndarray:
    """Mean softmax over scales and flips, one input at a time: 21×H×W."""
    width, height = image.size
    total = torch.zeros(21, height, width)
    count = 0
    for s in scales:
        resized = np.asarray(image.resize((round(width * s), round(height * s)), Image.BICUBIC), dtype=np.float64)
        x = ((resized / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32).transpose(2, 0, 1)
        for flip in (False, True):
            inp = np.ascontiguousarray(x[:, :, ::-1] if flip else x)
            with torch.no_grad():
                scores = model.score(torch.from_numpy(inp)[None])
            prob = F.interpolate(scores, (height, width), mode="bilinear", align_corners=False)[0].softmax(0)
            total += prob.flip(-1) if flip else prob
            count += 1
    return (total / count).numpy()


def test_multiscale_inference_equals_a_literal_loop(perfect, tmp_path):
    from cpn_dist.data.inputs import VocSource
    from cpn_dist.segmentation.infer import Outputs, segment_samples, segment_settings

    voc = perfect["voc"]
    names = read_split(voc / "ImageSets" / "Segmentation" / "val.txt")
    scales = (0.5, 0.75, 1.0, 1.25)
    settings = segment_settings(perfect["config"], scales=scales, crf=None, batch_size=3)
    model = _trained_model(perfect)
    segment_samples(model, VocSource(voc, names).samples(labels=False), Outputs(tmp_path / "batched"), settings,
                    images_per_step=3)  # fmt: skip
    one = segment_settings(perfect["config"], scales=scales, crf=None, batch_size=1)
    segment_samples(model, VocSource(voc, names).samples(labels=False), Outputs(tmp_path / "single"), one,
                    images_per_step=1, loader_threads=0)  # fmt: skip
    decided = 0
    for name in names:
        image = Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB")
        probs = _literal(model, image, scales, perfect["config"].data.mean, perfect["config"].data.std)
        top2 = np.sort(probs, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-4  # pixels whose argmax float rounding cannot flip
        batched = read_label_png(tmp_path / "batched" / f"{name}.png")
        assert batched.shape == (image.size[1], image.size[0])
        assert np.array_equal(batched[clear], probs.argmax(0)[clear])
        assert np.array_equal(batched, read_label_png(tmp_path / "single" / f"{name}.png"))
        decided += clear.mean()
    assert decided / len(names) > 0.999
    assert len(set(np.unique(batched)) - {0}) >= 1  # a foreground class was predicted


def test_test_server_layout_is_exact_and_reruns_skip(perfect, tmp_path):
    voc = perfect["voc"]
    names = read_split(voc / "ImageSets" / "Segmentation" / "val.txt")[:3]
    (tmp_path / "test.txt").write_text("\n".join(names) + "\n")
    args = ["segment", "--checkpoint", str(perfect["weights"]), "--config", str(perfect["config_path"]),
            "--voc-root", str(voc), "--list", str(tmp_path / "test.txt"), "--crf-out", str(tmp_path / "crf"),
            "--test-server", str(tmp_path / "server"), "--scales", "0.75,1.0"]  # fmt: skip
    run_cpn(*args, check=True)
    files = sorted(str(p.relative_to(tmp_path / "server")) for p in (tmp_path / "server").rglob("*"))
    layout = "results/VOC2012/Segmentation/comp5_test_cls"
    assert files == ["results", "results/VOC2012", "results/VOC2012/Segmentation", layout,
                     *sorted(f"{layout}/{n}.png" for n in names)]  # fmt: skip
    for name in names:
        with Image.open(tmp_path / "server" / layout / f"{name}.png") as im:
            assert im.mode == "P" and im.format == "PNG"
            assert np.array_equal(np.array(im.getpalette()[:768], dtype=np.uint8).reshape(256, 3), PALETTE)
            with Image.open(voc / "JPEGImages" / f"{name}.jpg") as jpg:
                assert im.size == jpg.size
            label = np.array(im)
        assert label.max() <= 20
        assert np.array_equal(label, read_label_png(tmp_path / "crf" / f"{name}.png"))  # the final (CRF) maps
    again = run_cpn(*args, check=True)
    assert "3 images already segmented are kept" in again.stdout


_CRF_POOL_AFTER_TORCH = """
import sys
from pathlib import Path
import torch
from cpn_dist.config import load_config
from cpn_dist.config import CrfConfig
from cpn_dist.data.inputs import VocSource
from cpn_dist.models import load_weights
from cpn_dist.segmentation.infer import Outputs, SegmentSettings, segment_samples
from cpn_dist.segmentation.model import model_from_config
voc, config, weights, out = (Path(a) for a in sys.argv[1:5])
torch.set_num_threads(2)
torch.ones(2048, 2048).mul(2).sum()  # the intra-op thread pool runs before the CRF workers are forked
model = model_from_config(load_config(config), dropout=False)
load_weights(model, weights)
names = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:4]
settings = SegmentSettings(scales=(1.0,), crf=CrfConfig(iterations=2))
segment_samples(model, VocSource(voc, names).samples(labels=False), Outputs(out / "plain", out / "crf"),
                settings, images_per_step=2, crf_workers=2)
print(len(list((out / "crf").glob("*.png"))))
"""


def test_crf_workers_forked_after_torch_threads_do_not_hang(perfect, tmp_path):
    """The pipeline's `segment` step once hung here: its forked CRF workers ran a torch op."""
    import subprocess
    import sys

    args = [str(perfect[k]) for k in ("voc", "config_path", "weights")] + [str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", _CRF_POOL_AFTER_TORCH, *args], capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "4"


def test_labelled_samples_stream_too(perfect):
    """The streaming loader (data.deterministic: false) carries image + label map like the deterministic one."""
    from cpn_dist.data import build_train_loader
    from cpn_dist.data.loading.labelled import LabelledSampleMaker

    data = perfect["config"].data.model_copy(update={"deterministic": False})
    labels = perfect["config"].segmentation.labels
    maker = LabelledSampleMaker.from_config(data, labels, seed=0, epoch=0)
    loader, steps = build_train_loader(data, micro_size=4, global_size=4, rank=0, world_size=1, seed=0, epoch=0,
                                       maker=maker)  # fmt: skip
    batches = list(loader)
    assert len(batches) == steps == 4
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == 16
    for b in batches:
        assert b["label"].shape == (4, 128, 128) and b["image"].shape == (4, 3, 128, 128)
        assert (b["label"][~b["valid"][:, 0]] == 255).all()
