"""Capture: what a commit records, through AsyncSession and through Session.

Tests taking ``run`` are written once against a sync ``Session`` and run on both faces.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from sqlalchemy_history_async import Operation, transaction_class, versioning_context
from sqlalchemy_history_async._capture import SESSION_INFO_KEY

from .conftest import Run, StatementLog
from .models import Models, RuntimeVersion, runtime_version_class, table_of


def all_versions(session: Session, model: type[Any]) -> list[RuntimeVersion]:
    """Every version of ``model``, in transaction order, then by primary key."""
    V = runtime_version_class(model)
    pk = [table_of(V).c[c.key] for c in sa.inspect(model).primary_key]
    return list(session.scalars(sa.select(V).order_by(V.transaction_id, *pk)).all())


def count(session: Session, cls: type[Any]) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(cls)).scalar_one()


async def test_insert_records_insert_version_with_database_values(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        article = models.Article(title="Hello", body="World", status_="draft")
        session.add(article)
        session.commit()

        [v] = all_versions(session, models.Article)
        assert v.operation_type is Operation.INSERT
        assert (v.id, v.title, v.body, v.status_) == (article.id, "Hello", "World", "draft")
        assert v.created is not None  # server default, read back from the database
        assert v.end_transaction_id is None
        assert not hasattr(v, "view_count")  # excluded
        assert count(session, transaction_class(models.Article)) == 1

    await run(behaviour)


async def test_update_and_delete_close_previous_versions(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        article = models.Article(title="v1")
        session.add(article)
        session.commit()
        article.title = "v2"
        session.commit()
        session.delete(article)
        session.commit()

        v1, v2, v3 = all_versions(session, models.Article)
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

    await run(behaviour)


async def test_one_transaction_row_per_transaction_across_flushes(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="a")
        session.add(a)
        session.flush()
        session.add(models.Comment(article=a, text="first"))
        session.flush()
        session.add(models.Tagging(article_id=a.id, tag="x"))
        session.commit()

        assert count(session, transaction_class(models.Article)) == 1
        tx_ids = {
            v.transaction_id
            for m in (models.Article, models.Comment, models.Tagging)
            for v in all_versions(session, m)
        }
        assert len(tx_ids) == 1

    await run(behaviour)


async def test_insert_then_update_is_one_insert_version_with_final_state(
    models: Models, run: Run
) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="draft title")
        session.add(a)
        session.flush()
        a.title = "final title"
        session.flush()
        a.body = "body"
        session.commit()

        [v] = all_versions(session, models.Article)
        assert (v.operation_type, v.title, v.body) == (Operation.INSERT, "final title", "body")

    await run(behaviour)


async def test_insert_then_delete_leaves_no_trace(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="gone")
        session.add(a)
        session.flush()
        session.delete(a)
        session.commit()

        assert all_versions(session, models.Article) == []
        assert count(session, transaction_class(models.Article)) == 0

    await run(behaviour)


async def test_update_then_delete_is_delete(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="one")
        session.add(a)
        session.commit()
        a.title = "two"
        session.flush()
        session.delete(a)
        session.commit()

        v1, v2 = all_versions(session, models.Article)
        assert (v2.operation_type, v2.title) == (Operation.DELETE, "two")
        assert v1.end_transaction_id == v2.transaction_id

    await run(behaviour)


async def test_delete_and_reinsert_same_key_in_one_transaction_is_update(
    models: Models, run: Run
) -> None:
    def behaviour(session: Session) -> None:
        session.add(models.Tagging(article_id=1, tag="t", weight=1))
        session.commit()
        t = session.get(models.Tagging, (1, "t"))
        session.delete(t)
        session.flush()
        session.add(models.Tagging(article_id=1, tag="t", weight=5))
        session.commit()

        v1, v2 = all_versions(session, models.Tagging)
        assert (v2.operation_type, v2.weight) == (Operation.UPDATE, 5)
        assert v1.end_transaction_id == v2.transaction_id

    await run(behaviour)


async def test_update_without_tracked_change_records_nothing(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="same")
        session.add(a)
        session.commit()

        a.title = "same"  # no net change
        session.commit()
        a.view_count = 10  # excluded column only
        session.commit()

        assert len(all_versions(session, models.Article)) == 1
        assert count(session, transaction_class(models.Article)) == 1
        session.refresh(a)
        assert a.view_count == 10

    await run(behaviour)


async def test_unversioned_models_record_nothing(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        session.add(models.Plain(value="x"))
        session.commit()
        assert count(session, transaction_class(models.Article)) == 0

    await run(behaviour)


async def test_rollback_records_nothing(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        session.add(models.Article(title="never"))
        session.flush()
        session.rollback()

        assert all_versions(session, models.Article) == []
        assert count(session, transaction_class(models.Article)) == 0
        assert SESSION_INFO_KEY not in session.info

    await run(behaviour)


async def test_rolled_back_savepoint_leaves_no_trace(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        kept = models.Article(title="kept")
        session.add(kept)
        session.flush()
        with session.begin_nested() as savepoint:
            kept.title = "changed inside savepoint"
            session.add(models.Article(title="inside"))
            session.flush()
            savepoint.rollback()
        session.commit()

        [v] = all_versions(session, models.Article)
        assert (v.operation_type, v.title) == (Operation.INSERT, "kept")
        assert count(session, transaction_class(models.Article)) == 1

    await run(behaviour)


async def test_transaction_row_first_created_in_rolled_back_savepoint(
    models: Models, run: Run
) -> None:
    def behaviour(session: Session) -> None:
        with session.begin_nested() as savepoint:
            session.add(models.Article(title="inside"))
            session.flush()
            savepoint.rollback()
        session.add(models.Article(title="after"))
        session.commit()

        [v] = all_versions(session, models.Article)
        assert v.title == "after"
        [tx] = session.scalars(sa.select(transaction_class(models.Article))).all()
        assert tx.id == v.transaction_id

    await run(behaviour)


async def test_released_savepoint_keeps_history(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="outer")
        session.add(a)
        session.flush()
        with session.begin_nested():
            a.title = "inner"
            session.add(models.Comment(article=a, text="c"))
        a.body = "after savepoint"
        session.commit()

        [v] = all_versions(session, models.Article)
        assert (v.operation_type, v.title, v.body) == (Operation.INSERT, "inner", "after savepoint")
        assert len(all_versions(session, models.Comment)) == 1

    await run(behaviour)


async def test_session_info_holds_no_history_state_after_commit_or_rollback(
    models: Models, run: Run
) -> None:
    def behaviour(session: Session) -> None:
        session.add(models.Article(title="a"))
        session.flush()
        assert SESSION_INFO_KEY in session.info
        session.commit()
        assert SESSION_INFO_KEY not in session.info

        session.add(models.Article(title="b"))
        session.flush()
        session.rollback()
        assert SESSION_INFO_KEY not in session.info

    await run(behaviour)


async def test_delete_of_expired_object_records_its_values(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="expired", body="values")
        session.add(a)
        session.commit()
        assert "title" not in a.__dict__  # expired by the commit
        session.delete(a)
        session.commit()

        _, deleted = all_versions(session, models.Article)
        assert (deleted.operation_type, deleted.title, deleted.body) == (
            Operation.DELETE,
            "expired",
            "values",
        )

    await run(behaviour, expire_on_commit=True)


async def test_delete_orphan_cascade_is_recorded(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(
            title="a", comments=[models.Comment(text="c1"), models.Comment(text="c2")]
        )
        session.add(a)
        session.commit()
        a.comments.pop(0)
        session.commit()

        versions = all_versions(session, models.Comment)
        assert [(v.text, v.operation_type) for v in versions] == [
            ("c1", Operation.INSERT),
            ("c2", Operation.INSERT),
            ("c1", Operation.DELETE),
        ]

    await run(behaviour)


async def test_cascaded_delete_is_recorded(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="a", comments=[models.Comment(text="c1")])
        session.add(a)
        session.commit()
        session.delete(a)
        session.commit()

        ops = [v.operation_type for v in all_versions(session, models.Comment)]
        assert ops == [Operation.INSERT, Operation.DELETE]

    await run(behaviour)


async def test_composite_key_rows_are_tracked_separately(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        session.add_all(
            [models.Tagging(article_id=1, tag="a"), models.Tagging(article_id=1, tag="b")]
        )
        session.commit()
        b = session.get(models.Tagging, (1, "b"))
        assert b is not None
        b.weight = 9
        session.commit()

        versions = all_versions(session, models.Tagging)
        assert [(v.tag, v.weight, v.operation_type) for v in versions] == [
            ("a", 1, Operation.INSERT),
            ("b", 1, Operation.INSERT),
            ("b", 9, Operation.UPDATE),
        ]
        assert versions[0].end_transaction_id is None

    await run(behaviour)


async def test_primary_key_change_is_delete_plus_insert(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        t = models.Tagging(article_id=1, tag="old", weight=3)
        session.add(t)
        session.commit()
        t.tag = "new"
        t.weight = 4
        session.commit()

        versions = all_versions(session, models.Tagging)
        assert [(v.tag, v.weight, v.operation_type) for v in versions] == [
            ("old", 3, Operation.INSERT),
            ("new", 4, Operation.INSERT),
            ("old", 3, Operation.DELETE),
        ]
        old_insert, new_insert, old_delete = versions
        assert old_insert.end_transaction_id == old_delete.transaction_id
        assert new_insert.end_transaction_id is None
        assert old_delete.end_transaction_id is None

    await run(behaviour)


# --- through AsyncSession only: statement counts on the async drivers, concurrent sessions ------


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
    locks = [s for s in statements.statements if "pg_advisory_xact_lock" in s or "_lock" in s]
    history = [
        s
        for s in statements.statements
        if not s.startswith("UPDATE article SET") and s not in locks
    ]
    assert len(parent_updates) == 1  # executemany: one entry
    # the commit-order lock: one statement, none on SQLite
    assert len(locks) == (0 if db == "sqlite" else 1), locks
    # transaction row, close previous versions, copy new versions: three statements, combined
    # into one on PostgreSQL
    assert len(history) == (1 if db == "postgresql" else 3), [s[:60] for s in history]
    assert len(await session.run_sync(all_versions, models.Article)) == 400


async def test_flush_looks_only_at_changed_objects(
    models: Models, session: AsyncSession, statements: StatementLog
) -> None:
    session.add_all([models.Article(title=f"a{i}") for i in range(300)])
    await session.commit()
    loaded = (await session.scalars(sa.select(models.Article))).all()
    statements.clear()
    loaded[5].title = "only this one"
    await session.commit()

    # UPDATE + lock + history + BEGIN/COMMIT
    assert len(statements.statements) <= 1 + 1 + 3 + 2
    versions = await session.run_sync(all_versions, models.Article)
    assert [v.title for v in versions if v.operation_type is Operation.UPDATE] == ["only this one"]


async def test_concurrent_sessions_never_mix_history(
    models: Models, concurrent_session_factory: async_sessionmaker[AsyncSession]
) -> None:
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
        versions = await s.run_sync(all_versions, models.Article)
        assert len(versions) == 7
        for v in versions:
            assert v.title.startswith(f"{txs[v.transaction_id]}-")
