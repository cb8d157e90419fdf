"""Which versions changed a column: SQL against the previous version vs a stored flag column.

Fills a PostgreSQL version table with 100,000 rows (20,000 rows x 5 versions, the title changing
in every other version), adds a ``title_mod`` flag column computed the way a flag-writing mode
would, and times the same questions both ways. Run from the repository root::

    python benchmarks/changed_column.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devservers import start_postgres
from sqlalchemy_history_async import make_versioned, select_changed, version_class

ROWS = 100_000
ARTICLES = 20_000


def define_article() -> type[Any]:
    """The versioned model whose version table ``fill`` fills; call after ``make_versioned()``."""

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Article(Base):
        __tablename__ = "article"
        __versioned__: ClassVar[dict[str, Any]] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        status: Mapped[str] = mapped_column(sa.String(20), default="draft")

    return Article


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


async def median_ms(session: AsyncSession, stmt: sa.Select[Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (await session.execute(stmt)).all()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def main(url: str) -> None:
    make_versioned()
    Article = define_article()
    sa.orm.configure_mappers()
    V = version_class(Article)
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Article.metadata.create_all)
    async with async_sessionmaker(engine)() as s:
        await fill(s)
        await s.execute(
            sa.text("UPDATE article_version SET title = 'same' WHERE transaction_id % 2 = 0")
        )
        await s.execute(sa.text("ALTER TABLE article_version ADD COLUMN title_mod boolean"))
        await s.execute(
            sa.text(
                "UPDATE article_version v SET title_mod = p.title IS DISTINCT FROM v.title "
                "FROM article_version v2 LEFT JOIN article_version p "
                "ON p.id = v2.id AND p.end_transaction_id = v2.transaction_id "
                "WHERE v.id = v2.id AND v.transaction_id = v2.transaction_id"
            )
        )
        await s.commit()
        await s.execute(sa.text("ANALYZE"))
        flag = sa.text("article_version.title_mod")
        changed = select_changed(Article, "title")
        cases = [
            ("one row", changed.where(V.id == 777), sa.select(V).where(V.id == 777, flag), 200),
            (
                "latest 100",
                changed.order_by(V.transaction_id.desc()).limit(100),
                sa.select(V).where(flag).order_by(V.transaction_id.desc()).limit(100),
                50,
            ),
            (
                "count all",
                sa.select(sa.func.count()).select_from(changed.subquery()),
                sa.select(sa.func.count()).select_from(V).where(flag),
                10,
            ),
        ]
        print(f"{'question':<12} {'SQL (ms)':>9} {'flag (ms)':>10}")
        for name, in_sql, with_flag, repeats in cases:
            a = await median_ms(s, in_sql, repeats)
            b = await median_ms(s, with_flag, repeats)
            print(f"{name:<12} {a:>9.2f} {b:>10.2f}")
    await engine.dispose()


if __name__ == "__main__":
    with start_postgres() as server:
        asyncio.run(main(server.url))
