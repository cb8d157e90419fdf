"""The package's modules import only modules of lower layers (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sqlalchemy_history_async"

#: Bottom to top; a module may import modules of lower layers only (never its own layer).
LAYERS: list[set[str]] = [
    {"_exceptions", "_schema", "_sqlite"},
    {"_context", "_horizon", "_options", "_order"},
    {"_info"},
    {"_revert", "_writes"},
    {"_models", "_capture", "_dml"},
    {"_bulk", "_relationships", "_queries"},
    {"_baseline", "_build", "_feed", "_integrity", "_retention"},
    {"_manager"},
    {"__init__", "alembic", "cli", "fastapi", "testing"},
]
# The mypy plugin is loaded by mypy only; nothing in the package imports it.
STANDALONE = {"mypy"}


def layer_of(module: str) -> int:
    for number, layer in enumerate(LAYERS):
        if module in layer:
            return number
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def runtime_imports(path: Path) -> set[str]:
    """Package modules imported by ``path``, leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE.name):
            rest = (node.module or "").removeprefix(PACKAGE.name).lstrip(".")
            found.add(rest.split(".")[0] if rest else "__init__")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in STANDALONE)


def test_every_module_has_a_layer() -> None:
    assert {m for layer in LAYERS for m in layer} == set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module: str) -> None:
    own = layer_of(module)
    upward = {
        imported: layer_of(imported)
        for imported in runtime_imports(PACKAGE / f"{module}.py")
        if layer_of(imported) >= own
    }
    assert not upward, f"{module} (layer {own}) imports {upward}"


def test_nothing_imports_the_mypy_plugin() -> None:
    for module in MODULES:
        assert "mypy" not in runtime_imports(PACKAGE / f"{module}.py"), module


def test_nothing_imports_the_cli() -> None:
    # The command needs the [cli] extra (Typer, Rich), which the library never requires.
    for module in MODULES:
        assert "cli" not in runtime_imports(PACKAGE / f"{module}.py"), module
