import re

from cpn_dist import __version__
from tests.conftest import run_cpn


def test_version():
    proc = run_cpn("--version", check=True)
    assert proc.stdout.strip() == f"cpn-dist {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


def test_help_lists_only_implemented_commands():
    from cpn_dist.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        proc = run_cpn(name, "--help", check=True)
        assert "usage" in proc.stdout.lower()
    top = run_cpn("--help", check=True).stdout
    for name in sub.choices:
        assert name in top


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = run_cpn("check-voc", str(tmp_path / "missing"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing'}: VOC folder not found"
    assert "Traceback" not in proc.stderr


def test_every_backbone_flag_offers_every_backbone_the_models_have():
    """The CLI lists its --backbone choices without importing torch; they must not drift from the
    model registry (cpn infer and cpn rw once lacked efficientnet_lite0)."""
    from cpn_dist.cli import build_parser
    from cpn_dist.models import BACKBONES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {name: a for name, p in sub.choices.items() for a in p._actions if a.dest == "backbone"}
    assert {"infer", "rw"} <= set(flags)
    for name, action in flags.items():
        assert sorted(action.choices) == sorted(BACKBONES), name
