"""Data: VOC and COCO reading, synthetic VOC and COCO, ``cpn pack`` shards, the shard reader (and the
dataset its meta.json records: ``shards_dataset``), augmentation, CP pairs and the training loader.

The main entry points are importable from here; they load lazily so that ``cpn pack`` does not
import torch.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "build_train_loader": "cpn_dist.data.loader",
    "read_shard_samples": "cpn_dist.data.shards",
    "resolve_shards": "cpn_dist.data.shards",
    "read_meta": "cpn_dist.data.shards",
    "shards_dataset": "cpn_dist.data.shards",
    "pack_split": "cpn_dist.data.pack",
    "pack_coco_split": "cpn_dist.data.pack",
    "verify_shards": "cpn_dist.data.verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
