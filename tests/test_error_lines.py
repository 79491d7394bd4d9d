"""Errors a new user meets, each one `error:` line that names the file or key at fault and says what to do
(issue 20): a backward β sweep, a config of the other kind, a stage-1 CPN file as the start of stage 2 or 3,
a VOC folder that is missing or is not one, a stock VOC devkit without train_aug.txt, shards not packed yet.
The resumed training step of `cpn pipeline` and `cpn demo` is in tests/test_pipeline.py and test_demo.py."""

import shutil

import pytest

from tests.conftest import cams_from_ground_truth, run_cpn


def error_line(proc, code: int = 1) -> str:
    """The one line a failed command printed: exit ``code``, stderr a single `error: …` line, no traceback."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cams(synth_voc, tmp_path_factory):
    """CAM files of the val split, for `cpn eval`."""
    out = tmp_path_factory.mktemp("cams")
    cams_from_ground_truth(synth_voc, "val", out)
    return out


RISE = "(values rise from START to STOP"
FORMS = "START:STOP:STEP (e.g. 0.20:0.60:0.01) or a list 0.2,0.3"


@pytest.mark.parametrize(("betas", "says"), [
    ("0.5:0.1:0.1", f"START 0.5 must be below STOP 0.1 {RISE}, STOP excluded), e.g. 0.1:0.5:0.1"),
    ("0.3:0.3:0.1", f"START 0.3 must be below STOP 0.3 {RISE}, STOP excluded), e.g. 0.3:0.4:0.1"),
    ("0.1:0.5:0", f"STEP must be above 0 {RISE}), e.g. 0.1:0.5:0.01"),
    ("0.5:0.1:-0.1", f"STEP must be above 0 {RISE}), e.g. 0.1:0.5:0.1"),
    (",", f"no β value; expected {FORMS}"),
    ("0:inf:0.1", f"every value must be a finite number; expected {FORMS}"),
    ("0:1:1e-9", "1000000000 values, more than 10000; take a larger STEP (e.g. 0.20:0.60:0.01)"),
])  # fmt: skip
def test_a_beta_sweep_that_holds_no_value_says_why_and_shows_a_corrected_one(synth_voc, cams, betas, says):
    val = synth_voc / "ImageSets" / "Segmentation" / "val.txt"
    proc = run_cpn("eval", "--cams", str(cams), "--gt", str(synth_voc / "SegmentationClass"), "--list", str(val),
                   "--betas", betas)  # fmt: skip
    assert error_line(proc) == f"error: --betas '{betas}': {says}"


def test_the_pipelines_beta_sweep_and_the_low_high_pairs_say_the_same(cams, tmp_path):
    proc = run_cpn("pipeline", "--config", "pipeline_demo", "cams.betas=0.5:0.1:0.1", cwd=tmp_path)
    line = error_line(proc, code=2)
    assert "pipeline_demo.yaml: cams.betas: '0.5:0.1:0.1' START 0.5 must be below STOP 0.1" in line
    assert line.endswith("e.g. 0.1:0.5:0.1") and not (tmp_path / "demo").exists()
    for command in (["pseudo"], ["affinity-labels", "--voc-root", str(tmp_path)]):
        proc = run_cpn(*command, "--cams", str(cams), "--out", str(tmp_path / "out"), "--betas", "0.5", "0.1")
        assert error_line(proc) == "error: --betas 0.5 0.1: LOW must be below HIGH, e.g. --betas 0.1 0.5"
    proc = run_cpn("affinity-labels", "--cams", str(cams), "--voc-root", str(tmp_path), "--out", str(tmp_path / "out"),
                   "--bg-powers", "32", "4")  # fmt: skip
    assert error_line(proc) == "error: --bg-powers 32 4: LOW must be below HIGH, e.g. --bg-powers 4 32"
    assert not (tmp_path / "out").exists()


def test_a_config_of_the_other_kind_names_the_command_that_takes_it(tmp_path):
    """`cpn pipeline --config demo` (a run config) and `cpn train --config pipeline_demo`: one line each,
    not one unknown-key error per section."""
    line = error_line(run_cpn("pipeline", "--config", "demo", cwd=tmp_path), code=2)
    assert "demo.yaml: a run config (it has data:, model:, loss: …), not a pipeline config" in line
    assert "`cpn train --config demo` trains it" in line
    assert line.endswith("configs: pipeline_coco, pipeline_demo, pipeline_voc")
    assert "unknown key" not in line

    line = error_line(run_cpn("train", "--config", "pipeline_demo", cwd=tmp_path), code=2)
    assert "pipeline_demo.yaml: a pipeline config (it has voc_root:, work_dir:, shards: …), not a run config" in line
    assert "`cpn pipeline --config pipeline_demo` runs it" in line
    assert "run configs: coco_affinity, coco_cpn_paper, coco_segmentation, demo, demo_affinity" in line
    assert "unknown key" not in line and "pipeline_voc" not in line

    line = error_line(run_cpn("pipeline", "--config", "nope", cwd=tmp_path), code=2)
    assert line.endswith("nope: pipeline config not found (packaged configs, usable by name: pipeline_coco, "
                         "pipeline_demo, pipeline_voc)")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def cpn_final(tmp_path_factory):
    """The final weights of a trained CPN (tiny backbone, paper head) as `cpn train` writes them."""
    import torch

    from cpn_dist.config import load_config
    from cpn_dist.cpn.model import build_model
    from cpn_dist.training.checkpoint import save_weights
    from cpn_dist.training.run_start import weights_metadata

    path = tmp_path_factory.mktemp("cpn") / "model_final.pth"
    torch.manual_seed(0)
    save_weights(build_model("tiny", "paper").state_dict(), path, metadata=weights_metadata(load_config("demo")))
    return path


@pytest.mark.parametrize(("config", "stage"), [("demo_affinity", "stage-2 AffinityNet"),
                                               ("demo_segmentation", "stage-3 segmentation")])  # fmt: skip
def test_a_later_stage_started_from_cpn_weights_says_they_are_stage_1(cpn_final, tmp_path, config, stage):
    """The weights are read when the model is built, before the data: no shards are needed here."""
    proc = run_cpn("train", "--config", config, f"model.weights={cpn_final}", cwd=tmp_path)
    line = error_line(proc)
    assert line.startswith(f"error: {cpn_final}: stage-1 CPN weights (recorded stage cpn, head paper), not a start "
                           f"for a {stage} run")  # fmt: skip
    assert "model.weights are backbone weights: the backbone's ImageNet weights" in line
    assert "a CPN trained without a head (model.head: none" in line and "shape" not in line


def test_a_cpn_without_a_head_still_starts_affinitynet(tmp_path):
    """`cpn demo`'s warm-up (stage cpn, model.head none) is demo_affinity.yaml's model.weights: it loads."""
    import torch

    from cpn_dist.affinity.task import AffinityTask
    from cpn_dist.config import load_config
    from cpn_dist.cpn.model import build_model
    from cpn_dist.training.checkpoint import save_weights
    from cpn_dist.training.run_start import weights_metadata

    warm = tmp_path / "warmup.pth"
    cfg = load_config("demo", ["loss.recipe=cam", "model.head=none"])
    save_weights(build_model("tiny", "none").state_dict(), warm, metadata=weights_metadata(cfg))
    model = AffinityTask(load_config("demo_affinity", [f"model.weights={warm}"])).build_model()
    saved = torch.load(warm)["model"]
    assert set(saved) - set(model.state_dict()) == {"fc8.weight"}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items() if k != "fc8.weight")


def test_a_voc_root_that_is_missing_or_not_a_voc_folder_says_what_one_holds(synth_voc, tmp_path):
    missing = tmp_path / "nonexistent"
    assert error_line(run_cpn("demo", "--voc-root", str(missing), "--out", str(tmp_path / "out"))) == \
        f"error: {missing}: VOC folder not found"  # fmt: skip
    assert error_line(run_cpn("check-voc", str(missing))) == f"error: {missing}: VOC folder not found"
    half = tmp_path / "half"
    (half / "JPEGImages").mkdir(parents=True)
    line = error_line(run_cpn("demo", "--voc-root", str(half), "--out", str(tmp_path / "out")))
    assert line == (f"error: {half}: not a VOC folder (no Annotations/, SegmentationClass/, ImageSets/Segmentation/); "
                    "a VOC 2012 folder holds JPEGImages/, Annotations/, SegmentationClass/, ImageSets/Segmentation/ "
                    "(`cpn synth-voc --out DIR` writes a synthetic one)")  # fmt: skip
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(synth_voc, devkit / "VOC2012")
    line = error_line(run_cpn("check-voc", str(devkit)))
    assert line.startswith(f"error: {devkit}: not a VOC folder, but {devkit / 'VOC2012'} is one;")
    assert not (tmp_path / "out").exists()


def test_check_voc_on_a_stock_devkit_checks_the_lists_it_has(synth_voc, tmp_path):
    """The stock VOC 2012 devkit has no train_aug.txt (SBD's list): train and val are checked, a warning
    names the absent list; no list at all, or a list asked for by name, is an error."""
    voc = tmp_path / "VOC2012"
    shutil.copytree(synth_voc, voc)
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").unlink()
    proc = run_cpn("check-voc", str(voc))
    assert proc.returncode == 0 and "ok: " in proc.stdout and "of train, val," in proc.stdout
    assert "no train_aug.txt (not checked; checking train.txt, val.txt)" in " ".join(proc.stderr.split())
    asked = run_cpn("check-voc", str(voc), "--splits", "train", "train_aug")
    assert error_line(asked) == f"error: {lists / 'train_aug.txt'}: split list not found"
    for path in lists.iterdir():
        path.unlink()
    assert error_line(run_cpn("check-voc", str(voc))) == (
        f"error: {lists}: none of the split lists train.txt, val.txt, train_aug.txt; name the lists to check with "
        "--splits")  # fmt: skip


def test_training_before_the_shards_are_packed_says_what_packs_them(tmp_path):
    """`cpn train --config demo` in an empty folder: demo.yaml's data.shards is the relative demo/shards."""
    line = error_line(run_cpn("train", "--config", "demo", cwd=tmp_path))
    assert line == (f"error: data.shards demo/shards: shards folder not found (in {tmp_path}); pack the split first: "
                    "`cpn pack --voc-root VOC --split train_aug --out demo/shards`, or `cpn demo` (it packs "
                    "demo/shards); or set data.shards=DIR to packed shards")  # fmt: skip
    other = error_line(run_cpn("train", "--config", "demo", f"data.shards={tmp_path / 'mine'}", cwd=tmp_path))
    assert f"data.shards {tmp_path / 'mine'}: shards folder not found; pack the split first" in other
    assert "cpn demo" not in other
