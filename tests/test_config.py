from pathlib import Path

import pytest
import yaml

from cpn_dist.config import Config, ConfigError, all_keys, load_config, to_yaml
from tests.conftest import ROOT, run_cpn

# configs/pipeline_*.yaml are `cpn pipeline` configs; every other file is a run config
PIPELINE_CONFIGS = sorted((ROOT / "configs").glob("pipeline_*.yaml"))
CONFIGS = sorted(set((ROOT / "configs").glob("*.yaml")) - set(PIPELINE_CONFIGS))


def test_shipped_configs_exist_and_validate():
    names = {p.name for p in CONFIGS}
    assert {"voc_cpn_paper.yaml", "voc_cpn_official.yaml", "voc_baseline.yaml", "demo.yaml"} <= names
    for path in CONFIGS:
        assert isinstance(load_config(path), Config)


def test_shipped_pipeline_configs_validate_and_name_shipped_run_configs():
    from cpn_dist.pipeline import load_pipeline_config

    assert {p.name for p in PIPELINE_CONFIGS} >= {"pipeline_demo.yaml", "pipeline_voc.yaml"}
    for path in PIPELINE_CONFIGS:
        cfg = load_pipeline_config(path)
        for run_config in (cfg.configs.cpn, cfg.configs.affinity, cfg.configs.segmentation):
            assert run_config is None or isinstance(load_config(run_config), Config), run_config


def test_paper_config_holds_the_papers_settings():
    c = load_config(ROOT / "configs" / "voc_cpn_paper.yaml")
    assert (c.model.backbone, c.data.crop, c.batch.global_size, c.train.epochs) == ("resnet38d", 448, 4, 8)
    assert (c.optim.lr, c.optim.poly_power, c.optim.weight_decay, c.optim.momentum) == (0.01, 0.9, 5e-4, 0.9)
    assert (c.data.patch.kind, c.data.patch.segments, c.data.patch.hide_prob) == ("superpixel", 200, 0.5)
    assert (c.loss.recipe, c.loss.ohem_ratio, c.loss.ohem_scope) == ("paper", 0.2, "batch")


def test_official_config_holds_the_released_recipe():
    c = load_config(ROOT / "configs" / "voc_cpn_official.yaml")
    assert (c.loss.recipe, c.loss.ohem_scope, c.model.head) == ("official", "image", "official")
    assert c.optim.momentum == 0.0005  # the released PolyOptimizer's positional-argument slip
    assert (c.data.patch.sampling, c.data.patch.segments, c.data.patch.lambda_mode) == ("released", 300, "pixels")


def test_baseline_and_demo_configs():
    base = load_config(ROOT / "configs" / "voc_baseline.yaml")
    assert (base.model.head, base.loss.recipe) == ("none", "cam")
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.model.backbone == "tiny"


def test_documented_keys_are_in_the_schema():
    documented = """data.shards data.crop data.patch.kind data.patch.segments data.patch.grid_sizes
    data.patch.hide_prob data.patch.lambda_mode model.backbone model.head model.weights loss.recipe
    loss.ohem_ratio loss.ohem_scope loss.weights batch.global_size batch.micro_size optim.lr optim.momentum
    optim.weight_decay optim.poly_power train.epochs train.max_steps train.seed train.precision
    train.checkpoint_every train.keep_last output.dir log.every log.image_every""".split()
    keys = set(all_keys())
    assert set(documented) <= keys, set(documented) - keys


def test_configuration_reference_is_generated_and_lists_every_key_once(tmp_path):
    """docs/configuration.md is exactly what `cpn config docs` writes (so it fails when a key or a
    description changes without regenerating it), and it has one row per run and pipeline config key."""
    from cpn_dist.config.docs import config_reference, leaf_fields
    from cpn_dist.pipeline.config import PipelineConfig

    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config_reference(), "stale: run `cpn config docs --out docs/configuration.md`"
    rows = [line.split("`")[1] for line in page.splitlines() if line.startswith("| `")]
    keys = all_keys() + [k for k, _ in leaf_fields(PipelineConfig)]
    assert sorted(rows) == sorted(keys) and len(set(keys)) == len(keys)
    assert all(field.description for _, field in leaf_fields(Config) + leaf_fields(PipelineConfig))
    stale = tmp_path / "configuration.md"
    stale.write_text(page.replace("| `optim.lr` |", "| `optim.lr` | float | `0.1` | old |\n| `optim.lr` |"))
    proc = run_cpn("config", "docs", "--check", str(stale))
    assert proc.returncode != 0 and "stale" in proc.stderr
    assert run_cpn("config", "docs", "--check", str(ROOT / "docs" / "configuration.md")).returncode == 0


def test_overrides_are_typed_and_nested():
    c = load_config(ROOT / "configs" / "voc_cpn_paper.yaml", ["optim.lr=0.02", "data.crop=320",
                                                              "data.patch.grid_sizes=[32, 64]", "train.max_steps=7"])
    assert c.optim.lr == 0.02 and c.data.crop == 320 and c.data.patch.grid_sizes == [32, 64]
    assert c.train.max_steps == 7


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  weight_decay: 5e-4\n  lr: 1e-2\n")
    c = load_config(p)
    assert c.optim.weight_decay == pytest.approx(5e-4) and c.optim.lr == pytest.approx(1e-2)


def test_resolved_yaml_round_trips(tmp_path):
    c = load_config(ROOT / "configs" / "voc_cpn_official.yaml", ["optim.lr=0.003"])
    p = tmp_path / "resolved.yaml"
    p.write_text(to_yaml(c))
    assert load_config(p) == c


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=0.1", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("data.patch.segmnts=5", "unknown key 'data.patch.segmnts' (did you mean 'data.patch.segments'?)"),
        ("lr=0.1", "unknown key 'lr' (did you mean 'optim.lr'?)"),
        ("optim.lr=fast", "optim.lr: expected a number, got str 'fast'"),
        ("train.epochs=2.5", "train.epochs: expected an integer, got float 2.5"),
        ("data.crop='448'", "data.crop: expected an integer, got str '448'"),
        ("train.precision=fp8", "train.precision: expected one of 'no', 'bf16' or 'fp16', got 'fp8'"),
        ("loss.ohem_ratio=1.5", "loss.ohem_ratio: must be <= 1.0, got 1.5"),
        ("data.patch.hide_prob=0", "data.patch.hide_prob: must be > 0.0, got 0"),
        ("batch.micro_size=3", "batch.micro_size: 3 does not divide batch.global_size 4"),
    ],
)
def test_config_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / "voc_cpn_paper.yaml", [override])
    assert str(info.value) == f"{ROOT / 'configs' / 'voc_cpn_paper.yaml'}: {expected}"


def test_misspelt_key_in_a_file_fails_the_cli_with_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"optim": {"momentun": 0.9}}))
    proc = run_cpn("config", "show", str(p))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "optim.momentun" in lines[0] and "did you mean 'optim.momentum'" in lines[0]
    assert "Traceback" not in proc.stderr


def test_wrong_type_fails_the_cli_naming_key_and_type():
    proc = run_cpn("config", "show", "configs/voc_cpn_paper.yaml", "data.crop=big")
    assert proc.returncode != 0
    assert "data.crop: expected an integer" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_config_file_and_bad_yaml(tmp_path):
    proc = run_cpn("config", "show", str(tmp_path / "nope.yaml"))
    assert proc.returncode != 0 and "nope.yaml: config file not found" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    proc = run_cpn("config", "show", str(bad))
    assert proc.returncode != 0 and "invalid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_config_show_prints_the_resolved_config():
    proc = run_cpn("config", "show", "configs/voc_cpn_paper.yaml", "optim.lr=0.02", "data.crop=320", check=True)
    shown = yaml.safe_load(proc.stdout)
    assert shown["optim"]["lr"] == 0.02 and shown["data"]["crop"] == 320
    # defaults filled in: keys absent from the file are present in the output
    assert shown["train"]["keep_last"] == Config().train.keep_last
    assert set(shown) == set(Config.model_fields)


def test_config_keys_lists_every_key():
    proc = run_cpn("config", "keys", check=True)
    for key in all_keys():
        assert key in proc.stdout


def test_every_shipped_config_is_resolvable_by_the_cli():
    for path in CONFIGS:
        run_cpn("config", "show", str(Path("configs") / path.name), check=True)


def test_yaml_12_booleans_keep_no_yes_on_off_strings(tmp_path):
    assert load_config(ROOT / "configs" / "voc_cpn_paper.yaml", ["train.precision=no"]).train.precision == "no"
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  precision: no\n  compile: true\ndata:\n  deterministic: False\n")
    c = load_config(p)
    assert (c.train.precision, c.train.compile, c.data.deterministic) == ("no", True, False)
    with pytest.raises(ConfigError, match="data.deterministic: expected true or false, got str 'yes'"):
        load_config(None, ["data.deterministic=yes"])
    proc = run_cpn("config", "show", "configs/voc_cpn_paper.yaml", "train.precision=no", check=True)
    assert yaml.safe_load(proc.stdout)["train"]["precision"] == "no"


def test_a_crop_larger_than_every_image_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / "voc_cpn_paper.yaml", ["data.crop=1024"])
    assert "data.crop: 1024 is larger than every training image" in str(info.value)
    assert "at most 768 pixels" in str(info.value)
    c = load_config(ROOT / "configs" / "voc_cpn_paper.yaml", ["data.crop=1024", "data.scale_range=[1024, 1400]"])
    assert c.data.crop == 1024


def test_packaged_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from cpn_dist.config.yaml_io import PACKAGED_CONFIGS

    assert (ROOT / "configs").resolve() == PACKAGED_CONFIGS  # the repository's configs/ is the package's
    by_path = load_config(ROOT / "configs" / "demo.yaml")
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in ("demo", "demo.yaml", "configs/demo.yaml"):
        assert load_config(name) == by_path, name
    with pytest.raises(ConfigError, match=r"nope: config file not found \(packaged configs, usable by name: .*demo"):
        load_config("nope")
    proc = run_cpn("config", "show", "voc_cpn_paper", cwd=tmp_path, check=True)
    assert yaml.safe_load(proc.stdout)["model"]["backbone"] == "resnet38d"


def test_element_checks_name_the_key_and_the_index():
    for override, expected in (
        ("data.scale_range=[800, 700]", "data.scale_range: need low <= high, got [800, 700]"),
        ("data.std=[0.2, 0, 0.2]", "data.std[1]: must be > 0.0, got 0"),
        ("data.color_jitter=[0.1, 0.1, 0.1, 0.7]", "data.color_jitter: the hue jitter (the 4th value) must be <= 0.5"),
        ("loss.weights=[1, -1, 1]", "loss.weights[1]: must be >= 0.0, got -1"),
        ("segmentation.aspp_rates=[6, 0]", "segmentation.aspp_rates[1]: must be > 0, got 0"),
        ("data.patch.kind=gird", "data.patch.kind: expected one of 'superpixel' or 'grid', got 'gird' "
                                 "(did you mean 'grid'?)"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        assert expected in str(info.value), override


def test_pipeline_configs_go_through_the_run_config_loader():
    from cpn_dist.config.load import load_pipeline_config

    for override, expected in (
        ("pack.shard_sise=3", "unknown key 'pack.shard_sise' (did you mean 'pack.shard_size'?)"),
        ("segmentation_labels=rww", "segmentation_labels: expected one of 'auto', 'rw' or 'cam', got 'rww'"),
        ("skip=[trian_cpn]", "got 'trian_cpn' (did you mean 'train_cpn'?)"),
        ("cams.betas=0.2:0.6:oops", "cams.betas: '0.2:0.6:oops' expected START:STOP:STEP"),
        ("workers=0", "workers: must be >= 1, got 0"),
    ):
        with pytest.raises(ConfigError) as info:
            load_pipeline_config("pipeline_demo", [override])
        assert "pipeline_demo.yaml: " in str(info.value)
        assert expected in str(info.value), override
    assert load_pipeline_config("pipeline_demo", ["segmentation_labels=cam"]).segmentation_labels == "cam"


def test_a_renamed_key_fails_naming_its_new_name_and_recorded_configs_still_load():
    from cpn_dist.config.renames import RENAMED_KEYS, renamed_flat, renamed_tree
    from cpn_dist.training.run_start import config_changes

    for old, new in RENAMED_KEYS.items():
        assert new in all_keys() and old not in all_keys()
        with pytest.raises(ConfigError, match=f"unknown key '{old}': it was renamed to '{new}'"):
            load_config(None, [f"{old}=2.0"])
    with pytest.raises(ConfigError, match="unknown key 'affinity.low_alph' \\(did you mean 'affinity.low_bg_power'"):
        load_config(None, ["affinity.low_alph=2.0"])
    # what weights, checkpoints and step stamps of older versions recorded: read under the new names
    recorded = Config().to_dict()
    recorded["affinity"] = {("rw_beta" if k == "rw_affinity_power" else k): v for k, v in recorded["affinity"].items()}
    recorded["loss"] = {("alpha" if k == "bg_power" else k): v for k, v in recorded["loss"].items()}
    assert Config.model_validate(renamed_tree(recorded)) == Config()
    assert config_changes(recorded, Config().to_dict()) == []
    assert renamed_flat({"affinity.rw_alpha": 16.0, "data.crop": 448}) == {"affinity.rw_bg_power": 16.0,
                                                                           "data.crop": 448}  # fmt: skip


def test_renamed_cli_flags_fail_naming_their_new_names():
    proc = run_cpn("rw", "--checkpoint", "w.pth", "--cams", "c", "--out", "o", "--beta", "8")
    assert proc.returncode == 2 and "--beta was renamed to --affinity-power" in proc.stderr
    proc = run_cpn("affinity-labels", "--cams", "c", "--out", "o", "--alphas", "4", "32")
    assert proc.returncode == 2 and "--alphas was renamed to --bg-powers" in proc.stderr
