"""``strict=True``: statements sent on the session's connection are recorded too.

By default only ``Session.execute()`` (and the legacy ``Session.bulk_*`` methods) are seen; a
strict manager watches every connection its sessions begin on, for the transaction's length:
Core ``insert`` / ``update`` / ``delete`` there are recorded like the unit of work's changes,
textual writes to a versioned table are refused.

Tests taking ``run`` are written once against a sync ``Session`` and run through
``AsyncSession`` and ``Session`` on every database.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy_history_async import (
    Operation,
    UnrecordedWriteError,
    transaction_class,
    versioning_context,
    versioning_disabled,
)

from .conftest import Run, versioned_models
from .models import runtime_version_class, table_of

U, D, INS = Operation.UPDATE, Operation.DELETE, Operation.INSERT


class Strict:
    def __init__(self) -> None:
        class Base(DeclarativeBase):
            pass

        class Note(Base):
            __tablename__ = "conn_note"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(40))
            stars: Mapped[int] = mapped_column(default=0)

        self.Base, self.Note = Base, Note


models = versioned_models(Strict, transaction_table="conn_transaction", strict=True)


def history(session: Session, models: Strict) -> list[tuple[Any, ...]]:
    """(transaction, id, title, stars, operation, open?) of every version."""
    V = runtime_version_class(models.Note)
    rows = session.execute(
        sa.select(
            V.transaction_id,
            V.id,
            V.title,
            V.stars,
            V.operation_type,
            V.end_transaction_id.is_(None),
        ).order_by(V.transaction_id, V.id)
    ).all()
    return [tuple(r) for r in rows]


def transactions(session: Session, models: Strict) -> list[Any]:
    T = transaction_class(models.Note)
    return list(session.scalars(sa.select(T).order_by(T.id)))


async def test_core_statements_on_the_connection_are_recorded(models: Strict, run: Run) -> None:
    t = table_of(models.Note)

    def behaviour(session: Session) -> None:
        connection = session.connection()
        with versioning_context(source="connection"):
            connection.execute(sa.insert(t), [{"id": 101, "title": "a"}, {"id": 102, "title": "b"}])
            made: Any = connection.execute(sa.insert(t).values(title="c"))
            third = made.inserted_primary_key[0]
            connection.execute(sa.insert(t), [{"title": "d"}, {"title": "e"}])
        session.commit()
        first = transactions(session, models)[0]
        assert first.meta == {"source": "connection"}
        assert sorted(r[2] for r in history(session, models)) == ["a", "b", "c", "d", "e"]
        assert {r[1] for r in history(session, models)} == set(session.scalars(sa.select(t.c.id)))

        connection = session.connection()  # a new transaction: watched again
        first_two = t.c.title.in_(["a", "b"])
        connection.execute(sa.update(t).where(first_two).values(stars=t.c.stars + 1))
        connection.execute(sa.update(t).where(t.c.id == third).values(title="c"))  # no change
        connection.execute(sa.delete(t).where(t.c.title == "d"))
        connection.execute(
            sa.update(t).where(t.c.id == sa.bindparam("b_id")).values(title=sa.bindparam("b_t")),
            [{"b_id": 101, "b_t": "a2"}, {"b_id": 102, "b_t": "b"}],
        )
        session.commit()
        second = transactions(session, models)[1].id
        d = next(r[1] for r in history(session, models) if r[2] == "d")
        assert sorted(r[1:] for r in history(session, models) if r[0] == second) == sorted(
            [(101, "a2", 1, U, True), (102, "b", 1, U, True), (d, "d", 0, D, True)]
        )
        assert len(transactions(session, models)) == 2

    await run(behaviour)


async def test_unit_of_work_and_connection_statement_on_one_row_give_one_version(
    models: Strict, run: Run
) -> None:
    Note = models.Note
    t = table_of(Note)

    def behaviour(session: Session) -> None:
        session.add(Note(id=1, title="a"))
        session.commit()
        note = session.get(Note, 1)
        assert note is not None
        note.title = "orm"
        session.flush()
        session.connection().execute(sa.update(t).where(t.c.id == 1).values(stars=5))
        session.commit()
        assert [r[1:] for r in history(session, models)][-1] == (1, "orm", 5, U, True)
        assert len(history(session, models)) == 2

    await run(behaviour)


async def test_textual_writes_on_the_connection_are_refused(models: Strict, run: Run) -> None:
    Note = models.Note

    def behaviour(session: Session) -> None:
        session.add(Note(id=1, title="a"))
        session.commit()
        connection = session.connection()
        with pytest.raises(UnrecordedWriteError, match=r"'conn_note'.*strict=True"):
            connection.execute(sa.text("UPDATE conn_note SET title = 'x' WHERE id = 1"))
        assert connection.execute(sa.text("SELECT title FROM conn_note")).scalar() == "a"
        with versioning_disabled():
            connection.execute(sa.text("UPDATE conn_note SET title = 'quiet' WHERE id = 1"))
            connection.execute(sa.update(table_of(Note)).values(stars=9))
        session.commit()
        assert session.scalar(sa.select(Note.title)) == "quiet"
        assert len(history(session, models)) == 1

    await run(behaviour)


async def test_connection_statement_refused_before_it_writes(models: Strict, run: Run) -> None:
    Note = models.Note
    t = table_of(Note)

    def behaviour(session: Session) -> None:
        session.add(Note(id=1, title="a"))
        session.commit()
        connection = session.connection()
        with pytest.raises(UnrecordedWriteError, match=r"'conn_note'.*primary key"):
            connection.execute(sa.update(t).where(t.c.id == 1).values(id=7))
        session.rollback()
        assert session.scalar(sa.select(Note.id)) == 1

    await run(behaviour)
