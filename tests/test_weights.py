"""load_weights (released init / released CPN / our checkpoints), its errors, the MXNet converter, and
the `cpn weights` command."""

import logging

import numpy as np
import pytest
import torch

from cpn_dist.cpn.model import build_model
from cpn_dist.errors import CpnError
from cpn_dist.models import load_weights
from cpn_dist.models.mxnet import read_ndarray_file, resnet38_torch_name
from tests.conftest import run_cpn
from tests.reference.mxnet_writer import write_ndarray_file
from tests.reference.released_net import released_shapes


def _tiny_state(seed=0):
    torch.manual_seed(seed)
    return build_model("tiny", "official").state_dict()


def test_plain_state_dict_ours_and_prefixed(tmp_path):
    sd = _tiny_state(1)
    for i, obj in enumerate((sd, {"model": sd, "step": 3}, {"state_dict": {"module." + k: v for k, v in sd.items()}})):
        path = tmp_path / f"w{i}.pth"
        torch.save(obj, path)
        torch.manual_seed(2)
        m = build_model("tiny", "official")
        report = load_weights(m, path)
        assert report.missing == [] and report.unexpected == []
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())


def test_checkpoint_with_non_tensor_state_is_refused_naming_the_opt_in_and_loads_with_it(tmp_path, caplog):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": _tiny_state(1), "numpy_rng": np.random.get_state()}, path)
    with pytest.raises(CpnError, match="needs full unpickling") as err:
        load_weights(build_model("tiny", "official"), path)
    assert "numpy.ndarray" in str(err.value) and "--allow-pickle" in str(err.value) and "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        report = load_weights(build_model("tiny", "official"), path, allow_pickle=True)
    assert report.loaded and "full unpickling" in caplog.text


def test_head_none_reports_head_keys_as_unexpected(tmp_path):
    path = tmp_path / "cpn.pth"
    torch.save(_tiny_state(), path)
    report = load_weights(build_model("tiny", "none"), path)
    assert set(report.unexpected) == {"f8_3.weight", "f8_4.weight", "f9.weight", "f10.weight"}
    assert report.missing == []
    assert "ignored" in report.summary()


def test_errors_name_the_file_and_key(tmp_path):
    m = build_model("tiny", "official")
    with pytest.raises(CpnError, match="not found"):
        load_weights(m, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CpnError, match="bad.pth: not a PyTorch checkpoint") as err:
        load_weights(m, bad)
    assert "\n" not in str(err.value)
    shape = tmp_path / "shape.pth"
    torch.save({"f9.weight": torch.zeros(192, 200, 1, 1)}, shape)
    expected = r"key 'f9.weight' has shape \(192, 200, 1, 1\), the model expects \(192, 195, 1, 1\)"
    with pytest.raises(CpnError, match=expected):
        load_weights(m, shape)
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.layer0.weight": torch.zeros(3)}, foreign)
    with pytest.raises(CpnError, match="none of its 1 keys match"):
        load_weights(m, foreign)
    notsd = tmp_path / "list.pth"
    torch.save([1, 2, 3], notsd)
    with pytest.raises(CpnError, match="not a state dict"):
        load_weights(m, notsd)


def _mx_name(torch_name: str) -> str:
    """The MXNet ResNet38 name of a released PyTorch name (the inverse mapping, written for the test)."""
    fields = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
    parts = torch_name.split(".")
    if parts[0] == "conv1a":
        return "arg:conv1a_weight"
    if parts[0] == "bn7":
        return ("aux:" if "running" in parts[1] else "arg:") + "bn7_" + fields[parts[1]]
    block, layer, field = parts
    stage, _, index = block[1:].partition("_")
    unit = f"{stage}a" if not index else f"{stage}b{index}"
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        return f"arg:res{unit}_{branch}_weight"
    return ("aux:" if "running" in field else "arg:") + f"bn{unit}_{branch}_{fields[field]}"


def test_every_released_backbone_name_maps_from_mxnet():
    names = [k for k in released_shapes() if not k.startswith(("fc8", "f8_", "f9", "f10"))]
    assert len(names) == 191  # conv1a, 16 blocks, bn7
    for name in names:
        assert resnet38_torch_name(_mx_name(name)) == name
    assert resnet38_torch_name("arg:linear1000_weight") is None
    with pytest.raises(CpnError, match="unrecognised"):
        resnet38_torch_name("arg:fc6_weight")


@pytest.mark.parametrize("version", ["v2", "v1", "legacy"])
def test_mxnet_params_file_converts_and_loads(tmp_path, version):
    torch.manual_seed(3)
    source = build_model("tiny", "none").state_dict()
    arrays = {_mx_name(k): v.numpy() for k, v in source.items() if not k.endswith("num_batches_tracked")
              and not k.startswith("fc8")}  # fmt: skip
    arrays["arg:linear1000_weight"] = np.ones((10, 4), np.float32)
    arrays["arg:linear1000_bias"] = np.zeros((10,), np.float64)
    path = tmp_path / f"resnet38-{version}.params"
    write_ndarray_file(path, arrays, version=version)
    read = read_ndarray_file(path)
    assert list(read) == list(arrays) and read["arg:linear1000_bias"].dtype == np.float64
    torch.manual_seed(4)
    m = build_model("tiny", "official")
    report = load_weights(m, path)
    assert set(report.missing) == {"fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight", "f10.weight"}
    assert report.unexpected == []
    for k in report.loaded:
        assert torch.equal(m.state_dict()[k], source[k]), k


def test_broken_mxnet_files(tmp_path):
    path = tmp_path / "x.params"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(CpnError, match="not an MXNet NDArray file"):
        read_ndarray_file(path)
    write_ndarray_file(path, {"arg:conv1a_weight": np.ones((8, 3, 3, 3), np.float32)})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CpnError, match="truncated"):
        read_ndarray_file(path)


def test_cli_convert_and_check(tmp_path):
    torch.manual_seed(3)
    source = build_model("tiny", "none").state_dict()
    arrays = {_mx_name(k): v.numpy() for k, v in source.items() if not k.endswith("num_batches_tracked")
              and not k.startswith("fc8")}  # fmt: skip
    params = tmp_path / "r.params"
    write_ndarray_file(params, arrays)
    out = tmp_path / "r.pth"
    proc = run_cpn("weights", "convert", str(params), str(out), check=True)
    assert "wrote" in proc.stdout and out.is_file()
    assert set(torch.load(out)) == {resnet38_torch_name(k) for k in arrays}
    again = run_cpn("weights", "convert", str(params), str(out))
    assert again.returncode != 0 and "--overwrite" in again.stderr
    check = run_cpn("weights", "check", str(out), "--backbone", "tiny", "--head", "official", check=True)
    assert "missing" in check.stdout and "f9.weight" in check.stdout
    wrong = run_cpn("weights", "check", str(out), "--backbone", "resnet38d")
    assert wrong.returncode == 1 and "has shape" in wrong.stderr and "Traceback" not in wrong.stderr


def test_safetensors_file_and_checkpoint_folder(tmp_path):
    from safetensors.torch import save_file

    sd = dict(_tiny_state(5))
    folder = tmp_path / "step_00000010"
    folder.mkdir()
    save_file(sd, folder / "model.safetensors")
    for path in (folder / "model.safetensors", folder):
        torch.manual_seed(6)
        m = build_model("tiny", "official")
        assert load_weights(m, path).missing == []
        assert torch.equal(m.f9.weight, sd["f9.weight"])
    with pytest.raises(CpnError, match="folder without model weights"):
        load_weights(build_model("tiny", "official"), tmp_path)
