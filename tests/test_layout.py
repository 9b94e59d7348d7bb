"""The layout holds: each idea has one home, and the packages import only downward.

- every Redis key of digitq is built in ``digitq/bus/keys.py`` (no ``"digitq:..."`` literal elsewhere);
- a batch entry's kind is read and written only in ``digitq/batch/message.py``;
- ``producer/`` never imports TensorFlow (the first-party layers and the absence of import cycles are
  ``tests/test_imports.py``'s);
- no module name is used twice across ``digitq/``, ``producer/`` and ``worker/``.

Read from the source (``ast``), so nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("digitq", "producer", "worker", "model")
KEYS_MODULE = ROOT / "digitq" / "bus" / "keys.py"
MESSAGE_MODULE = ROOT / "digitq" / "batch" / "message.py"
#: An entry's kind on the wire (:class:`digitq.batch.message.Kind`).
ENTRY_KEYS = {"blob", "data", "ref", "scored", "error"}
#: Words that mean nothing but an entry's kind anywhere in the code.
ENTRY_ONLY_KEYS = {"blob", "ref", "scored"}
#: The modules that carry batch messages: there, even "data" and "error" keys would be an entry's.
MESSAGE_CARRIERS = [ROOT / "producer" / "dispatch.py", *(ROOT / "worker").glob("*.py"),
                    *(p for p in (ROOT / "digitq" / "batch").glob("*.py") if p.name != "stalls.py")]


def _sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any level of the file (absolute names)."""
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_redis_key_is_built_in_bus_keys():
    found = []
    for path in _sources(*PACKAGES):
        if path == KEYS_MODULE:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if text.startswith("digitq:") and len(text) > 7 and not text[7].isspace():
                    found.append(f"{_rel(path)}:{node.lineno}: {text!r}")
    assert not found, "Redis keys built outside digitq/bus/keys.py:\n" + "\n".join(found)


def _key_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """String constants used as a mapping's key: in a dict display, a subscript, an ``in`` test, ``.get()``."""
    for node in ast.walk(tree):
        candidates: list[ast.expr] = []
        if isinstance(node, ast.Dict):
            candidates = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Subscript):
            candidates = [node.slice]
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            candidates = [node.left]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            candidates = [node.args[0]]
        for c in candidates:
            if isinstance(c, ast.Constant) and isinstance(c.value, str):
                yield c.lineno, c.value


def test_an_entry_kind_is_read_and_written_only_in_the_batch_message():
    found = []
    for path in _sources("digitq", "producer", "worker"):
        if path == MESSAGE_MODULE:
            continue
        words = ENTRY_KEYS if path in MESSAGE_CARRIERS else ENTRY_ONLY_KEYS
        found += [f"{_rel(path)}:{line}: {key!r}" for line, key in _key_uses(_tree(path)) if key in words]
    assert not found, "entry keys outside digitq/batch/message.py:\n" + "\n".join(found)


def test_the_guards_see_what_they_guard():
    """The checks above find what they look for (a guard that finds nothing anywhere guards nothing)."""
    keys_tree = _tree(KEYS_MODULE)
    assert any(isinstance(n, ast.Constant) and n.value == "digitq:" for n in ast.walk(keys_tree))
    kind = next(n for n in ast.walk(_tree(MESSAGE_MODULE)) if isinstance(n, ast.ClassDef) and n.name == "Kind")
    assert {a.value.value for a in kind.body if isinstance(a, ast.Assign)} == ENTRY_KEYS
    assert {"blob", "scored"} <= {key for _, key in _key_uses(ast.parse('e["blob"]; "scored" in e; {"ref": 1}'))}
    assert any(p.name == "inference.py" for p in MESSAGE_CARRIERS)


def test_the_producer_never_imports_tensorflow():
    found = [f"{_rel(path)} imports {name}" for path in _sources("producer") for name in sorted(_imports(path))
             if name.split(".")[0] in ("tensorflow", "keras", "tf_keras")]
    assert found == []


def test_no_module_name_serves_two_ideas():
    seen: dict[str, list[str]] = {}
    for path in _sources("digitq", "producer", "worker"):
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(_rel(path))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
