"""Run-config sections of stages 2 and 3: the dense CRFs, AffinityNet and the random walk, DeepLab.

Part of the run configuration of :mod:`cpn_dist.config` (``affinity.*``, ``segmentation.*``); kept in
their own module so each stays small. Import them from :mod:`cpn_dist.config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cpn_dist.config.base import PositiveFloat, PositiveInt, Section


class CrfConfig(Section):
    """A dense CRF's settings (defaults: AffinityNet/PSA's, for ~500-pixel VOC images)."""

    iterations: int = Field(10, ge=1, le=100, description="mean-field iterations")
    gaussian_sxy: float = Field(3.0, gt=0.0, description="Gaussian (smoothness) kernel: spatial std (pixels)")
    gaussian_compat: float = Field(3.0, gt=0.0, description="Gaussian kernel weight")
    bilateral_sxy: float = Field(80.0, gt=0.0, description="bilateral (appearance) kernel: spatial std (pixels)")
    bilateral_srgb: float = Field(13.0, gt=0.0, description="bilateral kernel: colour std (0..255)")
    bilateral_compat: float = Field(10.0, gt=0.0, description="bilateral kernel weight")


class AffinityConfig(Section):
    """Stage 2 (`stage: affinity`): AffinityNet on affinity labels, and the random walk (PSA's defaults)."""

    labels: str = Field(
        "affinity_labels/train_aug",
        description="`stage: affinity`: folder of affinity labels {image id}.png (`cpn affinity-labels`: 0 bg, "
        "1..20 class, 255 ignore)",
    )
    radius: int = Field(5, ge=2, le=16, description="pairs closer than this many stride-8 cells are trained and walked")
    low_bg_power: float = Field(
        4.0, gt=0.0, le=1000.0, description="`cpn affinity-labels`: background power α of the la map, background "
        "score (1 - max CAM)^α (confident foreground)",
    )
    high_bg_power: float = Field(
        32.0, gt=0.0, le=1000.0, description="`cpn affinity-labels`: background power α of the ha map, background "
        "score (1 - max CAM)^α (confident background)",
    )
    rw_bg_power: float = Field(
        16.0, gt=0.0, le=1000.0, description="`cpn rw`: background power α, background score (1 - max CAM)^α walked "
        "with the CAMs",
    )
    rw_affinity_power: float = Field(
        8.0, gt=0.0, le=100.0, description="`cpn rw`: the affinities raised to this power (A^8: PSA's exponent)"
    )
    rw_logt: int = Field(8, ge=0, le=16, description="`cpn rw`: the walk takes t = 2^logt steps")
    cam_norm: Literal["max", "none"] = Field(
        "max", description="affinity labels and `cpn rw`: divide each CAM by its maximum first (PSA's scale, "
        "which its background powers assume; released CPN CAMs peak at 0.5), or use the stored values",
    )
    crf: CrfConfig = Field(default_factory=CrfConfig, description="the dense CRF of the affinity labels "
                                    "(PSA's settings, for ~500-pixel images; the `--crf-*` flags override them)")

    @model_validator(mode="after")
    def _ordered_bg_powers(self) -> AffinityConfig:
        if not self.low_bg_power < self.high_bg_power:
            raise ValueError(f"low_bg_power: must be below high_bg_power ({self.low_bg_power} >= "
                             f"{self.high_bg_power})")
        return self


class SegmentationCrfConfig(CrfConfig):
    """The dense CRF after segmentation inference (defaults: DeepLab-v2 on VOC)."""

    enabled: bool = Field(
        True, description="`cpn pipeline` also writes and scores CRF-refined predictions (`cpn segment`: --crf-out)"
    )
    # DeepLab-v2's kernels where they differ from PSA's (iterations 10 and Gaussian weight 3 are shared)
    gaussian_sxy: float = Field(1.0, gt=0.0, description="Gaussian (smoothness) kernel: spatial std (pixels)")
    bilateral_sxy: float = Field(67.0, gt=0.0, description="bilateral (appearance) kernel: spatial std (pixels)")
    bilateral_srgb: float = Field(3.0, gt=0.0, description="bilateral kernel: colour std (0..255)")
    bilateral_compat: float = Field(4.0, gt=0.0, description="bilateral kernel weight")


class SegmentationConfig(Section):
    """Stage 3 (`stage: segmentation`): DeepLab on the pseudo labels."""

    labels: str = Field(
        "pseudo/train_aug", description="`stage: segmentation`: folder of label PNGs {image id}.png to train on "
        "(0..20, 255 = ignore; written by `cpn pseudo`, `cpn rw`)"
    )
    head: Literal["largefov", "aspp"] = Field(
        "largefov", description="DeepLab head: v1 LargeFOV (3x3 dilated conv, 1x1, classifier) or v2 ASPP"
    )
    head_channels: int = Field(1024, ge=1, le=8192, description="LargeFOV: channels of its two hidden layers")
    head_dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout rate inside the head (0 = none)")
    fov_dilation: int = Field(12, ge=1, le=64, description="LargeFOV: dilation of its 3x3 convolution")
    aspp_rates: list[PositiveInt] = Field(
        [6, 12, 18, 24], min_length=1, max_length=8, description="ASPP: dilations of the parallel 3x3 branches"
    )
    test_scales: list[PositiveFloat] = Field(
        [0.5, 0.75, 1.0, 1.25, 1.5], min_length=1,
        description="inference (`cpn segment`, `cpn pipeline`): image scales whose softmax is averaged",
    )
    test_flip: bool = Field(True, description="inference: add the horizontally flipped input of every scale")
    crf: SegmentationCrfConfig = Field(default_factory=SegmentationCrfConfig)
