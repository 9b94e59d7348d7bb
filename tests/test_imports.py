"""The import graph of the whole tree, read from the source (AST): no cycle, and the layers as the README
draws them.

Every ``import`` counts wherever it stands (module level, inside a function, under ``TYPE_CHECKING``): an
import moved into a function to get past a cycle at load time is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The first-party trees whose modules are walked (``scripts`` is a folder of files, walked the same way).
TREES = ("digitq", "producer", "worker", "model", "tests", "scripts")
#: Package (or module) -> the packages it must never import, at any depth of either.
FORBIDDEN = {
    "digitq": ("producer", "worker", "model"),
    "model": ("worker", "producer"),
    "worker": ("producer",),
    "model.serving": ("model.quality", "model.training"),
    "model.quality": ("model.training",),
}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every first-party Python module (a package by its ``__init__.py``)."""
    found = {}
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The first-party module an import of ``name`` loads: ``name`` itself, or its longest known prefix (an
    extension module such as ``model.serving._jpegdc`` is its package's); None for a third-party name."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The first-party modules that ``module`` (at ``path``) imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(filter(None, (_resolve(alias.name, modules) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 more
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import sub` imports the module pkg.sub where there is one
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else _resolve(base, modules) or "")
    targets.discard("")
    targets.discard(module)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a deep chain of imports cannot reach the recursion limit.
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_imports_at_every_level():
    graph = _graph()
    # A module-level import, a function-level one, a `from package import module` and an extension module.
    assert "model.registry" in graph["model.serving.runtime"]
    assert "model.serving.preprocess" in graph["model.quality.robustness"]  # inside build_suite
    assert "model.quality.calibration" in graph["model.training.run"]  # from model.quality import calibration
    assert "model.serving" in graph["model.serving.preprocess"]  # from model.serving import _jpegdc
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_tree():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (each a set of modules that import each other, at any level):\n" + \
        "\n".join(", ".join(c) for c in cycles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_never_imports_what_sits_above_it(package):
    wrong = sorted(f"{module} imports {target}" for module, targets in _graph().items() if _within(module, package)
                   for target in targets if any(_within(target, above) for above in FORBIDDEN[package]))
    assert not wrong, "\n".join(wrong)
