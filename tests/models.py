"""Models shared by the behavioural tests, built fresh for each test module."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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
        __versioned__ = {"exclude": ["view_count"]}
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
        __versioned__ = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        article_id: Mapped[int] = mapped_column(sa.ForeignKey("article.id"))
        text: Mapped[str] = mapped_column(sa.String(200))
        article: Mapped[Article] = relationship(back_populates="comments")

    class Tagging(Base):
        """Composite, non-integer primary key."""

        __tablename__ = "tagging"
        __versioned__ = {}
        article_id: Mapped[int] = mapped_column(primary_key=True)
        tag: Mapped[str] = mapped_column(sa.String(30), primary_key=True)
        weight: Mapped[int] = mapped_column(default=1)

    class Plain(Base):
        """Not versioned: its changes must record nothing."""

        __tablename__ = "plain"
        id: Mapped[int] = mapped_column(primary_key=True)
        value: Mapped[str] = mapped_column(sa.String(20))

    return Models(Base, User, Article, Comment, Tagging, Plain)
