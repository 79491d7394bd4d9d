"""docs/reliability.md stays true: at least 50 faults, each naming a test that exists."""

import ast
import re

from tests.conftest import ROOT


def test_every_row_of_the_reliability_table_names_an_existing_test():
    rows = [line for line in (ROOT / "docs" / "reliability.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| **") and "`tests/" in line]  # fmt: skip
    assert len(rows) >= 50
    defined: dict[str, set[str]] = {}
    for row in rows:
        path, name = re.search(r"`(tests/[\w/]+\.py)::(\w+)`\s*\|\s*$", row).groups()
        if path not in defined:
            tree = ast.parse((ROOT / path).read_text())
            defined[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in defined[path], f"{path}::{name} (docs/reliability.md) does not exist"
