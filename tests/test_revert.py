"""Revert: inside the caller's transaction, never committing; ``await version.revert()``
through AsyncSession, ``version.revert_sync()`` with a sync Session."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from sqlalchemy_history_async import Operation, RevertError, VersioningError

from .conftest import Run
from .models import Models, RuntimeVersion, runtime_version_class


async def versions_of(session: AsyncSession, model: type[Any], pk: Any) -> list[RuntimeVersion]:
    V = runtime_version_class(model)
    return list(
        (
            await session.scalars(
                sa.select(V)
                .where(V.id == pk)
                .order_by(V.transaction_id)
                .execution_options(populate_existing=True)
            )
        ).all()
    )


async def article_with_history(models: Models, session: AsyncSession) -> Any:
    a = models.Article(title="first", body="one")
    session.add(a)
    await session.commit()
    a.title, a.body = "second", "two"
    await session.commit()
    return a


async def test_revert_update_restores_values_and_commit_records_a_version(
    models: Models, session: AsyncSession
) -> None:
    a = await article_with_history(models, session)
    first, _ = await versions_of(session, models.Article, a.id)

    restored = await first.revert()
    assert restored is not None
    assert restored is a
    assert (a.title, a.body) == ("first", "one")
    assert session.in_transaction()
    await session.commit()

    *_, latest = await versions_of(session, models.Article, a.id)
    assert (latest.operation_type, latest.title, latest.body) == (Operation.UPDATE, "first", "one")
    assert await latest.awaitable_attrs.changeset == {
        "title": ["second", "first"],
        "body": ["two", "one"],
    }


async def test_revert_is_undone_by_rollback(models: Models, session: AsyncSession) -> None:
    a = await article_with_history(models, session)
    first, _ = await versions_of(session, models.Article, a.id)
    await first.revert()
    await session.rollback()

    await session.refresh(a)
    assert a.title == "second"
    assert len(await versions_of(session, models.Article, a.id)) == 2


async def test_revert_never_commits(
    models: Models, session: AsyncSession, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    a = await article_with_history(models, session)
    first, _ = await versions_of(session, models.Article, a.id)
    await first.revert()

    async with session_factory() as other:
        seen = await other.scalar(sa.select(models.Article.title).where(models.Article.id == a.id))
    assert seen == "second"  # the revert is flushed in our transaction, not committed
    await session.commit()
    async with session_factory() as other:
        seen = await other.scalar(sa.select(models.Article.title).where(models.Article.id == a.id))
    assert seen == "first"


async def test_revert_recreates_a_deleted_row_with_the_same_key(
    models: Models, session: AsyncSession
) -> None:
    a = await article_with_history(models, session)
    article_id = a.id
    a.view_count = 7  # excluded from versioning
    await session.commit()
    await session.delete(a)
    await session.commit()
    session.expunge_all()

    _, second, deleted = await versions_of(session, models.Article, article_id)
    assert deleted.operation_type is Operation.DELETE
    restored = await second.revert()
    await session.commit()

    assert restored is not None
    assert restored.id == article_id
    assert (restored.title, restored.body) == ("second", "two")
    assert restored.view_count == 0  # excluded column: the model's default on a new row
    *_, deleted_again, reinserted = await versions_of(session, models.Article, article_id)
    assert reinserted.operation_type is Operation.INSERT
    assert deleted_again.end_transaction_id == reinserted.transaction_id
    assert reinserted.end_transaction_id is None


async def test_revert_to_a_delete_version_deletes_the_row(
    models: Models, session: AsyncSession
) -> None:
    a = await article_with_history(models, session)
    article_id = a.id
    await session.delete(a)
    await session.commit()
    first, *_, deleted = await versions_of(session, models.Article, article_id)
    await first.revert()
    await session.commit()
    assert await session.get(models.Article, article_id) is not None

    assert await deleted.revert() is not None
    await session.commit()
    assert await session.get(models.Article, article_id) is None
    *_, last = await versions_of(session, models.Article, article_id)
    assert last.operation_type is Operation.DELETE


async def test_revert_of_a_detached_version_is_a_clear_error(
    models: Models, session: AsyncSession
) -> None:
    a = await article_with_history(models, session)
    first, _ = await versions_of(session, models.Article, a.id)
    session.expunge(first)
    with pytest.raises(RevertError, match="ArticleVersion is not attached to a session"):
        first.revert_sync()
    with pytest.raises(VersioningError, match="ArticleVersion does not belong to an AsyncSession"):
        await first.revert()


async def test_revert_sync_recreates_a_deleted_row(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        a = models.Article(title="first")
        session.add(a)
        session.commit()
        a.title = "second"
        session.commit()
        article_id = a.id
        session.delete(a)
        session.commit()
        V = runtime_version_class(models.Article)
        first = session.scalars(sa.select(V).order_by(V.transaction_id)).first()
        assert first is not None

        restored = first.revert_sync()
        assert session.in_transaction()
        session.commit()
        assert restored is not None
        assert (restored.id, restored.title) == (article_id, "first")
        last = session.scalars(sa.select(V).order_by(V.transaction_id.desc())).first()
        assert last is not None
        assert last.operation_type is Operation.INSERT

    await run(behaviour)


async def test_async_revert_of_a_sync_version_is_a_clear_error(
    models: Models, sync_session: Session
) -> None:
    a = models.Article(title="first")
    sync_session.add(a)
    sync_session.commit()
    [v] = sync_session.scalars(a.versions.select()).all()
    with pytest.raises(RevertError, match="revert_sync"):
        await v.revert()
