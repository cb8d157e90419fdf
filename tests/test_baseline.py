"""``baseline()``: rows that existed before versioning get one INSERT version, once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from sqlalchemy_history_async import (
    Operation,
    backfill_versions,
    backfill_versions_sync,
    baseline,
    baseline_sync,
    select_as_of,
    transaction_class,
    versioning_context,
    versioning_disabled,
)

from .conftest import Run
from .models import Models, runtime_version_class


def versions(session: Session, models: Models) -> list[tuple[Any, ...]]:
    V = runtime_version_class(models.Article)
    rows = session.execute(
        sa.select(V.id, V.title, V.operation_type, V.end_transaction_id.is_(None)).order_by(
            V.transaction_id, V.id
        )
    )
    return [tuple(r) for r in rows]


async def test_rows_from_before_versioning_get_one_insert_version(models: Models, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        with versioning_disabled():  # written before the model was versioned
            session.add_all([A(id=i, title=f"old {i}") for i in range(1, 6)])
            session.commit()
        session.add(A(id=9, title="recorded"))  # a row with a version of its own
        session.commit()
        seen: list[tuple[int, str]] = []
        with versioning_context(user_id=None, reason="adopt history"):
            made = baseline_sync(
                session, A, batch_size=2, progress=lambda done, t: seen.append((done, t))
            )
        session.commit()
        assert made == 5
        assert seen == [(2, "article"), (4, "article"), (5, "article")]
        assert versions(session, models) == [(9, "recorded", Operation.INSERT, True)] + [
            (i, f"old {i}", Operation.INSERT, True) for i in range(1, 6)
        ]
        T = transaction_class(A)
        stamp = session.scalars(sa.select(T).order_by(T.id.desc())).first()
        assert stamp is not None
        assert stamp.meta == {"reason": "adopt history", "baseline": "article"}
        assert sorted(a.id for a in session.scalars(select_as_of(A, stamp.id))) == [
            1,
            2,
            3,
            4,
            5,
            9,
        ]
        # again: nothing to do, no transaction row
        assert baseline_sync(session, A) == 0
        session.commit()
        assert len(session.scalars(sa.select(T)).all()) == 2
        # the first recorded change now has a previous version with the real old values
        row = session.get(A, 3)
        assert row is not None
        row.title = "new 3"
        session.commit()
        V = runtime_version_class(A)
        last = session.scalars(sa.select(V).where(V.id == 3).order_by(V.transaction_id)).all()
        assert [v.operation_type for v in last] == [Operation.INSERT, Operation.UPDATE]
        assert last[1].changeset == {"title": ["old 3", "new 3"]}

    await run(behaviour)


async def test_baseline_on_an_async_connection(models: Models, session: AsyncSession) -> None:
    A = models.Article
    with versioning_disabled():
        session.add_all([A(id=i, title="x") for i in (1, 2)])
        await session.commit()
    connection = await session.connection()
    assert await baseline(connection, A) == 2
    assert await baseline(session, A) == 0
    await session.commit()
    V = runtime_version_class(A)
    assert (await session.scalars(sa.select(V.id).order_by(V.id))).all() == [1, 2]


def test_batch_size_is_checked(models: Models) -> None:
    with pytest.raises(ValueError, match=r"baseline\(batch_size=\.\.\.\) takes a positive int"):
        baseline_sync(Session(), models.Article, batch_size=0)


async def test_backfill_gives_versions_that_predate_a_column_its_default(
    models: Models, run: Run
) -> None:
    A = models.Article
    V = runtime_version_class(A)
    vt: Any = V.__table__

    def behaviour(session: Session) -> None:
        session.add_all([A(id=1, title="a"), A(id=2, title="b", body="kept")])
        session.commit()
        # as right after a migration added the columns: older versions hold NULL there
        session.execute(sa.update(vt).where(vt.c.id == 1).values(status=None, body=None))
        assert backfill_versions_sync(session, A, "status_") == 1  # its default, "draft"
        assert backfill_versions_sync(session, A, "body", value="") == 1
        assert backfill_versions_sync(session, A, "body", value="again") == 0
        session.commit()
        rows = session.execute(sa.select(V.id, V.status_, V.body).order_by(V.id)).all()
        assert [tuple(r) for r in rows] == [(1, "draft", ""), (2, "draft", "kept")]
        with pytest.raises(ValueError, match=r"Article\.body has no scalar or server default"):
            backfill_versions_sync(session, A, "body")
        with pytest.raises(ValueError, match="no versioned attribute 'view_count'"):
            backfill_versions_sync(session, A, "view_count")

    await run(behaviour)


async def test_backfill_on_an_async_session(models: Models, session: AsyncSession) -> None:
    A = models.Article
    V = runtime_version_class(A)
    vt: Any = V.__table__
    session.add(A(id=1, title="a"))
    await session.commit()
    await session.execute(sa.update(vt).values(body=None))
    assert await backfill_versions(session, A, "body", value="x") == 1
    await session.commit()
    assert (await session.scalars(sa.select(V.body))).all() == ["x"]
