"""Query plans on PostgreSQL with 100,000 version rows: history reads go through indexes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from sqlalchemy_history_async import select_changes, select_version_at
from sqlalchemy_history_async._feed import _Pages

from .conftest import DATABASES
from .models import Models, runtime_version_class

pytestmark = pytest.mark.skipif(
    "postgresql" not in DATABASES, reason="PostgreSQL deselected by HISTORY_TEST_DATABASES"
)

ROWS = 100_000
ARTICLES = 20_000


@pytest.fixture(params=["postgresql"])
def db(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def fill(session: AsyncSession) -> None:
    """ROWS transactions, each writing one version of one of ARTICLES rows."""
    await session.execute(
        sa.text(
            "INSERT INTO transaction (id, issued_at) "
            "SELECT n, TIMESTAMPTZ '2026-01-01' + n * INTERVAL '1 second' "
            "FROM generate_series(1, :rows) AS n"
        ),
        {"rows": ROWS},
    )
    await session.execute(
        sa.text(
            "INSERT INTO article_version "
            "(id, title, status, transaction_id, end_transaction_id, operation_type) "
            "SELECT (n - 1) % :articles + 1, 'title ' || n, 'draft', n, "
            "CASE WHEN n + :articles <= :rows THEN n + :articles END, "
            "CASE WHEN n <= :articles THEN 0 ELSE 1 END "
            "FROM generate_series(1, :rows) AS n"
        ),
        {"rows": ROWS, "articles": ARTICLES},
    )
    await session.commit()
    await session.execute(sa.text("ANALYZE"))


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def explain(session: AsyncSession, stmt: sa.ClauseElement) -> list[dict[str, Any]]:
    dialect = session.get_bind().dialect
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    raw = (await session.execute(sa.text(f"EXPLAIN (FORMAT JSON) {compiled}"))).scalar_one()
    doc = json.loads(raw) if isinstance(raw, str) else raw
    return list(plan_nodes(doc[0]["Plan"]))


def scans_of(nodes: list[dict[str, Any]], relation: str) -> list[str]:
    return [n["Node Type"] for n in nodes if n.get("Relation Name") == relation]


INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}


async def test_as_of_lookup_of_one_row_uses_an_index(models: Models, session: AsyncSession) -> None:
    await fill(session)
    stmt = select_version_at(models.Article, 1234, ROWS // 2)
    version = await session.scalar(stmt)
    assert version is not None
    # versions of row 1234 were written at 1234, 21234, 41234, 61234, ...
    assert version.transaction_id == 1234 + 2 * ARTICLES

    scans = scans_of(await explain(session, stmt), "article_version")
    assert scans, "article_version not in the plan"
    assert set(scans) <= INDEX_SCANS, scans


async def test_change_feed_page_uses_indexes(models: Models, session: AsyncSession) -> None:
    await fill(session)
    stmt = select_changes(since=ROWS // 2).limit(500)
    rows = (await session.execute(stmt)).all()
    assert len(rows) == 500
    assert rows[0].transaction_id == ROWS // 2

    last = rows[-1]
    pages = _Pages(None, 500, None, None, None, None)
    pages.cursor = (last.transaction_id, last.table, last.key_text)
    next_page = pages.next_statement()
    assert next_page is not None
    following = (await session.execute(next_page)).all()
    assert following[0].transaction_id == last.transaction_id + 1

    for page in (stmt, next_page):
        nodes = await explain(session, page)
        for relation in ("article_version", "transaction"):
            scans = scans_of(nodes, relation)
            assert scans, f"{relation} not in the plan"
            assert set(scans) <= INDEX_SCANS, (relation, scans)


async def test_current_versions_use_an_index(models: Models, session: AsyncSession) -> None:
    await fill(session)
    V = runtime_version_class(models.Article)
    stmt = sa.select(V).where(V.id == 77, V.is_current)
    [current] = (await session.scalars(stmt)).all()
    assert current.end_transaction_id is None
    scans = scans_of(await explain(session, stmt), "article_version")
    assert set(scans) <= INDEX_SCANS, scans
