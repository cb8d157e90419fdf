"""Temporal relationships on version classes: related state as it was at each version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from sqlalchemy_history_async import RevertError

from .conftest import Run, StatementLog, versioned_models
from .models import runtime_version_class


@dataclass
class Blog:
    Base: type[DeclarativeBase]
    Author: type[Any]
    Category: type[Any]
    Post: type[Any]
    Comment: type[Any]
    Node: type[Any]


def define_blog() -> Blog:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "author"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))

    class Category(Base):
        """Not versioned: version relationships to it give the current row."""

        __tablename__ = "category"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column(sa.String(50))

    class Post(Base):
        __tablename__ = "post"
        __versioned__ = {"track_relationships": True}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50))
        author_id: Mapped[int | None] = mapped_column(sa.ForeignKey("author.id"))
        category_id: Mapped[int | None] = mapped_column(sa.ForeignKey("category.id"))
        author: Mapped[Author | None] = relationship()
        category: Mapped[Category | None] = relationship()
        comments: Mapped[list[Comment]] = relationship(
            back_populates="post", cascade="all, delete-orphan"
        )

    class Comment(Base):
        __tablename__ = "comment"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        post_id: Mapped[int] = mapped_column(sa.ForeignKey("post.id"))
        text: Mapped[str] = mapped_column(sa.String(50))
        post: Mapped[Post] = relationship(back_populates="comments")

    class Node(Base):
        """Self-referential."""

        __tablename__ = "node"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column(sa.String(50))
        parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("node.id"))
        parent: Mapped[Node | None] = relationship(remote_side=[id], back_populates="children")
        children: Mapped[list[Node]] = relationship(back_populates="parent")

    return Blog(Base, Author, Category, Post, Comment, Node)


models = versioned_models(define_blog)


async def blog_history(m: Blog, session: AsyncSession) -> Any:
    """tx1 post by ann + c1; tx2 ann renamed; tx3 c2 added; tx4 c1 edited; tx5 c1 removed."""
    ann = m.Author(name="ann")
    news = m.Category(label="news")
    post = m.Post(title="p", author=ann, category=news, comments=[m.Comment(text="c1")])
    session.add(post)
    await session.commit()
    ann.name = "ann b."
    await session.commit()
    post.comments.append(m.Comment(text="c2"))
    await session.commit()
    post.comments[0].text = "c1 edited"
    await session.commit()
    post.comments.remove(post.comments[0])
    await session.commit()
    return post


async def test_one_to_many_at_each_version(models: Blog, session: AsyncSession) -> None:
    await blog_history(models, session)
    PV = runtime_version_class(models.Post)
    versions = (
        await session.scalars(
            sa.select(PV).order_by(PV.transaction_id).options(selectinload(PV.comments))
        )
    ).all()
    # track_relationships: adding and removing comments versions the post (tx 1, 3, 5)
    assert [(v.transaction_id, sorted(c.text for c in v.comments)) for v in versions] == [
        (1, ["c1"]),
        (3, ["c1", "c2"]),
        (5, ["c2"]),
    ]


async def test_many_to_one_at_each_version(models: Blog, session: AsyncSession) -> None:
    await blog_history(models, session)
    CV = runtime_version_class(models.Comment)
    PV = runtime_version_class(models.Post)
    versions = (
        await session.scalars(
            sa.select(CV)
            .order_by(CV.transaction_id, CV.id)
            .options(selectinload(CV.post).selectinload(PV.author))
        )
    ).all()
    assert [
        (v.text, v.operation_type.name, v.post.transaction_id, v.post.author.name) for v in versions
    ] == [
        ("c1", "INSERT", 1, "ann"),
        ("c2", "INSERT", 3, "ann b."),
        ("c1 edited", "UPDATE", 3, "ann b."),
        ("c1 edited", "DELETE", 5, "ann b."),
    ]


async def test_relationship_to_unversioned_class_gives_current_row(
    models: Blog, session: AsyncSession
) -> None:
    post = await blog_history(models, session)
    post.category.label = "world"
    await session.commit()
    PV = runtime_version_class(models.Post)
    first = await session.scalar(sa.select(PV).order_by(PV.transaction_id).limit(1))
    assert first is not None
    category = await first.awaitable_attrs.category
    assert category.label == "world"


async def test_awaitable_temporal_relationships(models: Blog, session: AsyncSession) -> None:
    await blog_history(models, session)
    PV = runtime_version_class(models.Post)
    first = await session.scalar(sa.select(PV).order_by(PV.transaction_id).limit(1))
    assert first is not None
    author = await first.awaitable_attrs.author
    assert (author.name, author.transaction_id) == ("ann", 1)
    assert [c.text for c in await first.awaitable_attrs.comments] == ["c1"]


async def test_a_page_of_versions_loads_in_bounded_queries(
    models: Blog, session: AsyncSession, statements: StatementLog
) -> None:
    for i in range(20):
        session.add(models.Post(title=f"p{i}", comments=[models.Comment(text=f"c{i}")]))
    await session.commit()
    PV = runtime_version_class(models.Post)
    statements.clear()
    page = (
        await session.scalars(
            sa.select(PV).options(selectinload(PV.comments), selectinload(PV.author))
        )
    ).all()
    assert len(page) == 20
    assert len(statements.statements) == 3  # the page, comments, authors
    assert all(len(v.comments) == 1 for v in page)


async def test_track_relationships_does_not_version_untouched_models(
    models: Blog, session: AsyncSession
) -> None:
    """Comments are not tracking relationships: the post changing does not version them."""
    post = await blog_history(models, session)
    CV = runtime_version_class(models.Comment)
    before = len((await session.scalars(sa.select(CV))).all())
    post.title = "renamed"
    await session.commit()
    assert len((await session.scalars(sa.select(CV))).all()) == before


async def test_self_referential(models: Blog, session: AsyncSession) -> None:
    root = models.Node(label="root")
    child = models.Node(label="child", parent=root)
    session.add_all([root, child])
    await session.commit()
    root.label = "root v2"
    await session.commit()
    NV = runtime_version_class(models.Node)
    versions = (
        await session.scalars(
            sa.select(NV)
            .order_by(NV.transaction_id, NV.id)
            .options(selectinload(NV.parent), selectinload(NV.children))
        )
    ).all()
    summary = [
        (
            v.label,
            v.parent.label if v.parent else None,
            sorted(c.label for c in v.children),
        )
        for v in versions
    ]
    assert summary == [
        ("root", None, ["child"]),
        ("child", "root", []),
        ("root v2", None, ["child"]),
    ]


async def test_temporal_relationships_load_lazily_in_sync_code(models: Blog, run: Run) -> None:
    def behaviour(s: Session) -> None:
        post = models.Post(title="sync", author=models.Author(name="bo"))
        s.add(post)
        s.commit()
        post.comments.append(models.Comment(text="x"))
        s.commit()
        first, second = s.scalars(post.versions.select()).all()
        assert (first.author.name, first.comments) == ("bo", [])
        assert [c.text for c in second.comments] == ["x"]

    await run(behaviour)


async def test_revert_with_relations(models: Blog, session: AsyncSession) -> None:
    post = await blog_history(models, session)  # comments now: c2 only; c1 deleted (orphan)
    other = models.Author(name="zed")
    post.author = other
    await session.commit()
    PV = runtime_version_class(models.Post)
    first = await session.scalar(sa.select(PV).order_by(PV.transaction_id).limit(1))
    assert first is not None

    restored = await first.revert(relations=["comments", "author"])
    assert restored is not None
    assert restored is post
    await session.commit()
    # c1 re-created with its id from its first version; c2 (added later) removed again
    assert sorted(c.text for c in await post.awaitable_attrs.comments) == ["c1"]
    author = await post.awaitable_attrs.author
    assert author.name == "ann b."  # the author row that existed then, with its current values


async def test_revert_with_unknown_relation_is_a_clear_error(
    models: Blog, session: AsyncSession
) -> None:
    post = await blog_history(models, session)
    [*_, last] = (await session.scalars(post.versions.select())).all()
    with pytest.raises(RevertError, match=r"Post has no relationship 'tags'.*'comments'"):
        await last.revert(relations=["tags"])


async def test_revert_sync_with_relations(models: Blog, run: Run) -> None:
    def behaviour(s: Session) -> None:
        post = models.Post(title="p", comments=[models.Comment(text="a")])
        s.add(post)
        s.commit()
        post.comments.append(models.Comment(text="b"))
        s.commit()
        first = s.scalars(post.versions.select()).first()
        assert first is not None
        first.revert_sync(relations=["comments"])
        s.commit()
        assert [c.text for c in post.comments] == ["a"]

    await run(behaviour)
