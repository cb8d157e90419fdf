"""Models for tests/test_shapes.py: key kinds, server defaults, renamed columns, column types."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


@dataclass
class ShapeModels:
    Base: type[DeclarativeBase]
    Placement: type[Any]
    Document: type[Any]
    Country: type[Any]
    Ticket: type[Any]
    Account: type[Any]
    PurchaseOrder: type[Any]
    Specimen: type[Any]


@dataclass
class PostgresModels:
    Base: type[DeclarativeBase]
    Measurement: type[Any]
    Note: type[Any]
    ArchivedNote: type[Any]


def define_shape_models() -> ShapeModels:
    """Models every database supports; call after ``make_versioned()``."""

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Placement(Base):
        """Composite primary key: an integer and a string."""

        __tablename__ = "placement"
        __versioned__: dict[str, Any] = {}
        shelf: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        slot: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
        item: Mapped[str] = mapped_column(sa.String(50))
        quantity: Mapped[int]

    class Document(Base):
        """UUID primary key generated in Python."""

        __tablename__ = "document"
        __versioned__: dict[str, Any] = {}
        id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
        title: Mapped[str] = mapped_column(sa.String(100))
        body: Mapped[str | None] = mapped_column(sa.Text)

    class Country(Base):
        """Natural string primary key."""

        __tablename__ = "country"
        __versioned__: dict[str, Any] = {}
        code: Mapped[str] = mapped_column(sa.String(2), primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100))
        population: Mapped[int | None] = mapped_column(sa.BigInteger)

    class Ticket(Base):
        """``Identity()`` primary key (a plain autoincrement key where Identity is ignored)."""

        __tablename__ = "ticket"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(sa.Identity(), primary_key=True)
        subject: Mapped[str] = mapped_column(sa.String(100))
        open: Mapped[bool]

    class Account(Base):
        """Attribute names differ from column names, in the primary key too."""

        __tablename__ = "account"
        __versioned__: dict[str, Any] = {}
        region_: Mapped[str] = mapped_column("region", sa.String(10), primary_key=True)
        number: Mapped[int] = mapped_column("acct_no", primary_key=True, autoincrement=False)
        holder_name: Mapped[str] = mapped_column("holder", sa.String(100))
        balance_cents: Mapped[int] = mapped_column("balance", sa.BigInteger)

    class PurchaseOrder(Base):
        """Columns the database fills in."""

        __tablename__ = "purchase_order"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column(sa.String(50))
        status: Mapped[str] = mapped_column(sa.String(20), server_default=sa.text("'pending'"))
        priority: Mapped[int] = mapped_column(server_default=sa.text("5"))
        urgent: Mapped[bool] = mapped_column(server_default=sa.false())
        created_at: Mapped[dt.datetime] = mapped_column(
            sa.DateTime(timezone=True), server_default=sa.func.now()
        )

    class Specimen(Base):
        """One column of each portable type."""

        __tablename__ = "specimen"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        data: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
        color: Mapped[Color | None] = mapped_column(sa.Enum(Color, name="specimen_color"))
        amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
        measured_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
        payload: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
        active: Mapped[bool | None]
        token: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)

    return ShapeModels(Base, Placement, Document, Country, Ticket, Account, PurchaseOrder, Specimen)


def define_postgres_models() -> PostgresModels:
    """PostgreSQL-only models (named schema, ARRAY, JSONB); call after ``make_versioned()``.

    The ``archive`` schema must exist before ``Base.metadata.create_all()``.
    """

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Measurement(Base):
        __tablename__ = "measurement"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        readings: Mapped[list[int] | None] = mapped_column(postgresql.ARRAY(sa.Integer))
        labels: Mapped[list[str] | None] = mapped_column(postgresql.ARRAY(sa.String(20)))
        doc: Mapped[Any] = mapped_column(postgresql.JSONB, nullable=True)

    class Note(Base):
        """Same table name as ArchivedNote, in the default schema."""

        __tablename__ = "note"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(sa.String(200))

    class ArchivedNote(Base):
        __tablename__ = "note"
        __table_args__ = {"schema": "archive"}
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(sa.String(200))
        tags: Mapped[list[str] | None] = mapped_column(postgresql.ARRAY(sa.String(20)))

    return PostgresModels(Base, Measurement, Note, ArchivedNote)
