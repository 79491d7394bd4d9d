"""No file runs code (issue 20): weights files, checkpoint folders, CAM files and labels files whose pickle
would call ``os.system`` are refused in one line by every command that reads them, and the marker file
the call would create never exists; the opt-in (``--allow-pickle``, ``model.allow_pickle``) does run it;
random bytes are "not a PyTorch checkpoint" / "not a CAM file", never "holds more than tensors"."""

import os
import pickle
import shlex
import shutil

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format

from cpn_dist.data.datasets.voc import read_labels_file, read_split
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import load_cams, save_cams
from cpn_dist.models.weights import read_state_dict
from tests.conftest import run_cpn
from tests.train_support import pack_shards, tiny_config

OLD_WARNING = "holds more than tensors"


class _RunsCode:
    """Unpickling it runs ``touch MARKER``."""

    def __init__(self, marker):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.command,)


def _random_bytes(path, n=4096):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def _evil_weights(path, marker):
    """A weights file a command would accept (a tiny CPN's state dict under "model"), plus the code."""
    from cpn_dist.cpn.model import build_model

    torch.save({"model": build_model("tiny", "official").state_dict(), "note": _RunsCode(marker)}, path)
    return path


def _bad_file(kind, path, marker, write_evil):
    if kind == "random bytes":
        return _random_bytes(path)
    return write_evil(path, marker)


def _refused(proc, *texts):
    """The command failed with one `error:` line holding ``texts``, without a traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert sum(line.startswith("error:") for line in proc.stderr.splitlines()) == 1, out
    assert "Traceback" not in out and OLD_WARNING not in out, out
    for text in texts:
        assert text in proc.stderr, out


@pytest.fixture(scope="module")
def inputs(synth_voc, tmp_path_factory):
    """One training image, its list, a tiny AffinityNet's weights and a tiny CPN's weights."""
    from cpn_dist.affinity.model import build_affinity_model
    from cpn_dist.cpn.model import build_model

    root = tmp_path_factory.mktemp("no_code")
    name = read_split(synth_voc / "ImageSets" / "Segmentation" / "train.txt")[0]
    (root / "list.txt").write_text(name + "\n")
    torch.save(build_affinity_model("tiny").state_dict(), root / "affinity.pth")
    torch.save(build_model("tiny", "official").state_dict(), root / "cpn.pth")
    return {"voc": synth_voc, "name": name, "list": root / "list.txt", "affinity": root / "affinity.pth",
            "cpn": root / "cpn.pth"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(synth_voc, tmp_path_factory):
    """A finished 3-step tiny CPN run with checkpoints at steps 2 and 3, and its config."""
    root = tmp_path_factory.mktemp("no_code_run")
    config = tiny_config(root / "tiny.yaml", pack_shards(synth_voc, root / "shards"), train={"checkpoint_every": 2})
    run_cpn("train", "--config", str(config), f"output.dir={root / 'run'}", check=True)
    return {"config": config, "run": root / "run", "shards": root / "shards"}


def _weights_command(command, weights, inputs, out, config):
    image_args = ["--voc-root", str(inputs["voc"]), "--list", str(inputs["list"])]
    return {
        "weights check": ["weights", "check", str(weights), "--backbone", "tiny", "--head", "official"],
        "infer": ["infer", "--checkpoint", str(weights), "--backbone", "tiny", "--head", "official", *image_args,
                  "--out", str(out)],
        "rw": ["rw", "--checkpoint", str(weights), "--backbone", "tiny", "--cams", str(out), *image_args,
               "--out", str(out)],
        "segment": ["segment", "--checkpoint", str(weights), *image_args, "--out", str(out)],
        "train": ["train", "--config", str(config), f"model.weights={weights}", f"output.dir={out}"],
    }[command]  # fmt: skip


WEIGHTS_COMMANDS = ["weights check", "infer", "rw", "segment", "train"]


@pytest.mark.parametrize("kind", ["code", "random bytes"])
@pytest.mark.parametrize("command", WEIGHTS_COMMANDS)
def test_every_command_reading_weights_refuses_a_file_that_would_run_code(command, kind, inputs, tiny_run,
                                                                          tmp_path):  # fmt: skip
    marker = tmp_path / "MARKER"
    weights = _bad_file(kind, tmp_path / "evil.pth", marker, _evil_weights)
    proc = run_cpn(*_weights_command(command, weights, inputs, tmp_path / "out", tiny_run["config"]))
    assert not marker.exists(), "the file's code ran"
    if kind == "code":
        _refused(proc, f"{weights}: needs full unpickling", "posix.system", "--allow-pickle", "model.allow_pickle")
    else:
        _refused(proc, f"{weights}: not a PyTorch checkpoint")
        assert "weights_only" not in proc.stderr  # torch's advice to load it in full is not passed on


def test_with_the_flag_weights_check_loads_the_file_and_its_code_runs(tmp_path):
    marker = tmp_path / "MARKER"
    weights = _evil_weights(tmp_path / "evil.pth", marker)
    proc = run_cpn("weights", "check", str(weights), "--backbone", "tiny", "--head", "official", "--allow-pickle")
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stdout + proc.stderr
    assert marker.exists()


def _task(config, *overrides):
    """The training task (model and data) of a packaged run config."""
    import importlib

    from cpn_dist.config import load_config
    from cpn_dist.training.tasks import STAGES

    cfg = load_config(config, list(overrides))
    module, _, name = STAGES[cfg.stage].partition(":")
    return getattr(importlib.import_module(module), name)(cfg)


@pytest.mark.parametrize("config", ["demo", "demo_affinity", "demo_segmentation"])
def test_every_stage_loads_model_weights_needing_pickle_only_with_model_allow_pickle(config, tmp_path):
    marker = tmp_path / "MARKER"
    weights = tmp_path / "evil.pth"
    torch.save({"model": _task(config, "model.weights=null").build_model().state_dict(), "note": _RunsCode(marker)},
               weights)
    with pytest.raises(CpnError, match=f"{weights}: needs full unpickling"):
        _task(config, f"model.weights={weights}").build_model()
    assert not marker.exists()
    _task(config, f"model.weights={weights}", "model.allow_pickle=true").build_model()
    assert marker.exists()


def test_the_library_refuses_legacy_format_files_too_and_loads_them_when_told(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2), "note": _RunsCode(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CpnError, match=r"legacy.pth: needs full unpickling.*posix\.system"):
        read_state_dict(path)
    assert not marker.exists()
    with pytest.raises(CpnError, match="not a state dict"):  # it ran, then held more than a state dict
        read_state_dict(path, allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("replaced", ["random_states_0.pkl", "optimizer.bin"])
@pytest.mark.parametrize("reader", ["train --resume", "infer"])
def test_a_checkpoint_folder_holding_code_is_refused_on_resume_and_as_weights(replaced, reader, inputs, tiny_run,
                                                                              tmp_path):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    latest = run / "checkpoints" / "step_00000003"
    marker = tmp_path / "MARKER"
    torch.save({"state": _RunsCode(marker)}, latest / replaced)
    if reader == "infer":
        proc = run_cpn(*_weights_command("infer", latest, inputs, tmp_path / "cams", tiny_run["config"]))
    else:
        proc = run_cpn("train", "--config", str(tiny_run["config"]), f"output.dir={run}", "train.max_steps=4",
                       "--resume", "latest")  # fmt: skip
    assert not marker.exists(), "the file's code ran"
    _refused(proc, f"{latest / replaced}: needs full unpickling", "posix.system", "--allow-pickle")


def test_resuming_a_checkpoint_holding_code_runs_it_only_with_model_allow_pickle(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    optimizer = run / "checkpoints" / "step_00000003" / "optimizer.bin"
    marker = tmp_path / "MARKER"
    torch.save({**torch.load(optimizer, weights_only=True), "note": _RunsCode(marker)}, optimizer)
    resume = ["train", "--config", str(tiny_run["config"]), f"output.dir={run}", "train.max_steps=4", "--resume",
              "latest"]  # fmt: skip
    _refused(run_cpn(*resume), f"{optimizer}: needs full unpickling")
    assert not marker.exists()
    proc = run_cpn(*resume, "model.allow_pickle=true")  # a key that may differ on resume
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists() and (run / "checkpoints" / "step_00000004").is_dir()


def test_our_checkpoints_pass_the_check_and_other_code_in_a_deepspeed_file_does_not(tiny_run, tmp_path):
    from cpn_dist.safe_torch import check_checkpoint_folder

    for checkpoint in (tiny_run["run"] / "checkpoints").iterdir():
        check_checkpoint_folder(checkpoint)  # Accelerate's files: numpy RNG states, optimizer state
    folder = tmp_path / "step_00000002"
    (folder / "pytorch_model").mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(1)}}, folder / "pytorch_model" / "mp_rank_00_model_states.pt")
    check_checkpoint_folder(folder)
    evil = folder / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"loss_scaler": _RunsCode(tmp_path / "MARKER")}, evil)
    with pytest.raises(CpnError, match=f"{evil}: needs full unpickling"):
        check_checkpoint_folder(folder)
    _random_bytes(evil)
    with pytest.raises(CpnError, match=f"{evil}: not a PyTorch checkpoint"):
        check_checkpoint_folder(folder)
    check_checkpoint_folder(folder, allow_pickle=True)  # opted in: left to the loaders
    assert not (tmp_path / "MARKER").exists()


def test_every_allowlisted_checkpoint_global_names_a_real_object():
    import importlib

    from cpn_dist.safe_torch import CHECKPOINT_GLOBALS

    for dotted in CHECKPOINT_GLOBALS:
        module, _, name = dotted.rpartition(".")
        if module == "numpy.core" or module.startswith("numpy.core."):
            continue  # numpy 1's spelling of numpy._core; checked under numpy 1
        assert callable(getattr(importlib.import_module(module), name)), dotted


# ---------------------------------------------------------------------------------------------------------
# CAM files and labels files


def _evil_npy(path, marker):
    np.save(path, {0: _RunsCode(marker)}, allow_pickle=True)
    return path


def _cam_command(command, cams, inputs, out):
    voc = ["--voc-root", str(inputs["voc"])]
    return {
        "eval": ["eval", "--cams", str(cams), "--gt", str(inputs["voc"] / "SegmentationClass"), "--list",
                 str(inputs["list"]), "--workers", "2", "--json", str(out / "sweep.json")],
        "pseudo": ["pseudo", "--cams", str(cams), "--beta", "0.3", "--out", str(out), "--workers", "2"],
        "crf": ["crf", "--cams", str(cams), "--beta", "0.3", *voc, "--out", str(out), "--workers", "2"],
        "affinity-labels": ["affinity-labels", "--cams", str(cams), *voc, "--out", str(out), "--workers", "2"],
        "show": ["show", "--cams", str(cams), *voc, "--count", "1", "--out", str(out / "grid.png")],
        "rw": ["rw", "--checkpoint", str(inputs["affinity"]), "--backbone", "tiny", "--cams", str(cams), *voc,
               "--list", str(inputs["list"]), "--out", str(out)],
    }[command]  # fmt: skip


@pytest.mark.parametrize("kind", ["code", "random bytes"])
@pytest.mark.parametrize("command", ["eval", "pseudo", "crf", "affinity-labels", "show", "rw"])
def test_every_command_reading_cam_files_refuses_one_that_would_run_code(command, kind, inputs, tmp_path):
    marker = tmp_path / "MARKER"
    (tmp_path / "cams").mkdir()
    cam = _bad_file(kind, tmp_path / "cams" / f"{inputs['name']}.npy", marker, _evil_npy)
    proc = run_cpn(*_cam_command(command, tmp_path / "cams", inputs, tmp_path / "out"))
    assert not marker.exists(), "the file's code ran"
    if kind == "code":
        _refused(proc, f"{cam}: not a CAM file", "posix.system", "refused")
    else:
        _refused(proc, f"{cam}: not a CAM file (no .npy header)")


@pytest.mark.parametrize("kind", ["code", "random bytes"])
def test_infer_refuses_a_labels_file_that_would_run_code(kind, inputs, tmp_path):
    marker = tmp_path / "MARKER"
    labels = _bad_file(kind, tmp_path / "cls_labels.npy", marker, _evil_npy)
    proc = run_cpn("infer", "--checkpoint", str(inputs["cpn"]), "--backbone", "tiny", "--head", "official",
                   "--voc-root", str(inputs["voc"]), "--list", str(inputs["list"]), "--labels", str(labels),
                   "--out", str(tmp_path / "out"))  # fmt: skip
    assert not marker.exists(), "the file's code ran"
    if kind == "code":
        _refused(proc, f"{labels}: not a labels file", "posix.system", "refused")
    else:
        _refused(proc, f"{labels}: unreadable labels file (no .npy header)")
    assert not list((tmp_path / "out").glob("*.npy"))


def _boxed(obj) -> np.ndarray:
    """The 0-d object array ``np.save`` makes of a Python object (a list would become an array)."""
    array = np.empty((), dtype=object)
    array[()] = obj
    return array


@pytest.mark.parametrize("content, message", [
    (_boxed([np.zeros((2, 2), np.float32)]), "got a list"),
    (np.zeros((2, 2), np.float32), r"got a float32 array of shape \(2, 2\)"),
    ({"person": np.zeros((2, 2), np.float32)}, "CAM key 'person' is not a class index"),
    ({3: np.zeros((2, 2, 2), np.float32)}, r"CAM of class 3 is a float32 array of shape \(2, 2, 2\)"),
    ({3: np.array([["a", "b"]])}, r"CAM of class 3 is a <U1 array of shape \(1, 2\)"),
    ({3: [[0.5, 0.5]]}, "CAM of class 3 is a list"),
    ({"keys": np.array([0.5]), "high_res": np.zeros((1, 2, 2))}, "'keys' is not a list of class indices"),
    ({"keys": np.array([1, 2]), "high_res": np.zeros((1, 2, 2))}, r"'high_res' is not 2×H×W maps"),
])  # fmt: skip
def test_a_cam_file_holding_anything_but_class_maps_is_refused_in_one_line(content, message, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(CpnError, match=message) as err:
        load_cams(path)
    assert str(err.value).startswith(f"{path}:") and "\n" not in str(err.value)


def _save_with_numpy1_names(path, obj):
    """``np.save`` of ``obj`` as numpy 1 wrote it: the pickle names ``numpy.core.multiarray``."""
    array = _boxed(obj)
    payload = pickle.dumps(array, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in payload
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, npy_format.header_data_from_array_1_0(array))
        f.write(payload)


def test_released_irn_and_numpy1_cam_files_and_labels_files_still_load(tmp_path):
    maps = {2: np.full((3, 4), 0.25, np.float32), 7: np.zeros((3, 4), np.float32)}
    save_cams(tmp_path / "released.npy", maps)
    _save_with_numpy1_names(tmp_path / "numpy1.npy", {np.int64(k): v for k, v in maps.items()})
    # IRN's own make_cam.py stores `keys` and `cam` as torch tensors
    np.save(tmp_path / "irn.npy", {"keys": torch.tensor([2, 7]), "cam": torch.zeros(2, 1, 1),
                                   "high_res": np.stack([maps[2], maps[7]])})  # fmt: skip
    for name in ("released", "numpy1", "irn"):
        got = load_cams(tmp_path / f"{name}.npy")
        assert sorted(got) == [2, 7] and all(np.array_equal(got[k], maps[k]) for k in maps), name
    labels = {"2007_000032": np.eye(20, dtype=np.float32)[3]}
    _save_with_numpy1_names(tmp_path / "cls_labels.npy", labels)
    assert read_labels_file(tmp_path / "cls_labels.npy")["2007_000032"].tolist() == labels["2007_000032"].tolist()


# ---------------------------------------------------------------------------------------------------------
# Shards and configs


def _insert_members(shard, members: dict[str, bytes]):
    """Rewrite ``shard`` with ``members`` (name → bytes) placed right after its first member."""
    import io
    import tarfile

    with tarfile.open(shard) as src:
        old = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    new = [(tarfile.TarInfo(name), data) for name, data in members.items()]
    with tarfile.open(shard, "w") as dst:
        for info, data in [old[0], *new, *old[1:]]:
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_shard_member_holding_a_pickle_is_never_unpickled(deterministic, tiny_run, tmp_path):
    """webdataset's default decoders unpickle `.pyd`/`.pickle` members; our readers decode only the members
    the format names (jpg, cls.json, slic*.png, seg.png)."""
    from cpn_dist.config import load_config
    from cpn_dist.data.loading.loader import build_train_loader
    from cpn_dist.data.shards.reader import read_shard_samples

    shards = tmp_path / "shards"
    shutil.copytree(tiny_run["shards"], shards)
    marker = tmp_path / "MARKER"
    first = sorted(shards.glob("*.tar"))[0]
    key = next(read_shard_samples(first))["key"]
    payload = pickle.dumps(_RunsCode(marker))
    _insert_members(first, {f"{key}.pyd": payload, f"{key}.pickle": payload})
    data = load_config(tiny_run["config"], [f"data.shards={shards}", f"data.deterministic={deterministic}"]).data
    loader, steps = build_train_loader(data, micro_size=4, global_size=4, rank=0, world_size=1, seed=0, epoch=0)
    assert len(list(loader)) == steps and sum(1 for _ in read_shard_samples(shards)) > 0
    assert not marker.exists()


def test_a_meta_json_cannot_name_a_shard_that_runs_a_command(tiny_run, tmp_path, monkeypatch):
    import json

    from cpn_dist.data.shards.reader import resolve_shards

    marker = tmp_path / "MARKER"
    shards = tmp_path / "shards"
    shutil.copytree(tiny_run["shards"], shards)
    meta = json.loads((shards / "meta.json").read_text())
    for entry in meta["splits"]["train_aug"]["shards"]:
        entry["name"] = f"pipe:touch {marker}"  # webdataset would run it as a shell command
    (shards / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(shards)
    for spec in (str(shards), "."):
        with pytest.raises(CpnError, match="shard listed in .* not found"):
            resolve_shards(spec, "train_aug")
    assert not marker.exists()


def test_a_config_file_with_a_python_tag_is_refused_without_running_it(tmp_path):
    from cpn_dist.config import load_config

    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.yaml"
    path.write_text(f'model:\n  weights: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(CpnError, match="evil.yaml") as err:
        load_config(path)
    assert "\n" not in str(err.value) and not marker.exists()
