"""The one labels-file reader (``--labels`` of ``cpn pack`` and of the inference commands): every format
either command accepted before, and the 0/1 rule ``cpn pack`` adds."""

import json

import numpy as np
import pytest

from cpn_dist.data.datasets.voc import read_labels_file
from cpn_dist.data.shards.pack_source import pack_labels
from cpn_dist.errors import CpnError

CAT_DOG = [0.0] * 20
CAT_DOG[7] = CAT_DOG[11] = 1.0


def write_json(tmp_path, obj, name="labels.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_numbers_names_and_the_released_npy_give_the_same_vectors(tmp_path):
    npy = tmp_path / "cls_labels.npy"
    np.save(npy, {"a": np.asarray(CAT_DOG, np.float32), 7: np.asarray(CAT_DOG, np.float64)})
    got = read_labels_file(npy)
    assert list(got) == ["a", "7"]
    for path in (npy, write_json(tmp_path, {"a": CAT_DOG, "7": [[v] for v in CAT_DOG]}),  # nested: flattened
                 write_json(tmp_path, {"a": ["cat", "dog"], "7": ["dog", "cat", "cat"]}, "names.json"),
                 write_json(tmp_path, {"a": [str(int(v)) for v in CAT_DOG], "7": CAT_DOG}, "strings.json")):
        got = read_labels_file(path)
        assert list(got) == ["a", "7"], path
        for y in got.values():
            assert y.dtype == np.float32 and y.tolist() == CAT_DOG, path
    assert read_labels_file(write_json(tmp_path, {"a": "person"}))["a"].tolist() == [0.0] * 14 + [1.0] + [0.0] * 5


def test_inference_keeps_class_weights_and_pack_refuses_them(tmp_path):
    soft = [0.0] * 20
    soft[3] = 0.5
    path = write_json(tmp_path, {"a": soft})
    assert read_labels_file(path)["a"].tolist() == soft
    with pytest.raises(CpnError, match=r"a: expected 20 values in \{0, 1\}"):
        pack_labels(path)
    assert pack_labels(write_json(tmp_path, {"a": ["cat", "dog"]}, "names.json")) == {"a": [int(v) for v in CAT_DOG]}


@pytest.mark.parametrize("content, message", [
    ({"a": [1] * 19}, "a: expected 20 values or a list of class names, got 19"),
    ({"a": []}, "a: expected 20 values"),
    ({"a": ["cat", "unicorn"]}, r"a: unknown class names \['unicorn'\]"),
    ({"a": [[1, 0], [1]]}, "a: expected 20 values"),
    ([CAT_DOG], "must map image ids to labels"),
])  # fmt: skip
def test_bad_entries_are_named(tmp_path, content, message):
    with pytest.raises(CpnError, match=message):
        read_labels_file(write_json(tmp_path, content))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CpnError, match="labels file not found"):
        read_labels_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "empty.npy").write_bytes(b"")
    for name in ("bad.json", "empty.npy"):
        with pytest.raises(CpnError, match="unreadable labels file"):
            read_labels_file(tmp_path / name)
    np.save(tmp_path / "array.npy", np.zeros((3, 20)))
    with pytest.raises(CpnError, match="must map image ids to labels"):
        read_labels_file(tmp_path / "array.npy")
