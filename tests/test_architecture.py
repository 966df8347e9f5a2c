"""The one-way flow, checked from the source: no import cycles (function-level imports included) and none
of the arrows the architecture forbids (docs/architecture.md).

The graph is built with ``ast`` from every module of ``harness/`` and ``blocks/``: ``import a.b`` and
``from a.b import c`` are edges to ``a.b`` (to ``a.b.c`` when that is a module), wherever they appear in a
file. Importing a submodule is not counted as importing its package's ``__init__``: Python loads the
package first, but that is structure, not a dependency the code chose.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "blocks")

# (importer prefix, imported prefix, why the arrow is forbidden)
FORBIDDEN = [
    ("blocks", "harness", "blocks/ is pure PyTorch: a user can use it without the harness"),
    ("blocks", "ray", "blocks/ is pure PyTorch"),
    ("blocks", "mlflow", "blocks/ is pure PyTorch"),
    ("blocks", "pandas", "blocks/ is pure PyTorch"),
    ("harness.train", "ray", "the trainer knows nothing of Ray: the same trial gives the same numbers without it"),
    ("harness.train", "mlflow", "the trainer knows nothing of MLflow"),
    ("harness.train", "harness.tune", "the trainer does not reach back into its launcher"),
    ("harness.train", "harness.tracking", "the trainer does not write to MLflow"),
    ("harness.train", "harness.study", "the trainer knows no study kind"),
    ("harness.train", "harness.probe", "the trainer knows no study kind: per-cell figures are a report"),
    ("harness.train", "harness.tables", "data flows from the trainer to the tables, not back"),
    ("harness.data", "blocks", "data does not depend on the model"),
    ("harness.data", "harness.train", "data does not depend on training"),
    ("harness.tables", "harness.train", "tables are built from MLflow alone, never from training"),
    ("harness.tables", "harness.tune", "tables are built from MLflow alone, never from Ray"),
    ("harness.tables", "harness.study", "tables do not reach back into the engine that runs studies"),
    ("harness.tables", "ray", "tables are built from MLflow alone"),
    ("harness.config", "harness.data", "the schema holds no code that runs"),
    ("harness.config", "harness.train", "the schema holds no code that runs"),
]
# Only harness.tracking talks to MLflow (and ui, which starts its server; tests of the store aside).
MLFLOW_ALLOWED = ("harness.tracking", "harness.ui")
# Only harness.tune talks to Ray (bench and doctor measure and check it, and do so through harness.tune).
RAY_ALLOWED = ("harness.tune",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, resolved to our modules where they are ours, top-level names otherwise."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..config import y
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) - {name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), our modules only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_graph_sees_function_level_imports():
    """The checker is only worth something if it finds the imports it claims to: one inside a function."""
    edges = graph()
    assert "harness.tune.grid" in edges["harness.study.grid"]  # imported inside GridPlan.launch
    assert "blocks" in edges["harness.train.setup"]


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize("importer, imported, why", FORBIDDEN)
def test_no_forbidden_arrow(importer, imported, why):
    bad = sorted(f"{m} -> {t}" for m, targets in graph().items() if _under(m, importer)
                 for t in targets if _under(t, imported))
    assert not bad, f"{why}: {bad}"


@pytest.mark.parametrize("library, allowed", [("mlflow", MLFLOW_ALLOWED), ("ray", RAY_ALLOWED)])
def test_one_module_talks_to_each_service(library, allowed):
    bad = sorted(m for m, targets in graph().items() if any(_under(t, library) for t in targets)
                 and not any(_under(m, a) for a in allowed))
    assert not bad, f"only {', '.join(allowed)} may import {library}; also: {bad}"
