"""The house rules that a reader relies on: no import cycles, model/ never imports app/, each
file opens with its role, and no file of model/ or app/ grows past about 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "app")
MAX_LINES = 520
LONG_ALLOWED = {"app/schemas.py"}  # the API types, one file as TGI keeps them


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of model/ and app/."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def _imports(f: Path, name: str, known: set[str]) -> set[str]:
    """Every project module f imports, anywhere in the file (functions, TYPE_CHECKING too)."""
    found: set[str] = set()
    is_pkg = f.name == "__init__.py"
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t in known and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(f, name, known) for name, f in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    colour: dict[str, int] = dict.fromkeys(graph, 0)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if colour[m] == 1:
                return [*stack[stack.index(m):], m]
            if colour[m] == 0 and (c := visit(m)):
                return c
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0 and (c := visit(n)):
            return c
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_of_any_length() -> None:
    graph = _graph()
    assert len(graph) > 20
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_model_never_imports_the_service() -> None:
    for name, deps in _graph().items():
        if name.startswith("model"):
            assert not [d for d in deps if d.startswith("app")], name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_each_file_states_its_role_and_stays_small(name: str) -> None:
    f = _modules()[name]
    text = f.read_text(encoding="utf-8")
    if not text.strip():
        return  # an empty package marker
    doc = ast.get_docstring(ast.parse(text))
    assert doc and len(doc.splitlines()[0]) > 20, f"{f}: no opening docstring stating its role"
    rel = str(f.relative_to(ROOT))
    if rel not in LONG_ALLOWED:
        assert text.count("\n") <= MAX_LINES, f"{rel}: {text.count(chr(10))} lines"
