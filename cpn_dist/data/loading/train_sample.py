"""One training sample from raw shard bytes: decode → joint augmentation → CP pair; and the
collation of samples into the training batch of docs/interfaces.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cpn_dist.data.loading.augment import augment, draw_augmentation
from cpn_dist.data.loading.cp_pair import draw_patch_mask
from cpn_dist.data.loading.seeding import sample_rngs
from cpn_dist.data.shards.members import decode_members, slic_member
from cpn_dist.errors import CpnError

if TYPE_CHECKING:
    from cpn_dist.config.run import DataConfig, PatchConfig
    from cpn_dist.data.datasets.info import DatasetInfo

BATCH_KEYS = ("key", "image", "mask", "valid", "labels", "lam")


@dataclass(frozen=True)
class TrainSampleMaker:
    """Callable turning a raw webdataset sample into a training sample of numpy arrays. Its
    randomness comes from :func:`~cpn_dist.data.loading.seeding.sample_rngs` (seed, epoch, key) only. ``data``:
    the run config's ``data`` section (the augmentation), ``patch``: its ``data.patch`` (the CP pairs);
    ``num_foreground``: C-1 of the shards' dataset, the labels each ``cls.json`` holds (None: VOC's)."""

    data: DataConfig
    patch: PatchConfig
    seed: int
    epoch: int
    num_foreground: int | None = None

    @classmethod
    def from_config(cls, data: DataConfig, seed: int, epoch: int,
                    dataset: DatasetInfo | None = None) -> TrainSampleMaker:  # fmt: skip
        """The maker of ``data``'s shards; ``dataset``: theirs when already known (else read from meta.json)."""
        from cpn_dist.data.shards.reader import shards_dataset

        dataset = dataset if dataset is not None else shards_dataset(data)
        return cls(data, data.patch, seed, epoch, dataset.num_foreground)

    @property
    def members(self) -> tuple[str, ...]:
        """The member suffixes a sample needs (others are not even read into memory)."""
        base = ("jpg", "cls.json")
        return (*base, slic_member(self.patch.segments)) if self.patch.kind == "superpixel" else base

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Stage 1: decode the JPEG, the labels and (superpixel patches) the SLIC map."""
        key = raw["__key__"]
        where = f"{raw.get('__url__', '?')}: sample {key}"
        got = decode_members(raw, ("jpg", "cls.json"), num_foreground=self.num_foreground)
        slic = None
        if self.patch.kind == "superpixel":
            name = slic_member(self.patch.segments)
            if name not in raw:
                packed = sorted(k for k in raw if k.startswith("slic"))
                raise CpnError(f"{where} has no {name} (data.patch.segments={self.patch.segments}; "
                               f"packed: {', '.join(packed) or 'none'})")  # fmt: skip
            slic = decode_members(raw, (name,))[name]
        return {"key": key, "where": where, "pil": got["jpg"], "slic": slic, "labels": got["cls.json"]}

    def augment_sample(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Stage 2: joint augmentation of the image and its SLIC map, seeded by (seed, epoch, key)."""
        aug_rng, _ = sample_rngs(self.seed, self.epoch, sample["key"])
        image, slic = sample.pop("pil"), sample.pop("slic")
        sample["n_superpixels"] = int(slic.max()) + 1 if slic is not None else 0
        try:
            sample["image"], valid, sample["ids"] = augment(
                image, slic, draw_augmentation(aug_rng, self.data, *image.size), self.data,
                pad_id=sample["n_superpixels"],
            )  # fmt: skip
        except ValueError as exc:
            raise CpnError(f"{sample['where']}: {exc}") from None
        sample["valid"] = valid[None]
        return sample

    def cp_pair(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Stage 3: the CP pair's mask m and λ, seeded by (seed, epoch, key). I_h and I_hbar are made
        from the image and m where the model runs (:func:`cpn_dist.data.loading.cp_pair.split_image`, in the
        training step on the device): a third of the bytes to move, and no work in the workers."""
        _, patch_rng = sample_rngs(self.seed, self.epoch, sample["key"])
        pm = draw_patch_mask(sample["valid"][0], sample.pop("ids"), sample.pop("n_superpixels"), patch_rng,
                             self.patch)  # fmt: skip
        del sample["where"]
        sample["mask"] = pm.mask[None]
        sample["lam"] = np.float32(pm.lam)
        return sample

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        """decode → augment → CP pair of one raw sample."""
        return self.cp_pair(self.augment_sample(self.decode(raw)))

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples)


def batch_tensor(shape: tuple[int, ...], dtype):
    """An empty tensor for a batch; inside a DataLoader worker it is allocated in shared memory, so
    handing it to the main process copies nothing (what torch's default_collate does)."""
    import torch
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into the training batch (docs/interfaces.md, "Training batch"): the image and the
    CP pair's mask m; I_h = I·m and I_hbar = I − I·m are made where the model runs."""
    import torch

    n = len(samples)
    batch: dict[str, Any] = {"key": [s["key"] for s in samples]}
    for name, dtype in (("image", torch.float32), ("mask", torch.float32), ("valid", torch.bool),
                        ("labels", torch.float32), ("lam", torch.float32)):  # fmt: skip
        out = batch_tensor((n, *samples[0][name].shape), dtype)
        np.stack([s[name] for s in samples], out=out.numpy())
        batch[name] = out
    return {name: batch[name] for name in BATCH_KEYS}
