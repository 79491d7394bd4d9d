"""The image + label-map loader of the later stages (AffinityNet, segmentation)."""

import shutil

import numpy as np
import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.data import build_train_loader
from cpn_dist.data.loading.labelled import LabelledSampleMaker
from cpn_dist.errors import CpnError
from tests.train_support import pack_shards


@pytest.fixture(scope="module")
def shards(synth_voc, tmp_path_factory):
    return pack_shards(synth_voc, tmp_path_factory.mktemp("labelled") / "shards")


def _data(shards, **kw):
    overrides = [f"data.shards={shards}", "data.crop=64", "data.scale_range=[64,96]", "data.workers=0",
                 "data.deterministic=true"] + [f"data.{k}={v}" for k, v in kw.items()]  # fmt: skip
    return load_config(None, overrides).data


def _batches(data, label_dir, world_size=1, rank=0, micro=4, epoch=0):
    maker = LabelledSampleMaker.from_config(data, label_dir, seed=1, epoch=epoch)
    loader, steps = build_train_loader(data, micro_size=micro, global_size=4, rank=rank, world_size=world_size,
                                       seed=1, epoch=epoch, maker=maker)  # fmt: skip
    return list(loader), steps


def test_batches_hold_image_and_label_map_that_move_together(shards, synth_voc):
    data = _data(shards)
    batches, steps = _batches(data, synth_voc / "SegmentationClass")
    assert len(batches) == steps and steps == 32 // 4
    for batch in batches:
        assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == torch.int64
        assert batch["valid"].shape == (4, 1, 64, 64)
        label = batch["label"]
        assert set(label.unique().tolist()) <= set(range(21)) | {255}
        assert (label[~batch["valid"][:, 0]] == 255).all()  # crop padding is ignored
        assert (batch["image"][~batch["valid"].expand(-1, 3, -1, -1)] == 0).all()
        for i in range(4):
            present = set(label[i].unique().tolist()) - {0, 255}
            assert present <= {c + 1 for c in np.flatnonzero(batch["labels"][i].numpy())}


def test_label_map_follows_the_image_through_flip_resize_crop(shards, synth_voc, tmp_path):
    """With jitter off, object pixels (label > 0) are the saturated class colours of the synthetic data
    and background pixels are muted: the mean saturation of labelled-object pixels is far higher."""
    data = _data(shards, color_jitter="[0,0,0,0]")
    batches, _ = _batches(data, synth_voc / "SegmentationClass")
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    rgb = torch.cat([b["image"] for b in batches]) * std + mean
    label = torch.cat([b["label"] for b in batches])
    saturation = rgb.amax(1) - rgb.amin(1)
    fg, bg = saturation[(label > 0) & (label < 255)], saturation[label == 0]
    assert fg.mean() > bg.mean() + 0.2


def test_global_batches_do_not_depend_on_the_layout(shards, synth_voc):
    data = _data(shards)
    one, _ = _batches(data, synth_voc / "SegmentationClass", micro=4)
    parts = [_batches(data, synth_voc / "SegmentationClass", world_size=2, rank=r, micro=2)[0] for r in (0, 1)]
    for step, batch in enumerate(one):
        keys = parts[0][step]["key"] + parts[1][step]["key"]
        assert keys == batch["key"]
        label = torch.cat([parts[0][step]["label"], parts[1][step]["label"]])
        assert torch.equal(label, batch["label"])


def test_missing_label_map_names_the_file(shards, synth_voc, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(synth_voc / "SegmentationClass", labels)
    victim = sorted(labels.iterdir())[0]
    victim.unlink()
    with pytest.raises(CpnError, match=f"{victim.name}: label PNG not found"):
        # every image of the split is read in one epoch
        _batches(_data(shards), labels, micro=4)
    with pytest.raises(CpnError, match="label folder not found"):
        LabelledSampleMaker.from_config(_data(shards), tmp_path / "nope", 0, 0)
