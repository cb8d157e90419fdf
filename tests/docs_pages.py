"""What each page of the docs assumes without showing it, and what its snippets must produce.

``tests/docs_runner.py`` runs a page's snippets in order in one namespace (``ns``); the hooks
here run before a given snippet (``before``: snippet number, from 1) or after the last
(``after``) and see the same namespace. A hook supplies only what the page's prose says the
reader already has (a session, some rows, an auth dependency, an ``env.py``) and checks what
the snippets did, so a snippet that runs but does the wrong thing fails too.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, selectinload

from sqlalchemy_history_async import (
    Operation,
    VersioningManager,
    make_versioned,
    version_class,
    versioning_disabled,
)

Namespace = dict[str, Any]
Hook = Callable[[Namespace], Awaitable[None]]


@dataclass(frozen=True)
class Page:
    before: dict[int, list[Hook]] = field(default_factory=dict)
    after: list[Hook] = field(default_factory=list)
    cleanup: list[Hook] = field(default_factory=list)


# --- shared -----------------------------------------------------------------------------------


async def open_session(ns: Namespace, metadata: sa.MetaData) -> AsyncSession:
    """The page's ``session``: an ``AsyncSession`` (``expire_on_commit=False``, as in the usage
    set-up) on a fresh schema holding ``metadata``'s tables."""
    engine = create_async_engine(ns["ASYNC_URL"])
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    session = async_sessionmaker(engine, expire_on_commit=False)()
    ns.update(async_engine=engine, session=session, async_session=session)
    return session


async def close(ns: Namespace) -> None:
    session = ns.get("async_session")
    if session is not None:
        await session.close()
    engine = ns.get("engine")
    if isinstance(engine, sa.Engine):
        engine.dispose()
    async_engine = ns.get("async_engine")
    if async_engine is not None:
        await async_engine.dispose()


def article_model(
    *,
    with_status: bool = False,
    with_priority: bool = False,
    manager: VersioningManager | None = None,
) -> Any:
    """The pages' ``Article`` (id, title), on a base of its own: versioned by ``manager``, or
    by ``make_versioned()``'s when it is on."""

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    if manager is not None:
        manager.install(Base)

    class Article(Base):
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        if with_status:
            status: Mapped[str] = mapped_column(sa.String(20), default="draft")
        if with_priority:
            priority: Mapped[int] = mapped_column(server_default="3")

    return Article


async def versions_of(session: AsyncSession, model: Any, key: Any) -> list[Any]:
    V: Any = version_class(model)
    stmt = (
        sa.select(V)
        .where(V.id == key)
        .order_by(V.transaction_id)
        .options(selectinload(V.transaction))
    )
    return list((await session.scalars(stmt)).all())


# --- README.md --------------------------------------------------------------------------------


async def readme_auth(ns: Namespace) -> None:
    async def current_user() -> int:  # "your auth dependency"
        return 7

    ns["current_user"] = current_user


async def readme_actor_reaches_requests(ns: Namespace) -> None:
    import httpx
    from fastapi import FastAPI

    from sqlalchemy_history_async._context import current_context

    app: FastAPI = ns["app"]

    @app.get("/actor")
    async def actor() -> Any:
        return current_context().user_id

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/actor")
    assert response.status_code == 200, response.text
    assert response.json() == 7


# --- docs/usage.md ----------------------------------------------------------------------------


async def usage_session(ns: Namespace) -> None:
    await open_session(ns, ns["Base"].metadata)
    ns["fixtures"] = [ns["User"](name="fixture user")]


async def usage_rows(ns: Namespace) -> None:
    session: AsyncSession = ns["session"]
    current_user = ns["User"](name="Ada")
    article = ns["Article"](title="Hello")
    session.add_all([current_user, article])
    await session.commit()
    article.title = "Hello, history"
    await session.commit()
    assert article.id == 1  # the sync Session example reads article 1
    ns.update(
        article=article, async_article=article, article_id=article.id, current_user=current_user
    )


async def usage_version(ns: Namespace) -> None:
    session: AsyncSession = ns["session"]
    ns["version"] = (await session.scalars(ns["article"].versions.select())).first()


async def usage_sync_engine(ns: Namespace) -> None:
    ns["engine"] = sa.create_engine(ns["SYNC_URL"])


async def usage_back_to_async(ns: Namespace) -> None:
    # the sync example rebound `session` and `article` to its own (closed) session's
    ns.update(session=ns["async_session"], article=ns["async_article"])


async def usage_stale_rows(ns: Namespace) -> None:
    session: AsyncSession = ns["session"]
    stale = ns["Article"](id=100, title="stale")  # a key the bulk INSERT will not reuse
    session.add(stale)
    await session.commit()
    ns["stale_ids"] = [stale.id]


async def usage_recorded(ns: Namespace) -> None:
    session: AsyncSession = ns["session"]
    Article, V = ns["Article"], ns["ArticleVersion"]
    history = await versions_of(session, Article, 1)
    assert [v.title for v in history][:2] == ["Hello", "Hello, history"]
    assert history[-1].title == "x", [v.title for v in history]
    fixed = [v for v in history if v.title == "Fixed"]
    assert [(v.transaction.user_id, v.transaction.meta) for v in fixed] == [
        (ns["current_user"].id, {"reason": "bulk fix"})
    ]
    assert fixed[0].transaction.remote_addr == "203.0.113.7"
    (stale,) = ns["stale_ids"]
    assert [v.operation_type for v in await versions_of(session, Article, stale)] == [
        Operation.INSERT,
        Operation.DELETE,
    ]
    inserted = await session.scalars(
        sa.select(V.title).where(V.title.in_(["a", "b"]), V.operation_type == Operation.INSERT)
    )
    assert sorted(inserted) == ["a", "b"]
    fixture_user = ns["fixtures"][0]
    assert fixture_user.id is not None  # stored, and no transaction row before Ada's
    first = await session.scalar(sa.select(sa.func.min(V.transaction_id)))
    transactions = version_class(Article).transaction.property.mapper.class_
    assert await session.scalar(sa.select(sa.func.min(transactions.id))) == first


# --- docs/querying.md -------------------------------------------------------------------------


async def querying_rows(ns: Namespace) -> None:
    make_versioned()
    Article = article_model()
    session = await open_session(ns, Article.metadata)
    article = Article(id=7, title="Draft")
    session.add(article)
    await session.commit()
    for title in ("Second draft", "Final"):
        article.title = title
        await session.commit()
    ns["Article"] = Article


async def querying_results(ns: Namespace) -> None:
    assert ns["catalogue"] == []  # nothing existed at the start of the year
    assert ns["v"].title == "Final"  # transaction 42: the row as it is still
    assert [r.title for r in ns["renames"]] == ["Draft", "Second draft", "Final"]


# --- docs/relationships.md --------------------------------------------------------------------


async def relationships_rows(ns: Namespace) -> None:
    session = await open_session(ns, ns["Base"].metadata)
    Author, Post, Comment, Tag = ns["Author"], ns["Post"], ns["Comment"], ns["Tag"]
    ann, bob = Author(name="Ann"), Author(name="Bob")
    post = Post(title="Hello", author=ann, comments=[Comment(text="first")], tags=[Tag(name="sql")])
    session.add_all([post, bob])
    await session.commit()
    post.title = "Hello again"
    post.author = bob
    post.comments.append(Comment(text="second"))
    post.tags = []
    await session.commit()
    ns["post"] = post


async def relationships_reverted(ns: Namespace) -> None:
    post = ns["post"]
    assert ns["restored"] is post
    assert [v.author.name for v in ns["page"]] == ["Ann", "Bob"]
    assert ns["author_then"].name == "Ann"
    assert post.title == "Hello"
    assert (await post.awaitable_attrs.author).name == "Ann"
    assert [c.text for c in await post.awaitable_attrs.comments] == ["first"]
    assert [t.name for t in await post.awaitable_attrs.tags] == ["sql"]


# --- docs/migrations.md -----------------------------------------------------------------------


def _run_migration(conn: sa.Connection, upgrade: Callable[[], None]) -> None:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    with Operations.context(MigrationContext.configure(conn)):
        upgrade()


async def migrations_env(ns: Namespace) -> None:
    make_versioned()
    Article = article_model()
    configured: dict[str, Any] = {}
    ns.update(
        Base=Article.__base__,
        Article=Article,
        configured=configured,
        connection=object(),  # env.py's connection
        context=types.SimpleNamespace(configure=lambda **kw: configured.update(kw)),
    )


async def migrations_rows_without_history(ns: Namespace) -> None:
    from sqlalchemy_history_async.alembic import render_item

    assert ns["configured"] == {
        "connection": ns["connection"],
        "target_metadata": ns["Base"].metadata,
        "render_item": render_item,
    }
    Article = ns["Article"]
    await open_session(ns, Article.metadata)
    async with ns["async_engine"].begin() as conn:
        with versioning_disabled():  # rows written before the model was versioned
            await conn.execute(sa.insert(Article.__table__), [{"title": "a"}, {"title": "b"}])
    app: Any = types.ModuleType("app")
    app.models = types.ModuleType("app.models")
    app.models.Article = Article
    sys.modules.update({"app": app, "app.models": app.models})


async def migrations_baselined(ns: Namespace) -> None:
    for _ in range(2):  # a second run adds nothing
        async with ns["async_engine"].begin() as conn:
            await conn.run_sync(_run_migration, ns["upgrade"])
    session: AsyncSession = ns["session"]
    V: Any = version_class(ns["Article"])
    rows = (await session.execute(sa.select(V.id, V.operation_type).order_by(V.id))).all()
    assert [tuple(r) for r in rows] == [(1, Operation.INSERT), (2, Operation.INSERT)]
    await session.rollback()  # end the read: the next migration alters these tables
    # the models of the next migration: the same table with a new column
    Article = article_model(with_priority=True, manager=VersioningManager())
    models: Any = sys.modules["app.models"]
    models.Article = Article


async def migrations_backfilled(ns: Namespace) -> None:
    async with ns["async_engine"].begin() as conn:
        await conn.run_sync(_run_migration, ns["upgrade"])
    session: AsyncSession = ns["session"]
    models: Any = sys.modules["app.models"]
    Article = models.Article
    V: Any = version_class(Article)
    assert (await session.scalars(sa.select(V.priority))).all() == [3, 3]
    assert (await session.scalars(sa.select(Article.priority))).all() == [3, 3]


async def migrations_forget_app(ns: Namespace) -> None:
    sys.modules.pop("app.models", None)
    sys.modules.pop("app", None)
    await close(ns)


# --- docs/testing.md --------------------------------------------------------------------------


async def testing_models(ns: Namespace) -> None:
    make_versioned()
    Article = article_model(with_status=True)
    await open_session(ns, Article.metadata)
    ns["Article"] = Article


async def testing_run_test(ns: Namespace) -> None:
    from sqlalchemy_history_async._context import request_context, set_actor

    with request_context():  # what the history_actor fixture opens
        await ns["test_publishing_is_recorded"](ns["session"], set_actor)


# --- docs/typing.md ---------------------------------------------------------------------------


async def typing_versioning_on(ns: Namespace) -> None:
    make_versioned()


async def typing_version_class(ns: Namespace) -> None:
    sa.orm.configure_mappers()  # relationships of version classes are added here
    TaskVersion = ns["TaskVersion"]
    assert hasattr(TaskVersion, "title") and hasattr(TaskVersion, "project")
    assert not hasattr(TaskVersion, "views")  # excluded


PAGES: dict[str, Page] = {
    "README.md": Page(before={2: [readme_auth]}, after=[readme_actor_reaches_requests]),
    "docs/usage.md": Page(
        before={
            3: [usage_session],
            4: [usage_rows],
            9: [usage_version],
            10: [usage_sync_engine],
            11: [usage_back_to_async],
            12: [usage_stale_rows],
        },
        after=[usage_recorded],
        cleanup=[close],
    ),
    "docs/querying.md": Page(
        before={1: [querying_rows]}, after=[querying_results], cleanup=[close]
    ),
    "docs/relationships.md": Page(
        before={2: [relationships_rows]}, after=[relationships_reverted], cleanup=[close]
    ),
    "docs/migrations.md": Page(
        before={
            1: [migrations_env],
            2: [migrations_rows_without_history],
            3: [migrations_baselined],
        },
        after=[migrations_backfilled],
        cleanup=[migrations_forget_app],
    ),
    "docs/testing.md": Page(
        before={1: [testing_models]}, after=[testing_run_test], cleanup=[close]
    ),
    "docs/typing.md": Page(before={1: [typing_versioning_on]}, after=[typing_version_class]),
}
