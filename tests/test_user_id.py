"""``transaction.user_id`` without a user class: a plain column, no foreign key.

These tests install their own manager, so they do not use the shared ``models`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_history_async import (
    make_versioned,
    remove_versioning,
    transaction_class,
    versioning_context,
)

from .conftest import reset_schema


@pytest.fixture
def base() -> Iterator[type[DeclarativeBase]]:
    """A fresh declarative base; versioning is removed and its registry disposed afterwards."""

    class Base(DeclarativeBase):
        pass

    try:
        yield Base
    finally:
        remove_versioning()
        Base.registry.dispose()


def define_note(base: type[DeclarativeBase]) -> type[Any]:
    class Note(base):
        __tablename__ = "note"
        __versioned__ = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(50))

    sa.orm.configure_mappers()
    return Note


def test_default_user_id_column(base: type[DeclarativeBase]) -> None:
    make_versioned()
    Note = define_note(base)
    Tx = transaction_class(Note)
    user_id = Tx.__table__.c.user_id  # type: ignore[attr-defined]

    assert user_id.nullable
    assert not user_id.foreign_keys
    assert user_id.type.compile(dialect=sqlite.dialect()) == "VARCHAR(255)"
    assert user_id.type.compile(dialect=postgresql.dialect()) == "VARCHAR(255)"
    assert "user" not in sa.inspect(Tx).relationships


def test_user_id_type(base: type[DeclarativeBase]) -> None:
    make_versioned(user_id_type=sa.BigInteger())
    Note = define_note(base)
    user_id = transaction_class(Note).__table__.c.user_id  # type: ignore[attr-defined]
    assert isinstance(user_id.type, sa.BigInteger)
    assert user_id.nullable
    assert not user_id.foreign_keys


@pytest.mark.parametrize(
    ("user_id_type", "given", "stored"),
    [(None, 42, "42"), (None, "alice", "alice"), (sa.Integer(), 42, 42)],
    ids=["default-int", "default-str", "integer-type"],
)
async def test_user_id_stored(
    base: type[DeclarativeBase],
    async_url: str,
    user_id_type: sa.types.TypeEngine[Any] | None,
    given: Any,
    stored: Any,
) -> None:
    make_versioned(user_id_type=user_id_type)
    Note = define_note(base)
    Tx = transaction_class(Note)

    engine = create_async_engine(async_url)
    try:
        await reset_schema(engine, base.metadata)
        async with async_sessionmaker(engine)() as session:
            session.add(Note(text="a"))
            with versioning_context(user_id=given):
                await session.commit()
            session.add(Note(text="b"))
            await session.commit()

            rows = (await session.execute(sa.select(Tx.user_id).order_by(Tx.id))).all()
            assert rows == [(stored,), (None,)]
            assert type(rows[0][0]) is type(stored)
    finally:
        await engine.dispose()
