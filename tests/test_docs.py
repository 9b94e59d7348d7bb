"""The README and docs/ point at what exists: every repository path, every test by name, every link and anchor,
every function the maps name in the module they name; the README stays short, with a contents list."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: The user docs: how digitq is now. History belongs in CHANGELOG.md and BENCHMARKS.md.
USER_DOCS = [README, ROOT / "docs" / "operations.md", ROOT / "docs" / "guarantees.md", ROOT / "docs" / "model.md"]
#: First path components that make a span a repository path (others, like `jobs/<id>/`, live under the data dir).
REPO_DIRS = {"digitq", "worker", "producer", "model", "scripts", "tests", "docs", "docker", "samples", ".ci"}
REPO_FILES = {"README.md", "BENCHMARKS.md", "CHANGELOG.md", "pyproject.toml", "setup.py"}
#: Files another branch adds; linked already so that the docs need no edit when it lands.
AWAITED = {ROOT / "docs" / "robustness-table.md"}
README_MAX_LINES = 320

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.M)
IDENTIFIER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")
HISTORY = [re.compile(r"\b20\d\d-\d\d(-\d\d)?\b"), re.compile(r"\bissues? \d+", re.I), re.compile(r"\bbefore 20\d\d")]


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def is_repo_path(span: str) -> bool:
    if span in REPO_FILES:
        return True
    if any(c in span for c in " <>*{}$|,;()") or "/" not in span:
        return False
    return span.split("/", 1)[0] in REPO_DIRS


def repo_paths(text: str) -> set[str]:
    """Backticked repository paths in the prose, and repository paths in the code blocks' commands."""
    found = {span.split("::")[0] for span in INLINE.findall(prose(text)) if is_repo_path(span.split("::")[0])}
    for block in FENCE.findall(text):
        found |= {token for token in re.split(r"[\s=\"']+", block) if is_repo_path(token)}
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


@cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


@cache
def defined(module: str) -> set[str]:
    """Names a module defines: its functions and classes, and ``Class.method`` for their methods."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``first_header``, cell by cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def unknown_names(cell: str) -> list[str]:
    """Backticked identifiers in ``cell`` that none of the Python modules it names defines."""
    spans = INLINE.findall(cell)
    modules = [s for s in spans if is_repo_path(s) and s.endswith(".py") and (ROOT / s).is_file()]
    names = [s for s in spans if IDENTIFIER.fullmatch(s) and not s.endswith(".py")]
    if not modules:
        return []
    return [n for n in names if not any(n in defined(m) for m in modules)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_path_the_docs_name_exists(doc):
    missing = sorted(p for p in repo_paths(doc.read_text(encoding="utf-8")) if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_the_docs_name_exists(doc):
    missing = []
    for module, name in TEST_REF.findall(doc.read_text(encoding="utf-8")):
        if not (ROOT / module).is_file() or name not in defined(module):
            missing.append(f"{module}::{name}")
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(doc):
    broken = []
    for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if file in AWAITED:
            continue
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{doc.name} links to what does not exist: {broken}"


def test_the_readme_is_short_and_has_a_contents_list_of_its_sections():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    contents = re.search(r"^## Contents\n\n((?:- \[.*\]\(#.*\)\n)+)", text, re.M)
    assert contents, "the README needs a '## Contents' list of links to its sections"
    listed = re.findall(r"\(#([^)]+)\)", contents.group(1))
    sections = [slug(title) for level, title in HEADING.findall(prose(text)) if level == "##" and title != "Contents"]
    assert listed == sections, "the contents list names every section, in order"
    assert set(listed) <= anchors(README)


def test_the_readme_map_names_functions_where_they_are_defined():
    """"Where to change X": each function or class a row names is defined in a module that row names."""
    text = README.read_text(encoding="utf-8")
    wrong = {row[0]: unknown_names(row[1]) for row in table_rows(text, "to change or find...")}
    assert not {k: v for k, v in wrong.items() if v}


def test_the_readme_layout_names_files_that_are_in_their_folder():
    text = README.read_text(encoding="utf-8")
    missing = []
    for row in table_rows(text, "path"):
        folder = INLINE.fullmatch(row[0])
        if not folder:
            continue
        for name in INLINE.findall(row[1]):
            if re.fullmatch(r"[\w-]+(\.\w+|/)", name) and not (ROOT / folder.group(1) / name).exists():
                missing.append(f"{folder.group(1)}{name}")
    assert not missing, f"the README's layout names files that are not there: {missing}"


def test_the_guarantees_name_functions_where_they_are_defined():
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    rows = table_rows(text, "guarantee")
    assert rows and all(TEST_REF.search(row[3]) for row in rows), "every guarantee names its test"
    wrong = {row[0]: unknown_names(row[2]) for row in rows}
    assert not {k: v for k, v in wrong.items() if v}


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.name)
def test_the_user_docs_tell_no_history(doc):
    text = doc.read_text(encoding="utf-8")
    found = [m.group(0) for pattern in HISTORY for m in pattern.finditer(text)]
    assert not found, f"{doc.name}: dates and issue numbers belong in CHANGELOG.md: {found}"
