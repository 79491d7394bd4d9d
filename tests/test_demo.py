"""`cpn demo`'s pieces: part recall on hand-made CAMs, and the whole pipeline on a tiny budget."""

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest

from cpn_dist.data.datasets.voc import read_label_png, read_split
from cpn_dist.data.synth.voc import synthesize_voc
from cpn_dist.demo.parts import part_scores
from cpn_dist.demo.run import run_demo
from cpn_dist.demo.settings import DEMO_CONFIG, DEMO_MODELS, DemoSettings, size_overrides
from cpn_dist.errors import CpnError
from cpn_dist.labels.cams import save_cams


@pytest.fixture(scope="module")
def parts_voc(tmp_path_factory):
    return synthesize_voc(tmp_path_factory.mktemp("parts") / "VOC2012", 6, size=48, seed=1, task="parts")


def _names(voc):
    return read_split(voc / "ImageSets" / "Segmentation" / "train_aug.txt")


def _write_cams(voc, out, fill):
    """CAM files whose map of each labelled class is ``fill(gt == class, part)`` (released scale, peak 0.5)."""
    out.mkdir()
    for name in _names(voc):
        gt = read_label_png(voc / "SegmentationClass" / f"{name}.png")
        part = read_label_png(voc / "SegmentationPart" / f"{name}.png")
        classes = set(np.unique(gt).tolist()) - {0, 255}
        save_cams(out / f"{name}.npy", {c - 1: fill(gt == c, part).astype(np.float32) for c in classes})


def test_part_scores_of_hand_made_cams(parts_voc, tmp_path):
    names = _names(parts_voc)
    _write_cams(parts_voc, tmp_path / "marker", lambda obj, part: np.where(obj & (part == 2), 0.5, 0.0))
    only_marker = part_scores(tmp_path / "marker", parts_voc, names, beta=0.1)
    assert only_marker.recall == {"body": 0.0, "marker": 1.0}
    assert only_marker.magnitude["marker"] == pytest.approx(1.0) and only_marker.magnitude["body"] == 0.0
    assert only_marker.pixels["body"] > only_marker.pixels["marker"] > 0

    _write_cams(parts_voc, tmp_path / "whole", lambda obj, part: np.where(obj, np.where(part == 2, 0.5, 0.2), 0.0))
    whole = part_scores(tmp_path / "whole", parts_voc, names, beta=0.1)
    assert whole.recall == {"body": 1.0, "marker": 1.0}
    assert whole.magnitude["body"] == pytest.approx(0.4)
    above = part_scores(tmp_path / "whole", parts_voc, names, beta=0.3)  # β above the body's score
    assert above.recall == {"body": 0.0, "marker": 1.0}

    with pytest.raises(CpnError, match="SegmentationPart"):
        part_scores(tmp_path / "whole", tmp_path, names, beta=0.1)


def test_demo_pipeline_on_a_tiny_budget(tmp_path, caplog):
    from cpn_dist.cli.demo_cmd import scores_table

    settings = replace(DemoSettings(), images=20, size=48, eval_images=4, figure_images=2, warmup_epochs=1)
    out = tmp_path / "demo"
    tiny = ("train.max_steps=2", "data.workers=0")
    events = []
    scores = run_demo(out, settings, overrides=tiny, on_step=lambda name, event: events.append((name, event)))
    steps = [name for name, event in events if event == "start"]
    # drawn at 48 px, every model trains on crops scaled from the config's 64 px ones (the user's overrides after)
    for step in ("warmup", "train_baseline", "train_cpn"):
        trained = json.loads((out / "steps" / f"{step}.json").read_text())["settings"]["overrides"]
        assert trained[3:6] == ["data.crop=48", "data.scale_range=[44, 56]", "data.patch.grid_sizes=[6, 12]"]
        assert trained.index("train.max_steps=2") > 5
    assert set(scores) == {"baseline", "hiding", "cpn"}
    assert steps == ["data", "init", "warmup", *(f"{kind}_{m}" for m in ("baseline", "hiding", "cpn")
                                                 for kind in ("train", "infer", "eval")),
                     "start_premise", "figure", "results"]  # fmt: skip
    for name, s in scores.items():
        assert 0.0 <= s.miou <= 1.0 and 0.0 <= s.foreground <= 1.0 and 0.0 <= s.background <= 1.0
        assert 0.0 <= s.body_recall <= 1.0 and 0.0 <= s.marker_recall <= 1.0
        assert 0.0 <= s.body_magnitude <= 1.0 and 0.0 <= s.marker_magnitude <= 1.0
        assert s.best_beta in s.betas and len(s.curve) == len(settings.betas) and max(s.curve) == s.miou
        assert json.loads((out / "scores" / f"{name}.json").read_text())["miou"] == s.miou
        assert len(list((out / "cams" / name).glob("*.npy"))) == 4
        assert (out / "runs" / name / "model_final.pth").is_file()
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 1_000_000
    _check_raw_cam_beside_the_refined(out, scores, scores_table(scores))

    # a re-run keeps every finished step: nothing is retrained
    stamp = (out / "runs" / "cpn" / "model_final.pth").stat().st_mtime_ns
    events.clear()
    again = run_demo(out, settings, overrides=tiny, on_step=lambda name, event: events.append((name, event)))
    assert {event for _, event in events} == {"done before"}
    assert (out / "runs" / "cpn" / "model_final.pth").stat().st_mtime_ns == stamp
    assert again["cpn"].miou == scores["cpn"].miou
    # a folder of a demo from before the raw CAM: its CPN's CAMs are inferred again (raw and refined in one
    # pass), nothing is retrained, and the refined numbers stay what they were
    shutil.rmtree(out / "cams_raw")
    infer_stamp = out / "steps" / "infer_cpn.json"
    old = json.loads(infer_stamp.read_text())
    del old["settings"]["raw_cam"]
    infer_stamp.write_text(json.dumps(old))
    events.clear()
    upgraded = run_demo(out, settings, overrides=tiny, on_step=lambda name, event: events.append((name, event)))
    assert ("infer_cpn", "stale: raw_cam: null → true") in events
    assert [name for name, event in events if event == "ran"] == ["infer_cpn", "eval_cpn", "start_premise", "figure",
                                                                  "results"]  # fmt: skip
    assert upgraded["cpn"].miou == scores["cpn"].miou and upgraded["cpn"].raw == scores["cpn"].raw
    # a changed setting reruns the steps it stales: those of the model and the report after it
    events.clear()
    changed = {**DEMO_MODELS, "cpn": ("loss.ohem_ratio=0.5",)}
    run_demo(out, settings, overrides=tiny, models=changed, on_step=lambda name, event: events.append((name, event)))
    ran = [name for name, event in events if event == "ran"]
    assert ran == ["train_cpn", "infer_cpn", "eval_cpn", "start_premise", "figure", "results"]
    assert (out / "runs" / "cpn" / "model_final.pth").stat().st_mtime_ns != stamp
    # a training step that lost its stamp and final weights resumes from its checkpoint, and says how
    # `cpn demo` starts it over (not `cpn train`'s --restart)
    (out / "steps" / "train_cpn.json").unlink()
    (out / "runs" / "cpn" / "model_final.pth").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpn_dist"):
        run_demo(out, settings, overrides=tiny, models=changed)
    assert "resuming from step 2 (cpn demo --overwrite starts over)" in caplog.text and "--restart" not in caplog.text
    assert (out / "runs" / "cpn" / "model_final.pth").is_file()


def _check_raw_cam_beside_the_refined(out, scores, table):
    """CPN (the demo's model with a head) has its raw CAM scored beside its refined one: in the scores, in
    results.json under "raw" (the refined numbers where they were), as a table row and as a figure column."""
    from PIL import Image

    assert scores["baseline"].raw is None and scores["hiding"].raw is None  # no head: their CAM is the raw one
    raw = scores["cpn"].raw
    assert raw is not None and raw.name == "cpn raw CAM" and raw.best_beta in raw.betas and max(raw.curve) == raw.miou
    assert 0.0 <= raw.body_recall <= 1.0 and 0.0 <= raw.marker_recall <= 1.0
    assert raw.premise == scores["cpn"].premise  # the premise is measured on the raw CAM
    assert len(list((out / "cams_raw" / "cpn").glob("*.npy"))) == 4 and not (out / "cams_raw" / "baseline").exists()
    results = json.loads((out / "results.json").read_text())["models"]
    cpn = results["cpn"]
    assert cpn["miou"] == 100 * scores["cpn"].miou and cpn["best_beta"] == scores["cpn"].best_beta  # the headline
    assert set(cpn["raw"]) == set(cpn) - {"raw"}  # the same keys as the refined numbers
    assert cpn["raw"]["miou"] == 100 * raw.miou and cpn["raw"]["best_beta"] == raw.best_beta
    assert cpn["raw"]["body_recall"] == 100 * raw.body_recall and cpn["raw"]["marker_recall"] == 100 * raw.marker_recall
    assert results["baseline"]["raw"] is None and results["hiding"]["raw"] is None
    assert table.row_count == 4 and list(table.columns[0].cells) == ["baseline", "hiding", "cpn", "cpn raw CAM"]
    # image, ground truth, baseline, hiding, CPN refined, CPN raw: 6 columns of 2.2 in at 100 dpi, 2 rows of 2 in
    assert Image.open(out / "demo.png").size == (6 * 220, 2 * 200)


VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128,
               64, 0, 0, 192, 0, 0, 64, 128, 0, 192, 128, 0, 64, 0, 128]  # fmt: skip


def _handmade_voc(root, n=12):
    """A VOC 2012 layout folder written here with PIL only (not by cpn synth-voc): a red disc is a 'cat'
    (class 8), a blue box a 'dog' (class 12), on grey noise; train.txt and val.txt, no train_aug."""
    from PIL import Image, ImageDraw

    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(7)
    names = [f"hand_{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        w, h = 56, 44
        img = Image.fromarray(rng.integers(90, 140, (h, w, 3), dtype=np.uint8))
        mask = Image.new("P", (w, h), 0)
        mask.putpalette(VOC_PALETTE + [0] * (768 - len(VOC_PALETTE)))
        objects = []
        for cls, name_cls, colour, shape in ((8, "cat", (200, 40, 40), "disc"), (12, "dog", (40, 40, 200), "box")):
            if (i + cls) % 3 == 0 and objects:
                continue
            x0, y0 = int(rng.integers(2, w - 24)), int(rng.integers(2, h - 22))
            box = (x0, y0, x0 + 20, y0 + 18)
            for target, fill in ((ImageDraw.Draw(img), colour), (ImageDraw.Draw(mask), cls)):
                (target.ellipse if shape == "disc" else target.rectangle)(box, fill=fill)
            objects.append(f"<object><name>{name_cls}</name><bndbox><xmin>{box[0] + 1}</xmin><ymin>{box[1] + 1}"
                           f"</ymin><xmax>{box[2] + 1}</xmax><ymax>{box[3] + 1}</ymax></bndbox></object>")  # fmt: skip
        img.save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        mask.save(root / "SegmentationClass" / f"{name}.png")
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>")  # fmt: skip
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:9]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[9:]) + "\n")
    return root


def test_size_scales_the_crop_scale_range_and_grid_cells():
    assert size_overrides(DEMO_CONFIG, 64) == ()
    assert size_overrides(DEMO_CONFIG, 128) == ("data.crop=128", "data.scale_range=[116, 148]",
                                                "data.patch.grid_sizes=[16, 32]")  # fmt: skip
    assert size_overrides(DEMO_CONFIG, 224)[0] == "data.crop=224"


def test_demo_size_is_refused_for_a_folder_it_did_not_draw(tmp_path):
    voc = synthesize_voc(tmp_path / "VOC2012", 4, size=48, seed=0)
    with pytest.raises(CpnError, match="--size 128: the size the synthetic task is drawn at"):
        run_demo(tmp_path / "out", replace(DemoSettings(), size=128), voc_root=voc)
    assert not (tmp_path / "out").exists()


def test_demo_on_a_voc_folder_it_did_not_make_writes_results_json(tmp_path):
    from tests.conftest import run_cpn

    voc = _handmade_voc(tmp_path / "handmade")
    out = tmp_path / "out"
    proc = run_cpn("demo", "--voc-root", str(voc), "--out", str(out), "--eval-images", "4", "train.max_steps=2",
                   "data.workers=0", "data.crop=48", "data.scale_range=[44, 52]", check=True)  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"baseline", "hiding", "cpn"}
    for row in results["models"].values():
        assert 0.0 <= row["miou"] <= 100.0 and 0.0 <= row["foreground"] <= 100.0
        assert row["best_beta"] in DemoSettings().betas
        assert row["body_recall"] is None and row["premise"] is None  # no SegmentationPart/: no part columns
    assert results["data"]["train_split"] == "train" and results["data"]["synthetic_task"] is None
    assert results["data"]["eval_images"] == 4 and not (out / "VOC2012").exists()
    assert "body rec." not in proc.stdout and "mIoU" in proc.stdout
    assert "cpn raw CAM" in proc.stdout and 0.0 <= results["models"]["cpn"]["raw"]["miou"] <= 100.0
    assert results["models"]["cpn"]["raw"]["body_recall"] is None
    scored = sorted(p.stem for p in (out / "cams" / "cpn").glob("*.npy"))
    assert scored == [f"hand_{i:03d}" for i in range(4)]  # the first images of train.txt


def test_demo_refuses_a_folder_that_is_not_voc(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(CpnError, match="Annotations"):
        run_demo(tmp_path / "out", voc_root=tmp_path)
