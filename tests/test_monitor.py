"""MFU's denominator: the peak FLOP/s of the device in the precision in use."""

import numpy as np
import pytest
import torch

from cpn_dist.training import monitor


@pytest.mark.parametrize(("name", "precision", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5e12),  # H100 SXM
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 PCIe", "fp16", 756e12),
    ("NVIDIA H200", "bf16", 989.5e12),
    ("NVIDIA H200", "no", 494.7e12),  # fp32 training: cuDNN's convolutions use tf32 by default
    ("NVIDIA A100-SXM4-80GB", "no", 156e12),
    ("Some Future GPU", "bf16", None),
])  # fmt: skip
def test_peak_of_the_precision_in_use(monkeypatch, name, precision, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert monitor.peak_flops_per_device(None, torch.device("cuda"), precision) == peak


def test_plain_fp32_peak_without_tf32_and_the_configured_peak_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    monkeypatch.setattr(monitor, "tf32_enabled", lambda: False)
    assert monitor.peak_flops_per_device(None, torch.device("cuda"), "no") == 51.2e12
    assert monitor.peak_flops_per_device(123e12, torch.device("cuda"), "no") == 123e12
    assert monitor.peak_flops_per_device(None, torch.device("cpu"), "bf16") is None


def test_the_stage_2_and_3_panels_show_the_image_its_label_and_the_output():
    """AffinityTask and SegmentationTask panels: the first image back in RGB, its label in VOC colours,
    then the boundary map / the prediction — three tiles of the crop's size, uint8."""
    from cpn_dist.affinity.task import AffinityTask
    from cpn_dist.config import Config
    from cpn_dist.data.datasets.voc import PALETTE
    from cpn_dist.segmentation.task import SegmentationTask

    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=g)
    label = torch.randint(0, 21, (2, 16, 16), generator=g)
    label[0, 0, 0] = 255
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    batch = {"image": normalised, "label": label}
    data = {"mean": list(mean), "std": list(std), "crop": 16, "scale_range": [16, 20]}
    logits = torch.randn(2, 21, 16, 16, generator=g)
    seg = SegmentationTask(Config.model_validate({"stage": "segmentation", "data": data})).panel(batch, logits)
    aff = AffinityTask(Config.model_validate({"stage": "affinity", "data": data})).panel(batch, torch.randn(2, 8, 2, 2))
    for panel in (seg, aff):
        assert panel.dtype == np.uint8 and panel.shape == (3, 16, 48)
        tiles = panel.transpose(1, 2, 0)
        assert np.abs(tiles[:, :16].astype(int) - (image[0].permute(1, 2, 0).numpy() * 255).round()).max() <= 1
        assert (tiles[:, 16:32] == PALETTE[label[0].numpy().astype(np.uint8)]).all()
    assert (seg.transpose(1, 2, 0)[:, 32:] == PALETTE[logits[0].argmax(0).numpy().astype(np.uint8)]).all()
