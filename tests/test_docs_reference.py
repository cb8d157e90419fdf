"""The API reference of the documentation site documents every public name.

``docs/reference/index.md`` lists the names of ``sqlalchemy_history_async.__all__`` one by one
(grouped by topic); a name added to ``__all__`` and forgotten there fails here rather than
going missing from the site. The build itself (``nox -s docs``) fails on broken links.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy_history_async

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"
DIRECTIVE = re.compile(r"^::: (\S+)$", re.MULTILINE)


def documented(page: str) -> list[str]:
    return DIRECTIVE.findall((REFERENCE / page).read_text())


def test_every_public_name_is_in_the_reference() -> None:
    names = documented("index.md")
    prefix = "sqlalchemy_history_async."
    assert all(n.startswith(prefix) for n in names)
    listed = [n.removeprefix(prefix) for n in names]
    assert sorted(listed) == sorted(set(listed)), "a name is documented twice"
    missing = sorted(set(sqlalchemy_history_async.__all__) - set(listed))
    assert not missing, f"add `::: {prefix}<name>` to docs/reference/index.md for {missing}"
    assert set(listed) <= set(sqlalchemy_history_async.__all__), "not a public name"


def test_the_optional_modules_have_pages() -> None:
    for module in ("fastapi", "testing", "alembic"):
        assert documented(f"{module}.md") == [f"sqlalchemy_history_async.{module}"]
