"""A FastAPI service with history: articles, their history, revert and an activity feed.

The session dependency commits after its ``yield`` (at teardown), the common pattern that
loses the actor with a ``versioning_context()`` opened in a dependency; with
``HistoryContextMiddleware`` and ``record_actor()`` every transaction of the request records
who made it and from where. Serve it with any ASGI server, e.g.::

    pip install "sqlalchemy-history-async[fastapi,aiosqlite]" uvicorn
    HISTORY_DATABASE_URL=sqlite+aiosqlite:///articles.db uvicorn examples.fastapi_app:app

Requests name their user in an ``X-User`` header (a stand-in for real authentication).
``python examples/fastapi_app.py`` runs a short scripted session against it in memory (with
``httpx``) and checks what it recorded; ``tests/test_fastapi_example.py`` drives it with
``httpx.AsyncClient`` on every database.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
run time, and ``Session`` below is local to :func:`create_app`.)
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, selectinload

from sqlalchemy_history_async import (
    VersioningManager,
    select_changes,
    transaction_class,
    version_class,
)
from sqlalchemy_history_async.fastapi import HistoryContextMiddleware, record_actor


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Article(Base):
    __tablename__ = "app_article"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str] = mapped_column(sa.Text, default="")


#: This service's own manager and transaction table (a scoped manager: it versions this
#: declarative base only).
history = VersioningManager(user_cls=User, transaction_table="app_transaction").install(Base)
ArticleVersion: Any = version_class(Article)
AppTransaction: Any = transaction_class(Article)


class ArticleIn(BaseModel):
    title: str
    body: str = ""


class ArticlePatch(BaseModel):
    title: str | None = None
    body: str | None = None


def create_app(url: str) -> FastAPI:
    """The service on the database at ``url`` (served, it creates its tables at startup)."""
    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session
            await session.commit()  # at teardown, after the actor's dependency has exited

    Session = Annotated[AsyncSession, Depends(get_session)]

    async def current_user(
        session: Session, x_user: Annotated[int | None, Header()] = None
    ) -> User | None:
        if x_user is None:
            return None  # anonymous: transactions record no actor
        user = await session.get(User, x_user)
        if user is None:
            raise HTTPException(401, f"unknown user {x_user}")
        return user

    app = FastAPI(lifespan=lifespan, dependencies=[Depends(record_actor(current_user))])
    app.add_middleware(HistoryContextMiddleware)
    app.state.engine = engine

    async def article_or_404(session: AsyncSession, article_id: int) -> Article:
        article = await session.get(Article, article_id)
        if article is None:
            raise HTTPException(404, f"no article {article_id}")
        return article

    @app.post("/articles", status_code=201)
    async def create_article(data: ArticleIn, session: Session) -> dict[str, Any]:
        article = Article(title=data.title, body=data.body)
        session.add(article)
        await session.flush()  # the id; the commit happens at the dependency's teardown
        return {"id": article.id, "title": article.title, "body": article.body}

    @app.patch("/articles/{article_id}")
    async def update_article(
        article_id: int, data: ArticlePatch, session: Session
    ) -> dict[str, Any]:
        article = await article_or_404(session, article_id)
        for name, value in data.model_dump(exclude_none=True).items():
            setattr(article, name, value)
        if article.title == "":
            raise HTTPException(422, "a title cannot be empty")  # nothing is committed
        return {"id": article.id, "title": article.title, "body": article.body}

    @app.delete("/articles/{article_id}", status_code=204)
    async def delete_article(article_id: int, session: Session) -> None:
        await session.delete(await article_or_404(session, article_id))

    @app.get("/articles/{article_id}/history")
    async def article_history(article_id: int, session: Session) -> list[dict[str, Any]]:
        versions = await session.scalars(
            sa.select(ArticleVersion)
            .where(ArticleVersion.id == article_id)
            .order_by(ArticleVersion.transaction_id)
            .options(
                selectinload(ArticleVersion.previous),
                selectinload(ArticleVersion.transaction).selectinload(AppTransaction.user),
            )
        )
        return [
            {
                "transaction_id": v.transaction_id,
                "operation": v.operation_type.name,
                "title": v.title,
                "changes": v.changeset,
                "user": None if v.transaction.user is None else v.transaction.user.name,
                "remote_addr": v.transaction.remote_addr,
            }
            for v in versions
        ]

    @app.post("/articles/{article_id}/revert/{transaction_id}")
    async def revert_article(
        article_id: int, transaction_id: int, session: Session
    ) -> dict[str, Any]:
        version = await session.get(ArticleVersion, (article_id, transaction_id))
        if version is None:
            raise HTTPException(404, f"article {article_id} has no version {transaction_id}")
        article = await version.revert()  # flushed in this request's transaction
        return {"id": article.id, "title": article.title, "body": article.body}

    @app.get("/activity")
    async def activity(session: Session, user: int | None = None) -> list[dict[str, Any]]:
        feed = select_changes(classes=[Article], user_id=user)
        return [
            {
                "transaction_id": change.transaction_id,
                "table": change.table,
                "primary_key": change.primary_key,
                "operation": change.operation.name,
                "changed": change.changed,
                "user_id": change.user_id,
                "remote_addr": change.remote_addr,
            }
            for change in (await session.execute(feed)).all()
        ]

    return app


app = create_app(os.environ.get("HISTORY_DATABASE_URL", "sqlite+aiosqlite:///articles.db"))


async def demo(url: str) -> None:
    """Create, edit and delete an article as two users through HTTP; print its history."""
    import httpx

    service = create_app(url)
    engine = service.state.engine
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with async_sessionmaker(engine)() as session:
        session.add_all([User(id=1, name="alice"), User(id=2, name="bob")])
        await session.commit()
    transport = httpx.ASGITransport(app=service, client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        alice, bob = {"X-User": "1"}, {"X-User": "2"}
        created = await client.post("/articles", json={"title": "Hello"}, headers=alice)
        article = created.json()["id"]
        await client.patch(f"/articles/{article}", json={"body": "Draft."}, headers=bob)
        await client.delete(f"/articles/{article}", headers=alice)
        versions = (await client.get(f"/articles/{article}/history")).json()
    for v in versions:
        print(
            f"tx {v['transaction_id']} {v['operation']:<6} by {v['user']} from "
            f"{v['remote_addr']}: {v['changes']}"
        )
    assert [(v["operation"], v["user"]) for v in versions] == [
        ("INSERT", "alice"),
        ("UPDATE", "bob"),
        ("DELETE", "alice"),
    ]
    assert {v["remote_addr"] for v in versions} == {"203.0.113.7"}
    await engine.dispose()


if __name__ == "__main__":
    import asyncio
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(demo(f"sqlite+aiosqlite:///{Path(tmp) / 'service.db'}"))
