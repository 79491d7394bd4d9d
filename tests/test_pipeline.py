"""`cpn pipeline`: every step runs on tiny settings, a re-run skips what is done, an interrupted step
resumes where it stopped, `redo` reruns a step and the ones after it, `skip`/`only` leave steps out."""

import json
import logging

import pytest
import torch
import yaml

from cpn_dist.errors import CpnError
from cpn_dist.pipeline import STAGE2, STEPS, Pipeline, load_pipeline_config
from tests.conftest import run_cpn
from tests.train_support import tiny_config

TINY_SEGMENTATION = {
    "stage": "segmentation",
    "data": {"crop": 48, "scale_range": [48, 64], "workers": 0},
    "model": {"backbone": "tiny", "dropout": 0.0},
    "segmentation": {"head": "aspp", "aspp_rates": [1, 2], "head_dropout": 0.0, "test_scales": [1.0]},
    "batch": {"global_size": 4, "micro_size": 4},
    "train": {"epochs": 1, "max_steps": 2, "checkpoint_every": 100},
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(tmp_path, synth_voc, **extra) -> object:
    cpn = tiny_config(tmp_path / "cpn.yaml", tmp_path / "unused", train={"max_steps": 2})
    (tmp_path / "segmentation.yaml").write_text(yaml.safe_dump(TINY_SEGMENTATION))
    cfg = {
        "voc_root": str(synth_voc),
        "work_dir": str(tmp_path / "work"),
        "splits": {"train": "train_aug", "eval": "train", "val": "val", "test": "val"},  # val as a stand-in test
        "configs": {"cpn": str(cpn), "affinity": None, "segmentation": str(tmp_path / "segmentation.yaml")},
        "pack": {"segments": [20], "shard_size": 16},
        "cams": {"scales": [1.0], "betas": "0.0:0.6:0.1"},
        "workers": 1,
        **extra,
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _statuses(result) -> dict[str, str]:
    return {r.name: r.status for r in result.steps}


def _mtimes(folder) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def done(synth_voc, tmp_path_factory):
    """One complete run (stage 2 not configured: DeepLab trains on the CAM pseudo labels)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    config = _config(tmp, synth_voc)
    pipeline = Pipeline(load_pipeline_config(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = pipeline.run()
    finally:
        torch.set_num_threads(threads)
    return {"config": config, "work": tmp / "work", "result": result, "voc": synth_voc}


def test_every_step_runs_and_writes_its_outputs(done):
    work, voc = done["work"], done["voc"]
    assert _statuses(done["result"]) == {s: ("not configured" if s in STAGE2 else "ran") for s in STEPS}
    names = lambda split: (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()  # noqa: E731
    assert {p.stem for p in (work / "cams").glob("*.npy")} == set(names("train_aug")) | set(names("train"))
    assert {p.stem for p in (work / "pseudo").glob("*.png")} == set(names("train_aug"))
    for folder in ("val", "val_crf", "train", "train_crf"):
        split = folder.removesuffix("_crf")
        assert {p.stem for p in (work / "segmentation_out" / folder).glob("*.png")} == set(names(split))
    server = work / "test_server" / "results" / "VOC2012" / "Segmentation" / "comp5_test_cls"
    assert {p.stem for p in server.glob("*.png")} == set(names("val"))
    assert (work / "cpn" / "model_final.pth").is_file() and (work / "segmentation" / "model_final.pth").is_file()
    rows = [(s.stage, s.split) for s in done["result"].scores]
    assert rows == [("CAM", "train"), ("segmentation", "val"), ("segmentation + CRF", "val"),
                    ("segmentation", "train"), ("segmentation + CRF", "train")]  # fmt: skip
    summary = json.loads((work / "summary.json").read_text())
    assert [s["stage"] for s in summary["scores"]] == [r[0] for r in rows]
    assert all(0.0 <= s["miou"] <= 1.0 for s in summary["scores"])
    cams = json.loads((work / "scores" / "cams.json").read_text())
    assert summary["scores"][0]["miou"] == pytest.approx(cams["best"]["miou"])


def test_a_rerun_skips_every_finished_step_and_keeps_the_scores(done):
    before = _mtimes(done["work"] / "segmentation_out")
    result = Pipeline(load_pipeline_config(done["config"])).run()
    assert set(_statuses(result).values()) == {"done before", "not configured"}
    assert [s.to_json() for s in result.scores] == [s.to_json() for s in done["result"].scores]
    assert _mtimes(done["work"] / "segmentation_out") == before


def test_an_interrupted_step_resumes_where_it_stopped(done, caplog):
    """The segment step lost its stamp and two images: only those are written again. Training lost
    its final weights but kept its last checkpoint: it resumes from it instead of starting over."""
    work = done["work"]
    out = work / "segmentation_out" / "val"
    (work / "steps" / "segment.json").unlink()
    victims = sorted(out.glob("*.png"))[:2]
    for v in victims:
        v.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    result = Pipeline(load_pipeline_config(done["config"])).run(only=["segment"])
    assert _statuses(result)["segment"] == "ran"
    assert all(v.is_file() for v in victims)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept

    (work / "steps" / "train_segmentation.json").unlink()
    (work / "segmentation" / "model_final.pth").unlink()
    with caplog.at_level(logging.INFO, logger="cpn_dist"):
        Pipeline(load_pipeline_config(done["config"])).run(only=["train_segmentation"])
    assert "resumed from" in caplog.text and "step 2" in caplog.text
    assert (work / "segmentation" / "model_final.pth").is_file()


def test_a_resumed_training_step_names_the_pipelines_own_flag(done):
    """A training step that lost its final weights resumes from its checkpoint, and the line saying so
    names `--redo STEP`, which `cpn pipeline` has, not `cpn train`'s `--restart`."""
    work = done["work"]
    (work / "steps" / "train_segmentation.json").unlink()
    (work / "segmentation" / "model_final.pth").unlink()
    proc = run_cpn("pipeline", "--config", str(done["config"]), "--only", "train_segmentation", check=True)
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "holds checkpoints of this config: resuming from step 2 (--redo train_segmentation starts over)" in said
    assert "--restart" not in said and (work / "segmentation" / "model_final.pth").is_file()


def test_redo_reruns_a_step_and_every_later_one(done):
    seg = done["work"] / "segmentation_out" / "train"
    cams = _mtimes(done["work"] / "cams")
    old = _mtimes(seg)
    result = Pipeline(load_pipeline_config(done["config"])).run(redo="segment")
    statuses = _statuses(result)
    assert statuses["segment"] == statuses["eval_segmentation"] == "ran"
    assert statuses["cams"] == statuses["train_segmentation"] == "done before"
    assert all(_mtimes(seg)[p] > t for p, t in old.items())  # overwritten
    assert _mtimes(done["work"] / "cams") == cams


def test_skip_only_and_unknown_steps(done, tmp_path, synth_voc):
    result = Pipeline(load_pipeline_config(done["config"], ["skip=[eval_cams]"])).run(only=["eval_cams", "pseudo"])
    statuses = _statuses(result)
    assert statuses["eval_cams"] == statuses["cams"] == "skipped" and statuses["pseudo"] == "done before"
    # skipped steps still report their earlier scores
    assert [s.to_json() for s in result.scores] == [s.to_json() for s in done["result"].scores]
    with pytest.raises(CpnError, match="unknown step 'segmnt'"):
        Pipeline(load_pipeline_config(done["config"])).run(skip=["segmnt"])
    with pytest.raises(CpnError, match=r"skip\[0\]: expected one of .*, got 'trian_cpn' \(did you mean 'train_cpn'"):
        load_pipeline_config(done["config"], ["skip=[trian_cpn]"])
    # a step whose input is missing names it
    fresh = _config(tmp_path, synth_voc)
    with pytest.raises(CpnError, match="model_final.pth: no cpn weights"):
        Pipeline(load_pipeline_config(fresh)).run(only=["cams"])


def test_cli_prints_the_stage_table(done):
    proc = run_cpn("pipeline", "--config", str(done["config"]), "--only", "eval_segmentation", check=True)
    assert "mIoU after each stage" in proc.stdout
    assert "segmentation + CRF" in proc.stdout and "done before" in proc.stdout
    bad = run_cpn("pipeline", "--config", str(done["config"]), "configs.segmentation=nope.yaml")
    assert bad.returncode != 0 and "configs.segmentation: nope.yaml not found" in bad.stderr


@pytest.mark.slow
def test_two_processes_train_and_infer_together_and_agree_with_one(done, tmp_path):
    """`accelerate launch -m cpn_dist.pipeline` on 2 gloo processes: both trainings run over the two
    processes (the global batch of 4 split 2 × 2 and 2 × 1 × 2), inference is shared, and — the data
    being deterministic and dropout off — the stage scores equal the one-process run's."""
    from tests.train_support import accelerate_cpu, launch, run_layout

    work = tmp_path / "work2"
    launch([*accelerate_cpu(2), "-m", "cpn_dist.pipeline", "--config", str(done["config"]), f"work_dir={work}",
            "overrides.cpn=[batch.micro_size=2]", "overrides.segmentation=[batch.micro_size=1]"])  # fmt: skip
    assert run_layout(work / "cpn")[:3] == (2, 2, 1) and run_layout(work / "segmentation")[:3] == (2, 1, 2)
    two = json.loads((work / "summary.json").read_text())["scores"]
    one = [s.to_json() for s in done["result"].scores]
    assert [(s["stage"], s["split"]) for s in two] == [(s["stage"], s["split"]) for s in one]
    for a, b in zip(two, one):
        assert a["miou"] == pytest.approx(b["miou"], abs=0.01)


def test_a_changed_setting_reruns_the_stale_step_and_every_later_one(done, tmp_path, caplog):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(done["work"], work)
    moved = Pipeline(load_pipeline_config(done["config"], [f"work_dir={work}"])).run()
    assert set(_statuses(moved).values()) == {"done before", "not configured"}  # a moved work folder stays valid
    changed = [f"work_dir={work}", "cams.betas=0.3,0.4"]
    with caplog.at_level(logging.WARNING, logger="cpn_dist"):
        result = Pipeline(load_pipeline_config(done["config"], changed)).run()
    statuses = _statuses(result)
    later = [s for s in STEPS[STEPS.index("eval_cams"):] if s not in STAGE2]
    assert [statuses[s] for s in ("pack", "train_cpn", "cams")] == ["done before"] * 3
    assert all(statuses[s] == "ran" for s in later), statuses
    assert "eval_cams: settings changed since it ran (cams.betas: 0.0:0.6:0.1 → 0.3,0.4)" in caplog.text
    assert "lies on the edge of the sweep" in caplog.text  # two βs: the best is on an edge
    assert json.loads((work / "scores" / "cams.json").read_text())["betas"] == [0.3, 0.4]
    again = Pipeline(load_pipeline_config(done["config"], changed)).run()
    assert set(_statuses(again).values()) == {"done before", "not configured"}


def test_a_second_pipeline_into_one_work_dir_fails_fast(done):
    import os

    from cpn_dist.training.runlock import DirLock

    before = _mtimes(done["work"] / "steps")
    holder = rf"in use by another run \(pid {os.getpid()} on"
    with DirLock(done["work"], "work_dir"), pytest.raises(CpnError, match=holder):
        Pipeline(load_pipeline_config(done["config"])).run()
    assert _mtimes(done["work"] / "steps") == before


def test_a_bad_beta_sweep_fails_when_the_config_is_read(done):
    from cpn_dist.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cams.betas: '0.2:0.6:oops' expected START:STOP:STEP"):
        load_pipeline_config(done["config"], ["cams.betas=0.2:0.6:oops"])


def test_the_issues_settings_changes_make_their_steps_stale(done):
    """A CPN max_steps change stales train_cpn; new CAM scales stale cams; a log setting stales nothing."""
    from cpn_dist.pipeline.runner import stale_reasons
    from cpn_dist.pipeline.steps import step_settings

    def changes(step, *overrides):
        before = step_settings(Pipeline(load_pipeline_config(done["config"])), step)
        return stale_reasons(before, step_settings(Pipeline(load_pipeline_config(done["config"], overrides)), step))

    assert changes("train_cpn", "overrides.cpn=[train.max_steps=3]") == ["train.max_steps: 2 → 3"]
    assert changes("cams", "cams.scales=[1.0, 2.0]") == ["cams.scales: [1.0] → [1.0, 2.0]"]
    assert changes("train_cpn", "overrides.cpn=[log.every=5, data.workers=1]") == []
    assert changes("segment", 'overrides.segmentation=["segmentation.test_scales=[0.5]"]') == [
        "segmentation.test_scales: [1.0] → [0.5]"]
