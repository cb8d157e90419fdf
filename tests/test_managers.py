"""Scoped versioning managers, re-enabling versioning, and models versioning cannot see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, registry

from sqlalchemy_history_async import (
    ConfigurationError,
    Operation,
    UnrecordedWriteError,
    VersioningManager,
    baseline_sync,
    make_versioned,
    remove_versioning,
    select_changes,
    transaction_class,
    versioning_context,
    versioning_disabled,
)

from .conftest import Bases, Run, reset_schema
from .models import define_model, runtime_version_class, table_of


def define(base: type[DeclarativeBase], name: str, table: str) -> type[Any]:
    """A versioned model ``name`` on ``base``, mapped to ``table``."""
    return define_model(base, name, table)


@pytest.fixture
async def engine(async_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database: each test creates the tables of the bases it made."""
    engine = create_async_engine(async_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def create(engine: AsyncEngine, *metadatas: sa.MetaData) -> None:
    await reset_schema(engine, metadatas[0])
    async with engine.begin() as conn:
        for metadata in metadatas[1:]:
            await conn.run_sync(metadata.create_all)


def history(session: Session, model: type[Any]) -> list[tuple[Any, ...]]:
    V = runtime_version_class(model)
    rows = session.execute(
        sa.select(V.id, V.title, V.operation_type).order_by(V.transaction_id, V.id)
    )
    return [tuple(r) for r in rows]


def count(session: Session, cls: type[Any]) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(cls)).scalar_one()


# --- two managers in one process -----------------------------------------------------------------


async def test_two_scoped_managers_in_one_commit(
    bases: Bases, engine: AsyncEngine, run: Run
) -> None:
    shop, blog = bases(), bases()
    shop_manager = bases.manager(shop)
    blog_manager = bases.manager(blog, transaction_table="blog_transaction")
    Order = define(shop, "Order", "shop_order")
    Post = define(blog, "Post", "post")
    sa.orm.configure_mappers()
    assert shop_manager.versioned_classes == (Order,)
    assert blog_manager.versioned_classes == (Post,)
    OrderTx, PostTx = transaction_class(Order), transaction_class(Post)
    assert OrderTx is not PostTx
    assert table_of(OrderTx).name == "transaction"
    assert table_of(PostTx).name == "blog_transaction"
    assert "post_version" not in shop.metadata.tables
    assert "shop_order_version" not in blog.metadata.tables

    await create(engine, shop.metadata, blog.metadata)

    def behaviour(session: Session) -> None:
        order, post = Order(id=1, title="order"), Post(id=1, title="post")
        session.add_all([order, post])
        with versioning_context(user_id="7"):
            session.commit()
        order.title, post.title = "order 2", "post 2"
        session.commit()
        session.delete(post)
        session.commit()

        assert history(session, Order) == [
            (1, "order", Operation.INSERT),
            (1, "order 2", Operation.UPDATE),
        ]
        assert history(session, Post) == [
            (1, "post", Operation.INSERT),
            (1, "post 2", Operation.UPDATE),
            (1, "post 2", Operation.DELETE),
        ]
        # each manager wrote its own transaction rows, with the same context
        assert count(session, OrderTx) == 2
        assert count(session, PostTx) == 3
        users = session.scalars(sa.select(PostTx.user_id).order_by(PostTx.id))
        assert users.all() == ["7", None, None]
        feed = session.execute(select_changes(classes=blog_manager.versioned_classes)).all()
        assert [(c.table, c.operation) for c in feed] == [
            ("post", Operation.INSERT),
            ("post", Operation.UPDATE),
            ("post", Operation.DELETE),
        ]

    await run(behaviour)


async def test_default_manager_leaves_scoped_models_alone(
    bases: Bases, engine: AsyncEngine, run: Run
) -> None:
    scoped, other = bases(), bases()
    manager = bases.manager(scoped, transaction_table="scoped_transaction")
    default = make_versioned()
    Note = define(scoped, "Note", "note")
    Page = define(other, "Page", "page")
    sa.orm.configure_mappers()
    assert manager.versioned_classes == (Note,)
    assert default.versioned_classes == (Page,)
    assert table_of(transaction_class(Note)).name == "scoped_transaction"
    assert table_of(transaction_class(Page)).name == "transaction"

    await create(engine, scoped.metadata, other.metadata)

    def behaviour(session: Session) -> None:
        session.add_all([Note(id=1, title="n"), Page(id=1, title="p")])
        session.commit()
        assert history(session, Note) == [(1, "n", Operation.INSERT)]
        assert history(session, Page) == [(1, "p", Operation.INSERT)]

    await run(behaviour)


def test_install_versions_models_defined_before(bases: Bases) -> None:
    Base = bases()
    Early = define(Base, "Early", "early")
    manager = bases.manager(Base)
    assert manager.versioned_classes == (Early,)
    assert "early_version" in Base.metadata.tables


def test_install_on_a_registry(bases: Bases) -> None:
    reg = registry()
    manager = bases.manager(reg)

    class Thing:
        __versioned__: dict[str, Any] = {}

    table = sa.Table(
        "thing",
        reg.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text),
    )
    reg.map_imperatively(Thing, table)
    try:
        assert manager.versioned_classes == (Thing,)
        assert "thing_version" in reg.metadata.tables
    finally:
        manager.remove()
        reg.dispose()


@pytest.mark.parametrize("target", [object(), 5, "Base", DeclarativeBase])
def test_install_on_something_else(bases: Bases, target: object) -> None:
    with pytest.raises(ConfigurationError, match="declarative base class"):
        VersioningManager().install(target)


def test_install_twice_and_a_second_manager_on_one_base(bases: Bases) -> None:
    Base = bases()
    manager = bases.manager(Base)
    with pytest.raises(ConfigurationError, match="installed already"):
        manager.install(Base)
    with pytest.raises(ConfigurationError, match="another VersioningManager"):
        VersioningManager().install(Base)
    with pytest.raises(ConfigurationError, match="one scope"):
        manager.remove()
        manager.install(bases())


def test_scoped_manager_after_make_versioned_took_its_models(bases: Bases) -> None:
    make_versioned()
    Base = bases()
    define(Base, "Taken", "taken")
    with pytest.raises(ConfigurationError, match="Taken are versioned by make_versioned"):
        VersioningManager().install(Base)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"transaction_table": ""}, "transaction_table"),
        ({"transaction_table": 3}, "transaction_table"),
        ({"transaction_schema": ""}, "transaction_schema"),
        ({"user_id_type": sa.Integer}, "user_id_type"),
        ({"user_cls": 3.5}, "user_cls"),
    ],
)
def test_manager_options_are_validated(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        VersioningManager(**options)


def test_manager_options_are_frozen() -> None:
    manager = VersioningManager(transaction_table="audit")
    with pytest.raises(AttributeError):
        manager.options.transaction_table = "other"  # type: ignore[misc]
    assert manager.options.transaction_table == "audit"


@pytest.mark.parametrize("taken", ["audit", "audit_lock", "audit_retention"])
def test_transaction_or_lock_table_name_taken(bases: Bases, taken: str) -> None:
    Base = bases()
    sa.Table(taken, Base.metadata, sa.Column("id", sa.Integer, primary_key=True))
    bases.manager(Base, transaction_table="audit")
    with pytest.raises(ConfigurationError, match=f"already has a table '{taken}'"):
        define(Base, "Item", "item")


# --- turning versioning off and on again --------------------------------------------------------


async def test_make_versioned_again_records_models_defined_before(
    bases: Bases, engine: AsyncEngine, run: Run
) -> None:
    make_versioned(user_id_type=sa.Integer())
    Base = bases()
    Article = define(Base, "Article", "article")
    sa.orm.configure_mappers()
    await create(engine, Base.metadata)

    def behaviour(session: Session) -> None:
        article = Article(id=1, title="one")
        session.add(article)
        session.commit()

        remove_versioning()
        article.title = "off"
        session.commit()

        again = make_versioned(user_id_type=sa.Integer())
        assert again.versioned_classes == (Article,)
        article.title = "on again"
        session.add(Article(id=2, title="two"))
        session.commit()
        assert history(session, Article) == [
            (1, "one", Operation.INSERT),
            (1, "on again", Operation.UPDATE),
            (2, "two", Operation.INSERT),
        ]

    await run(behaviour)


def test_make_versioned_again_with_other_options_says_why(bases: Bases) -> None:
    make_versioned()
    define(bases(), "Article", "article")
    sa.orm.configure_mappers()
    remove_versioning()
    with pytest.raises(ConfigurationError) as exc:
        make_versioned(user_id_type=sa.Integer())
    message = str(exc.value)
    assert "Article were versioned by an earlier manager with other options" in message
    assert "user_id_type" in message


async def test_scoped_manager_reinstalled_records_again(
    bases: Bases, engine: AsyncEngine, run: Run
) -> None:
    Base = bases()
    manager = bases.manager(Base)
    Article = define(Base, "Article", "article")
    sa.orm.configure_mappers()
    await create(engine, Base.metadata)

    def behaviour(session: Session) -> None:
        article = Article(id=1, title="one")
        session.add(article)
        session.commit()
        manager.remove()
        article.title = "off"
        session.commit()
        manager.install(Base)
        article.title = "on"
        session.commit()
        # a new manager with the same options takes the models over as well
        manager.remove()
        successor = bases.manager(Base)
        assert successor.versioned_classes == (Article,)
        article.title = "successor"
        session.commit()
        assert history(session, Article) == [
            (1, "one", Operation.INSERT),
            (1, "on", Operation.UPDATE),
            (1, "successor", Operation.UPDATE),
        ]

    await run(behaviour)


async def test_model_defined_before_versioning_fails_the_flush(
    bases: Bases, engine: AsyncEngine, run: Run
) -> None:
    Base = bases()
    Early = define(Base, "Early", "early")
    make_versioned()
    await create(engine, Base.metadata)

    def behaviour(session: Session) -> None:
        session.add(Early(id=1, title="x"))
        with pytest.raises(ConfigurationError) as exc:
            session.commit()
        assert "Early declares __versioned__ but has no version class" in str(exc.value)
        assert "before make_versioned()" in str(exc.value)

    await run(behaviour)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "default"])
async def test_strict_manager_refuses_textual_writes_to_versioned_tables(
    bases: Bases, async_url: str, strict: bool
) -> None:
    Base = bases()
    manager = bases.manager(Base, transaction_table="strict_transaction", strict=strict)
    Note = define_model(Base, "StrictNote", "strict_note")
    sa.orm.configure_mappers()
    engine = create_async_engine(async_url)
    await reset_schema(engine, Base.metadata)
    try:
        async with async_sessionmaker(engine)() as session:
            session.add(Note(id=1, title="a"))
            await session.commit()
            write = sa.text("UPDATE strict_note SET title = 'b' WHERE id = 1")
            if strict:
                with pytest.raises(UnrecordedWriteError, match=r"'strict_note'.*strict=True"):
                    await session.execute(write)
                with versioning_disabled():
                    await session.execute(write)
            else:
                await session.execute(write)
            # reads, and writes to tables that are not versioned, are left alone
            await session.execute(sa.text("SELECT title FROM strict_note"))
            await session.execute(sa.text("UPDATE strict_transaction SET meta = NULL WHERE 1 = 0"))
            await session.commit()
            assert await session.scalar(sa.select(Note.title)) == "b"
            # a Core statement on the session's connection: recorded by a strict manager only
            connection = await session.connection()
            await connection.execute(sa.update(Note.__table__).values(title="c"))
            await session.commit()
            V = runtime_version_class(Note)
            titles = (await session.scalars(sa.select(V.title).order_by(V.transaction_id))).all()
            assert titles == (["a", "c"] if strict else ["a"])
        assert manager.options.strict is strict
    finally:
        await engine.dispose()


def test_strict_takes_a_bool() -> None:
    with pytest.raises(ConfigurationError, match=r"strict=\.\.\.\) takes True or False, got 'yes'"):
        VersioningManager(strict="yes")  # type: ignore[arg-type]


def test_models_of_two_managers_are_baselined_separately(bases: Bases) -> None:
    made = []
    for name in ("shop", "blog"):
        base = bases()
        bases.manager(base)
        made.append(
            type(
                name.title(),
                (base,),
                {
                    "__tablename__": name,
                    "__versioned__": {},
                    "id": mapped_column(sa.Integer, primary_key=True),
                },
            )
        )
    with pytest.raises(ValueError, match=r"baseline\(\): Blog and Shop record their history in "):
        baseline_sync(Session(), *made)
