"""Odd models and odd input: a clear answer at definition time, never a silent wrong history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from sqlalchemy_history_async import (
    ConfigurationError,
    Operation,
    make_versioned,
    select_changes,
    version_class,
    versioning_context,
)

from .conftest import Bases, reset_schema
from .models import runtime_version_class, table_of


@pytest.fixture
def base(bases: Bases) -> type[DeclarativeBase]:
    """A fresh declarative base, versioned by ``make_versioned()``."""
    make_versioned()
    return bases()


# --- definition time ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["transaction_id", "end_transaction_id", "operation_type"])
def test_column_named_like_a_bookkeeping_column(base: type[DeclarativeBase], name: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        type(
            "Ledger",
            (base,),
            {
                "__tablename__": "ledger",
                "__versioned__": {},
                "__annotations__": {"id": Mapped[int], "value": Mapped[int]},
                "id": mapped_column(primary_key=True),
                "value": mapped_column(name),
            },
        )
    message = str(exc.value)
    assert message.startswith(f"Ledger: column {name!r} of 'ledger' (attribute 'value')")
    assert "exclude" in message


def test_bookkeeping_name_excluded_is_fine(base: type[DeclarativeBase]) -> None:
    class Ledger(base):  # type: ignore[valid-type, misc]
        __tablename__ = "ledger"
        __versioned__ = {"exclude": ["transaction_id"]}
        id: Mapped[int] = mapped_column(primary_key=True)
        transaction_id: Mapped[int]

    V = version_class(Ledger)
    assert [c.name for c in table_of(V).c].count("transaction_id") == 1


def test_concrete_inheritance_is_rejected(base: type[DeclarativeBase]) -> None:
    class Employee(base):  # type: ignore[valid-type, misc]
        __tablename__ = "employee"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]

    with pytest.raises(ConfigurationError, match="Manager uses concrete-table inheritance"):

        class Manager(Employee):
            __tablename__ = "manager"
            __mapper_args__ = {"concrete": True}
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str]
            level: Mapped[int]


def test_single_table_subclass_version_has_a_table(base: type[DeclarativeBase]) -> None:
    class Animal(base):  # type: ignore[valid-type, misc]
        __tablename__ = "animal"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str]
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}

    class Dog(Animal):
        __mapper_args__ = {"polymorphic_identity": "dog"}
        good: Mapped[bool | None]

    assert Dog.__table__ is Animal.__table__
    assert table_of(version_class(Dog)) is table_of(version_class(Animal))
    assert "good" in table_of(version_class(Dog)).c


def test_viewonly_relationships_are_not_versioned(base: type[DeclarativeBase]) -> None:
    link = sa.Table(
        "article_tag",
        base.metadata,
        sa.Column("article_id", sa.ForeignKey("article.id"), primary_key=True),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), primary_key=True),
    )

    class Tag(base):  # type: ignore[valid-type, misc]
        __tablename__ = "tag"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)

    class Article(base):  # type: ignore[valid-type, misc]
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        tags: Mapped[list[Tag]] = relationship(secondary=link, viewonly=True)

    sa.orm.configure_mappers()
    assert "article_tag_version" not in base.metadata.tables
    assert version_class(Article).__history_info__.links == []


def test_association_object_with_a_viewonly_shortcut(base: type[DeclarativeBase]) -> None:
    class Tag(base):  # type: ignore[valid-type, misc]
        __tablename__ = "tag"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)

    class ArticleTag(base):  # type: ignore[valid-type, misc]
        __tablename__ = "article_tag"
        __versioned__: dict[str, Any] = {}
        article_id: Mapped[int] = mapped_column(sa.ForeignKey("article.id"), primary_key=True)
        tag_id: Mapped[int] = mapped_column(sa.ForeignKey("tag.id"), primary_key=True)
        weight: Mapped[int] = mapped_column(default=1)

    class Article(base):  # type: ignore[valid-type, misc]
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        tags: Mapped[list[Tag]] = relationship(secondary="article_tag", viewonly=True)

    sa.orm.configure_mappers()
    # one version table, the association object's, with its own column
    assert "weight" in table_of(version_class(ArticleTag)).c
    assert version_class(Article).__history_info__.links == []


# --- versioning_context() input ---------------------------------------------------------------


def test_context_rejects_meta_that_is_not_json() -> None:
    with (
        pytest.raises(TypeError, match=r"versioning_context\(when=\.\.\.\): meta values are"),
        versioning_context(when=object()),
    ):
        pass


def test_context_rejects_long_remote_addr() -> None:
    with (
        pytest.raises(ValueError, match=r"51 characters long; transaction\.remote_addr holds at"),
        versioning_context(remote_addr="x" * 51),
    ):
        pass
    with (
        pytest.raises(TypeError, match="takes a string, got int"),
        versioning_context(
            remote_addr=127  # type: ignore[arg-type]
        ),
    ):
        pass
    with versioning_context(remote_addr="f" * 50, note=["ok", 1, None, {"a": 2.5}]) as ctx:
        assert ctx.remote_addr == "f" * 50


# --- delete with changes not flushed yet ----------------------------------------------------------


def define_item(base: type[DeclarativeBase]) -> type[Any]:
    class Item(base):  # type: ignore[valid-type, misc]
        __tablename__ = "item"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        val: Mapped[int]
        note: Mapped[str | None] = mapped_column(sa.String(20))

    return Item


@pytest.fixture
async def engine(async_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("expire", [False, True], ids=["loaded", "expired"])
async def test_delete_records_the_stored_values_not_pending_ones(
    base: type[DeclarativeBase], engine: AsyncEngine, expire: bool
) -> None:
    Item = define_item(base)
    V = runtime_version_class(Item)
    await reset_schema(engine, base.metadata)
    async with async_sessionmaker(engine, expire_on_commit=expire)() as session:
        item = Item(id=1, val=1, note="kept")
        session.add(item)
        await session.commit()
        item.val = 99  # never reaches the database
        await session.delete(item)
        await session.commit()
        rows = (await session.execute(sa.select(V.val, V.note, V.operation_type))).all()
        assert sorted(rows, key=lambda r: r.operation_type) == [
            (1, "kept", Operation.INSERT),
            (1, "kept", Operation.DELETE),
        ]


def test_delete_records_the_stored_values_sync(base: type[DeclarativeBase], tmp_path: Any) -> None:
    Item = define_item(base)
    V = runtime_version_class(Item)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    base.metadata.create_all(engine)
    try:
        with sessionmaker(engine)() as session:
            session.add(Item(id=1, val=1, note="kept"))
            session.commit()
            item = session.get(Item, 1)
            assert item is not None
            item.note = "pending"
            session.delete(item)
            session.commit()
            rows = session.execute(sa.select(V.val, V.note).order_by(V.transaction_id)).all()
            assert [tuple(r) for r in rows] == [(1, "kept"), (1, "kept")]
            assert isinstance(session, Session)
    finally:
        engine.dispose()


# --- long table names -------------------------------------------------------------------------

LONG = "inventory_adjustment_requests_awaiting_regional_approval_xy"  # 59 characters


async def test_long_table_name(base: type[DeclarativeBase], engine: AsyncEngine) -> None:
    class Adjustment(base):  # type: ignore[valid-type, misc]
        __tablename__ = LONG
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        qty: Mapped[int]

    V = version_class(Adjustment)
    name = table_of(V).name
    assert len(LONG + "_version") > 63
    assert len(name) == 63
    assert name.startswith(LONG[:54])
    await reset_schema(engine, base.metadata)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        row = Adjustment(id=1, qty=1)
        session.add(row)
        await session.commit()
        row.qty = 2
        await session.commit()
        versions = (
            await session.scalars(
                row.versions.select().options(
                    sa.orm.undefer(V.index), sa.orm.selectinload(V.previous)
                )
            )
        ).all()
        assert [(v.qty, v.index, v.changeset) for v in versions] == [
            (1, 0, {"id": [None, 1], "qty": [None, 1]}),
            (2, 1, {"qty": [1, 2]}),
        ]
        feed = (await session.execute(select_changes(classes=[Adjustment]))).all()
        assert [(c.table, c.operation) for c in feed] == [
            (LONG, Operation.INSERT),
            (LONG, Operation.UPDATE),
        ]


# --- assigning the value a column already holds ---------------------------------------------------


def define_memo(base: type[DeclarativeBase]) -> type[Any]:
    class Memo(base):  # type: ignore[valid-type, misc]
        __tablename__ = "memo"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(20))
        body: Mapped[str | None] = mapped_column(sa.Text, deferred=True)

    return Memo


async def memo_history(session: Any, memo: type[Any]) -> list[tuple[Any, ...]]:
    V = runtime_version_class(memo)
    rows = await session.execute(
        sa.select(V.title, V.body, V.operation_type).order_by(V.transaction_id)
    )
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("how", ["expired on commit", "session.expire", "deferred"])
async def test_assigning_the_stored_value_records_nothing(
    base: type[DeclarativeBase], engine: AsyncEngine, how: str
) -> None:
    Memo = define_memo(base)
    Tx = base.metadata.tables["transaction"]
    await reset_schema(engine, base.metadata)
    async with async_sessionmaker(engine, expire_on_commit=how == "expired on commit")() as s:
        memo = Memo(id=1, title="same", body="text")
        s.add(memo)
        await s.commit()
        if how == "session.expire":
            s.expire(memo)
        if how == "deferred":
            s.expunge_all()
            memo = await s.get(Memo, 1)
            assert memo is not None
            assert "body" not in memo.__dict__
            memo.body = "text"  # never loaded
        else:
            assert "title" not in memo.__dict__  # expired: the stored value is not known
            memo.title = "same"
        await s.commit()
        assert await memo_history(s, Memo) == [("same", "text", Operation.INSERT)]
        assert (await s.execute(sa.select(sa.func.count()).select_from(Tx))).scalar_one() == 1
        # a value that differs is still recorded, the unchanged one as stored
        if how == "session.expire":
            s.expire(memo)
        memo.title = "changed"
        memo.body = "text"
        await s.commit()
        assert await memo_history(s, Memo) == [
            ("same", "text", Operation.INSERT),
            ("changed", "text", Operation.UPDATE),
        ]


def test_assigning_the_stored_value_records_nothing_sync(
    base: type[DeclarativeBase], tmp_path: Any
) -> None:
    Memo = define_memo(base)
    V = runtime_version_class(Memo)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    base.metadata.create_all(engine)
    try:
        with sessionmaker(engine)() as session:  # expire_on_commit=True
            memo = Memo(id=1, title="same", body="text")
            session.add(memo)
            session.commit()
            memo.title = "same"
            memo.body = "text"
            session.commit()
            assert session.scalars(sa.select(V.operation_type)).all() == [Operation.INSERT]
    finally:
        engine.dispose()


# --- SQLite savepoints -----------------------------------------------------------------------


@pytest.mark.parametrize("then", ["rollback", "commit"])
async def test_sqlite_savepoint_first_then_rollback(
    base: type[DeclarativeBase], tmp_path: Any, then: str
) -> None:
    Item = define_item(base)
    V = runtime_version_class(Item)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'sp.db'}")
    try:
        await reset_schema(engine, base.metadata)
        async with async_sessionmaker(engine)() as session:
            async with session.begin_nested():  # the transaction's first statement
                session.add(Item(id=1, val=1))
            await (session.rollback() if then == "rollback" else session.commit())
            kept = 0 if then == "rollback" else 1
            assert len((await session.scalars(sa.select(Item))).all()) == kept
            assert len((await session.scalars(sa.select(V))).all()) == kept
    finally:
        await engine.dispose()


def test_sqlite_savepoint_first_then_rollback_sync(
    base: type[DeclarativeBase], tmp_path: Any
) -> None:
    Item = define_item(base)
    V = runtime_version_class(Item)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sp.db'}")
    base.metadata.create_all(engine)
    try:
        with sessionmaker(engine)() as session:
            with session.begin_nested():
                session.add(Item(id=1, val=1))
            session.rollback()
            assert session.scalars(sa.select(Item)).all() == []
            assert session.scalars(sa.select(V)).all() == []
    finally:
        engine.dispose()


# --- changed, then changed back, by later flushes of one transaction ---------------------------


@pytest.mark.parametrize(
    "steps, recorded",
    [
        ([{"val": 2}, {"val": 1}], []),
        ([{"val": 2}, {"val": 3}], [(3, "x")]),
        ([{"val": 2}, {"val": 1}, {"val": 2}], [(2, "x")]),
        ([{"val": 2}, {"note": "y"}, {"val": 1}], [(1, "y")]),
        ([{"val": 2, "note": "y"}, {"note": "x"}, {"val": 1}], []),
    ],
    ids=["back", "forward", "back-and-forth", "other-column-stays", "both-back"],
)
async def test_changed_back_across_flushes(
    base: type[DeclarativeBase],
    engine: AsyncEngine,
    steps: list[dict[str, Any]],
    recorded: list[tuple[int, str]],
) -> None:
    """Each step is one flush; the transaction records only its net change."""
    Item = define_item(base)
    V = runtime_version_class(Item)
    Tx = base.metadata.tables["transaction"]
    await reset_schema(engine, base.metadata)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        item, other = Item(id=1, val=1, note="x"), Item(id=2, val=1, note="x")
        session.add_all([item, other])
        await session.commit()
        for step in steps:
            for attr, value in step.items():
                setattr(item, attr, value)
            await session.flush()
        await session.commit()
        updates = await session.execute(
            sa.select(V.val, V.note).where(V.id == 1, V.operation_type == Operation.UPDATE)
        )
        assert [tuple(r) for r in updates] == recorded
        count = sa.select(sa.func.count()).select_from(Tx)
        assert (await session.execute(count)).scalar_one() == 1 + bool(recorded)
        # the chain stays whole: the insert version is open again when nothing was recorded
        inserted = sa.select(V).where(V.id == 1, V.operation_type == Operation.INSERT)
        [first] = (await session.scalars(inserted)).all()
        assert (first.end_transaction_id is None) == (not recorded)


def test_changed_back_across_flushes_sync(base: type[DeclarativeBase], tmp_path: Any) -> None:
    Item = define_item(base)
    V = runtime_version_class(Item)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    base.metadata.create_all(engine)
    try:
        with sessionmaker(engine)() as session:
            item = Item(id=1, val=1, note="x")
            session.add(item)
            session.commit()
            item.val = 2
            session.flush()
            item.val = 1
            session.commit()
            assert session.scalars(sa.select(V.operation_type)).all() == [Operation.INSERT]
    finally:
        engine.dispose()


# --- the documented limit: statements that bypass Session.execute() ----------------------------


async def test_connection_and_textual_writes_are_not_recorded_yet(
    base: type[DeclarativeBase], engine: AsyncEngine
) -> None:
    """By default, statements sent on the session's connection and textual SQL record nothing
    (README, usage.md "Known limitations"; ``strict=True`` records the first and refuses the
    second, see test_connection_writes.py); statements through ``session.execute()`` are
    recorded.

    Pins the documented limit: when these are captured, this test changes with the docs.
    """
    Item = define_item(base)
    V = runtime_version_class(Item)
    await reset_schema(engine, base.metadata)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        session.add(Item(id=1, val=1, note="orm"))
        await session.commit()
        connection = await session.connection()
        await connection.execute(sa.update(Item.__table__).where(Item.id == 1).values(val=2))
        await session.execute(sa.text(f"UPDATE {Item.__tablename__} SET val = 3"))
        await session.execute(sa.insert(Item.__table__).values(id=2, val=1, note="core"))
        await session.commit()
        rows = await session.execute(sa.select(V.id, V.val, V.operation_type).order_by(V.id))
        assert [tuple(r) for r in rows] == [(1, 1, Operation.INSERT), (2, 1, Operation.INSERT)]
