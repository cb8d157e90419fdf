"""Quickstart: record, read and revert the history of a row with AsyncSession on SQLite.

Run with ``python examples/quickstart.py`` (or ``nox -s demo``). Exits non-zero if the history
it prints is not what the steps above it should have recorded.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, selectinload

from sqlalchemy_history_async import (
    Operation,
    make_versioned,
    transaction_class,
    version_class,
    versioning_context,
)

make_versioned(user_cls="User")  # before the models are defined


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Article(Base):
    __tablename__ = "article"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str | None] = mapped_column(sa.Text)


# Any: the model's columns on its version class (ArticleVersion.id) are typed by the mypy
# plugin sqlalchemy_history_async.mypy; without it they are not known statically.
ArticleVersion: Any = version_class(Article)  # configures the mappers
ArticleTransaction = transaction_class(Article)


async def main(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    Session = async_sessionmaker(engine, expire_on_commit=False)

    async with Session() as session:
        session.add_all([User(id=1, name="alice"), User(id=2, name="bob")])
        await session.commit()

        article = Article(title="Hello", body="First draft.")
        session.add(article)
        with versioning_context(user_id=1, remote_addr="203.0.113.7", reason="new article"):
            await session.commit()
        with versioning_context(user_id=1, remote_addr="203.0.113.7", reason="better title"):
            article.title = "Hello, history"
            await session.commit()
        with versioning_context(user_id=2, remote_addr="198.51.100.4", reason="copy edit"):
            article.body = "Second draft."
            await session.commit()
        with versioning_context(user_id=1, remote_addr="203.0.113.7", reason="retired"):
            await session.delete(article)
            await session.commit()

        query = (
            sa.select(ArticleVersion)
            .where(ArticleVersion.id == article.id)
            .order_by(ArticleVersion.transaction_id)
            .options(
                selectinload(ArticleVersion.previous),
                selectinload(ArticleVersion.transaction).selectinload(ArticleTransaction.user),
            )
        )
        versions = (await session.scalars(query)).all()
        print(f"History of article {article.id}:")
        for v in versions:  # everything below was eager-loaded: no I/O, no MissingGreenlet
            tx = v.transaction
            print(
                f"  tx {tx.id} {v.operation_type.name:<6} {tx.issued_at:%Y-%m-%d %H:%M:%S%z}"
                f" by {tx.user.name} from {tx.remote_addr} {tx.meta}"
            )
            print(f"      changeset: {v.changeset}")

        assert [v.operation_type.name for v in versions] == ["INSERT", "UPDATE", "UPDATE", "DELETE"]
        assert [v.transaction.user.name for v in versions] == ["alice", "alice", "bob", "alice"]
        assert [v.changeset for v in versions] == [
            {"id": [None, article.id], "title": [None, "Hello"], "body": [None, "First draft."]},
            {"title": ["Hello", "Hello, history"]},
            {"body": ["First draft.", "Second draft."]},
            {},  # a delete version holds the row's last values: nothing changed but existence
        ]
        assert [v.is_current for v in versions] == [False, False, False, True]
        assert all(v.transaction.issued_at.tzinfo is not None for v in versions)

    async with Session() as session:  # a fresh session: nothing loaded, so await the read
        second = await session.get(ArticleVersion, (article.id, versions[1].transaction_id))
        assert second is not None
        assert await second.awaitable_attrs.changeset == versions[1].changeset
        second_values = (second.title, second.body)

        with versioning_context(user_id=2, reason="restore"):
            restored = await second.revert()  # re-creates the deleted row, flushed not committed
            await session.commit()
        print(f"Restored: id={restored.id} title={restored.title!r} body={restored.body!r}")
        assert (restored.id, restored.title, restored.body) == (article.id, *second_values)

        latest = (await session.scalars(restored.versions.select())).all()[-1]
        tx = await latest.awaitable_attrs.transaction
        print(
            f"New version: tx {tx.id} {latest.operation_type.name} {tx.meta}"
            f" changeset={await latest.awaitable_attrs.changeset}"
        )
        assert latest.operation_type is Operation.INSERT and latest.is_current
        assert (await latest.awaitable_attrs.previous).transaction_id == versions[3].transaction_id
    await engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(f"sqlite+aiosqlite:///{Path(tmp) / 'quickstart.db'}"))
