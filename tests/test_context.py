"""``versioning_context``: values in force per task, and what a transaction row records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from sqlalchemy_history_async import (
    ConfigurationError,
    RequestContext,
    TransactionContext,
    current_context,
    request_context,
    set_actor,
    transaction_class,
    versioning_context,
)

from .conftest import Run
from .models import Models


def snapshot() -> tuple[Any, str | None, dict[str, Any]]:
    ctx = current_context()
    return ctx.user_id, ctx.remote_addr, dict(ctx.meta)


EMPTY: tuple[None, None, dict[str, Any]] = (None, None, {})


# --- pure unit tests --------------------------------------------------------------------------


def test_default_context_is_empty() -> None:
    assert snapshot() == EMPTY


def test_context_sets_and_resets() -> None:
    with versioning_context(user_id=1, remote_addr="10.0.0.1", reason="fix") as ctx:
        assert isinstance(ctx, TransactionContext)
        assert current_context() is ctx
        assert snapshot() == (1, "10.0.0.1", {"reason": "fix"})
    assert snapshot() == EMPTY


def test_meta_is_read_only() -> None:
    with versioning_context(reason="fix") as ctx:
        with pytest.raises(TypeError):
            ctx.meta["reason"] = "changed"  # type: ignore[index]
        assert ctx.meta["reason"] == "fix"


def test_nesting_merges_and_restores() -> None:
    with versioning_context(user_id=1, remote_addr="10.0.0.1", source="api", step=1):
        with versioning_context(user_id=2, step=2, extra="x"):
            assert snapshot() == (2, "10.0.0.1", {"source": "api", "step": 2, "extra": "x"})
            with versioning_context(remote_addr="10.0.0.2"):
                assert snapshot() == (
                    2,
                    "10.0.0.2",
                    {"source": "api", "step": 2, "extra": "x"},
                )
            assert snapshot() == (2, "10.0.0.1", {"source": "api", "step": 2, "extra": "x"})
        assert snapshot() == (1, "10.0.0.1", {"source": "api", "step": 1})
    assert snapshot() == EMPTY


def test_inner_context_does_not_mutate_outer_meta() -> None:
    with versioning_context(source="api") as outer:
        with versioning_context(source="job", other=1):
            pass
        assert dict(outer.meta) == {"source": "api"}


def test_context_resets_when_body_raises() -> None:
    with versioning_context(user_id=1, source="outer"):
        with pytest.raises(RuntimeError, match="boom"), versioning_context(user_id=2, step=2):
            assert snapshot() == (2, None, {"source": "outer", "step": 2})
            raise RuntimeError("boom")
        assert snapshot() == (1, None, {"source": "outer"})
    with pytest.raises(KeyError), versioning_context(user_id=3):
        raise KeyError("x")
    assert snapshot() == EMPTY


async def test_concurrent_tasks_see_their_own_context() -> None:
    seen: dict[str, list[tuple[Any, str | None, dict[str, Any]]]] = {"a": [], "b": []}

    async def task(name: str, user_id: int, addr: str) -> None:
        seen[name].append(snapshot())  # inherited from the parent at task creation
        with versioning_context(user_id=user_id, remote_addr=addr, task=name):
            for _ in range(3):
                await asyncio.sleep(0)
                seen[name].append(snapshot())
            with versioning_context(step="inner"):
                await asyncio.sleep(0)
                seen[name].append(snapshot())
            await asyncio.sleep(0)
            seen[name].append(snapshot())
        seen[name].append(snapshot())

    with versioning_context(user_id=0, request="parent"):
        await asyncio.gather(task("a", 1, "10.0.0.1"), task("b", 2, "10.0.0.2"))
        assert snapshot() == (0, None, {"request": "parent"})

    parent = (0, None, {"request": "parent"})
    for name, user_id, addr in (("a", 1, "10.0.0.1"), ("b", 2, "10.0.0.2")):
        own = (user_id, addr, {"request": "parent", "task": name})
        inner = (user_id, addr, {"request": "parent", "task": name, "step": "inner"})
        assert seen[name] == [parent, own, own, own, inner, own, parent]


# --- what transaction rows record -------------------------------------------------------------


async def add_users(session: AsyncSession, models: Models, *ids: int) -> None:
    session.add_all([models.User(id=i, name=f"user{i}") for i in ids])
    await session.commit()


async def transactions(session: AsyncSession, models: Models) -> list[Any]:
    Tx = transaction_class(models.Article)
    return list((await session.scalars(sa.select(Tx).order_by(Tx.id))).all())


def stamp(tx: Any) -> tuple[Any, str | None, dict[str, Any] | None]:
    return tx.user_id, tx.remote_addr, tx.meta


async def test_context_recorded_on_transaction(models: Models, session: AsyncSession) -> None:
    await add_users(session, models, 7)
    session.add(models.Article(title="a"))
    with versioning_context(user_id=7, remote_addr="192.0.2.1", reason="import", batch=3):
        await session.commit()

    [tx] = await transactions(session, models)
    assert stamp(tx) == (7, "192.0.2.1", {"reason": "import", "batch": 3})


async def test_no_context_records_nulls(models: Models, session: AsyncSession) -> None:
    session.add(models.Article(title="a"))
    await session.commit()
    [tx] = await transactions(session, models)
    assert stamp(tx) == (None, None, None)


async def test_nested_context_recorded_merged(models: Models, session: AsyncSession) -> None:
    await add_users(session, models, 1, 2)
    with versioning_context(user_id=1, remote_addr="10.0.0.1", source="api", step=1):
        with versioning_context(user_id=2, step=2):
            session.add(models.Article(title="inner"))
            await session.commit()
        session.add(models.Article(title="outer"))
        await session.commit()

    inner, outer = await transactions(session, models)
    assert stamp(inner) == (2, "10.0.0.1", {"source": "api", "step": 2})
    assert stamp(outer) == (1, "10.0.0.1", {"source": "api", "step": 1})


async def test_context_captured_at_flush_not_at_add(models: Models, session: AsyncSession) -> None:
    await add_users(session, models, 1)
    with versioning_context(user_id=1, reason="add"):
        session.add(models.Article(title="added inside, committed outside"))
    await session.commit()

    [tx] = await transactions(session, models)
    assert stamp(tx) == (None, None, None)


async def test_first_history_writing_flush_stamps_transaction(
    models: Models, session: AsyncSession
) -> None:
    await add_users(session, models, 1, 2, 3)
    article = models.Article(title="first")
    session.add(article)
    with versioning_context(user_id=1, step="first"):
        await session.flush()
    article.title = "second"
    session.add(models.Comment(article=article, text="c"))
    with versioning_context(user_id=2, step="second"):
        await session.flush()
    with versioning_context(user_id=3, step="commit"):
        await session.commit()

    [tx] = await transactions(session, models)
    assert stamp(tx) == (1, None, {"step": "first"})


async def test_flush_without_history_does_not_stamp(models: Models, session: AsyncSession) -> None:
    """Only a flush that writes history creates (and stamps) the transaction row."""
    await add_users(session, models, 1, 2)
    session.add(models.Plain(value="unversioned"))
    with versioning_context(user_id=1, step="plain"):
        await session.flush()
    session.add(models.Article(title="versioned"))
    with versioning_context(user_id=2, step="article"):
        await session.commit()

    [tx] = await transactions(session, models)
    assert stamp(tx) == (2, None, {"step": "article"})


async def test_stamp_from_rolled_back_savepoint_is_discarded(
    models: Models, session: AsyncSession
) -> None:
    """The row stamped inside a rolled-back savepoint is gone; the next history flush stamps."""
    await add_users(session, models, 1, 2)
    async with session.begin_nested() as savepoint:
        session.add(models.Article(title="undone"))
        with versioning_context(user_id=1, step="savepoint"):
            await session.flush()
        await savepoint.rollback()
    session.add(models.Article(title="kept"))
    with versioning_context(user_id=2, step="after"):
        await session.commit()

    [tx] = await transactions(session, models)
    assert stamp(tx) == (2, None, {"step": "after"})


async def test_new_transaction_gets_new_context(models: Models, session: AsyncSession) -> None:
    await add_users(session, models, 1, 2)
    article = models.Article(title="one")
    session.add(article)
    with versioning_context(user_id=1):
        await session.commit()
    article.title = "two"
    with versioning_context(user_id=2):
        await session.commit()

    assert [tx.user_id for tx in await transactions(session, models)] == [1, 2]


async def test_concurrent_sessions_record_their_own_context(
    models: Models, concurrent_session_factory: async_sessionmaker[AsyncSession]
) -> None:
    async with concurrent_session_factory() as s:
        await add_users(s, models, 1, 2)

    async def work(user_id: int) -> None:
        with versioning_context(user_id=user_id, remote_addr=f"10.0.0.{user_id}", worker=user_id):
            async with concurrent_session_factory() as s:
                for i in range(3):
                    s.add(models.Article(title=f"{user_id}-{i}"))
                    await asyncio.sleep(0)
                    await s.flush()
                    await asyncio.sleep(0)
                await s.commit()

    await asyncio.gather(work(1), work(2))

    async with concurrent_session_factory() as s:
        by_user = {tx.user_id: stamp(tx) for tx in await transactions(s, models)}
    assert by_user == {
        1: (1, "10.0.0.1", {"worker": 1}),
        2: (2, "10.0.0.2", {"worker": 2}),
    }


# --- request_context() and set_actor() ---------------------------------------------------------


def test_actor_set_inside_a_request_context_stays_until_it_ends() -> None:
    with request_context(remote_addr="10.0.0.9", source="api") as request:
        assert isinstance(request, RequestContext)
        assert snapshot() == (None, "10.0.0.9", {"source": "api"})
        with versioning_context(reason="inner"):
            set_actor(user_id=5)  # set inside a scope that ends right after...
        assert snapshot() == (5, "10.0.0.9", {"source": "api"})  # ...and still in force
        with versioning_context(user_id=6, reason="override"):
            assert snapshot() == (6, "10.0.0.9", {"source": "api", "reason": "override"})
        set_actor(remote_addr="10.0.0.10", step=2)
        assert snapshot() == (5, "10.0.0.10", {"source": "api", "step": 2})
    assert snapshot() == EMPTY


def test_set_actor_outside_a_request_context_fails_loudly() -> None:
    with pytest.raises(ConfigurationError, match=r"outside a request_context\(\)"):
        set_actor(user_id=1)
    with pytest.raises(TypeError, match="remote_addr"), request_context(remote_addr=5):  # type: ignore[arg-type]
        pass
    with request_context(), pytest.raises(TypeError, match="stored as JSON"):
        set_actor(when=object())


async def test_request_contexts_of_concurrent_tasks_stay_apart() -> None:
    async def request(user: int) -> tuple[Any, ...]:
        with request_context(remote_addr=f"10.0.0.{user}"):
            await asyncio.sleep(0)
            set_actor(user_id=user)
            await asyncio.sleep(0.01)
            return snapshot()

    results = await asyncio.gather(*(request(i) for i in range(1, 6)))
    assert results == [(i, f"10.0.0.{i}", {}) for i in range(1, 6)]


async def test_actor_set_by_a_finished_step_is_recorded_at_commit(models: Models, run: Run) -> None:
    """The web framework pattern: a dependency sets the actor and is done before the session's
    dependency commits; the actor is recorded."""

    def behaviour(session: Session) -> None:
        session.add(models.User(id=3, name="three"))
        session.commit()
        with request_context(remote_addr="192.0.2.9", source="api"):
            with versioning_context():
                set_actor(user_id=3)  # the actor dependency, over before the commit below
            session.add(models.Article(title="a"))
            session.commit()
        Tx = transaction_class(models.Article)
        [tx] = session.scalars(sa.select(Tx)).all()
        assert stamp(tx) == (3, "192.0.2.9", {"source": "api"})

    await run(behaviour)
