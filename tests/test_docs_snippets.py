"""Every Python snippet in the README and docs runs as written, on every database.

Each page's snippets run in order in one namespace (``tests/docs_runner.py``, a subprocess per
page and database), given only what the page says the reader has (``tests/docs_pages.py``, which
also checks what the snippets did). Every snippet also parses, and every name it imports
exists, checked without a database.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import reset_schema
from tests.docs_pages import PAGES

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def snippets() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for number, match in enumerate(FENCE.finditer(doc.read_text()), start=1):
            found.append((f"{doc.relative_to(ROOT)}#{number}", match.group(1)))
    return found


SNIPPETS = snippets()


def test_there_are_snippets() -> None:
    assert len(SNIPPETS) >= 20


@pytest.mark.parametrize(("where", "source"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_snippet_parses_and_its_imports_exist(where: str, source: str) -> None:
    tree = compile(source, where, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    assert isinstance(tree, ast.Module)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in ("app", "models"):  # the reader's application
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or _submodule(node.module, alias.name), (
                    f"{where}: from {node.module} import {alias.name}: no such name"
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def _submodule(package: str, name: str) -> bool:
    try:
        importlib.import_module(f"{package}.{name}")
    except ImportError:
        return False
    return True


def test_every_page_with_snippets_is_run() -> None:
    pages = {where.split("#")[0] for where, _ in SNIPPETS}
    assert pages == set(PAGES)


@pytest.mark.parametrize("page", sorted(PAGES))
async def test_page_snippets_run(page: str, db: str, async_url: str) -> None:
    engine = create_async_engine(async_url)
    try:
        await reset_schema(engine, sa.MetaData())  # an empty schema
    finally:
        await engine.dispose()
    url = sa.make_url(async_url)
    backend = url.get_backend_name()
    drivers = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
    sync_url = url.set(drivername=drivers.get(backend, f"{backend}+pymysql"))
    command = [
        sys.executable,
        "-W",
        "error",
        str(ROOT / "tests" / "docs_runner.py"),
        page,
        async_url,
        sync_url.render_as_string(hide_password=False),
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("snippets ran"), result.stdout
