"""The package's shape: a short top level, small packages, no import cycle (imports inside functions
count), and no module importing another module's private names."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "cpn_dist"
ENTRY_FILES = {"__init__.py", "__main__.py"}
MAX_TOP_LEVEL = 8
MAX_PER_PACKAGE = 12
ONE_MODULE_PER_COMMAND = {"cpn_dist.cli"}  # as many modules as `cpn` has subcommands


def module_name(path: Path) -> str:
    """``cpn_dist/data/shards/pack.py`` → ``cpn_dist.data.shards.pack``; a package's ``__init__.py`` is the
    package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, ast.Module]:
    """Every module of cpn_dist by its dotted name, parsed."""
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """name → module of a package's lazy export table (``_EXPORTS = {"cpn_dist.module": ("name", …), …}``):
    importing ``name`` from the package imports that module."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {name: module for module, names in ast.literal_eval(node.value).items() for name in names}
    return {}


def runtime_nodes(tree: ast.Module):
    """Every node of ``tree`` at any depth (in functions too), except the bodies of ``if TYPE_CHECKING:``,
    which never run."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.Module):
    """(module, name or None) for every import of a cpn_dist module at any depth: ``import a.b`` gives
    (``a.b``, None), ``from a import b, c`` gives (``a``, ``b``) and (``a``, ``c``)."""
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names if alias.name.startswith("cpn_dist"))
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("cpn_dist"):
            yield from ((node.module, alias.name) for alias in node.names)


def import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module → the cpn_dist modules it imports: ``from pkg import sub`` is the submodule ``sub``, a name of a
    package's lazy export table is the module that table names, any other name is its module."""
    exports = {name: lazy_exports(tree) for name, tree in modules.items()}
    graph = {}
    for name, tree in modules.items():
        targets = set()
        for module, imported in imported_names(tree):
            if imported is not None and f"{module}.{imported}" in modules:
                targets.add(f"{module}.{imported}")
            elif imported in exports.get(module, {}):
                targets.add(exports[module][imported])
            else:
                targets.add(module)
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or []."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return []


def test_the_top_level_holds_at_most_eight_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ENTRY_FILES)
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_package_but_the_command_line_holds_more_than_twelve_modules():
    crowded = {}
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    for folder in folders:
        package = module_name(folder / "__init__.py")
        modules = [p.name for p in folder.glob("*.py") if p.name not in ENTRY_FILES]
        if len(modules) > MAX_PER_PACKAGE and package not in ONE_MODULE_PER_COMMAND:
            crowded[package] = len(modules)
    assert not crowded, crowded
    assert not [f for f in folders if not (f / "__init__.py").is_file()]  # no namespace package escapes the count


def test_no_import_cycle_even_through_imports_inside_functions():
    # the checker sees a cycle through an import inside a function and a lazy export, not one through
    # an import under TYPE_CHECKING
    toy = import_graph({
        "cpn_dist.a": ast.parse("from cpn_dist.b import f"),
        "cpn_dist.b": ast.parse("def f():\n    from cpn_dist.pkg import g\n"),
        "cpn_dist.pkg": ast.parse('_EXPORTS = {"cpn_dist.c": ("g",)}'),
        "cpn_dist.c": ast.parse("import cpn_dist.a\nif TYPE_CHECKING:\n    from cpn_dist.d import T"),
        "cpn_dist.d": ast.parse("from cpn_dist.c import x"),
    })  # fmt: skip
    assert toy["cpn_dist.b"] == {"cpn_dist.c"} and toy["cpn_dist.c"] == {"cpn_dist.a"}
    assert find_cycle(toy) == ["cpn_dist.a", "cpn_dist.b", "cpn_dist.c", "cpn_dist.a"]

    graph = import_graph(package_modules())
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the checker sees the package
    assert find_cycle(graph) == []


def test_no_module_imports_another_modules_private_names():
    private = [f"{name}: from {module} import {imported}"
               for name, tree in package_modules().items() for module, imported in imported_names(tree)
               if imported and imported.startswith("_") and not imported.startswith("__")]  # fmt: skip
    assert not private, private
