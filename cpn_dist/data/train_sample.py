"""One training sample from raw shard bytes: decode → joint augmentation → CP pair; and the
collation of samples into the training batch of docs/interfaces.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cpn_dist.data.augment import AugmentParams, augment, draw_augmentation
from cpn_dist.data.cp_pair import PatchParams, draw_patch_mask, split_image
from cpn_dist.data.seeding import sample_rngs
from cpn_dist.data.shards import decode_image, decode_labels, decode_slic, slic_member
from cpn_dist.errors import CpnError

BATCH_KEYS = ("key", "image", "image_h", "image_hbar", "mask", "valid", "labels", "lam")


@dataclass(frozen=True)
class TrainSampleMaker:
    """Callable turning a raw webdataset sample into a training sample of numpy arrays. Its
    randomness comes from :func:`~cpn_dist.data.seeding.sample_rngs` (seed, epoch, key) only."""

    augment: AugmentParams
    patch: PatchParams
    seed: int
    epoch: int

    @classmethod
    def from_config(cls, data, seed: int, epoch: int) -> TrainSampleMaker:
        return cls(AugmentParams.from_config(data), PatchParams.from_config(data.patch), seed, epoch)

    @property
    def members(self) -> tuple[str, ...]:
        """The member suffixes a sample needs (others are not even read into memory)."""
        base = ("jpg", "cls.json")
        return (*base, slic_member(self.patch.segments)) if self.patch.kind == "superpixel" else base

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw["__key__"]
        where = f"{raw.get('__url__', '?')}: sample {key}"
        slic = None
        try:
            image = decode_image(raw["jpg"])
            labels = decode_labels(raw["cls.json"])
            if self.patch.kind == "superpixel":
                name = slic_member(self.patch.segments)
                if name not in raw:
                    packed = sorted(k for k in raw if k.startswith("slic"))
                    raise CpnError(f"{where} has no {name} (data.patch.segments={self.patch.segments}; "
                                   f"packed: {', '.join(packed) or 'none'})")  # fmt: skip
                slic = decode_slic(raw[name])
        except KeyError as exc:
            raise CpnError(f"{where} has no {exc.args[0]} member") from None
        except (OSError, ValueError) as exc:
            raise CpnError(f"{where} does not decode ({exc})") from None
        aug_rng, patch_rng = sample_rngs(self.seed, self.epoch, key)
        draw = draw_augmentation(aug_rng, self.augment, *image.size)
        n_superpixels = int(slic.max()) + 1 if slic is not None else 0
        try:
            crop, valid, ids = augment(image, slic, draw, self.augment, pad_id=n_superpixels)
        except ValueError as exc:
            raise CpnError(f"{where}: {exc}") from None
        patch = draw_patch_mask(valid, ids, n_superpixels, patch_rng, self.patch)
        # I_h and I_hbar are made per batch in collate: two products on the stacked batch instead of
        # two more full-size arrays per sample (measured faster; see benchmarks/bench_data.py).
        return {"key": key, "image": crop, "mask": patch.mask[None], "valid": valid[None],
                "labels": labels, "lam": np.float32(patch.lam)}  # fmt: skip


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into the training batch (docs/interfaces.md, "Training batch"), making the CP
    pair I_h = I·m, I_hbar = I·(1−m) on the stacked batch."""
    import torch

    image = torch.from_numpy(np.stack([s["image"] for s in samples]))
    mask = torch.from_numpy(np.stack([s["mask"] for s in samples])).to(torch.float32)
    image_h, image_hbar = split_image(image, mask)
    return {
        "key": [s["key"] for s in samples],
        "image": image,
        "image_h": image_h,
        "image_hbar": image_hbar,
        "mask": mask,
        "valid": torch.from_numpy(np.stack([s["valid"] for s in samples])),
        "labels": torch.from_numpy(np.stack([s["labels"] for s in samples])),
        "lam": torch.from_numpy(np.stack([s["lam"] for s in samples])),
    }
