"""Training samples of an image and a per-pixel label map: the data of the later stages
(AffinityNet on affinity labels, the segmentation model on pseudo labels).

Labels live beside the shards, in a folder of PNGs keyed by image id (``{label_dir}/{key}.png``,
uint8 class indices, 255 = ignore, the size of the original image) — what ``cpn pseudo`` and the
later stages write. The image comes from the shards. Both go through the same joint augmentation as
CPN training (random long-side resize, flip, colour jitter on the image, normalise, random crop),
the label map by nearest neighbour; crop padding is labelled 255 (ignored).

Use it through the training loader: ``build_train_loader(data, ..., maker=LabelledSampleMaker(...))``;
the batch is ``{"key", "image" N×3×S×S float32, "label" N×S×S int64, "labels" N×(C-1), "valid" N×1×S×S}``
(S the crop, C the classes of the shards' dataset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpn_dist.data.datasets.voc import IGNORE, read_label_png
from cpn_dist.data.loading.augment import augment, draw_augmentation
from cpn_dist.data.loading.seeding import sample_rngs
from cpn_dist.data.loading.train_sample import batch_tensor
from cpn_dist.data.shards.members import decode_members
from cpn_dist.errors import CpnError

if TYPE_CHECKING:
    from cpn_dist.config.run import DataConfig

LABELLED_KEYS = ("key", "image", "label", "labels", "valid")


@dataclass(frozen=True)
class LabelledSampleMaker:
    """Raw shard sample + ``{label_dir}/{key}.png`` → augmented image and label map. Randomness from
    (seed, epoch, key) only, as for CPN samples."""

    data: DataConfig  # the run config's data section: the augmentation
    label_dir: str
    seed: int
    epoch: int
    num_foreground: int | None = None  # C-1 of the shards' dataset (None: VOC's)

    @classmethod
    def from_config(cls, data, label_dir: str | Path, seed: int, epoch: int) -> LabelledSampleMaker:
        """The maker of ``data``'s shards (their dataset from meta.json) and the label maps in ``label_dir``."""
        from cpn_dist.data.shards.reader import shards_dataset

        if not Path(label_dir).is_dir():
            raise CpnError(f"{label_dir}: label folder not found")
        return cls(data, str(label_dir), seed, epoch, shards_dataset(data).num_foreground)

    @property
    def members(self) -> tuple[str, ...]:
        return ("jpg", "cls.json")

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw["__key__"]
        got = decode_members(raw, ("jpg", "cls.json"), num_foreground=self.num_foreground)
        image, labels = got["jpg"], got["cls.json"]
        path = Path(self.label_dir) / f"{key}.png"
        label = read_label_png(path)
        if label.shape != (image.size[1], image.size[0]):
            raise CpnError(f"{path}: label map is {label.shape[1]}×{label.shape[0]}, "
                           f"image is {image.size[0]}×{image.size[1]}")  # fmt: skip
        aug_rng, _ = sample_rngs(self.seed, self.epoch, key)
        draw = draw_augmentation(aug_rng, self.data, *image.size)
        out, valid, ids = augment(image, label, draw, self.data, pad_id=IGNORE)
        return {"key": key, "image": out, "label": ids.astype(np.int64), "labels": labels, "valid": valid[None]}

    # The streaming loader's pipeline stages (decode → augment → CP pair): a labelled sample is made
    # in the first; the other two pass it on.
    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        return self(raw)

    @staticmethod
    def augment_sample(sample: dict[str, Any]) -> dict[str, Any]:
        return sample

    cp_pair = augment_sample

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {"key": [s["key"] for s in samples]}
        for name, dtype in (("image", torch.float32), ("label", torch.int64), ("labels", torch.float32),
                            ("valid", torch.bool)):  # fmt: skip
            out = batch_tensor((len(samples), *samples[0][name].shape), dtype)
            np.stack([s[name] for s in samples], out=out.numpy())
            batch[name] = out
        return batch
