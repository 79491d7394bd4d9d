"""The documentation stays true: docs/reliability.md names tests that exist; the links between the
README and the pages of docs/ lead to files and headings that exist."""

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


def _anchors(path) -> set[str]:
    """The heading anchors of a markdown file, as GitHub makes them."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}  # fmt: skip


def test_relative_links_of_the_readme_and_docs_lead_somewhere():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            name, _, anchor = link.partition("#")
            target = (page.parent / name) if name else page
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert len(pages) > 10 and not broken, broken


def test_the_design_table_and_the_readme_layout_name_every_package_and_top_level_module():
    package = ROOT / "cpn_dist"
    design = (ROOT / "docs" / "design.md").read_text()
    table = design[design.index("| part |"):design.index("\n\n", design.index("| part |"))]
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout"))]
    packages = sorted(p.parent.relative_to(package) for p in package.glob("*/**/__init__.py"))
    top_modules = sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("__"))
    missing = []
    for path in packages:
        top, *sub = path.parts
        named_in_table = f"`cpn_dist.{top}`" in table if not sub else f"`{sub[-1]}` (" in table
        if not named_in_table or f"{path.parts[-1]}/" not in layout:
            missing.append(str(path))
    missing += [m for m in top_modules if f"{m}.py" not in layout or not re.search(rf"`(cpn_dist\.)?{m}`", table)]
    assert len(packages) >= 14 and len(top_modules) >= 5 and not missing, missing
