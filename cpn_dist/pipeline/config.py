"""The pipeline config (``cpn pipeline --config FILE``) and the names of its steps.

Validated like run configs (:mod:`cpn_dist.config`): unknown keys, wrong types and bad values — a β
sweep that does not parse, an unknown step — fail with one line naming the file and the dotted key
when the config is read, before any step runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from cpn_dist.config.base import Section
from cpn_dist.errors import CpnError
from cpn_dist.labels import cam_store
from cpn_dist.pipeline.stages import ALL_STEPS


def _parsed_sweep(text: str) -> str:
    from cpn_dist.labels.betas import parse_betas

    try:
        parse_betas(text)
    except CpnError as exc:  # checked when the config is read, not after training
        raise ValueError(f"'{text}' " + str(exc).split("': ", 1)[-1]) from None
    return text


# a β sweep as `cpn eval --betas` takes it: START:STOP:STEP or a comma list
BetaSweep = Annotated[str, AfterValidator(_parsed_sweep)]

# --------------------------------------------------------------------------------------------
# the pipeline config


class SplitsConfig(Section):
    train: str = Field("train_aug", description="images CPN, AffinityNet and DeepLab train on (and get pseudo labels)")
    eval: str = Field("train", description="images the pseudo labels are scored on (the paper: VOC train)")
    val: str = Field("val", description="images the segmentation model is scored on")
    test: str | None = Field(None, description="images segmented into the VOC test-server layout (no ground truth)")


class RunConfigs(Section):
    cpn: str = Field("voc_cpn_paper.yaml", description="run config of stage 1 (`stage: cpn`): path or packaged name")
    affinity: str | None = Field(None, description="run config of stage 2 (`stage: affinity`); null: no stage 2")
    segmentation: str = Field("voc_segmentation.yaml", description="run config of stage 3")


class RunOverrides(Section):
    cpn: list[str] = Field([], description="dotted overrides of the CPN run config")
    affinity: list[str] = Field([], description="dotted overrides of the affinity run config")
    segmentation: list[str] = Field([], description="dotted overrides of the segmentation run config")


class RunWeights(Section):
    cpn: str | None = Field(None, description="trained CPN weights to use instead of `train_cpn` (e.g. CPN.pth)")
    affinity: str | None = Field(None, description="trained AffinityNet weights instead of `train_affinity`")
    segmentation: str | None = Field(None, description="trained segmentation weights instead of `train_segmentation`")


class PackSettings(Section):
    segments: list[Annotated[int, Field(ge=2)]] = Field(
        [200], min_length=1, description="SLIC segment counts packed (`cpn pack`), besides the CPN config's"
    )
    shard_size: int = Field(1000, ge=1, description="samples per shard")


class CamSettings(Section):
    scales: list[float] = Field([0.5, 1.0, 1.5, 2.0], min_length=1, description="CAM inference scales (+ flips)")
    betas: BetaSweep = Field("0.20:0.60:0.01", description="β sweep of `eval_cams` (START:STOP:STEP or a comma list; "
                       "checked when the config is read; a best β on the sweep's edge is a warning)")
    format: Literal["released", "compact"] = Field(
        "released", description="CAM files of the `cams` step: released (NAME.npy, full-resolution float32) or "
        "compact (NAME.npz, `cpn infer --format compact`: block means, quantised; for COCO-sized runs)")
    compact_stride: int = Field(cam_store.DEFAULT_STRIDE, ge=1, le=64,
                                description="format compact: the block size in pixels")  # fmt: skip
    compact_dtype: Literal["uint8", "float16"] = Field(cam_store.DEFAULT_DTYPE,
                                                       description="format compact: the codes' type")  # fmt: skip


class PseudoSettings(Section):
    beta: float | None = Field(None, description="background score of the CAM pseudo labels; null: the best β")
    crf: bool = Field(False, description="refine the CAM pseudo labels with the dense CRF (PSA's settings)")


class PipelineConfig(Section):
    """``cpn pipeline --config FILE``: where the data is, which run config each stage uses, what to run."""

    voc_root: str | None = Field(
        None, description="VOC folder: JPEGImages/, Annotations/, SegmentationClass/, ImageSets/Segmentation/ "
        "(give it or coco_root)")
    coco_root: str | None = Field(
        None, description="COCO 2014 folder instead (SPLIT/*.jpg, annotations/instances_SPLIT.json; the splits "
        "are train2014, val2014): the coco_view step makes a VOC-layout view of it in {work_dir}/coco_view, "
        "pack reads the COCO folder")
    coco_protocol: Literal["recam", "sipe", "toco"] = Field(
        "recam", description="with coco_root: the labels and masks of `cpn pack --coco-protocol` (docs/coco.md)")
    work_dir: str = Field("runs/pipeline", description="every step writes under this folder")
    shards: str | None = Field(None, description="packed shards of the training split; null: {work_dir}/shards")
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    configs: RunConfigs = Field(default_factory=RunConfigs)
    overrides: RunOverrides = Field(default_factory=RunOverrides)
    weights: RunWeights = Field(default_factory=RunWeights)
    pack: PackSettings = Field(default_factory=PackSettings)
    cams: CamSettings = Field(default_factory=CamSettings)
    pseudo: PseudoSettings = Field(default_factory=PseudoSettings)
    segmentation_labels: Literal["auto", "rw", "cam"] = Field(
        "auto", description="what DeepLab trains on: rw, cam (the CAM pseudo labels), or auto (rw with stage 2)"
    )
    mean_iou: Literal["present", "all"] = Field(
        "present", description="the classes every score's mIoU averages over: present in the ground truth or the "
        "prediction (chainercv's nanmean; on VOC train/val every class), or all (the released evaluator)")
    workers: int = Field(2, ge=1, le=256, description="processes of the CPU steps (scoring, CRF, labels)")
    skip: list[Literal[ALL_STEPS]] = Field([], description="steps not to run")

    @model_validator(mode="after")
    def _one_data_folder(self) -> PipelineConfig:
        if self.voc_root is None and self.coco_root is None:
            raise ValueError("voc_root: required: a VOC folder (or coco_root: a COCO 2014 folder)")
        if self.voc_root is not None and self.coco_root is not None:
            raise ValueError("voc_root and coco_root: give one of them")
        if self.voc_root is not None and "coco_protocol" in self.model_fields_set:
            raise ValueError("coco_protocol: only with coco_root")
        if self.coco_root is not None and self.splits.test is not None:
            raise ValueError("splits.test: no test split with coco_root (COCO's test images have no annotations)")
        return self

    @model_validator(mode="after")
    def _rw_needs_stage2(self) -> PipelineConfig:
        if self.segmentation_labels == "rw" and self.configs.affinity is None:
            raise ValueError("segmentation_labels: 'rw' needs configs.affinity (stage 2)")
        return self
