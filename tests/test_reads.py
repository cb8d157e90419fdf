"""Reading history: through AsyncSession with no hidden I/O (everything awaitable or
eager-loadable), and with plain attribute access where lazy loading may do I/O."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, joinedload, selectinload, undefer

from sqlalchemy_history_async import Operation, Transaction, versioning_context
from sqlalchemy_history_async._capture import SESSION_INFO_KEY

from .conftest import Run, StatementLog
from .models import Models, runtime_version_class


def make_history(session: Session, models: Models) -> tuple[Any, Any]:
    """Article 1: insert, update, update; article 2 interleaved: insert, update."""
    a = models.Article(title="a1", body="body")
    session.add(a)
    session.commit()
    b = models.Article(title="b1")
    session.add(b)
    session.commit()
    a.title = "a2"
    session.commit()
    b.title = "b2"
    session.commit()
    a.title, a.body = "a3", None
    session.commit()
    return a, b


async def test_versions_relationship_is_write_only_and_ordered(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a, b = make_history(session, models)
        versions = session.scalars(a.versions.select()).all()
        assert [v.title for v in versions] == ["a1", "a2", "a3"]
        assert [v.transaction_id for v in versions] == sorted(v.transaction_id for v in versions)
        assert all(v.id == a.id for v in versions)
        assert [v.title for v in session.scalars(b.versions.select()).all()] == ["b1", "b2"]

    await run(behaviour)


async def test_plain_attribute_access_loads_lazily_in_sync_code(models: Models, run: Run) -> None:
    """In a sync ``Session`` (or code run with ``run_sync``) the reads lazy-load as usual."""

    def behaviour(session: Session) -> None:
        session.add(models.User(id=1, name="u"))
        session.commit()
        a = models.Article(title="one")
        session.add(a)
        with versioning_context(user_id=1, remote_addr="10.0.0.1", reason="sync"):
            session.commit()
        a.title = "two"
        session.commit()
        session.delete(a)
        session.commit()

        V = runtime_version_class(models.Article)
        versions = session.scalars(sa.select(V).order_by(V.transaction_id)).all()
        assert [(v.title, v.operation_type) for v in versions] == [
            ("one", Operation.INSERT),
            ("two", Operation.UPDATE),
            ("two", Operation.DELETE),
        ]
        assert versions[1].previous is versions[0]
        assert versions[1].next is versions[2]
        assert versions[1].changeset == {"title": ["one", "two"]}
        assert [v.index for v in versions] == [0, 1, 2]
        tx = versions[0].transaction
        assert (tx.user_id, tx.remote_addr, tx.meta) == (1, "10.0.0.1", {"reason": "sync"})
        assert tx.issued_at.tzinfo is not None
        assert SESSION_INFO_KEY not in session.info

    await run(behaviour)


async def test_deleted_rows_versions_are_reachable(models: Models, session: AsyncSession) -> None:
    a, _ = await session.run_sync(make_history, models)
    article_id = a.id
    await session.delete(a)
    await session.commit()
    V = runtime_version_class(models.Article)
    versions = (
        await session.scalars(sa.select(V).where(V.id == article_id).order_by(V.transaction_id))
    ).all()
    assert [v.operation_type for v in versions] == [
        Operation.INSERT,
        Operation.UPDATE,
        Operation.UPDATE,
        Operation.DELETE,
    ]


async def test_awaitable_attrs(models: Models, session: AsyncSession) -> None:
    a, _ = await session.run_sync(make_history, models)
    first, second, third = (await session.scalars(a.versions.select())).all()

    assert await second.awaitable_attrs.previous is first
    assert await second.awaitable_attrs.next is third
    assert await first.awaitable_attrs.previous is None
    assert await third.awaitable_attrs.next is None
    tx = await third.awaitable_attrs.transaction
    assert isinstance(tx, Transaction)
    assert tx.id == third.transaction_id
    assert await third.awaitable_attrs.changeset == {"title": ["a2", "a3"], "body": ["body", None]}
    assert [await v.awaitable_attrs.index for v in (first, second, third)] == [0, 1, 2]


async def test_eager_loading_makes_reads_free_of_io(
    models: Models, session: AsyncSession, statements: StatementLog
) -> None:
    a, _ = await session.run_sync(make_history, models)
    V = runtime_version_class(models.Article)
    statements.clear()
    versions = (
        await session.scalars(
            a.versions.select().options(
                selectinload(V.previous),
                selectinload(V.next),
                selectinload(V.transaction),
                undefer(V.index),
            )
        )
    ).all()
    loaded_with = len(statements.statements)
    # plain attribute access: no I/O may happen (it would raise MissingGreenlet here)
    summary = [
        (v.index, v.previous is None, v.next is None, v.transaction.id, v.changeset)
        for v in versions
    ]
    assert len(statements.statements) == loaded_with <= 4
    assert summary == [
        (
            0,
            True,
            False,
            versions[0].transaction_id,
            {
                "id": [None, a.id],
                "title": [None, "a1"],
                "body": [None, "body"],
                "status_": [None, "draft"],
                "created": [None, a.created],
            },
        ),
        (1, False, False, versions[1].transaction_id, {"title": ["a1", "a2"]}),
        (
            2,
            False,
            True,
            versions[2].transaction_id,
            {"title": ["a2", "a3"], "body": ["body", None]},
        ),
    ]


async def test_changeset_of_first_version_lists_only_non_null_values(
    models: Models, session: AsyncSession
) -> None:
    a = models.Article(title="t", body=None)
    session.add(a)
    await session.commit()
    [v] = (await session.scalars(a.versions.select())).all()
    changeset = await v.awaitable_attrs.changeset
    assert "body" not in changeset
    assert changeset["title"] == [None, "t"]


async def test_index_counts_only_the_same_row(models: Models, session: AsyncSession) -> None:
    await session.run_sync(make_history, models)
    V = runtime_version_class(models.Article)
    rows = (
        await session.execute(sa.select(V.id, V.title, V.index).order_by(V.transaction_id))
    ).all()
    assert [(title, index) for _, title, index in rows] == [
        ("a1", 0),
        ("b1", 0),
        ("a2", 1),
        ("b2", 1),
        ("a3", 2),
    ]


async def test_is_current_in_python_and_sql(models: Models, session: AsyncSession) -> None:
    await session.run_sync(make_history, models)
    V = runtime_version_class(models.Article)
    current = (await session.scalars(sa.select(V).where(V.is_current).order_by(V.id))).all()
    assert [v.title for v in current] == ["a3", "b2"]
    assert all(v.is_current for v in current)
    old = (await session.scalars(sa.select(V).where(~V.is_current))).all()
    assert len(old) == 3
    assert not any(v.is_current for v in old)


async def test_one_query_loads_a_page_of_versions_with_previous(
    models: Models, session: AsyncSession, statements: StatementLog
) -> None:
    session.add_all([models.Article(title=f"r{i}") for i in range(30)])
    await session.commit()
    for a in (await session.scalars(sa.select(models.Article))).all():
        a.title += "'"
    await session.commit()
    V = runtime_version_class(models.Article)
    statements.clear()
    page = (
        await session.scalars(
            sa.select(V).options(selectinload(V.previous)).order_by(V.transaction_id, V.id)
        )
    ).all()
    assert len(page) == 60
    assert len(statements.statements) == 2  # the page, then one selectin query for previous
    assert all((v.previous is None) == (v.operation_type is Operation.INSERT) for v in page)


async def test_whole_history_with_changesets_in_one_query(
    models: Models, session: AsyncSession, statements: StatementLog
) -> None:
    a = models.Article(title="t0")
    session.add(a)
    await session.commit()
    for i in range(1, 60):
        a.title = f"t{i}"
        await session.commit()
    V = runtime_version_class(models.Article)
    statements.clear()
    history = (
        await session.scalars(
            sa.select(V)
            .where(V.id == a.id)
            .order_by(V.transaction_id)
            .options(joinedload(V.previous))
        )
    ).all()
    changesets = [v.changeset for v in history]
    assert len(statements.statements) == 1
    assert changesets[0]["title"] == [None, "t0"]
    assert changesets[1:] == [{"title": [f"t{i - 1}", f"t{i}"]} for i in range(1, 60)]
