"""A trained refinement head's refined CAM depends on the image — not one image-independent pattern for
every image (a ramp or bands: the collapse seen on other parts tasks; BENCHMARKS.md "CAM quality")."""

from dataclasses import replace

import numpy as np
import pytest

from cpn_dist.demo.run import eval_names
from cpn_dist.demo.settings import DemoSettings
from cpn_dist.demo.steps import infer_cams, initial_weights, make_data, train_model, warm_up
from cpn_dist.labels.cams import image_independence, load_cams

pytestmark = pytest.mark.slow


def test_trained_paper_head_refined_cam_depends_on_the_image(tmp_path):
    settings = replace(DemoSettings(), task="parts-reliable", images=40, size=48, eval_images=10)
    data = make_data(tmp_path, settings)
    tiny = (*data.overrides(settings), "data.workers=0", "data.crop=48", "data.scale_range=[44, 52]",
            "batch.global_size=4", "batch.micro_size=4")  # fmt: skip
    init = initial_weights(tmp_path / "init.pth", "demo", tiny)
    start = warm_up(tmp_path / "warmup", "demo", (*tiny, f"model.weights={init}", "train.max_steps=40"), epochs=20)
    run = (*tiny, f"model.weights={start}", "model.head=paper", "train.max_steps=25")
    weights = train_model("demo", run, tmp_path / "cpn")
    names = eval_names(data.voc, settings)
    refined = infer_cams(weights, "demo", run, data.voc, names, tmp_path / "refined", settings)
    maps = [np.max(np.stack(list(c.values())), axis=0) for c in (load_cams(refined / f"{n}.npy") for n in names) if c]
    assert len(maps) == len(names) and sum(float(m.std()) > 1e-3 for m in maps) >= len(maps) // 2  # not flat
    assert image_independence(refined, names) < 0.5  # a collapsed head gives ~1: the same picture everywhere
