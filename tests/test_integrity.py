"""``check_integrity()``: each kind of problem, found after corrupting history on purpose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqlalchemy_history_async import (
    IntegrityProblem,
    IntegrityProblemKind,
    check_integrity,
    check_integrity_sync,
    versioning_disabled,
)

from .conftest import Run, versioned_models


@dataclass
class IntegrityModels:
    Base: type[DeclarativeBase]
    Note: type[Any]
    Label: type[Any]


def define() -> IntegrityModels:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    links = sa.Table(
        "integrity_note_label",
        Base.metadata,
        sa.Column("note_id", sa.ForeignKey("integrity_note.id"), primary_key=True),
        sa.Column("label_id", sa.ForeignKey("integrity_label.id"), primary_key=True),
    )

    class Label(Base):
        __tablename__ = "integrity_label"
        __versioned__: ClassVar[dict[str, Any]] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(20))

    class Note(Base):
        __tablename__ = "integrity_note"
        __versioned__: ClassVar[dict[str, Any]] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        text: Mapped[str] = mapped_column(sa.String(50))
        labels: Mapped[list[Label]] = relationship(secondary=links)

    return IntegrityModels(Base, Note, Label)


models = versioned_models(define)

NOTES = "integrity_note_version"
LABELS = "integrity_label_version"
LINKS = "integrity_note_label_version"

K = IntegrityProblemKind


def write_history(session: Session, m: IntegrityModels) -> None:
    """Transactions 1-4. Note 1: versions of 1 (ends 2), 2 (ends 4), 4 (open); note 2: 1 (ends
    3), 3 (open); label 1 and the link (1, 1): 1 (open)."""
    label = m.Label(id=1, name="x")
    session.add_all([m.Note(id=1, text="a", labels=[label]), m.Note(id=2, text="b")])
    session.commit()
    for note_id, text in ((1, "a2"), (2, "b2"), (1, "a3")):
        note = session.get(m.Note, note_id)
        assert note is not None
        note.text = text
        session.commit()


@pytest.fixture
async def history(models: IntegrityModels, session: AsyncSession) -> AsyncSession:
    """The database holding :func:`write_history`'s history, and a session on it."""
    await session.run_sync(write_history, models)
    return session


def summary(problems: list[IntegrityProblem]) -> list[tuple[Any, ...]]:
    return [(p.kind, p.table, p.key, p.transaction_id, p.column) for p in problems]


def version_table(models: IntegrityModels, name: str) -> sa.Table:
    return models.Base.metadata.tables[name]


async def set_end(
    session: AsyncSession, models: IntegrityModels, note_id: int, tx: int, end: int | None
) -> None:
    vt = version_table(models, NOTES)
    await session.execute(
        sa.update(vt)
        .where(vt.c.id == note_id, vt.c.transaction_id == tx)
        .values(end_transaction_id=end)
    )
    await session.commit()


async def test_recorded_history_has_no_problems(models: IntegrityModels, run: Run) -> None:
    def behaviour(session: Session) -> list[IntegrityProblem]:
        write_history(session, models)
        return check_integrity_sync(session)

    assert await run(behaviour) == []


async def test_on_an_async_connection(
    models: IntegrityModels, history: AsyncSession, engine: AsyncEngine
) -> None:
    with versioning_disabled():
        history.add(models.Note(id=3, text="c"))
        await history.commit()
    async with engine.connect() as conn:
        problems = await check_integrity(conn, [models.Note])
    assert problems == [
        IntegrityProblem(
            kind=K.UNVERSIONED_ROW,
            table=NOTES,
            key={"id": 3},
            detail="the row has no version (written before versioning or while it was off; "
            "`baseline` gives it one)",
        )
    ]


async def test_a_row_without_any_version(models: IntegrityModels, history: AsyncSession) -> None:
    with versioning_disabled():
        history.add_all([models.Note(id=i, text="c") for i in (3, 4, 5)])
        await history.commit()
    assert summary(await check_integrity(history)) == [
        (K.UNVERSIONED_ROW, NOTES, {"id": i}, None, None) for i in (3, 4, 5)
    ]
    # at most `limit` of each kind per table; only the models asked for
    assert summary(await check_integrity(history, limit=2)) == [
        (K.UNVERSIONED_ROW, NOTES, {"id": i}, None, None) for i in (3, 4)
    ]
    assert await check_integrity(history, [models.Label]) == []
    with pytest.raises(ValueError, match="positive int"):
        await check_integrity(history, limit=0)


async def test_open_version_records_a_delete(
    models: IntegrityModels, history: AsyncSession
) -> None:
    vt = version_table(models, NOTES)
    await history.execute(
        sa.update(vt).where(vt.c.id == 1, vt.c.transaction_id == 4).values(operation_type=2)
    )
    await history.commit()
    problems = await check_integrity(history)
    assert summary(problems) == [(K.NO_OPEN_VERSION, NOTES, {"id": 1}, 4, None)]
    assert problems[0].detail == (
        "the row exists, but its open version (transaction 4) records a DELETE"
    )


async def test_problems_come_by_table_then_kind_then_key(
    models: IntegrityModels, history: AsyncSession
) -> None:
    vt = version_table(models, NOTES)
    await history.execute(
        sa.update(vt).where(vt.c.id == 1, vt.c.transaction_id == 4).values(operation_type=2)
    )
    with versioning_disabled():
        history.add_all([models.Note(id=3, text="c"), models.Label(id=2, name="y")])
        await history.commit()
    assert summary(await check_integrity(history)) == [
        (K.UNVERSIONED_ROW, LABELS, {"id": 2}, None, None),
        (K.UNVERSIONED_ROW, NOTES, {"id": 3}, None, None),
        (K.NO_OPEN_VERSION, NOTES, {"id": 1}, 4, None),
    ]


async def test_every_version_closed(models: IntegrityModels, history: AsyncSession) -> None:
    await set_end(history, models, 2, 3, 4)
    problems = await check_integrity(history)
    assert summary(problems) == [
        (K.NO_OPEN_VERSION, NOTES, {"id": 2}, None, None),
        (K.BROKEN_CHAIN, NOTES, {"id": 2}, 3, None),
    ]
    assert [p.detail for p in problems] == [
        "the row exists, but every version of it is closed",
        "the version of transaction 3 ends at transaction 4, which wrote no version of the row",
    ]


async def test_several_open_versions(
    models: IntegrityModels, history: AsyncSession, engine: AsyncEngine
) -> None:
    if engine.dialect.name not in ("mysql", "mariadb"):  # a partial unique index forbids it
        await history.execute(sa.text("DROP INDEX ix_integrity_note_version_current"))
    await set_end(history, models, 1, 2, None)
    problems = await check_integrity(history)
    assert summary(problems) == [
        (K.SEVERAL_OPEN_VERSIONS, NOTES, {"id": 1}, 2, None),
        (K.OVERLAPPING_INTERVALS, NOTES, {"id": 1}, 2, None),
    ]
    assert [p.detail for p in problems] == [
        "2 versions are open (end_transaction_id NULL), the first written by transaction 2",
        "the version of transaction 2 is still open, after the next version (transaction 4) began",
    ]


async def test_open_version_of_a_deleted_row(
    models: IntegrityModels, history: AsyncSession
) -> None:
    with versioning_disabled():
        await history.delete(await history.get_one(models.Note, 2))
        await history.commit()
    problems = await check_integrity(history)
    assert summary(problems) == [(K.OPEN_VERSION_OF_DELETED_ROW, NOTES, {"id": 2}, 3, None)]
    assert problems[0].detail == (
        "the row does not exist, but its UPDATE version of transaction 3 is open"
    )


async def test_open_version_of_a_removed_link(
    models: IntegrityModels, history: AsyncSession
) -> None:
    note = await history.get_one(models.Note, 1)
    with versioning_disabled():
        (await note.awaitable_attrs.labels).clear()
        await history.commit()
    assert summary(await check_integrity(history)) == [
        (K.OPEN_VERSION_OF_DELETED_ROW, LINKS, {"note_id": 1, "label_id": 1}, 1, None)
    ]


async def test_inverted_interval(models: IntegrityModels, history: AsyncSession) -> None:
    await set_end(history, models, 1, 2, 2)
    problems = await check_integrity(history)
    assert summary(problems) == [(K.INVERTED_INTERVAL, NOTES, {"id": 1}, 2, None)]
    assert problems[0].detail == (
        "the version of transaction 2 ends at transaction 2, not after it"
    )


async def test_overlapping_intervals(models: IntegrityModels, history: AsyncSession) -> None:
    await set_end(history, models, 1, 1, 4)
    problems = await check_integrity(history)
    assert summary(problems) == [(K.OVERLAPPING_INTERVALS, NOTES, {"id": 1}, 1, None)]
    assert problems[0].detail == (
        "the version of transaction 1 ends at transaction 4, after the next version "
        "(transaction 2) began"
    )


async def test_gap_in_the_chain(models: IntegrityModels, history: AsyncSession) -> None:
    await set_end(history, models, 2, 1, 2)
    problems = await check_integrity(history)
    assert summary(problems) == [(K.BROKEN_CHAIN, NOTES, {"id": 2}, 1, None)]
    assert problems[0].detail == (
        "the version of transaction 1 ends at transaction 2, before the next version "
        "(transaction 3) began"
    )


async def test_end_transaction_missing(models: IntegrityModels, history: AsyncSession) -> None:
    await set_end(history, models, 1, 2, 99)
    problems = await check_integrity(history)
    assert summary(problems) == [
        (K.OVERLAPPING_INTERVALS, NOTES, {"id": 1}, 2, None),
        (K.MISSING_TRANSACTION, NOTES, {"id": 1}, 2, None),
    ]
    assert problems[1].detail == (
        "the version of transaction 2 names transaction 99, which closed it: "
        "no such row in 'transaction'"
    )


async def test_transaction_row_missing(
    models: IntegrityModels, history: AsyncSession, engine: AsyncEngine
) -> None:
    transactions = models.Base.metadata.tables["transaction"]
    delete = sa.delete(transactions).where(transactions.c.id == 3)
    if engine.dialect.name == "postgresql":

        def drop_foreign_key(connection: sa.Connection) -> None:
            (fk,) = sa.inspect(connection).get_foreign_keys(NOTES)
            connection.execute(sa.text(f'ALTER TABLE {NOTES} DROP CONSTRAINT "{fk["name"]}"'))

        await history.run_sync(lambda s: drop_foreign_key(s.connection()))
        await history.execute(delete)
    elif engine.dialect.name in ("mysql", "mariadb"):
        await history.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
        await history.execute(delete)
        await history.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))
    else:  # SQLite enforces no foreign keys unless asked to
        await history.execute(delete)
    await history.commit()
    problems = await check_integrity(history)
    assert summary(problems) == [
        (K.MISSING_TRANSACTION, NOTES, {"id": 2}, 1, None),
        (K.MISSING_TRANSACTION, NOTES, {"id": 2}, 3, None),
    ]
    assert [p.detail for p in problems] == [
        "the version of transaction 1 names transaction 3, which closed it: "
        "no such row in 'transaction'",
        "the version of transaction 3 names transaction 3, which wrote it: "
        "no such row in 'transaction'",
    ]


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        (
            f"ALTER TABLE {NOTES} DROP COLUMN text",
            [(K.MISSING_COLUMN, NOTES, None, None, "text")],
        ),
        (
            f"ALTER TABLE {LABELS} ADD COLUMN colour VARCHAR(10)",
            [(K.EXTRA_COLUMN, LABELS, None, None, "colour")],
        ),
        (f"DROP TABLE {LABELS}", [(K.MISSING_TABLE, LABELS, None, None, None)]),
    ],
    ids=["missing-column", "extra-column", "missing-table"],
)
async def test_version_table_differs_from_the_models(
    history: AsyncSession, ddl: str, expected: list[tuple[Any, ...]]
) -> None:
    await history.execute(sa.text(ddl))
    await history.commit()
    problems = await check_integrity(history)
    assert summary(problems) == expected
    assert (
        problems[0].detail
        == {
            K.MISSING_COLUMN: f"column 'text' of the models is not in the database's '{NOTES}'",
            K.EXTRA_COLUMN: f"column 'colour' of the database's '{LABELS}' is not in the models",
            K.MISSING_TABLE: f"the version table '{LABELS}' is not in the database",
        }[expected[0][0]]
    )
