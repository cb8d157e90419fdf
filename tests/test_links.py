"""Many-to-many link history follows what the database does, whatever is loaded in memory.

After every commit, the open link versions must be exactly the association table's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from sqlalchemy_history_async import Operation

from .conftest import reset_schema, versioned
from .models import RuntimeVersion, runtime_version_class


@dataclass
class Shelf:
    Base: type[DeclarativeBase]
    Book: type[Any]
    Tag: type[Any]
    book_tag: sa.Table


def define_shelf() -> Shelf:
    class Base(DeclarativeBase):
        pass

    book_tag = sa.Table(
        "book_tag",
        Base.metadata,
        sa.Column("book_id", sa.ForeignKey("book.id"), nullable=False),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), nullable=False),
    )

    book_main_tag = sa.Table(
        "book_main_tag",
        Base.metadata,
        sa.Column("book_id", sa.ForeignKey("book.id"), primary_key=True),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), nullable=False),
    )

    class Tag(Base):
        __tablename__ = "tag"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        books: Mapped[list[Book]] = relationship(secondary=book_tag, back_populates="tags")

    class Book(Base):
        __tablename__ = "book"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50))
        tags: Mapped[list[Tag]] = relationship(secondary=book_tag, back_populates="books")
        # many-to-many with one value at most
        main_tag: Mapped[Tag | None] = relationship(secondary=book_main_tag, uselist=False)

    return Shelf(Base, Book, Tag, book_tag)


@pytest.fixture
def shelf() -> Iterator[Shelf]:
    with versioned(define_shelf) as models:
        yield models


@pytest.fixture
async def engine(async_url: str, shelf: Shelf) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url)
    await reset_schema(engine, shelf.Base.metadata)
    try:
        yield engine
    finally:
        await engine.dispose()


Links = set[tuple[int, int]]


async def stored_links(session: AsyncSession, shelf: Shelf) -> Links:
    t = shelf.book_tag
    return {(r.book_id, r.tag_id) for r in await session.execute(sa.select(t))}


async def open_link_versions(session: AsyncSession, shelf: Shelf) -> Links:
    vt = shelf.Base.metadata.tables["book_tag_version"]
    rows = await session.execute(
        sa.select(vt.c.book_id, vt.c.tag_id).where(
            vt.c.end_transaction_id.is_(None), vt.c.operation_type != Operation.DELETE
        )
    )
    return {(r.book_id, r.tag_id) for r in rows}


async def check(session: AsyncSession, shelf: Shelf, expected: Links) -> None:
    assert await stored_links(session, shelf) == expected
    assert await open_link_versions(session, shelf) == expected
    # and as of the last transaction (the validity intervals, not only the open versions)
    vt = shelf.Base.metadata.tables["book_tag_version"]
    tx = shelf.Base.metadata.tables["transaction"]
    last = (await session.execute(sa.select(sa.func.max(tx.c.id)))).scalar_one()
    at_last = await session.execute(
        sa.select(vt.c.book_id, vt.c.tag_id).where(
            vt.c.transaction_id <= last,
            sa.or_(vt.c.end_transaction_id.is_(None), vt.c.end_transaction_id > last),
            vt.c.operation_type != Operation.DELETE,
        )
    )
    assert {(r.book_id, r.tag_id) for r in at_last} == expected
    # a version's temporal relationship shows the links at that version's own transaction
    V = runtime_version_class(shelf.Book)
    current = await session.scalars(
        sa.select(V)
        .where(V.end_transaction_id.is_(None), V.operation_type != Operation.DELETE)
        .options(selectinload(V.tags))
    )
    for book in current:
        assert {(book.id, t.id) for t in book.tags} == await links_at(session, shelf, book)


async def links_at(session: AsyncSession, shelf: Shelf, version: RuntimeVersion) -> Links:
    vt = shelf.Base.metadata.tables["book_tag_version"]
    tx = version.transaction_id
    rows = await session.execute(
        sa.select(vt.c.book_id, vt.c.tag_id).where(
            vt.c.book_id == version.id,
            vt.c.transaction_id <= tx,
            sa.or_(vt.c.end_transaction_id.is_(None), vt.c.end_transaction_id > tx),
            vt.c.operation_type != Operation.DELETE,
        )
    )
    return {(r.book_id, r.tag_id) for r in rows}


async def setup(factory: async_sessionmaker[AsyncSession], shelf: Shelf) -> None:
    async with factory() as session:
        t1, t2 = shelf.Tag(id=1), shelf.Tag(id=2)
        session.add_all(
            [shelf.Book(id=1, title="one", tags=[t1, t2]), shelf.Book(id=2, title="two", tags=[t1])]
        )
        await session.commit()
        await check(session, shelf, {(1, 1), (1, 2), (2, 1)})


async def test_row_switch_closes_the_old_objects_links(shelf: Shelf, engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    await setup(factory, shelf)
    async with factory() as session:
        old = await session.get(shelf.Book, 1, options=[selectinload(shelf.Book.tags)])
        await session.delete(old)
        session.add(shelf.Book(id=1, title="replacement"))  # same key: one UPDATE
        await session.commit()
        await check(session, shelf, {(2, 1)})


@pytest.mark.parametrize("loaded", [False, True], ids=["unloaded", "loaded"])
async def test_deleting_a_linked_object_records_its_links(
    shelf: Shelf, engine: AsyncEngine, loaded: bool
) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    await setup(factory, shelf)
    async with factory() as session:
        options = [selectinload(shelf.Book.tags)] if loaded else []
        book = await session.get(shelf.Book, 1, options=options)
        await session.delete(book)
        await session.commit()
        await check(session, shelf, {(2, 1)})
        # the other side: a tag deleted without touching the books
        tag = await session.get(shelf.Tag, 1)
        await session.delete(tag)
        await session.commit()
        await check(session, shelf, set())


async def test_unlink_and_relink_across_flushes(shelf: Shelf, engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    await setup(factory, shelf)
    async with factory() as session:
        book = await session.get(shelf.Book, 2, options=[selectinload(shelf.Book.tags)])
        tag = await session.get(shelf.Tag, 1)
        assert book is not None
        book.tags.remove(tag)
        await session.flush()
        book.tags.append(tag)
        await session.flush()
        book.tags.remove(tag)
        await session.commit()
        await check(session, shelf, {(1, 1), (1, 2)})


async def test_link_added_to_an_object_deleted_in_the_same_flush(
    shelf: Shelf, engine: AsyncEngine
) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    await setup(factory, shelf)
    async with factory() as session:
        book = await session.get(shelf.Book, 2, options=[selectinload(shelf.Book.tags)])
        tag = await session.get(shelf.Tag, 2)
        assert book is not None
        book.tags.append(tag)
        await session.delete(book)
        try:
            await session.commit()
        except sa.exc.IntegrityError:  # databases that enforce the foreign key refuse it
            await session.rollback()
            await check(session, shelf, {(1, 1), (1, 2), (2, 1)})
            return
        # whatever the database kept, history says the same
        await check(session, shelf, await stored_links(session, shelf))


async def test_many_to_many_with_one_value(shelf: Shelf, engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    V = runtime_version_class(shelf.Book)
    async with factory() as session:
        tag = shelf.Tag(id=1)
        book = shelf.Book(id=1, title="one", main_tag=None)  # inserted with None
        session.add_all([tag, book])
        await session.commit()
        book.title = "two"
        book.main_tag = tag
        await session.commit()
        book.title = "three"
        book.main_tag = None  # cleared
        await session.commit()
        versions = (
            await session.scalars(
                sa.select(V).order_by(V.transaction_id).options(selectinload(V.main_tag))
            )
        ).all()
        assert [v.main_tag.id if v.main_tag else None for v in versions] == [None, 1, None]
        # revert the relation to the second version: one object again
        restored = await versions[1].revert(relations=["main_tag"])
        await session.commit()
        assert restored is not None
        assert restored is book
        assert book.main_tag is tag
        assert book.title == "two"
        # deleted while loaded as None
        book.main_tag = None
        await session.commit()
        await session.delete(book)
        await session.commit()
        rows = (await session.execute(sa.select(shelf.Base.metadata.tables["book_main_tag"]))).all()
        assert rows == []


# --- relationships with extra join criteria -------------------------------------------------


@dataclass
class Desk:
    Base: type[DeclarativeBase]
    Memo: type[Any]
    Note: type[Any]
    Label: type[Any]


def define_desk() -> Desk:
    class Base(DeclarativeBase):
        pass

    memo_label = sa.Table(
        "memo_label",
        Base.metadata,
        sa.Column("memo_id", sa.ForeignKey("memo.id"), primary_key=True),
        sa.Column("label_id", sa.ForeignKey("label.id"), primary_key=True),
    )

    class Label(Base):
        __tablename__ = "label"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))

    class Note(Base):
        __tablename__ = "note"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        memo_id: Mapped[int] = mapped_column(sa.ForeignKey("memo.id"))
        approved: Mapped[bool] = mapped_column(default=False)

    class Memo(Base):
        __tablename__ = "memo"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        notes: Mapped[list[Note]] = relationship()
        approved_notes: Mapped[list[Note]] = relationship(
            primaryjoin=lambda: sa.and_(Note.memo_id == Memo.id, Note.approved.is_(True)),
            viewonly=True,
        )
        labels: Mapped[list[Label]] = relationship(secondary=memo_label)
        primary_labels: Mapped[list[Label]] = relationship(
            secondary=memo_label,
            secondaryjoin=lambda: sa.and_(
                Label.id == memo_label.c.label_id, Label.kind == "primary"
            ),
            viewonly=True,
        )

    return Desk(Base, Memo, Note, Label)


@pytest.fixture
def desk() -> Iterator[Desk]:
    with versioned(define_desk) as models:
        yield models


async def test_extra_join_criteria_are_kept(desk: Desk, async_url: str) -> None:
    engine = create_async_engine(async_url)
    try:
        await reset_schema(engine, desk.Base.metadata)
        V = runtime_version_class(desk.Memo)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            primary, other = desk.Label(id=1, kind="primary"), desk.Label(id=2, kind="other")
            memo = desk.Memo(id=1, labels=[primary, other])
            memo.notes = [desk.Note(id=1, approved=True), desk.Note(id=2, approved=False)]
            session.add(memo)
            await session.commit()
            [version] = (
                await session.scalars(
                    sa.select(V).options(
                        selectinload(V.notes),
                        selectinload(V.approved_notes),
                        selectinload(V.labels),
                        selectinload(V.primary_labels),
                    )
                )
            ).all()
            assert sorted(n.id for n in version.notes) == [1, 2]
            assert [n.id for n in version.approved_notes] == [1]
            assert sorted(label.id for label in version.labels) == [1, 2]
            assert [label.id for label in version.primary_labels] == [1]
            # lazy loading applies them too
            session.expunge_all()
            lazy = await session.get(V, (1, version.transaction_id))
            assert lazy is not None
            assert [n.id for n in await lazy.awaitable_attrs.approved_notes] == [1]
            assert [label.id for label in await lazy.awaitable_attrs.primary_labels] == [1]
    finally:
        await engine.dispose()
