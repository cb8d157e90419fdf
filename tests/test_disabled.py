"""``versioning_disabled()``: writes inside record nothing; recording resumes afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from sqlalchemy_history_async import (
    Operation,
    select_as_of,
    transaction_class,
    version_class,
    versioning_disabled,
)

from .conftest import reset_schema, versioned
from .models import runtime_version_class


class Models:
    def __init__(self) -> None:
        class Base(DeclarativeBase):
            pass

        link = sa.Table(
            "card_tag",
            Base.metadata,
            sa.Column("card_id", sa.ForeignKey("card.id"), primary_key=True),
            sa.Column("tag_id", sa.ForeignKey("tag.id"), primary_key=True),
        )

        class Tag(Base):
            __tablename__ = "tag"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)

        class Card(Base):
            __tablename__ = "card"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(20))
            tags: Mapped[list[Tag]] = relationship(secondary=link)

        self.Base, self.Card, self.Tag, self.link = Base, Card, Tag, link


@pytest.fixture
def models() -> Iterator[Models]:
    with versioned(Models) as made:
        yield made


@pytest.fixture
async def engine(async_url: str, models: Models) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url)
    await reset_schema(engine, models.Base.metadata)
    try:
        yield engine
    finally:
        await engine.dispose()


async def counts(session: AsyncSession, models: Models) -> tuple[int, int, int]:
    def count(table: Any) -> Any:
        return sa.select(sa.func.count()).select_from(table)

    return (
        (await session.execute(count(version_class(models.Card)))).scalar_one(),
        (
            await session.execute(count(models.Base.metadata.tables["card_tag_version"]))
        ).scalar_one(),
        (await session.execute(count(transaction_class(models.Card)))).scalar_one(),
    )


async def test_nothing_recorded_inside_and_recording_resumes(
    models: Models, engine: AsyncEngine
) -> None:
    Card, Tag = models.Card, models.Tag
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        with versioning_disabled():
            card, tag = Card(id=1, title="fixture", tags=[Tag(id=1)]), Tag(id=2)
            session.add_all([card, tag, Card(id=2, title="doomed")])
            await session.commit()
            card.title = "still quiet"
            card.tags.append(tag)
            await session.delete(await session.get(Card, 2))
            await session.commit()
        assert await counts(session, models) == (0, 0, 0)

        card.title = "recorded"
        card.tags.remove(tag)
        await session.commit()
        V = runtime_version_class(Card)
        [version] = (await session.scalars(sa.select(V))).all()
        assert (version.id, version.title, version.operation_type) == (
            1,
            "recorded",
            Operation.UPDATE,
        )
        assert await counts(session, models) == (1, 1, 1)
        [tx] = (await session.scalars(sa.select(transaction_class(Card).id))).all()
        assert [v.title for v in await session.scalars(select_as_of(Card, tx))] == ["recorded"]


async def test_other_tasks_keep_recording(models: Models, engine: AsyncEngine) -> None:
    factory = async_sessionmaker(engine, expire_on_commit=False)
    started = asyncio.Event()
    done = asyncio.Event()

    async def quiet() -> None:
        with versioning_disabled():
            started.set()
            await done.wait()  # the other task commits while this one is disabled
            async with factory() as session:
                session.add(models.Card(id=1, title="quiet"))
                await session.commit()

    async def loud() -> None:
        await started.wait()
        async with factory() as session:
            session.add(models.Card(id=2, title="loud"))
            await session.commit()
        done.set()

    await asyncio.gather(quiet(), loud())
    async with factory() as session:
        V = runtime_version_class(models.Card)
        assert (await session.scalars(sa.select(V.title))).all() == ["loud"]


def test_sync_session(models: Models, tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    models.Base.metadata.create_all(engine)
    V = runtime_version_class(models.Card)
    try:
        with sessionmaker(engine)() as session:
            with versioning_disabled():
                session.add(models.Card(id=1, title="quiet"))
                session.commit()
            session.add(models.Card(id=2, title="loud"))
            session.commit()
            assert session.scalars(sa.select(V.title)).all() == ["loud"]
    finally:
        engine.dispose()
