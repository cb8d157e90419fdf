"""An application's models module, as ``history --models tests.cli_models`` imports it.

Importing it calls ``make_versioned()``: the test process imports it only inside the
``cli_models`` fixture of ``tests/test_cli.py``, which removes versioning afterwards.
"""

from __future__ import annotations

from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sqlalchemy_history_async import make_versioned

make_versioned()


class Base(DeclarativeBase):
    pass


article_tag = sa.Table(
    "cli_article_tag",
    Base.metadata,
    sa.Column("article_id", sa.ForeignKey("cli_article.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("cli_tag.id"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "cli_tag"
    __versioned__: ClassVar[dict[str, Any]] = {}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(30))


class Article(Base):
    __tablename__ = "cli_article"
    __versioned__: ClassVar[dict[str, Any]] = {}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(100))
    body: Mapped[str | None] = mapped_column(sa.Text)
    tags: Mapped[list[Tag]] = relationship(secondary=article_tag)


class Translation(Base):
    """A composite primary key."""

    __tablename__ = "cli_translation"
    __versioned__: ClassVar[dict[str, Any]] = {}
    article_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    lang: Mapped[str] = mapped_column(sa.String(5), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))


class Setting(Base):
    """Not versioned."""

    __tablename__ = "cli_setting"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(30))
