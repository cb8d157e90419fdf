"""The same behaviours through a plain sync Session (sqlite3 / psycopg drivers)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sqlalchemy_history_async import (
    Operation,
    RevertError,
    transaction_class,
    version_class,
    versioning_context,
)
from sqlalchemy_history_async._capture import SESSION_INFO_KEY

from .models import Models


def test_insert_update_delete(models: Models, sync_session: Session) -> None:
    s = sync_session
    s.add(models.User(id=1, name="u"))
    s.commit()
    a = models.Article(title="one")
    s.add(a)
    with versioning_context(user_id=1, remote_addr="10.0.0.1", reason="sync"):
        s.commit()
    a.title = "two"
    s.commit()
    s.delete(a)
    s.commit()

    V = version_class(models.Article)
    versions = s.scalars(sa.select(V).order_by(V.transaction_id)).all()
    assert [(v.title, v.operation_type) for v in versions] == [
        ("one", Operation.INSERT),
        ("two", Operation.UPDATE),
        ("two", Operation.DELETE),
    ]
    # sync lazy loading just works
    assert versions[1].previous is versions[0]
    assert versions[1].next is versions[2]
    assert versions[1].changeset == {"title": ["one", "two"]}
    assert [v.index for v in versions] == [0, 1, 2]
    tx = versions[0].transaction
    assert (tx.user_id, tx.remote_addr, tx.meta) == (1, "10.0.0.1", {"reason": "sync"})
    assert tx.issued_at.tzinfo is not None
    assert SESSION_INFO_KEY not in s.info


def test_versions_relationship(models: Models, sync_session: Session) -> None:
    a = models.Article(title="x")
    sync_session.add(a)
    sync_session.commit()
    a.title = "y"
    sync_session.commit()
    assert [v.title for v in sync_session.scalars(a.versions.select())] == ["x", "y"]


def test_multiple_flushes_one_transaction_final_state(
    models: Models, sync_session: Session
) -> None:
    s = sync_session
    a = models.Article(title="a")
    s.add(a)
    s.flush()
    a.title = "b"
    s.flush()
    gone = models.Article(title="gone")
    s.add(gone)
    s.flush()
    s.delete(gone)
    s.commit()
    V = version_class(models.Article)
    [v] = s.scalars(sa.select(V)).all()
    assert (v.title, v.operation_type) == ("b", Operation.INSERT)
    assert s.scalar(sa.select(sa.func.count()).select_from(transaction_class(models.Article))) == 1


def test_savepoint_rollback(models: Models, sync_session: Session) -> None:
    s = sync_session
    a = models.Article(title="kept")
    s.add(a)
    s.flush()
    with s.begin_nested() as sp:
        a.title = "dropped"
        s.flush()
        sp.rollback()
    s.commit()
    V = version_class(models.Article)
    [v] = s.scalars(sa.select(V)).all()
    assert v.title == "kept"


def test_rollback_records_nothing(models: Models, sync_session: Session) -> None:
    sync_session.add(models.Article(title="never"))
    sync_session.flush()
    sync_session.rollback()
    V = version_class(models.Article)
    assert sync_session.scalars(sa.select(V)).all() == []
    assert SESSION_INFO_KEY not in sync_session.info


def test_revert_sync(models: Models, sync_session: Session) -> None:
    s = sync_session
    a = models.Article(title="first")
    s.add(a)
    s.commit()
    a.title = "second"
    s.commit()
    article_id = a.id
    s.delete(a)
    s.commit()
    V = version_class(models.Article)
    first = s.scalars(sa.select(V).order_by(V.transaction_id)).first()
    assert first is not None

    restored = first.revert_sync()
    assert s.in_transaction()
    s.commit()
    assert (restored.id, restored.title) == (article_id, "first")
    last = s.scalars(sa.select(V).order_by(V.transaction_id.desc())).first()
    assert last is not None
    assert last.operation_type is Operation.INSERT


async def test_async_revert_of_a_sync_version_is_a_clear_error(
    models: Models, sync_session: Session
) -> None:
    a = models.Article(title="first")
    sync_session.add(a)
    sync_session.commit()
    [v] = sync_session.scalars(a.versions.select()).all()
    with pytest.raises(RevertError, match="revert_sync"):
        await v.revert()
