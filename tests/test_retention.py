"""Retention: ``prune()`` deletes old versions, and reads before what it kept say so."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sqlalchemy_history_async import (
    HistoryPrunedError,
    Operation,
    check_integrity,
    prune,
    prune_sync,
    select_as_of,
    select_changes,
    stream_changes,
    version_at,
)

from .models import Models, runtime_version_class

Face = str


@pytest.fixture(params=["async", "sync"])
def face(request: pytest.FixtureRequest) -> Face:
    name: str = request.param
    return name


async def pruned(
    face: Face, engine: AsyncEngine, sync_engine: sa.Engine, *models: Any, **options: Any
) -> int:
    """``prune`` through the face under test."""
    if face == "async":
        return await prune(engine, *models, **options)
    return prune_sync(sync_engine, *models, **options)


async def history(session: AsyncSession, models: Models) -> list[tuple[Any, ...]]:
    V = runtime_version_class(models.Article)
    rows = await session.execute(
        sa.select(V.id, V.transaction_id, V.end_transaction_id, V.operation_type).order_by(
            V.id, V.transaction_id
        )
    )
    return [tuple(r) for r in rows]


async def write_history(session: AsyncSession, models: Models) -> None:
    """Article 1: versions at tx 1, 2, 3; article 2: inserted at 4, deleted at 5; article 3:
    inserted at 6."""
    A = models.Article
    one = A(id=1, title="v1")
    session.add(one)
    await session.commit()
    for title in ("v2", "v3"):
        one.title = title
        await session.commit()
    two = A(id=2, title="gone")
    session.add(two)
    await session.commit()
    await session.delete(two)
    await session.commit()
    session.add(A(id=3, title="new"))
    await session.commit()


async def as_of(session: AsyncSession, models: Models, tx: int) -> list[tuple[int, str]]:
    V = runtime_version_class(models.Article)
    rows = await session.scalars(select_as_of(models.Article, tx).order_by(V.id))
    return [(v.id, v.title) for v in rows]


async def test_prune_before_keeps_what_was_in_force_then(
    models: Models,
    face: Face,
    engine: AsyncEngine,
    sync_engine: sa.Engine,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session:
        await write_history(session, models)
        before = {tx: await as_of(session, models, tx) for tx in range(3, 7)}
    assert await pruned(face, engine, sync_engine, models.Article, before=3) == 2
    async with session_factory() as session:
        assert await history(session, models) == [
            (1, 3, None, Operation.UPDATE),
            (2, 4, 5, Operation.INSERT),
            (2, 5, None, Operation.DELETE),
            (3, 6, None, Operation.INSERT),
        ]
        # from the cut on, the same answers as before pruning
        for tx in range(3, 7):
            assert await as_of(session, models, tx) == before[tx]
        v = await version_at(session, models.Article, 1, 3)
        assert v is not None and v.title == "v3"
        assert await v.awaitable_attrs.previous is None  # the oldest kept version
        with pytest.raises(HistoryPrunedError, match=r"'article_version' before transaction 3"):
            await as_of(session, models, 2)
        with pytest.raises(HistoryPrunedError, match=r"as of transaction 2 cannot be answered"):
            await version_at(session, models.Article, 1, 2)
        # the change feed from before the cut would skip transactions 1 and 2
        with pytest.raises(HistoryPrunedError, match=r"changes from the start"):
            [c async for c in stream_changes(session)]
        with pytest.raises(HistoryPrunedError, match=r"changes since transaction 2 "):
            await session.execute(select_changes(since=2))
        changes = [c async for c in stream_changes(session, after=2)]
        assert [(c.transaction_id, c.operation) for c in changes] == [
            (3, Operation.UPDATE),
            (4, Operation.INSERT),
            (5, Operation.DELETE),
            (6, Operation.INSERT),
        ]

    # later: the deleted row goes too, with its DELETE version
    assert await pruned(face, engine, sync_engine, models.Article, before=5) == 2
    async with session_factory() as session:
        assert [r[:2] for r in await history(session, models)] == [(1, 3), (3, 6)]
        assert await as_of(session, models, 5) == before[5] == [(1, "v3")]
        assert await as_of(session, models, 6) == before[6]
        with pytest.raises(HistoryPrunedError, match=r"changes since transaction 5 "):
            [c async for c in stream_changes(session, after=4)]
        assert [c.transaction_id async for c in stream_changes(session, after=5)] == [6]
        # pruning again at the same point deletes nothing and moves nothing
        assert await pruned(face, engine, sync_engine, models.Article, before=5) == 0
        assert await as_of(session, models, 5) == [(1, "v3")]


async def test_keep_last_keeps_the_newest_versions_of_each_row(
    models: Models,
    face: Face,
    engine: AsyncEngine,
    sync_engine: sa.Engine,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session:
        await write_history(session, models)
    seen: list[tuple[int, str]] = []
    made = await pruned(
        face,
        engine,
        sync_engine,
        models.Article,
        keep_last=1,
        batch_size=1,
        progress=lambda done, table: seen.append((done, table)),
    )
    assert made == 3  # article 1's two oldest, article 2's INSERT
    assert seen == [(2, "article"), (3, "article"), (3, "article")]  # a batch (transaction) per key
    async with session_factory() as session:
        assert await history(session, models) == [
            (1, 3, None, Operation.UPDATE),
            (2, 5, None, Operation.DELETE),
            (3, 6, None, Operation.INSERT),
        ]
        assert await as_of(session, models, 6) == [(1, "v3"), (3, "new")]
        # article 2's INSERT version (in force until 5) is gone: before 5, as-of is incomplete
        with pytest.raises(HistoryPrunedError, match=r"before transaction 5 was pruned"):
            await as_of(session, models, 4)
        assert await as_of(session, models, 5) == [(1, "v3")]
        assert await pruned(face, engine, sync_engine, models.Article, keep_last=1) == 0


async def test_reads_are_unchanged_while_nothing_was_pruned(
    models: Models, session: AsyncSession
) -> None:
    await write_history(session, models)
    assert await as_of(session, models, 1) == [(1, "v1")]
    assert len([c async for c in stream_changes(session)]) == 6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"either before=\.\.\. or keep_last=\.\.\., not both"),
        ({"before": 1, "keep_last": 2}, r"either before=\.\.\. or keep_last"),
        ({"keep_last": 0}, r"prune\(keep_last=\.\.\.\) takes a positive int, got 0"),
        ({"keep_last": True}, r"prune\(keep_last=\.\.\.\) takes a positive int, got True"),
        ({"before": 1, "batch_size": 0}, r"prune\(batch_size=\.\.\.\) takes a positive int"),
        ({"before": "yesterday"}, r"expected a transaction id, a Transaction or an aware"),
    ],
)
def test_bad_options_are_refused(models: Models, options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        prune_sync(sa.create_engine("sqlite://"), models.Article, **options)


async def test_prune_while_the_application_writes(
    models: Models,
    engine: AsyncEngine,
    concurrent_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    A = models.Article
    async with concurrent_session_factory() as session:
        session.add_all([A(id=i, title="start") for i in range(1, 6)])
        await session.commit()

    async def write() -> None:
        async with concurrent_session_factory() as session:
            for step in range(40):
                row = await session.get_one(A, step % 5 + 1)
                row.title = f"step {step}"
                await session.commit()
                await asyncio.sleep(0)

    async def keep_pruning() -> int:
        deleted = 0
        for _ in range(8):
            deleted += await prune(engine, A, keep_last=2, batch_size=1)
            await asyncio.sleep(0)
        return deleted

    _, deleted = await asyncio.gather(write(), keep_pruning())
    assert deleted > 0
    async with concurrent_session_factory() as session:
        assert await check_integrity(session, [A]) == []  # every chain left is consistent
        V = runtime_version_class(A)
        last = await session.scalar(sa.select(sa.func.max(V.transaction_id)))
        assert last is not None
        current = {a.id: a.title for a in await session.scalars(sa.select(A))}
        assert dict(await as_of(session, models, last)) == current
        assert current == {i: f"step {35 + i - 1}" for i in range(1, 6)}
