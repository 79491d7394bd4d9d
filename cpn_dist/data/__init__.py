"""Data, by job: :mod:`~cpn_dist.data.datasets` (what a dataset is, and the readers of VOC and COCO),
:mod:`~cpn_dist.data.synth` (synthetic VOC and COCO), :mod:`~cpn_dist.data.shards` (``cpn pack``, the shard
reader and the dataset its meta.json records: ``shards_dataset``, ``cpn shards verify``),
:mod:`~cpn_dist.data.loading` (augmentation, CP pairs and the training loaders, over shards only), and
:mod:`~cpn_dist.data.inputs` (the images inference reads: a VOC folder or shards).

The main entry points are importable from here; they load lazily so that ``cpn pack`` does not
import torch.
"""

from __future__ import annotations

from cpn_dist import lazy_exports

_EXPORTS = {
    "cpn_dist.data.loading.loader": ("build_train_loader",),
    "cpn_dist.data.shards.reader": ("read_shard_samples", "resolve_shards", "read_meta", "shards_dataset"),
    "cpn_dist.data.shards.pack": ("pack_split", "pack_coco_split"),
    "cpn_dist.data.shards.verify": ("verify_shards",),
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
