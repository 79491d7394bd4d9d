"""MFU's denominator: the peak FLOP/s of the device in the precision in use."""

import pytest
import torch

from cpn_dist import monitor


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
