"""Run-config sections of stage 1 and of the trainer every stage shares: the data and its CP pairs,
the CPN model and loss, the batch layout, the optimizer, training, output and logging.

Part of the run configuration of :mod:`cpn_dist.config` (``data.*``, ``model.*``, ``loss.*`` …); kept in
their own module so each stays small. Import them from :mod:`cpn_dist.config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cpn_dist.config.base import NonNegativeFloat, Pair, PositiveFloat, PositiveInt, Section


class PatchConfig(Section):
    """How the complementary patch (CP) pair is drawn (paper Sec. 3.2)."""

    kind: Literal["superpixel", "grid"] = Field(
        "superpixel", description="patch template: SLIC superpixels or square grid cells"
    )
    segments: int = Field(
        200, ge=2, le=100_000, description="S_N, the SLIC segment count (must be packed in the shards)"
    )
    grid_sizes: list[PositiveInt] = Field(
        [56, 112], min_length=1, description="K, the grid cell sizes S drawn from evenly (pixels)"
    )
    hide_prob: float = Field(0.5, gt=0.0, lt=1.0, description="p_h, probability that a patch is hidden in I_h")
    lambda_mode: Literal["pixels", "patches"] = Field(
        "pixels", description="lambda = visible pixel fraction (released code) or 1 - N_h/N (paper)"
    )
    sampling: Literal["bernoulli", "released"] = Field(
        "bernoulli",
        description="bernoulli: each patch hidden with p_h (paper); "
        "released: floor((K+1)/2) ids drawn with replacement",
    )


class DataConfig(Section):
    shards: str = Field(
        "shards/voc", description="a folder written by `cpn pack`, or a webdataset URL/brace pattern"
    )
    split: str = Field("train_aug", description="which split's shards to read from a folder")
    crop: int = Field(448, ge=16, le=4096, description="square training crop (pixels)")
    scale_range: Pair[PositiveInt] = Field(
        [448, 768], description="random long-side resize range (pixels)"
    )
    mean: list[float] = Field(
        [0.485, 0.456, 0.406], min_length=3, max_length=3, description="RGB normalisation mean (0..1)"
    )
    std: list[PositiveFloat] = Field(
        [0.229, 0.224, 0.225], min_length=3, max_length=3, description="RGB normalisation std (0..1)"
    )
    color_jitter: list[NonNegativeFloat] = Field(
        [0.3, 0.3, 0.3, 0.1], min_length=4, max_length=4,
        description="brightness, contrast, saturation, hue jitter of the image only (0 = off)",
    )
    workers: int = Field(2, ge=0, le=256, description="data loader worker processes per rank")
    deterministic: bool = Field(
        False,
        description="elastic determinism: the global batches (samples, augmentation, CP masks) depend only on "
        "(seed, epoch, shards), not on world size, micro-batch or workers; needs local tar shards",
    )
    shuffle_buffer: int = Field(
        1000, ge=0, le=1_000_000, description="samples in each worker's shuffle buffer (streaming mode; 0 = off)"
    )
    meta: str | None = Field(
        None, description="the meta.json of the shards (path or http(s) URL); null = beside the shards"
    )
    patch: PatchConfig = Field(default_factory=PatchConfig)

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        hi = self.scale_range[1]
        if self.crop > hi:  # every image is resized to a long side <= hi: each crop would be mostly padding
            raise ValueError(f"crop: {self.crop} is larger than every training image (data.scale_range resizes "
                             f"the long side to at most {hi} pixels); lower data.crop or raise data.scale_range")
        if self.color_jitter[3] > 0.5:
            raise ValueError(f"color_jitter: the hue jitter (the 4th value) must be <= 0.5, got {self.color_jitter[3]}")
        return self


class ModelConfig(Section):
    backbone: Literal["resnet38d", "efficientnet_lite0", "tiny"] = Field(
        "resnet38d", description="feature extractor: resnet38d (the paper's), efficientnet_lite0 (ImageNet weights "
        "packaged: model.weights=imagenet; its input normalisation is mean 0.498, std 0.502), tiny (tests, demo)"
    )
    head: Literal["official", "paper", "pcm", "none"] = Field(
        "paper", description="CAM refinement head: official (the released PCM+PRCM), paper (eqs. 7-12), pcm (the "
        "paper's PCM without PRCM: Table 2's '+ PCM' rows), none (plain CAM)"
    )
    weights: str | None = Field(
        None, description="initial weights (.pth: released ResNet38 init, released CPN, ours; imagenet: the packaged "
        "ImageNet weights of efficientnet_lite0)"
    )
    allow_pickle: bool = Field(
        False, description="load model.weights, and the checkpoints a run resumes, even when they need full "
        "unpickling: that RUNS CODE STORED IN THE FILE. Only for files whose source you trust; off, such a file is "
        "refused (tensors, numbers and strings load either way)"
    )
    dropout: float = Field(
        1.0, ge=0.0, le=1.0,
        description="scale of the released dropout rates (0.5 before fc8, 0.3/0.5 in b6/b7); 0 = no dropout",
    )


class LossConfig(Section):
    recipe: Literal["paper", "official", "cam"] = Field(
        "paper", description="paper: eqs. 13-17; official: the released train_cpn.py; cam: L_cls on I only (baseline)"
    )
    ohem_ratio: float = Field(0.2, gt=0.0, le=1.0, description="fraction of CPCR elements kept by OHEM (1 = no OHEM)")
    ohem_scope: Literal["batch", "image"] = Field(
        "batch", description="top-k over the whole global batch, or per image"
    )
    weights: list[NonNegativeFloat] = Field(
        [1.0, 1.0, 1.0], min_length=3, max_length=3, description="w1, w2, w3 of L_cls, L_tcp, L_cpcr (eq. 17)"
    )
    bg_power: float = Field(
        1.0, gt=0.0, le=10.0, description="paper recipe: background power α, Y^0 = (1 - max_c Y^c)^α (eq. 16)"
    )
    cpcr_stop_gradient: bool = Field(
        True, description="paper recipe: L_cpcr sends no gradient into the raw CAMs Y_o, Y_h, Y_hbar, only into the "
        "refined CAMs (Sec. 3.1's stop-gradient, SEAM's ECR, the released code); false = eq. 15 read literally",
    )
    tcp_background: bool = Field(
        True, description="paper recipe: L_tcp averages over the background channel of eq. 16 too (21 channels); "
        "false = the 20 foreground channels, as the released code",
    )
    global_ohem_pass: Literal["auto", "full"] = Field(
        "auto", description="global OHEM with gradient accumulation: auto = when L_cpcr trains only the head, "
        "each micro-step backpropagates L_cls + L_tcp at once and the head alone is re-run for L_cpcr after the "
        "selection (+0.5 % FLOPs at ResNet38d, crop 448); full = a no-grad forward over the window first (+36 %; "
        "always for the literal recipe)",
    )

    @model_validator(mode="after")
    def _official_is_the_released_block(self) -> LossConfig:
        if self.recipe == "official" and not (self.cpcr_stop_gradient and self.tcp_background):
            raise ValueError("recipe: 'official' reproduces the released loss block; cpcr_stop_gradient and "
                             "tcp_background apply to recipe 'paper' only")
        return self


class BatchConfig(Section):
    global_size: int = Field(4, ge=1, description="images per optimizer step over all ranks (the paper: 4)")
    micro_size: int = Field(4, ge=1, description="images per forward on one device")

    @model_validator(mode="after")
    def _micro_divides_global(self) -> BatchConfig:
        if self.global_size % self.micro_size:
            raise ValueError(
                f"micro_size: {self.micro_size} does not divide batch.global_size {self.global_size}"
            )
        return self


class OptimConfig(Section):
    lr: float = Field(0.01, gt=0.0, description="base learning rate (backbone weights)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0.0, description="weight decay of weight tensors (biases get none)")
    poly_power: float = Field(0.9, ge=0.0, description="lr = base * (1 - step/total)^power")
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm (null = no clipping)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="optim.lr at another global batch than optim.reference_batch: none (unchanged), linear "
        "(× global / reference, Goyal et al. 2017) or sqrt (× its square root)"
    )
    reference_batch: int = Field(4, ge=1, description="the global batch optim.lr was chosen for (the paper's 4)")
    warmup_steps: int = Field(
        0, ge=0, description="optimizer steps of linear warm-up: the lr rises from optim.warmup_start × lr to the "
        "poly schedule's value (0: none)"
    )
    warmup_epochs: float = Field(0.0, ge=0.0, description="the warm-up in epochs instead (give one of the two)")
    warmup_start: float = Field(0.1, gt=0.0, le=1.0, description="the warm-up's first lr, as a fraction of the lr")

    @model_validator(mode="after")
    def _one_warmup(self) -> OptimConfig:
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError("warmup_steps and warmup_epochs: give one (the other 0)")
        return self


class TrainConfig(Section):
    epochs: int = Field(8, ge=1, description="passes over the training split: the run's length unless max_steps is set")
    max_steps: int | None = Field(
        None, ge=1, description="the run's length in optimizer steps, replacing epochs (it runs into further epochs "
        "as needed; the poly schedule ends here); null = epochs × steps per epoch"
    )  # fmt: skip
    seed: int = Field(0, ge=0, description="seed of every random choice (data order, augmentation, CP masks, init)")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="mixed precision through Accelerate")
    checkpoint_every: int = Field(1000, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(3, ge=1, description="checkpoints kept on disk")
    on_nonfinite: Literal["skip", "stop"] = Field(
        "skip", description="a non-finite loss: skip that optimizer step (and report it), or stop the run"
    )
    compile: bool = Field(False, description="wrap the model in torch.compile")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels-last memory format for the model and its inputs (auto: on CUDA, off on CPU)"
    )


class OutputConfig(Section):
    dir: str = Field("runs/cpn", description="checkpoints, TensorBoard logs and final weights go here")


class LogConfig(Section):
    every: int = Field(20, ge=1, description="optimizer steps between scalar logs")
    image_every: int = Field(500, ge=1, description="optimizer steps between TensorBoard image panels")
    peak_flops: float | None = Field(
        None, gt=0, description="peak FLOP/s of one device for MFU (null: known GPUs from a table, none on CPU)"
    )
