"""Minimal reproductions of what the randomized model test (``test_randomized.py``) found.

An open defect is an ``xfail(strict=True)`` test here: the suite stays green while the defect is
there, and the test fails (XPASS) once it is fixed; then the marker goes, and so does the
avoidance of the same name in ``test_randomized.py``. Fixed defects stay as plain regression
tests (all of them, at present). ``test_link_added_to_object_deleted_in_same_flush`` pins down a
shape the state machine avoids for a reason outside this library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sqlalchemy_history_async import Operation, select_as_of, transaction_class

from .conftest import versioned_models
from .models import runtime_version_class


@dataclass
class Findings:
    Base: type[DeclarativeBase]
    Note: type[Any]
    Article: type[Any]
    Tag: type[Any]
    Comment: type[Any]


def define_findings() -> Findings:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    article_tag = sa.Table(
        "article_tag",
        Base.metadata,
        sa.Column("article_id", sa.ForeignKey("article.id"), nullable=False),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), nullable=False),
    )

    class Note(Base):
        __tablename__ = "note"
        __versioned__: dict[str, Any] = {"exclude": ["views"]}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        title: Mapped[str] = mapped_column(sa.String(20))
        views: Mapped[int] = mapped_column(default=0)

    class Article(Base):
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        tags: Mapped[list[Tag]] = relationship(secondary=article_tag, back_populates="articles")

    class Tag(Base):
        __tablename__ = "tag"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        articles: Mapped[list[Article]] = relationship(secondary=article_tag, back_populates="tags")

    class Comment(Base):
        __tablename__ = "article_comment"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        article_id: Mapped[int] = mapped_column(sa.ForeignKey("article.id"))
        article: Mapped[Article] = relationship()

    return Findings(Base, Note, Article, Tag, Comment)


models = versioned_models(define_findings)


async def note_history(models: Findings, session: AsyncSession) -> list[tuple[Any, ...]]:
    NV = runtime_version_class(models.Note)
    rows = await session.execute(
        sa.select(NV.title, NV.transaction_id, NV.end_transaction_id, NV.operation_type).order_by(
            NV.transaction_id
        )
    )
    return [tuple(r) for r in rows]


async def transaction_ids(models: Findings, session: AsyncSession) -> list[int]:
    T = transaction_class(models.Note)
    return list((await session.scalars(sa.select(T.id).order_by(T.id))).all())


async def test_value_changed_and_changed_back_records_nothing(
    models: Findings, session: AsyncSession
) -> None:
    """A value one flush changed and a later flush changed back: no version, no transaction."""
    note = models.Note(id=1, title="a")
    session.add(note)
    await session.commit()  # tx 1
    note.title = "b"
    await session.flush()
    note.title = "a"  # back to the value the transaction started with
    await session.commit()

    assert await note_history(models, session) == [("a", 1, None, Operation.INSERT)]
    assert await transaction_ids(models, session) == [1]


async def test_key_change_with_expired_attribute_records_stored_value_as_deleted(
    models: Findings, session: AsyncSession
) -> None:
    """A key change flushed with an attribute assigned while not loaded: the old key's DELETE
    version holds what the row held."""
    note = models.Note(id=1, title="a")
    session.add(note)
    await session.commit()  # tx 1
    session.expire(note, ["title"])
    note.title = "c"  # assigned while not loaded: the stored "a" is not in memory
    note.id = 3
    await session.commit()  # tx 2

    NV = runtime_version_class(models.Note)
    rows = await session.execute(
        sa.select(NV.id, NV.title, NV.transaction_id, NV.operation_type).order_by(
            NV.transaction_id, NV.id
        )
    )
    assert [tuple(r) for r in rows] == [
        (1, "a", 1, Operation.INSERT),
        (1, "a", 2, Operation.DELETE),  # the row held "a" when its key changed
        (3, "c", 2, Operation.INSERT),
    ]


async def test_same_parent_assigned_to_expired_child_records_nothing(
    models: Findings, session: AsyncSession
) -> None:
    """A many-to-one assigned the object it refers to while its foreign key is not loaded (the
    flush writes the foreign key from the relationship): no version, no transaction."""
    article = models.Article(id=1)
    comment = models.Comment(id=1, article=article)
    session.add(comment)
    await session.commit()  # tx 1
    session.expire(comment, ["article_id", "article"])
    comment.article = article  # the article it has; the stored article_id is not in memory
    await session.commit()

    CV = runtime_version_class(models.Comment)
    rows = await session.execute(sa.select(CV.transaction_id, CV.operation_type))
    assert [tuple(r) for r in rows] == [(1, Operation.INSERT)]
    assert await transaction_ids(models, session) == [1]


async def test_link_added_to_object_deleted_in_same_flush(
    db: str, models: Findings, session: AsyncSession
) -> None:
    """Not this library's: SQLAlchemy inserts a link added in the flush that deletes one end.

    The unit of work deletes the deleted article's links and then inserts the link added from
    the tag's side: a dangling association row where foreign keys are not enforced (SQLite by
    default), a foreign key violation elsewhere. History records what the database holds.
    """
    session.add_all([models.Article(id=1), models.Tag(id=1)])
    await session.commit()  # tx 1
    article = await session.get(models.Article, 1)
    tag = await session.get(models.Tag, 1)
    assert article is not None and tag is not None
    (await article.awaitable_attrs.tags).append(tag)
    await session.delete(article)

    if db != "sqlite":
        with pytest.raises(sa.exc.IntegrityError):
            await session.commit()
        await session.rollback()
        assert await transaction_ids(models, session) == [1]
        return

    await session.commit()  # tx 2
    links = await session.execute(sa.text("SELECT article_id, tag_id FROM article_tag"))
    assert [tuple(r) for r in links] == [(1, 1)]  # dangling: article 1 is gone
    assert (await session.scalars(select_as_of(models.Article, 2))).all() == []
    LV = models.Base.metadata.tables["article_tag_version"]
    in_force = await session.execute(
        sa.select(LV.c.article_id, LV.c.tag_id, LV.c.operation_type).where(
            LV.c.transaction_id <= 2,
            sa.or_(LV.c.end_transaction_id.is_(None), LV.c.end_transaction_id > 2),
        )
    )
    assert [tuple(r) for r in in_force] == [(1, 1, Operation.INSERT)]  # as the database holds
