"""History in commit order under concurrency, and an exactly-once change feed.

Twelve ``AsyncSession`` workers update, delete and re-insert overlapping rows (with deliberate
rollbacks and pauses that keep transactions open across other commits) while a feed consumer
resumes ``stream_changes(after=<last transaction it processed>)`` over and over. Afterwards:

- **commit order:** a transaction whose commit returned before another's began has the smaller
  id (no inversions), every row's versions form an unbroken chain by ``transaction_id``, and
  ``select_as_of(Item, t)`` for every committed ``t`` equals the state obtained by replaying
  the committed transactions in id order — whose end state is what the table holds;
- **exactly once:** the consumer received every committed transaction, none twice, each whole;
- **no new failures:** no statement of the library failed; the application's own conflicts
  (a lost race to insert a key, a row deleted under an update, serialization failures on its
  rows) are counted and retried by nobody, as an application would see them.

Run on PostgreSQL at READ COMMITTED, REPEATABLE READ and SERIALIZABLE, on MariaDB at its
default REPEATABLE READ and at READ COMMITTED, and on SQLite. Each run is bounded (a number of
transactions per worker and a deadline) and seeded; ``HISTORY_CONCURRENCY_SECONDS`` lengthens
it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from sqlalchemy_history_async import (
    Operation,
    flush_history,
    flush_history_sync,
    select_as_of,
    stream_changes,
    transaction_class,
    versioning_context,
    versioning_disabled,
)

from .conftest import DATABASES, Run, StatementLog, reset_schema, versioned_models
from .models import runtime_version_class

WORKERS = 12
KEYS = 10
TRANSACTIONS_PER_WORKER = 40
SECONDS = float(os.environ.get("HISTORY_CONCURRENCY_SECONDS", "6"))
ISOLATION_LEVELS = {
    "sqlite": ["SERIALIZABLE"],
    "postgresql": ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"],
    "mariadb": ["REPEATABLE READ", "READ COMMITTED"],
}


@dataclass
class Orders:
    Base: type[DeclarativeBase]
    Item: type[Any]


def define_orders() -> Orders:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "item"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        value: Mapped[str] = mapped_column(sa.String(40))

    return Orders(Base, Item)


models = versioned_models(define_orders)


@pytest.fixture
async def isolated_engine(
    db: str, async_url: str, models: Orders, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    isolation: str = request.node.callspec.params["isolation"]
    kwargs: dict[str, Any] = {"isolation_level": isolation}
    if db == "sqlite":
        # A short busy timeout: two SQLite transactions that each wait for the other (a
        # reader upgrading to a writer while another commits) give up quickly, as an
        # application conflict, instead of stalling the run.
        kwargs = {"connect_args": {"timeout": 2}}
    else:
        kwargs.update(pool_size=WORKERS + 4, max_overflow=4)
    engine = create_engine(async_url, **kwargs)
    await reset_schema(engine, models.Base.metadata)
    try:
        yield engine
    finally:
        await engine.dispose()


@dataclass
class Committed:
    """A transaction a worker committed: what it wrote (``None``: deleted) and when."""

    tag: str
    writes: dict[int, str | None]
    started: float  # when its commit began
    ended: float  # when its commit returned


@dataclass
class Outcome:
    committed: list[Committed] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)  # on purpose
    app_errors: Counter[str] = field(default_factory=Counter)  # the application's own conflicts
    history_errors: list[str] = field(default_factory=list)  # a library statement failed
    deliveries: Counter[int] = field(default_factory=Counter)  # feed: times each id arrived
    delivered: dict[int, set[tuple[Any, ...]]] = field(default_factory=dict)


#: Fragments that mark a statement as one of the library's (history tables, lock, transaction).
HISTORY_FRAGMENTS = ("item_version", "transaction", "pg_advisory")


def is_history_statement(statement: str | None) -> bool:
    text = (statement or "").lower()
    return any(f in text for f in HISTORY_FRAGMENTS)


async def worker(
    number: int,
    factory: async_sessionmaker[AsyncSession],
    Item: type[Any],
    outcome: Outcome,
    deadline: float,
    record: bool = True,
) -> None:
    rnd = random.Random(1000 + number)
    for n in range(TRANSACTIONS_PER_WORKER):
        if time.monotonic() > deadline:
            return
        tag = f"w{number}.{n}"
        # Sorted keys: the workers take their row locks in one order (InnoDB's gap locks can
        # still make their inserts deadlock, as the run without history shows).
        keys = sorted(rnd.sample(range(1, KEYS + 1), rnd.choice([1, 1, 2])))
        async with factory() as session:
            writes: dict[int, str | None] = {}
            try:
                with versioning_context(tag=tag), _recording(record):
                    for key in keys:
                        item = await session.get(Item, key)
                        if item is None:
                            session.add(Item(id=key, value=tag))
                            writes[key] = tag
                        elif rnd.random() < 0.3:
                            await session.delete(item)
                            writes[key] = None
                        else:
                            item.value = tag
                            writes[key] = tag
                        await session.flush()
                        # Hold the row locks while others commit: transactions overlap.
                        await asyncio.sleep(rnd.random() * 0.01)
                    if rnd.random() < 0.1:
                        await session.rollback()
                        outcome.rolled_back.append(tag)
                        continue
                    started = time.monotonic()
                    await session.commit()
                    outcome.committed.append(Committed(tag, writes, started, time.monotonic()))
            except sa.exc.DBAPIError as error:
                await session.rollback()
                if is_history_statement(error.statement):
                    if "could not serialize access" in str(error):
                        outcome.app_errors["serialization failure on a history statement"] += 1
                    elif "ix_item_version_current" in str(error):
                        outcome.app_errors["current-version index conflict"] += 1
                    outcome.history_errors.append(f"{tag}: {error}")
                else:
                    outcome.app_errors[_kind(error)] += 1
            except StaleDataError:
                await session.rollback()
                outcome.app_errors["row changed or deleted under an update"] += 1
            except sa.exc.SAWarning:  # the suite makes SAWarnings errors
                # "DELETE statement on table 'item' expected to delete 1 row(s); 0 were
                # matched": another transaction deleted the row first
                await session.rollback()
                outcome.app_errors["row deleted by another transaction first"] += 1


def _recording(record: bool) -> AbstractContextManager[None]:
    return nullcontext() if record else versioning_disabled()


def _kind(error: sa.exc.DBAPIError) -> str:
    statement = (error.statement or "").split(" ")[0] or "COMMIT"
    return f"{type(error).__name__} on {statement}"


async def consume(
    factory: async_sessionmaker[AsyncSession], outcome: Outcome, done: asyncio.Event
) -> None:
    """Resume the feed from the last transaction processed, until the workers are done."""
    last: int | None = None
    while True:
        finished = done.is_set()
        async with factory() as session:
            seen: set[int] = set()
            async for change in stream_changes(session, after=last, batch_size=7):
                changes = outcome.delivered.setdefault(change.transaction_id, set())
                changes.add((change.key_text, change.operation))
                seen.add(change.transaction_id)
            await session.rollback()
        for tx in seen:
            outcome.deliveries[tx] += 1
        if seen:
            last = max(seen)
        if finished:
            return
        await asyncio.sleep(0.005)


def _replay(committed: list[tuple[int, Committed]]) -> list[tuple[int, dict[int, str]]]:
    """The table's state after each transaction, replaying them in id order."""
    state: dict[int, str] = {}
    out = []
    for tx, c in committed:
        for key, value in c.writes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        out.append((tx, dict(state)))
    return out


@pytest.mark.parametrize(
    ("db", "isolation"),
    [(db, level) for db in DATABASES for level in ISOLATION_LEVELS[db]],
)
async def test_history_and_feed_follow_commit_order_under_concurrency(
    models: Orders, isolated_engine: AsyncEngine, db: str, isolation: str
) -> None:
    Item = models.Item
    factory = async_sessionmaker(isolated_engine, expire_on_commit=False)
    # The same workload without history first: the application's own conflict rate.
    baseline = Outcome()
    deadline = time.monotonic() + SECONDS
    await asyncio.gather(
        *[worker(w, factory, Item, baseline, deadline, record=False) for w in range(WORKERS)]
    )
    async with isolated_engine.begin() as connection:
        await connection.execute(sa.delete(Item.__table__))

    outcome = Outcome()
    done = asyncio.Event()
    deadline = time.monotonic() + SECONDS
    consumer = asyncio.create_task(consume(factory, outcome, done))
    await asyncio.gather(*[worker(w, factory, Item, outcome, deadline) for w in range(WORKERS)])
    done.set()
    await consumer

    V = runtime_version_class(Item)
    Tx = transaction_class(Item)
    async with factory() as session:
        txs = (await session.scalars(sa.select(Tx))).all()
        ids = {(t.meta or {})["tag"]: t.id for t in txs}
        versions = (await session.scalars(sa.select(V).order_by(V.id, V.transaction_id))).all()
        final = {i.id: i.value for i in await session.scalars(sa.select(Item))}

        # Every committed transaction has its transaction row, nothing else has one.
        assert set(ids) == {c.tag for c in outcome.committed}
        assert len(outcome.committed) >= WORKERS  # the run did real work

        # No inversions: a commit that returned before another began has the smaller id.
        by_end = sorted(outcome.committed, key=lambda c: c.ended)
        inversions = sum(
            1 for a in by_end for b in by_end if a.ended < b.started and ids[a.tag] > ids[b.tag]
        )
        assert inversions == 0

        # Every row's versions form an unbroken chain in id order.
        chains: dict[int, list[Any]] = {}
        for v in versions:
            chains.setdefault(v.id, []).append(v)
        for key, chain in chains.items():
            for older, newer in itertools.pairwise(chain):
                assert older.end_transaction_id == newer.transaction_id, (key, older, newer)
                assert older.transaction_id < older.end_transaction_id
            assert chain[-1].end_transaction_id is None, key
            assert (chain[-1].operation_type is Operation.DELETE) == (key not in final)

        # as-of every committed transaction equals the replay in id order; the replay ends
        # where the table is.
        in_order = sorted(((ids[c.tag], c) for c in outcome.committed), key=lambda p: p[0])
        replayed = _replay(in_order)
        assert replayed[-1][1] == final
        for tx, expected in replayed:
            rows = (await session.scalars(select_as_of(Item, tx))).all()
            assert {r.id: r.value for r in rows} == expected, tx

    # Exactly once, each transaction whole.
    assert set(outcome.deliveries) == set(ids.values()), "missed or unknown transactions"
    duplicates = [tx for tx, times in outcome.deliveries.items() if times != 1]
    assert duplicates == []
    per_tx: dict[int, set[tuple[Any, ...]]] = {}
    for v in versions:
        per_tx.setdefault(v.transaction_id, set()).add((f'{{"id": {v.id}}}', v.operation_type))
    assert {tx: len(c) for tx, c in outcome.delivered.items()} == {
        tx: len(c) for tx, c in per_tx.items()
    }

    print(
        f"\n{db} {isolation}: {len(outcome.committed)} committed, "
        f"{len(outcome.rolled_back)} rolled back on purpose, {len(versions)} versions, "
        f"app conflicts {dict(outcome.app_errors)} "
        f"(without history: {len(baseline.committed)} committed, {dict(baseline.app_errors)}), "
        f"feed misses 0, duplicates 0, inversions 0, history errors {len(outcome.history_errors)}"
    )
    # No failure of the library's own statements, except two documented limits of
    # PostgreSQL's snapshot isolation (docs/usage.md, "Known limitations"), never a deadlock
    # or wrong history: under SERIALIZABLE, the history statements' reads take part in the
    # serialization checks like any read (SQLSTATE 40001); under REPEATABLE READ, a
    # transaction that inserts a row whose history changed after its snapshot was taken
    # cannot close a version it cannot see (40001, or a duplicate key on the version table's
    # current-version index when that version was added after the snapshot).
    if db == "postgresql" and isolation in ("SERIALIZABLE", "REPEATABLE READ"):
        for error in outcome.history_errors:
            assert "could not serialize access" in error or (
                isolation == "REPEATABLE READ" and "ix_item_version_current" in error
            ), error
    else:
        assert outcome.history_errors == []


async def _two_items(engine: AsyncEngine, Item: type[Any]) -> async_sessionmaker[AsyncSession]:
    """Rows 1 and 2, committed; the session factory of the test."""
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as setup:
        setup.add_all([Item(id=1, value="one"), Item(id=2, value="two")])
        await setup.commit()
    return factory


@pytest.mark.parametrize("db", [d for d in DATABASES if d != "sqlite"])
async def test_a_late_committer_gets_the_larger_id_and_reaches_the_feed(
    models: Orders, engine: AsyncEngine, db: str
) -> None:
    """A transaction that writes first and commits last comes after the one it overtook."""
    Item = models.Item
    factory = await _two_items(engine, Item)
    async with factory() as reader:
        last = max([c.transaction_id async for c in stream_changes(reader)])

    async with factory() as late, factory() as early:
        (await late.get(Item, 1)).value = "late"  # type: ignore[union-attr]
        await late.flush()  # its first history-relevant flush comes first
        (await early.get(Item, 2)).value = "early"  # type: ignore[union-attr]
        await early.commit()
        async with factory() as reader:
            seen = [c async for c in stream_changes(reader, after=last)]
        assert [(c.primary_key, c.operation) for c in seen] == [({"id": 2}, Operation.UPDATE)]
        last = seen[-1].transaction_id
        await late.commit()

    async with factory() as reader:
        seen = [c async for c in stream_changes(reader, after=last)]
        assert [(c.primary_key, c.operation) for c in seen] == [({"id": 1}, Operation.UPDATE)]
        assert seen[0].transaction_id > last
        V = runtime_version_class(Item)
        rows = (await reader.scalars(select_as_of(Item, last))).all()
        assert {r.id: r.value for r in rows} == {1: "one", 2: "early"}
        assert (await reader.scalar(sa.select(sa.func.count()).select_from(V))) == 4


@pytest.mark.parametrize("db", [d for d in DATABASES if d == "sqlite"])
async def test_sqlite_writers_commit_in_the_order_they_write(
    models: Orders, engine: AsyncEngine, db: str
) -> None:
    """On SQLite the database lock makes a second writer wait for the first one's commit."""
    Item = models.Item
    factory = await _two_items(engine, Item)
    order: list[str] = []

    async def second() -> None:
        async with factory() as s:
            (await s.get(Item, 2)).value = "second"  # type: ignore[union-attr]
            await s.commit()  # waits for the first writer's commit
            order.append("second")

    async with factory() as first:
        (await first.get(Item, 1)).value = "first"  # type: ignore[union-attr]
        await first.flush()
        task = asyncio.create_task(second())
        await asyncio.sleep(0.2)
        assert order == []
        await first.commit()
        order.append("first")
    await task
    async with factory() as reader:
        changes = [c async for c in stream_changes(reader)]
    tx_of = {c.primary_key["id"]: c.transaction_id for c in changes[2:]}
    assert order == ["first", "second"] and tx_of[1] < tx_of[2]


async def test_flush_history_makes_the_transaction_see_its_own_history(
    models: Orders, session: AsyncSession
) -> None:
    Item = models.Item
    V = runtime_version_class(Item)
    session.add(Item(id=1, value="a"))
    await session.flush()
    assert (await session.scalars(sa.select(V))).all() == []  # written at commit
    await flush_history(session)
    assert [(v.id, v.value) for v in await session.scalars(sa.select(V))] == [(1, "a")]
    item = await session.get(Item, 1)
    assert item is not None
    item.value = "b"
    await session.flush()  # the transaction holds the lock now: written at once
    rows = (await session.scalars(sa.select(V).execution_options(populate_existing=True))).all()
    assert [(v.value, v.operation_type) for v in rows] == [("b", Operation.INSERT)]
    await session.commit()
    rows = (await session.scalars(sa.select(V))).all()
    assert [(v.value, v.operation_type) for v in rows] == [("b", Operation.INSERT)]
    assert len((await session.scalars(sa.select(transaction_class(Item)))).all()) == 1


def _history(session: Session, Item: type[Any]) -> list[tuple[Any, ...]]:
    V = runtime_version_class(Item)
    Tx = transaction_class(Item)
    rows = session.execute(
        sa.select(V.id, V.value, V.operation_type, Tx.user_id, Tx.meta)
        .join(Tx, Tx.id == V.transaction_id)
        .order_by(V.transaction_id, V.id)
        .execution_options(populate_existing=True)
    )
    return [tuple(r) for r in rows]


async def test_flush_history_sync_then_later_flushes_and_a_rolled_back_savepoint(
    models: Orders, run: Run
) -> None:
    Item = models.Item

    def behaviour(session: Session) -> None:
        session.add_all([Item(id=1, value="a"), Item(id=2, value="b")])
        session.flush()
        assert _history(session, Item) == []
        flush_history_sync(session)
        assert [r[:3] for r in _history(session, Item)] == [
            (1, "a", Operation.INSERT),
            (2, "b", Operation.INSERT),
        ]
        with session.begin_nested() as savepoint:
            session.get_one(Item, 2).value = "lost"
            session.flush()  # written at once: the transaction holds the lock
            assert (2, "lost", Operation.INSERT) in [r[:3] for r in _history(session, Item)]
            savepoint.rollback()
        session.get_one(Item, 1).value = "a2"
        session.commit()
        assert [r[:3] for r in _history(session, Item)] == [
            (1, "a2", Operation.INSERT),
            (2, "b", Operation.INSERT),
        ]

    await run(behaviour)


async def test_the_context_of_the_first_flush_is_recorded_when_the_commit_runs_outside_it(
    models: Orders, run: Run
) -> None:
    Item = models.Item

    def behaviour(session: Session) -> None:
        with versioning_context(user_id="alice", request="r1"):
            session.add(Item(id=1, value="a"))
            session.flush()
        with versioning_context(user_id="bob"):
            session.add(Item(id=2, value="b"))
            session.flush()
        session.commit()  # outside every context
        assert _history(session, Item) == [
            (1, "a", Operation.INSERT, "alice", {"request": "r1"}),
            (2, "b", Operation.INSERT, "alice", {"request": "r1"}),
        ]

    await run(behaviour)


async def test_changes_made_by_a_later_before_commit_listener_are_recorded(
    models: Orders, run: Run
) -> None:
    Item = models.Item

    def stamp(session: Session) -> None:
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Item) and not obj.value.endswith("!"):
                obj.value += "!"

    def behaviour(session: Session) -> None:
        item = Item(id=1, value="a")  # referenced: the identity map holds objects weakly
        session.add(item)
        session.commit()
        assert item.value == "a!"
        assert [r[:3] for r in _history(session, Item)] == [(1, "a!", Operation.INSERT)]

    # Registered after the library's listener, so it runs after it: it sees the object only
    # because the library flushed the session, and its change is flushed after the history
    # was written.
    sa.event.listen(Session, "before_commit", stamp)
    try:
        await run(behaviour)
    finally:
        sa.event.remove(Session, "before_commit", stamp)


async def test_commit_with_a_savepoint_still_open_records_its_changes(
    models: Orders, run: Run
) -> None:
    Item = models.Item

    def behaviour(session: Session) -> None:
        session.add(Item(id=1, value="a"))
        session.flush()
        session.begin_nested()
        session.add(Item(id=2, value="b"))
        session.commit()  # releases the savepoint and commits
        assert [r[:3] for r in _history(session, Item)] == [
            (1, "a", Operation.INSERT),
            (2, "b", Operation.INSERT),
        ]

    await run(behaviour)


async def test_a_transaction_that_writes_no_history_takes_no_lock(
    models: Orders, session: AsyncSession, statements: StatementLog
) -> None:
    session.add(models.Item(id=1, value="a"))
    await session.commit()
    statements.clear()
    with versioning_disabled():
        (await session.get_one(models.Item, 1)).value = "b"
        await session.commit()
    assert [s for s in statements.statements if "lock" in s.lower()] == []


@pytest.mark.parametrize("db", [d for d in DATABASES if d == "postgresql"])
async def test_repeatable_read_blind_reinsert_of_a_row_deleted_after_its_snapshot(
    models: Orders, engine: AsyncEngine, db: str
) -> None:
    """The documented limit of REPEATABLE READ on PostgreSQL: a transaction whose snapshot
    predates another's committed delete of a row, and that inserts that row again without
    reading it, cannot close the version it cannot see. It fails with a serialization failure
    (SQLSTATE 40001) at commit, nothing is recorded wrongly, and a retry succeeds."""
    Item = models.Item
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as setup:
        setup.add(Item(id=1, value="one"))
        await setup.commit()
    rr = async_sessionmaker(
        engine.execution_options(isolation_level="REPEATABLE READ"), expire_on_commit=False
    )
    async with rr() as late:
        await late.execute(sa.select(sa.literal(1)))  # takes the snapshot
        async with factory() as deleter:
            await deleter.delete(await deleter.get_one(Item, 1))
            await deleter.commit()
        late.add(Item(id=1, value="again"))
        with pytest.raises(sa.exc.DBAPIError, match="could not serialize access"):
            await late.commit()
        await late.rollback()
    async with rr() as retry:
        retry.add(Item(id=1, value="again"))
        await retry.commit()
    async with factory() as reader:
        V = runtime_version_class(Item)
        rows = (
            await reader.execute(sa.select(V.value, V.operation_type).order_by(V.transaction_id))
        ).all()
        assert [tuple(r) for r in rows] == [
            ("one", Operation.INSERT),
            ("one", Operation.DELETE),
            ("again", Operation.INSERT),
        ]
