"""Self-describing weights: our model_final.pth and checkpoint folders record their model, and `cpn
infer`, `segment`, `rw` and `weights check` build it from that record; flags that contradict it are
errors; weights that record nothing (released ones) still load with flags."""

import json

import numpy as np
import pytest
import torch

from cpn_dist.config import load_config
from cpn_dist.training.checkpoint import save_weights
from cpn_dist.training.run_start import weights_metadata
from tests.conftest import cams_from_ground_truth, run_cpn


@pytest.fixture(scope="module")
def made(synth_voc, tmp_path_factory):
    """Weights of each stage as the trainer writes them (random tiny models), a 2-image list."""
    from cpn_dist.affinity.model import build_affinity_model
    from cpn_dist.cpn.model import build_model
    from cpn_dist.segmentation.model import model_from_config

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    cpn = load_config("demo")  # tiny backbone, paper head
    seg = load_config("demo_segmentation", ["segmentation.test_scales=[1.0]", "segmentation.crf.enabled=false"])
    aff = load_config("demo_affinity", ["model.weights=null"])
    files = {"cpn": root / "cpn.pth", "segmentation": root / "seg.pth", "affinity": root / "aff.pth"}
    save_weights(build_model("tiny", "paper").state_dict(), files["cpn"], metadata=weights_metadata(cpn))
    save_weights(model_from_config(seg).state_dict(), files["segmentation"], metadata=weights_metadata(seg))
    save_weights(build_affinity_model("tiny").state_dict(), files["affinity"], metadata=weights_metadata(aff))
    torch.save(torch.load(files["cpn"], weights_only=True)["model"], root / "plain.pth")  # records nothing
    names = (synth_voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:2]
    (root / "list.txt").write_text("\n".join(names) + "\n")
    return {"root": root, "voc": synth_voc, "list": root / "list.txt", "names": names, **files}


def _infer(made, checkpoint, out, *flags):
    return run_cpn("infer", "--checkpoint", str(checkpoint), "--voc-root", str(made["voc"]), "--list",
                   str(made["list"]), "--out", str(out), "--scales", "1.0", *flags)  # fmt: skip


def test_flagless_infer_builds_the_model_the_weights_record(made, tmp_path):
    recorded = _infer(made, made["cpn"], tmp_path / "a")
    assert recorded.returncode == 0, recorded.stderr
    flagged = _infer(made, made["root"] / "plain.pth", tmp_path / "b", "--backbone", "tiny", "--head", "paper")
    assert flagged.returncode == 0, flagged.stderr
    for name in made["names"]:
        a = np.load(tmp_path / "a" / f"{name}.npy", allow_pickle=True).item()
        b = np.load(tmp_path / "b" / f"{name}.npy", allow_pickle=True).item()
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_flag_or_config_contradicting_the_weights_is_refused(made, tmp_path):
    head = _infer(made, made["cpn"], tmp_path / "o", "--head", "official")
    assert head.returncode == 1 and "--head official contradicts" in head.stderr and "'paper'" in head.stderr
    backbone = _infer(made, made["cpn"], tmp_path / "o", "--backbone", "resnet38d")
    assert backbone.returncode == 1 and "model.backbone 'tiny'" in backbone.stderr
    config = _infer(made, made["cpn"], tmp_path / "o", "--config", "voc_cpn_paper")
    assert config.returncode == 1 and "--config voc_cpn_paper contradicts" in config.stderr
    assert "model.backbone: 'resnet38d' there, 'tiny' in the weights" in config.stderr
    agreeing = _infer(made, made["cpn"], tmp_path / "o", "--backbone", "tiny", "--config", "demo")
    assert agreeing.returncode == 0, agreeing.stderr
    other_stage = _infer(made, made["affinity"], tmp_path / "o")
    assert other_stage.returncode == 1 and "the weights of an AffinityNet (stage: affinity)" in other_stage.stderr


def test_weights_that_record_nothing_load_with_flags_and_a_mismatch_names_the_model_built(made, tmp_path):
    bare = _infer(made, made["root"] / "plain.pth", tmp_path / "o")
    assert bare.returncode == 1 and len(bare.stderr.strip().splitlines()) == 1
    assert "has shape" in bare.stderr and "built as model.backbone resnet38d, model.head paper" in bare.stderr
    assert "--backbone/--head" in bare.stderr


def test_weights_check_uses_the_record(made):
    proc = run_cpn("weights", "check", str(made["cpn"]), check=True)
    assert "model.backbone tiny, model.head paper (as the file records)" in " ".join(proc.stdout.split())
    seg = run_cpn("weights", "check", str(made["segmentation"]), check=True)
    assert "segmentation.head aspp" in " ".join(seg.stdout.split())
    bad = run_cpn("weights", "check", str(made["cpn"]), "--head", "official")
    assert bad.returncode == 1 and "--head official contradicts" in bad.stderr


def test_segment_and_rw_need_no_config_for_our_weights(made, tmp_path):
    seg = run_cpn("segment", "--checkpoint", str(made["segmentation"]), "--voc-root", str(made["voc"]), "--list",
                  str(made["list"]), "--out", str(tmp_path / "seg"))  # fmt: skip
    assert seg.returncode == 0, seg.stderr
    assert sorted(p.stem for p in (tmp_path / "seg").glob("*.png")) == sorted(made["names"])
    cams_from_ground_truth(made["voc"], "val", tmp_path / "cams")
    rw = run_cpn("rw", "--checkpoint", str(made["affinity"]), "--cams", str(tmp_path / "cams"), "--voc-root",
                 str(made["voc"]), "--list", str(made["list"]), "--out", str(tmp_path / "rw"))  # fmt: skip
    assert rw.returncode == 0, rw.stderr
    assert "t = 2^2" in rw.stdout  # demo_affinity's affinity.rw_logt, from the record
    assert sorted(p.stem for p in (tmp_path / "rw").glob("*.png")) == sorted(made["names"])


def test_a_checkpoint_folder_records_its_model_too(made, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "step_00000001"
    folder.mkdir()
    state = torch.load(made["cpn"], weights_only=True)
    save_file({k: v.contiguous() for k, v in state["model"].items()}, folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1, "config": state["cpn_dist"]["config"]}))
    proc = _infer(made, folder, tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in (tmp_path / "o").glob("*.npy")) == sorted(made["names"])
