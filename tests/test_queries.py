"""Querying history: as-of, one row at a point, changes in a transaction, the change feed, diffs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from sqlalchemy_history_async import (
    Change,
    Operation,
    VersioningError,
    changes_in,
    diff,
    json_patch,
    select_as_of,
    select_changed,
    select_changes,
    select_version_at,
    stream_changes,
    transaction_class,
    version_at,
    versioning_context,
)

from .conftest import StatementLog
from .models import Models, runtime_version_class


async def build_history(models: Models, session: AsyncSession) -> dict[str, Any]:
    """tx1: a, b inserted; tx2: a updated, comment added; tx3: b deleted; tx4: tagging, a."""
    session.add_all([models.User(id=1, name="alice"), models.User(id=2, name="bob")])
    await session.commit()
    a = models.Article(title="a1")
    b = models.Article(title="b1")
    session.add_all([a, b])
    with versioning_context(user_id=1):
        await session.commit()
    a.title = "a2"
    session.add(models.Comment(article=a, text="hi"))
    with versioning_context(user_id=2, remote_addr="10.0.0.2", reason="edit"):
        await session.commit()
    await session.delete(b)
    with versioning_context(user_id=1):
        await session.commit()
    session.add(models.Tagging(article_id=a.id, tag="news"))
    a.title = "a3"
    await session.commit()
    Tx = transaction_class(models.Article)
    txs = (await session.scalars(sa.select(Tx).order_by(Tx.id))).all()
    assert len(txs) == 4
    return {"a": a.id, "b": b.id, "txs": txs}


async def test_select_as_of_transaction_id(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    t1, t2, t3, t4 = (t.id for t in h["txs"])
    V = runtime_version_class(models.Article)

    async def titles(at: Any) -> list[str]:
        stmt = select_as_of(models.Article, at).order_by(V.id)
        return [v.title for v in (await session.scalars(stmt)).all()]

    assert await titles(t1 - 1) == []
    assert await titles(t1) == ["a1", "b1"]
    assert await titles(t2) == ["a2", "b1"]
    assert await titles(t3) == ["a2"]  # b deleted
    assert await titles(t4) == ["a3"]
    assert await titles(h["txs"][1]) == ["a2", "b1"]  # a Transaction object
    # composable
    stmt = select_as_of(models.Article, t2).where(V.title.like("b%")).limit(5)
    assert [v.title for v in (await session.scalars(stmt)).all()] == ["b1"]


async def test_select_as_of_datetime(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    V = runtime_version_class(models.Article)
    at = h["txs"][1].issued_at
    titles = (await session.scalars(select_as_of(models.Article, at).order_by(V.id))).all()
    assert [v.title for v in titles] == ["a2", "b1"]
    before = h["txs"][0].issued_at - dt.timedelta(days=1)
    assert (await session.scalars(select_as_of(models.Article, before))).all() == []
    with pytest.raises(ValueError, match="timezone-aware"):
        select_as_of(models.Article, dt.datetime(2020, 1, 1))
    with pytest.raises(TypeError, match="transaction id"):
        select_as_of(models.Article, "yesterday")  # type: ignore[arg-type]


async def test_version_at(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    t1, t2, t3, _ = (t.id for t in h["txs"])
    v = await version_at(session, models.Article, h["a"], t2)
    assert v is not None
    assert (v.title, v.transaction_id) == ("a2", t2)
    assert await version_at(session, models.Article, h["b"], t3) is None
    assert await version_at(session, models.Article, h["b"], t1 - 1) is None
    assert await version_at(session, models.Article, {"id": h["b"]}, t1) is not None


async def test_version_at_composite_key(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    t4 = h["txs"][3].id
    v = await version_at(session, models.Tagging, (h["a"], "news"), t4)
    assert v is not None
    assert v.tag == "news"
    with pytest.raises(VersioningError, match=r"Tagging primary key is \('article_id', 'tag'\)"):
        select_version_at(models.Tagging, h["a"], t4)
    with pytest.raises(VersioningError, match="pass the model"):
        select_as_of(runtime_version_class(models.Tagging), t4)


async def test_changes_in_one_query_per_version_table(
    models: Models, session: AsyncSession, statements: StatementLog
) -> None:
    h = await build_history(models, session)
    statements.clear()
    changes = await changes_in(session, h["txs"][1])
    selects = [s for s in statements.statements if s.lstrip().startswith("SELECT")]
    assert len(selects) == 3  # article, comment, tagging version tables
    assert [(type(v).__name__, v.operation_type) for v in changes] == [
        ("ArticleVersion", Operation.UPDATE),
        ("CommentVersion", Operation.INSERT),
    ]
    t1 = await changes_in(session, h["txs"][0].id)
    assert [(v.title, v.operation_type) for v in t1] == [
        ("a1", Operation.INSERT),
        ("b1", Operation.INSERT),
    ]


async def test_select_changes_feed(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    t1, t2, t3, t4 = (t.id for t in h["txs"])
    rows = (await session.execute(select_changes())).all()
    assert [(r.transaction_id, r.table, r.primary_key, r.operation) for r in rows] == [
        (t1, "article", {"id": h["a"]}, Operation.INSERT),
        (t1, "article", {"id": h["b"]}, Operation.INSERT),
        (t2, "article", {"id": h["a"]}, Operation.UPDATE),
        (t2, "comment", {"id": 1}, Operation.INSERT),
        (t3, "article", {"id": h["b"]}, Operation.DELETE),
        (t4, "article", {"id": h["a"]}, Operation.UPDATE),
        (t4, "tagging", {"article_id": h["a"], "tag": "news"}, Operation.INSERT),
    ]
    edit = rows[2]
    assert (edit.user_id, edit.meta, edit.remote_addr) == (2, {"reason": "edit"}, "10.0.0.2")
    assert rows[0].remote_addr is None
    assert (edit.changed, rows[4].changed) == (["title"], [])  # an edit; a delete
    # every row's changed names are its version's changeset, computed in SQL
    for model in (models.Article, models.Comment, models.Tagging):
        V: Any = runtime_version_class(model)
        versions = (
            await session.scalars(sa.select(V).options(sa.orm.selectinload(V.previous)))
        ).all()
        table = model.__table__.name
        assert versions
        for row in rows:
            if row.table != table:
                continue
            [version] = [
                v
                for v in versions
                if v.transaction_id == row.transaction_id
                and all(getattr(v, a) == value for a, value in row.primary_key.items())
            ]
            assert row.changed == list(version.changeset), (table, row)
    assert edit.issued_at == h["txs"][1].issued_at


async def test_select_changes_filters(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    t1, t2, t3, t4 = h["txs"]

    async def feed(**kw: Any) -> list[tuple[int, str]]:
        rows = (await session.execute(select_changes(**kw))).all()
        return [(r.transaction_id, r.table) for r in rows]

    assert await feed(since=t2.id, until=t3.id) == [
        (t2.id, "article"),
        (t2.id, "comment"),
        (t3.id, "article"),
    ]
    assert await feed(since=t4.issued_at) == [(t4.id, "article"), (t4.id, "tagging")]
    assert await feed(until=t1.issued_at) == [(t1.id, "article"), (t1.id, "article")]
    assert await feed(classes=[models.Comment, models.Tagging]) == [
        (t2.id, "comment"),
        (t4.id, "tagging"),
    ]
    assert await feed(user_id=1) == [(t1.id, "article"), (t1.id, "article"), (t3.id, "article")]
    assert await feed(operations=[Operation.DELETE]) == [(t3.id, "article")]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 500])
async def test_stream_changes_pages_through_the_feed(
    models: Models, session: AsyncSession, batch_size: int
) -> None:
    h = await build_history(models, session)
    expected = [Change(*row) for row in (await session.execute(select_changes())).all()]
    streamed = [r async for r in stream_changes(session, batch_size=batch_size)]
    assert streamed == expected
    resumed = [r async for r in stream_changes(session, after=h["txs"][1].id, batch_size=2)]
    assert resumed == [r for r in expected if r.transaction_id > h["txs"][1].id]
    with pytest.raises(ValueError, match="batch_size"):
        [r async for r in stream_changes(session, batch_size=0)]


async def test_diff_and_json_patch(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    V = runtime_version_class(models.Article)
    first, _, last = (
        await session.scalars(sa.select(V).where(V.id == h["a"]).order_by(V.transaction_id))
    ).all()
    assert diff(first, last) == {"title": ("a1", "a3")}
    assert json_patch(first, last) == [{"op": "replace", "path": "/title", "value": "a3"}]
    b_first = await session.scalar(sa.select(V).where(V.id == h["b"]).limit(1))
    assert b_first is not None
    with pytest.raises(VersioningError, match="two different Article rows"):
        diff(first, b_first)


async def test_select_changed(models: Models, session: AsyncSession) -> None:
    h = await build_history(models, session)
    V = runtime_version_class(models.Article)
    b = await session.get(models.Article, h["a"])
    assert b is not None
    b.body = "body only"
    await session.commit()

    title_changes = (
        await session.scalars(
            select_changed(models.Article, "title").where(V.id == h["a"]).order_by(V.transaction_id)
        )
    ).all()
    assert [v.title for v in title_changes] == ["a1", "a2", "a3"]
    body_changes = (
        await session.scalars(select_changed(models.Article, "body").where(V.id == h["a"]))
    ).all()
    assert [v.body for v in body_changes] == ["body only"]
    with pytest.raises(VersioningError, match="no versioned attribute"):
        select_changed(models.Article, "view_count")


async def test_feed_changed_names_see_case_only_changes(
    models: Models, session: AsyncSession
) -> None:
    """MariaDB's default collation compares "abc" and "ABC" equal; the feed does not."""
    article = models.Article(title="abc")
    session.add(article)
    await session.commit()
    article.title = "ABC"
    await session.commit()
    rows = (await session.execute(select_changes(classes=[models.Article]))).all()
    assert [(r.operation, r.changed) for r in rows][-1] == (Operation.UPDATE, ["title"])
