"""What the demo trains and how it scores it: the models, the settings, one model's scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cpn_dist.config.yaml_io import PACKAGED_CONFIGS

DEMO_CONFIG = PACKAGED_CONFIGS / "demo.yaml"  # shipped with the package: found from any folder
# The models of the demo: name → dotted overrides of configs/demo.yaml.
DEMO_MODELS: dict[str, tuple[str, ...]] = {
    "baseline": ("loss.recipe=cam", "model.head=none"),  # L_cls on I only, the plain CAM
    # L_cls on I, I_h and I_hbar. (ohem_ratio 1: there is no CPCR without a head, and the trainer's
    # global OHEM selection would ask for refined CAMs that head none does not make.)
    "hiding": ("model.head=none", "loss.weights=[1.0, 0.0, 0.0]", "loss.ohem_ratio=1.0"),
    "cpn": (),  # the paper's recipe: L_cls + L_tcp + L_cpcr (OHEM), PCM + PRCM
}


REFERENCE_SIZE = 64  # the image size the demo configs' crop, scale range and grid cells are set for


def size_overrides(config: str | Path, size: int, reference: int = REFERENCE_SIZE) -> tuple[str, ...]:
    """The config's crop, scale range and grid cells scaled from the ``reference`` image size to ``size``: the
    same task drawn larger trains on the same share of each image (the CAM grid follows: the tiny backbone's
    stride 8 gives 8×8 at 64 px, 16×16 at 128, 28×28 at 224). The SLIC count stays: superpixels keep their
    size relative to the image."""
    if size == reference:
        return ()
    from cpn_dist.config.load import load_config

    data = load_config(config).data
    scale = size / reference
    low, high = (round(v * scale) for v in data.scale_range)
    cells = ", ".join(str(round(g * scale)) for g in data.patch.grid_sizes)
    return (f"data.crop={round(data.crop * scale)}", f"data.scale_range=[{low}, {high}]",
            f"data.patch.grid_sizes=[{cells}]")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo makes and how it scores it."""

    task: str = "parts-reliable"  # the synthetic task (cpn_dist.data.synth.parts.PART_STYLES): CPN's premise holds
    images: int = 1000  # synthetic images (80 % train_aug, of which half is `train`; 20 % val)
    size: int = REFERENCE_SIZE  # long side of every synthetic image (see size_overrides)
    data_seed: int = 0
    segments: int = 30  # SLIC segment count packed (configs/demo.yaml: data.patch.segments)
    warmup_epochs: int = 12  # the shared plain-CAM start of every model (see warm_up)
    eval_split: str = "train"  # CAMs are scored on training images, as the paper's Tables 1-4
    premise_images: int = 200  # images of the eval split on which CPN's premise is measured (parts tasks)
    eval_images: int | None = None  # score only the first N images of the split
    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    # 0, 0.0005, 0.001, 0.002 … 0.004, then 0.005 … 0.600 by 0.005: released CAMs of a plain CAM are low on
    # most of the object, so the best β can lie far below the usual 0.20 … 0.60 (β = 0 marks every pixel
    # where the CAM is positive)
    betas: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.002, 0.003, 0.004,
                                *(round(0.005 * i, 3) for i in range(1, 121)))  # fmt: skip
    figure_images: int = 4
    mean: str = "present"  # the mIoU over the classes present in GT or prediction, or "all" (the released mean)


@dataclass(frozen=True)
class ModelScores:
    """One model's scores: the β sweep's best point, its whole curve, and the part scores at the best β."""

    name: str
    best_beta: float
    miou: float
    foreground: float
    background: float
    body_recall: float | None = None  # the part columns: only on a folder with SegmentationPart/
    marker_recall: float | None = None
    body_magnitude: float | None = None
    marker_magnitude: float | None = None
    betas: list[float] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)
    premise: dict | None = None  # premise_share of the model's raw CAM, per patch kind (parts tasks)
    # a model with a refinement head: the same scores of its raw CAM (before the head; the refined CAM's are
    # the headline, as the paper scores it at inference)
    raw: ModelScores | None = None

    @property
    def beta_inside(self) -> bool:
        """Whether the best β lies strictly inside the swept range (not on its edge)."""
        return min(self.betas) < self.best_beta < max(self.betas)

    def to_json(self) -> dict:
        return {**self.__dict__, "raw": None if self.raw is None else self.raw.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> ModelScores:
        raw = data.get("raw")  # absent from the scores of a demo run before the raw CAM was scored
        return cls(**{**data, "raw": None if raw is None else cls.from_json(raw)})
