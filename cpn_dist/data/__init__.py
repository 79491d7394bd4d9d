"""Data, by job: :mod:`~cpn_dist.data.datasets` (what a dataset is, and the readers of VOC and COCO),
:mod:`~cpn_dist.data.synth` (synthetic VOC and COCO), :mod:`~cpn_dist.data.shards` (``cpn pack``, the shard
reader and the dataset its meta.json records: ``shards_dataset``, ``cpn shards verify``),
:mod:`~cpn_dist.data.loading` (augmentation, CP pairs and the training loaders, over shards only), and
:mod:`~cpn_dist.data.inputs` (the images inference reads: a VOC folder or shards).

The main entry points are importable from here; they load lazily so that ``cpn pack`` does not
import torch.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "build_train_loader": "cpn_dist.data.loading.loader",
    "read_shard_samples": "cpn_dist.data.shards.reader",
    "resolve_shards": "cpn_dist.data.shards.reader",
    "read_meta": "cpn_dist.data.shards.reader",
    "shards_dataset": "cpn_dist.data.shards.reader",
    "pack_split": "cpn_dist.data.shards.pack",
    "pack_coco_split": "cpn_dist.data.shards.pack",
    "verify_shards": "cpn_dist.data.shards.verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
