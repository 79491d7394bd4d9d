"""The one decoder of a raw shard sample: what it returns, and errors that name the shard, key and member."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from cpn_dist.data.shards.members import SampleDecodeError, decode_members, encode_labels, encode_png
from cpn_dist.data.shards.reader import decode_sample


def raw_sample(**extra):
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(buf, format="JPEG")
    labels = np.zeros(20)
    labels[4] = 1
    raw = {"__key__": "k1", "__url__": "s-000000.tar", "jpg": buf.getvalue(), "cls.json": encode_labels(labels),
           "slic20.png": encode_png(np.zeros((6, 8), np.uint16)), "slic5.png": encode_png(np.ones((6, 8), np.uint16))}
    return raw | extra


def test_members_decode_as_documented():
    got = decode_members(raw_sample(), ["jpg", "cls.json", "slic5.png", "seg.png"], optional=["seg.png"])
    assert got["jpg"].mode == "RGB" and got["jpg"].size == (8, 6)
    assert got["cls.json"].dtype == np.float32 and np.flatnonzero(got["cls.json"]).tolist() == [4]
    assert got["slic5.png"].dtype == np.uint16 and got["slic5.png"].shape == (6, 8)
    assert got["seg.png"] is None
    sample = decode_sample(raw_sample(**{"seg.png": encode_png(np.full((6, 8), 255, np.uint8))}))
    assert list(sample["slic"]) == [5, 20] and sample["seg"].dtype == np.uint8 and sample["image"].shape == (6, 8, 3)


def test_errors_name_the_shard_the_key_and_the_member():
    with pytest.raises(SampleDecodeError, match=r"^s-000000\.tar: sample k1 has no seg\.png \(ground truth\) member$"):
        decode_members(raw_sample(), ["jpg", "seg.png"])
    with pytest.raises(SampleDecodeError, match=r"^elsewhere: sample k1 has no cls\.json member$") as info:
        decode_members({k: v for k, v in raw_sample().items() if k != "cls.json"}, ["cls.json"], where="elsewhere")
    assert info.value.member == "cls.json" and info.value.key == "k1"
    bad = raw_sample(**{"jpg": b"not a jpeg", "cls.json": json.dumps([2] * 20).encode()})
    with pytest.raises(SampleDecodeError, match=r"^s-000000\.tar: sample k1: jpg does not decode \("):
        decode_sample(bad)
    with pytest.raises(SampleDecodeError, match=r"sample k1: cls\.json does not decode \(cls\.json must be a list"):
        decode_members(bad, ["cls.json"])
