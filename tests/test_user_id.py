"""``transaction.user_id`` without a user class: a plain column, no foreign key.

These tests install their own manager, so they do not use the shared ``models`` fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_history_async import transaction_class, versioning_context

from .conftest import dialect_named, reset_schema, versioned
from .models import table_of


@dataclass
class Notes:
    Base: type[DeclarativeBase]
    Note: type[Any]


def define_note() -> Notes:
    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "note"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(50))

    return Notes(Base, Note)


def test_default_user_id_column() -> None:
    with versioned(define_note) as models:
        Tx = transaction_class(models.Note)
        user_id = table_of(Tx).c.user_id

        assert user_id.nullable
        assert not user_id.foreign_keys
        assert user_id.type.compile(dialect=dialect_named("sqlite")) == "VARCHAR(255)"
        assert user_id.type.compile(dialect=dialect_named("postgresql")) == "VARCHAR(255)"
        assert "user" not in sa.inspect(Tx).relationships


def test_user_id_type() -> None:
    with versioned(define_note, user_id_type=sa.BigInteger()) as models:
        user_id = table_of(transaction_class(models.Note)).c.user_id
        assert isinstance(user_id.type, sa.BigInteger)
        assert user_id.nullable
        assert not user_id.foreign_keys


@pytest.mark.parametrize(
    ("user_id_type", "given", "stored"),
    [(None, 42, "42"), (None, "alice", "alice"), (sa.Integer(), 42, 42)],
    ids=["default-int", "default-str", "integer-type"],
)
async def test_user_id_stored(
    async_url: str,
    user_id_type: sa.types.TypeEngine[Any] | None,
    given: object,
    stored: object,
) -> None:
    with versioned(define_note, user_id_type=user_id_type) as models:
        Note, Tx = models.Note, transaction_class(models.Note)
        engine = create_async_engine(async_url)
        try:
            await reset_schema(engine, models.Base.metadata)
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
