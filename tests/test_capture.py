"""Capture: what a commit records, through AsyncSession."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sqlalchemy_history_async import Operation, transaction_class, version_class
from sqlalchemy_history_async._capture import SESSION_INFO_KEY

from .conftest import StatementLog
from .models import Models


async def all_versions(session: AsyncSession, model: type[Any]) -> list[Any]:
    V = version_class(model)
    pk = [V.__table__.c[c.key] for c in sa.inspect(model).primary_key]
    return list((await session.scalars(sa.select(V).order_by(V.transaction_id, *pk))).all())


async def count(session: AsyncSession, cls: type[Any]) -> int:
    return (await session.execute(sa.select(sa.func.count()).select_from(cls))).scalar_one()


async def test_insert_records_insert_version_with_database_values(
    models: Models, session: AsyncSession
) -> None:
    article = models.Article(title="Hello", body="World", status_="draft")
    session.add(article)
    await session.commit()

    [v] = await all_versions(session, models.Article)
    assert v.operation_type is Operation.INSERT
    assert (v.id, v.title, v.body, v.status_) == (article.id, "Hello", "World", "draft")
    assert v.created is not None  # server default, read back from the database
    assert v.end_transaction_id is None
    assert not hasattr(v, "view_count")  # excluded
    assert await count(session, transaction_class(models.Article)) == 1


async def test_update_and_delete_close_previous_versions(
    models: Models, session: AsyncSession
) -> None:
    article = models.Article(title="v1")
    session.add(article)
    await session.commit()
    article.title = "v2"
    await session.commit()
    await session.delete(article)
    await session.commit()

    v1, v2, v3 = await all_versions(session, models.Article)
    assert [v.operation_type for v in (v1, v2, v3)] == [
        Operation.INSERT,
        Operation.UPDATE,
        Operation.DELETE,
    ]
    assert [v.title for v in (v1, v2, v3)] == ["v1", "v2", "v2"]
    assert v1.end_transaction_id == v2.transaction_id
    assert v2.end_transaction_id == v3.transaction_id
    assert v3.end_transaction_id is None
    assert len({v1.transaction_id, v2.transaction_id, v3.transaction_id}) == 3


async def test_one_transaction_row_per_transaction_across_flushes(
    models: Models, session: AsyncSession
) -> None:
    a = models.Article(title="a")
    session.add(a)
    await session.flush()
    session.add(models.Comment(article=a, text="first"))
    await session.flush()
    session.add(models.Tagging(article_id=a.id, tag="x"))
    await session.commit()

    assert await count(session, transaction_class(models.Article)) == 1
    tx_ids = {
        v.transaction_id
        for m in (models.Article, models.Comment, models.Tagging)
        for v in await all_versions(session, m)
    }
    assert len(tx_ids) == 1


async def test_insert_then_update_is_one_insert_version_with_final_state(
    models: Models, session: AsyncSession
) -> None:
    a = models.Article(title="draft title")
    session.add(a)
    await session.flush()
    a.title = "final title"
    await session.flush()
    a.body = "body"
    await session.commit()

    [v] = await all_versions(session, models.Article)
    assert (v.operation_type, v.title, v.body) == (Operation.INSERT, "final title", "body")


async def test_insert_then_delete_leaves_no_trace(models: Models, session: AsyncSession) -> None:
    a = models.Article(title="gone")
    session.add(a)
    await session.flush()
    await session.delete(a)
    await session.commit()

    assert await all_versions(session, models.Article) == []
    assert await count(session, transaction_class(models.Article)) == 0


async def test_update_then_delete_is_delete(models: Models, session: AsyncSession) -> None:
    a = models.Article(title="one")
    session.add(a)
    await session.commit()
    a.title = "two"
    await session.flush()
    await session.delete(a)
    await session.commit()

    v1, v2 = await all_versions(session, models.Article)
    assert (v2.operation_type, v2.title) == (Operation.DELETE, "two")
    assert v1.end_transaction_id == v2.transaction_id


async def test_delete_and_reinsert_same_key_in_one_transaction_is_update(
    models: Models, session: AsyncSession
) -> None:
    session.add(models.Tagging(article_id=1, tag="t", weight=1))
    await session.commit()
    t = await session.get(models.Tagging, (1, "t"))
    await session.delete(t)
    await session.flush()
    session.add(models.Tagging(article_id=1, tag="t", weight=5))
    await session.commit()

    v1, v2 = await all_versions(session, models.Tagging)
    assert (v2.operation_type, v2.weight) == (Operation.UPDATE, 5)
    assert v1.end_transaction_id == v2.transaction_id


async def test_update_without_tracked_change_records_nothing(
    models: Models, session: AsyncSession
) -> None:
    a = models.Article(title="same")
    session.add(a)
    await session.commit()

    a.title = "same"  # no net change
    await session.commit()
    a.view_count = 10  # excluded column only
    await session.commit()

    assert len(await all_versions(session, models.Article)) == 1
    assert await count(session, transaction_class(models.Article)) == 1
    await session.refresh(a)
    assert a.view_count == 10


async def test_unversioned_models_record_nothing(models: Models, session: AsyncSession) -> None:
    session.add(models.Plain(value="x"))
    await session.commit()
    assert await count(session, transaction_class(models.Article)) == 0


async def test_rollback_records_nothing(models: Models, session: AsyncSession) -> None:
    session.add(models.Article(title="never"))
    await session.flush()
    await session.rollback()

    assert await all_versions(session, models.Article) == []
    assert await count(session, transaction_class(models.Article)) == 0
    assert SESSION_INFO_KEY not in session.info


async def test_rolled_back_savepoint_leaves_no_trace(models: Models, session: AsyncSession) -> None:
    kept = models.Article(title="kept")
    session.add(kept)
    await session.flush()
    async with session.begin_nested() as savepoint:
        kept.title = "changed inside savepoint"
        session.add(models.Article(title="inside"))
        await session.flush()
        await savepoint.rollback()
    await session.commit()

    [v] = await all_versions(session, models.Article)
    assert (v.operation_type, v.title) == (Operation.INSERT, "kept")
    assert await count(session, transaction_class(models.Article)) == 1


async def test_transaction_row_first_created_in_rolled_back_savepoint(
    models: Models, session: AsyncSession
) -> None:
    async with session.begin_nested() as savepoint:
        session.add(models.Article(title="inside"))
        await session.flush()
        await savepoint.rollback()
    session.add(models.Article(title="after"))
    await session.commit()

    [v] = await all_versions(session, models.Article)
    assert v.title == "after"
    Tx = transaction_class(models.Article)
    [tx] = (await session.scalars(sa.select(Tx))).all()
    assert tx.id == v.transaction_id


async def test_released_savepoint_keeps_history(models: Models, session: AsyncSession) -> None:
    a = models.Article(title="outer")
    session.add(a)
    await session.flush()
    async with session.begin_nested():
        a.title = "inner"
        session.add(models.Comment(article=a, text="c"))
    a.body = "after savepoint"
    await session.commit()

    [v] = await all_versions(session, models.Article)
    assert (v.operation_type, v.title, v.body) == (Operation.INSERT, "inner", "after savepoint")
    assert len(await all_versions(session, models.Comment)) == 1


async def test_session_info_holds_no_history_state_after_commit_or_rollback(
    models: Models, session: AsyncSession
) -> None:
    session.add(models.Article(title="a"))
    await session.flush()
    assert SESSION_INFO_KEY in session.info
    await session.commit()
    assert SESSION_INFO_KEY not in session.info

    session.add(models.Article(title="b"))
    await session.flush()
    await session.rollback()
    assert SESSION_INFO_KEY not in session.info


async def test_delete_of_expired_object_records_its_values(
    models: Models, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with session_factory(expire_on_commit=True) as session:
        a = models.Article(title="expired", body="values")
        session.add(a)
        await session.commit()
        assert "title" not in a.__dict__  # expired by the commit
        await session.delete(a)
        await session.commit()

        _, deleted = await all_versions(session, models.Article)
        assert (deleted.operation_type, deleted.title, deleted.body) == (
            Operation.DELETE,
            "expired",
            "values",
        )


async def test_delete_orphan_cascade_is_recorded(models: Models, session: AsyncSession) -> None:
    a = models.Article(title="a", comments=[models.Comment(text="c1"), models.Comment(text="c2")])
    session.add(a)
    await session.commit()
    (await a.awaitable_attrs.comments).pop(0)
    await session.commit()

    versions = await all_versions(session, models.Comment)
    assert [(v.text, v.operation_type) for v in versions] == [
        ("c1", Operation.INSERT),
        ("c2", Operation.INSERT),
        ("c1", Operation.DELETE),
    ]


async def test_cascaded_delete_is_recorded(models: Models, session: AsyncSession) -> None:
    a = models.Article(title="a", comments=[models.Comment(text="c1")])
    session.add(a)
    await session.commit()
    await session.delete(a)
    await session.commit()

    ops = [v.operation_type for v in await all_versions(session, models.Comment)]
    assert ops == [Operation.INSERT, Operation.DELETE]


async def test_composite_key_rows_are_tracked_separately(
    models: Models, session: AsyncSession
) -> None:
    session.add_all([models.Tagging(article_id=1, tag="a"), models.Tagging(article_id=1, tag="b")])
    await session.commit()
    b = await session.get(models.Tagging, (1, "b"))
    b.weight = 9
    await session.commit()

    versions = await all_versions(session, models.Tagging)
    assert [(v.tag, v.weight, v.operation_type) for v in versions] == [
        ("a", 1, Operation.INSERT),
        ("b", 1, Operation.INSERT),
        ("b", 9, Operation.UPDATE),
    ]
    assert versions[0].end_transaction_id is None


async def test_primary_key_change_is_delete_plus_insert(
    models: Models, session: AsyncSession
) -> None:
    t = models.Tagging(article_id=1, tag="old", weight=3)
    session.add(t)
    await session.commit()
    t.tag = "new"
    t.weight = 4
    await session.commit()

    versions = await all_versions(session, models.Tagging)
    assert [(v.tag, v.weight, v.operation_type) for v in versions] == [
        ("old", 3, Operation.INSERT),
        ("new", 4, Operation.INSERT),
        ("old", 3, Operation.DELETE),
    ]
    old_insert, new_insert, old_delete = versions
    assert old_insert.end_transaction_id == old_delete.transaction_id
    assert new_insert.end_transaction_id is None
    assert old_delete.end_transaction_id is None


async def test_history_writes_are_set_based(
    models: Models, session: AsyncSession, statements: StatementLog, db: str
) -> None:
    session.add_all([models.Article(title=f"a{i}") for i in range(200)])
    await session.commit()
    articles = (await session.scalars(sa.select(models.Article))).all()
    for a in articles:
        a.title += "!"
    statements.clear()
    await session.commit()

    parent_updates = statements.matching("UPDATE article SET")
    history = [s for s in statements.statements if not s.startswith("UPDATE article SET")]
    assert len(parent_updates) == 1  # executemany: one entry
    # transaction row, close previous versions, copy new versions: three statements, combined
    # into one on PostgreSQL
    assert len(history) == (1 if db == "postgresql" else 3), [s[:60] for s in history]
    assert len(await all_versions(session, models.Article)) == 400


async def test_flush_looks_only_at_changed_objects(
    models: Models, session: AsyncSession, statements: StatementLog
) -> None:
    session.add_all([models.Article(title=f"a{i}") for i in range(300)])
    await session.commit()
    loaded = (await session.scalars(sa.select(models.Article))).all()
    statements.clear()
    loaded[5].title = "only this one"
    await session.commit()

    assert len(statements.statements) <= 1 + 3 + 2  # UPDATE + history + BEGIN/COMMIT
    versions = await all_versions(session, models.Article)
    assert [v.title for v in versions if v.operation_type is Operation.UPDATE] == ["only this one"]


async def test_concurrent_sessions_never_mix_history(
    models: Models, concurrent_session_factory: async_sessionmaker[AsyncSession]
) -> None:
    from sqlalchemy_history_async import versioning_context

    async with concurrent_session_factory() as s:
        s.add_all([models.User(id=1, name="alice"), models.User(id=2, name="bob")])
        await s.commit()

    async def work(user_id: int, n: int) -> None:
        with versioning_context(user_id=user_id):
            async with concurrent_session_factory() as s:
                for i in range(n):
                    s.add(models.Article(title=f"{user_id}-{i}"))
                    await s.flush()
                    await asyncio.sleep(0)
                await s.commit()

    await asyncio.gather(work(1, 3), work(2, 4))

    async with concurrent_session_factory() as s:
        Tx = transaction_class(models.Article)
        txs = {t.id: t.user_id for t in (await s.scalars(sa.select(Tx))).all()}
        assert sorted(txs.values()) == [1, 2]
        versions = await all_versions(s, models.Article)
        assert len(versions) == 7
        for v in versions:
            assert v.title.startswith(f"{txs[v.transaction_id]}-")
