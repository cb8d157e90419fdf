"""Models shared by the behavioural tests, built fresh for each test module.

Model classes are built at run time, inside functions, so the tests reach them through
dataclasses whose fields are ``type[Any]``; :func:`runtime_version_class` gives their version
classes the matching static type.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    mapped_column,
    relationship,
)

from sqlalchemy_history_async import Version, version_class

if TYPE_CHECKING:

    class _ColumnsKnownAtRunTime(type):
        def __getattr__(cls, key: str) -> InstrumentedAttribute[Any]: ...

    class RuntimeVersion(Version[Any], metaclass=_ColumnsKnownAtRunTime):
        """A version class whose model is built at run time: its model's attributes are untyped
        (``V.title``), its own (``V.transaction_id``, ``V.previous``, ...) keep their types."""

else:
    RuntimeVersion = Version


def runtime_version_class(model: type[Any]) -> type[RuntimeVersion]:
    """:func:`version_class` of a model built at run time."""
    return cast("type[RuntimeVersion]", version_class(model))


def define_model(
    base: type[DeclarativeBase], name: str, table: str, versioned: object = None
) -> type[Any]:
    """A model ``name`` on ``base``, mapped to ``table`` with columns ``id`` and ``title``.

    ``versioned`` is its ``__versioned__`` (``{}`` by default). Built with ``type()``, as the
    base is only known at run time.
    """
    return type(
        name,
        (base,),
        {
            "__tablename__": table,
            "__versioned__": {} if versioned is None else versioned,
            "__annotations__": {"id": Mapped[int], "title": Mapped[str]},
            "id": mapped_column(primary_key=True),
            "title": mapped_column(sa.String(50)),
        },
    )


def table_of(cls: type[Any]) -> sa.Table:
    """The table a mapped class (model, version or transaction class) is mapped to."""
    table = sa.inspect(cls).local_table
    assert isinstance(table, sa.Table)
    return table


@dataclass
class Models:
    Base: type[DeclarativeBase]
    User: type[Any]
    Article: type[Any]
    Comment: type[Any]
    Tagging: type[Any]
    Plain: type[Any]


def define_models() -> Models:
    """Define a fresh set of models; call after ``make_versioned(user_cls="User")``."""

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "user_account"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))

    class Article(Base):
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {"exclude": ["view_count"]}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        body: Mapped[str | None] = mapped_column(sa.Text)
        # attribute name differs from the column name
        status_: Mapped[str] = mapped_column("status", sa.String(20), default="draft")
        # filled by the database, never by Python
        created: Mapped[dt.datetime] = mapped_column(
            sa.DateTime, server_default=sa.text("CURRENT_TIMESTAMP")
        )
        view_count: Mapped[int] = mapped_column(default=0)
        comments: Mapped[list[Comment]] = relationship(
            back_populates="article", cascade="all, delete-orphan"
        )

    class Comment(Base):
        __tablename__ = "comment"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        article_id: Mapped[int] = mapped_column(sa.ForeignKey("article.id"))
        text: Mapped[str] = mapped_column(sa.String(200))
        article: Mapped[Article] = relationship(back_populates="comments")

    class Tagging(Base):
        """Composite, non-integer primary key."""

        __tablename__ = "tagging"
        __versioned__: dict[str, Any] = {}
        article_id: Mapped[int] = mapped_column(primary_key=True)
        tag: Mapped[str] = mapped_column(sa.String(30), primary_key=True)
        weight: Mapped[int] = mapped_column(default=1)

    class Plain(Base):
        """Not versioned: its changes must record nothing."""

        __tablename__ = "plain"
        id: Mapped[int] = mapped_column(primary_key=True)
        value: Mapped[str] = mapped_column(sa.String(20))

    return Models(Base, User, Article, Comment, Tagging, Plain)
