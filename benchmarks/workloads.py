"""The workloads: each builds its own data, measures one part, and checks its own results.

Every workload goes through ``AsyncSession`` (aiosqlite / asyncpg) with
``expire_on_commit=False``, and ends by checking what the database holds: row counts, and for
versioned modes the number of versions and transactions, that each row's newest version equals
the row, and (validity strategy) exactly one open version per row with an unbroken
``end_transaction_id`` chain. A mode that is fast but records the wrong history fails.

A workload returns a flat dict of numbers. ``seconds`` (the measured part's wall time) and
``statements`` (SQL statements sent during it: one per cursor execute, so an executemany
counts once; BEGIN/COMMIT are not statements here) are the headline figures; the rest are
workload-specific.

Like :mod:`modes`, this runs under every mode's interpreter: standard library and SQLAlchemy
only.
"""

from __future__ import annotations

import asyncio
import cProfile
import random
import resource
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from modes import Mode
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

#: Sizes of the full run and of the ``--quick`` smoke run (about 10-20x smaller).
SCALES: dict[str, dict[str, int]] = {
    "full": {
        "w1_rows": 2000,
        "w1_batch": 100,
        "w2_inserts": 500,
        "w2_updates": 500,
        "w2c_tasks": 8,
        "w3_versions": 1000,
        "w3_rows": 10_000,
        "w3_per_row": 10,
        "w3_lookups": 1000,
        "w4_loaded": 20_000,
        "w4_commits": 50,
        "w5_commits": 10_000,
        "w5_window": 50,
        "w5_mid": 5000,
        "w6_rows": 10_000,
    },
    "quick": {
        "w1_rows": 200,
        "w1_batch": 20,
        "w2_inserts": 50,
        "w2_updates": 50,
        "w2c_tasks": 8,
        "w3_versions": 100,
        "w3_rows": 1000,
        "w3_per_row": 10,
        "w3_lookups": 100,
        "w4_loaded": 2000,
        "w4_commits": 50,
        "w5_commits": 1000,
        "w5_window": 50,
        "w5_mid": 500,
        "w6_rows": 1000,
    },
}

BODY = (
    "History is recorded in the same database transaction as the change itself, so an audit "
    "trail never disagrees with the data it describes. This paragraph only gives the body "
    "column a realistic size for an article of a few sentences."
)
SEED = 20240601
WARMUP_COMMITS = 10
#: keys per query of SQLAlchemy's selectinload
SELECTIN_BATCH = 500
#: primary keys of the lookup table's rows: clear of the rows the ORM created before
LOOKUP_FIRST_ID = 10_000_000


class WorkloadFailed(AssertionError):
    """A workload's results are wrong: the mode recorded the wrong rows or history."""


def expect(ok: bool, message: str) -> None:
    if not ok:
        raise WorkloadFailed(message)


class StatementCounter:
    """``before_cursor_execute`` listener: one per statement sent (an executemany counts once)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *args: Any) -> None:
        self.count += 1


@dataclass
class Span:
    seconds: float = 0.0
    statements: int = 0


@dataclass
class Ctx:
    mode: Mode
    db: str
    engine: AsyncEngine
    Session: async_sessionmaker[AsyncSession]
    stmts: StatementCounter
    scale: dict[str, int]
    profiler: cProfile.Profile | None = None
    notes: list[str] = field(default_factory=list)

    def article(self, i: int) -> Any:
        return self.mode.Article(title=f"article {i}", body=BODY, counter=0)


@contextmanager
def measured(ctx: Ctx) -> Iterator[Span]:
    """Time a part and count its statements (and profile it when asked to)."""
    span = Span()
    start_count = ctx.stmts.count
    if ctx.profiler is not None:
        ctx.profiler.enable()
    start = time.perf_counter()
    try:
        yield span
    finally:
        span.seconds = time.perf_counter() - start
        if ctx.profiler is not None:
            ctx.profiler.disable()
        span.statements = ctx.stmts.count - start_count


def current_rss_mb() -> float:
    """Resident set size now (not the peak), from /proc; the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- checking ---------------------------------------------------------------------------------


async def verify(
    ctx: Ctx,
    *,
    rows: int,
    versions: int | None,
    transactions: int | None,
    counters: dict[int, int] | None = None,
) -> None:
    """Check the rows and, for versioned modes, the history the mode recorded."""
    articles = ctx.mode.Article.__table__
    count = sa.func.count()
    async with ctx.engine.connect() as conn:
        got = await conn.scalar(sa.select(count).select_from(articles))
        expect(got == rows, f"article has {got} rows, expected {rows}")
        if counters is not None:
            actual = dict((await conn.execute(sa.select(articles.c.id, articles.c.counter))).all())
            wrong = [k for k, v in counters.items() if actual.get(k) != v]
            expect(not wrong, f"{len(wrong)} rows have the wrong counter, e.g. id {wrong[:3]}")
        if not ctx.mode.versioned:
            return
        vt = ctx.mode.version_table
        n_versions = await conn.scalar(sa.select(count).select_from(vt))
        expect(n_versions == versions, f"{n_versions} versions, expected {versions}")
        n_keys = await conn.scalar(sa.select(sa.func.count(sa.distinct(vt.c.id))))
        newest = (
            sa.select(vt.c.id, sa.func.max(vt.c.transaction_id).label("tx"))
            .group_by(vt.c.id)
            .subquery()
        )
        matching = await conn.scalar(
            sa.select(count)
            .select_from(vt)
            .join(newest, sa.and_(vt.c.id == newest.c.id, vt.c.transaction_id == newest.c.tx))
            .join(articles, articles.c.id == vt.c.id)
            .where(
                vt.c.title == articles.c.title,
                vt.c.counter == articles.c.counter,
                vt.c.body == articles.c.body,
            )
        )
        expect(
            matching == n_keys,
            f"the newest version differs from the row for {(n_keys or 0) - (matching or 0)} rows",
        )
        if "end_transaction_id" in vt.c:
            is_open = vt.c.end_transaction_id.is_(None)
            n_open = await conn.scalar(sa.select(count).select_from(vt).where(is_open))
            open_keys = await conn.scalar(
                sa.select(sa.func.count(sa.distinct(vt.c.id))).where(is_open)
            )
            expect(
                n_open == open_keys == n_keys,
                f"{n_open} open versions over {open_keys} rows; expected one for each of "
                f"{n_keys} rows",
            )
            older = vt.alias("older_version")
            chained = await conn.scalar(
                sa.select(count)
                .select_from(older)
                .join(
                    vt,
                    sa.and_(
                        vt.c.id == older.c.id, vt.c.transaction_id == older.c.end_transaction_id
                    ),
                )
            )
            expect(
                chained == (n_versions or 0) - (n_keys or 0),
                f"{chained} closed versions point at the next one; expected "
                f"{(n_versions or 0) - (n_keys or 0)}",
            )
        if transactions is not None:
            table = ctx.mode.transaction_table
            assert table is not None
            n_tx = await conn.scalar(sa.select(count).select_from(table))
            expect(n_tx == transactions, f"{n_tx} transactions, expected {transactions}")


def history_count(ctx: Ctx, n: int) -> int | None:
    return n if ctx.mode.versioned else None


def _inserts_then_updates(
    total: Span, inserts: Span, updates: Span, commits: int
) -> dict[str, Any]:
    """The figures of a workload that inserts rows, then updates them."""
    return {
        "seconds": total.seconds,
        "statements": total.statements,
        "insert_seconds": inserts.seconds,
        "update_seconds": updates.seconds,
        "insert_statements": inserts.statements,
        "update_statements": updates.statements,
        "commits": commits,
    }


# --- W1: batch ----------------------------------------------------------------------------


async def w1(ctx: Ctx) -> dict[str, Any]:
    """Inserts in commits of ``batch``, then a one-column update of every row, same batches."""
    n, batch = ctx.scale["w1_rows"], ctx.scale["w1_batch"]
    async with ctx.Session() as session:
        objs: list[Any] = []
        with measured(ctx) as total:
            with measured(ctx) as inserts:
                for start in range(0, n, batch):
                    chunk = [ctx.article(i) for i in range(start, start + batch)]
                    session.add_all(chunk)
                    await session.commit()
                    objs.extend(chunk)
            with measured(ctx) as updates:
                for start in range(0, n, batch):
                    for obj in objs[start : start + batch]:
                        obj.counter = 1
                    await session.commit()
        counters = {obj.id: 1 for obj in objs}
    commits = 2 * n // batch
    await verify(
        ctx,
        rows=n,
        versions=history_count(ctx, 2 * n),
        transactions=history_count(ctx, commits),
        counters=counters,
    )
    return _inserts_then_updates(total, inserts, updates, commits)


# --- W2: web ------------------------------------------------------------------------------


async def _single_row_commits(
    ctx: Ctx, session: AsyncSession, inserts: int, updates: int, rng: random.Random, first: int
) -> dict[int, int]:
    """``inserts`` one-row insert commits, then ``updates`` commits each bumping a random row."""
    objs = []
    for i in range(inserts):
        obj = ctx.article(first + i)
        session.add(obj)
        await session.commit()
        objs.append(obj)
    for _ in range(updates):
        obj = rng.choice(objs)
        obj.counter += 1
        await session.commit()
    return {obj.id: obj.counter for obj in objs}


async def w2(ctx: Ctx) -> dict[str, Any]:
    """One row per commit: inserts, then updates of random existing rows (fixed seed)."""
    inserts, updates = ctx.scale["w2_inserts"], ctx.scale["w2_updates"]
    rng = random.Random(SEED)
    async with ctx.Session() as session:
        with measured(ctx) as span:
            counters = await _single_row_commits(ctx, session, inserts, updates, rng, 0)
    commits = inserts + updates
    await verify(
        ctx,
        rows=inserts,
        versions=history_count(ctx, commits),
        transactions=history_count(ctx, commits),
        counters=counters,
    )
    return {
        "seconds": span.seconds,
        "statements": span.statements,
        "commits": commits,
        "per_commit_ms": span.seconds / commits * 1000,
    }


async def w2c(ctx: Ctx) -> dict[str, Any]:
    """W2 split over concurrent tasks, each with its own AsyncSession (PostgreSQL only)."""
    inserts, updates = ctx.scale["w2_inserts"], ctx.scale["w2_updates"]
    tasks = ctx.scale["w2c_tasks"]

    def share(total: int, k: int) -> int:
        return total // tasks + (1 if k < total % tasks else 0)

    async def client(k: int) -> dict[int, int]:
        rng = random.Random(SEED + k)
        async with ctx.Session() as session:
            return await _single_row_commits(
                ctx, session, share(inserts, k), share(updates, k), rng, 100_000 * k
            )

    with measured(ctx) as span:
        results = await asyncio.gather(*(client(k) for k in range(tasks)))
    counters: dict[int, int] = {}
    for part in results:
        counters.update(part)
    commits = inserts + updates
    await verify(
        ctx,
        rows=inserts,
        versions=history_count(ctx, commits),
        transactions=history_count(ctx, commits),
        counters=counters,
    )
    return {
        "seconds": span.seconds,
        "statements": span.statements,
        "commits": commits,
        "tasks": tasks,
        "per_commit_ms": span.seconds / commits * 1000,
    }


# --- W3: reads ----------------------------------------------------------------------------


async def _read_history(ctx: Ctx, pk: int) -> tuple[Span, list[dict[str, Any]], list[int]]:
    """All versions of row ``pk`` with their changesets, the way each library documents it.

    The row itself is loaded first (not measured): a history page starts from the row.
    """
    mode = ctx.mode
    async with ctx.Session() as session:
        obj = await session.get(mode.Article, pk)
        if mode.library == "sqlalchemy-history-async":
            V = mode.Version
            assert V is not None
            with measured(ctx) as span:
                versions = (
                    await session.scalars(
                        sa.select(V)
                        .where(V.id == pk)
                        .order_by(V.transaction_id)
                        .options(selectinload(V.previous))
                    )
                ).all()
                changesets = [v.changeset for v in versions]
            if len(versions) > SELECTIN_BATCH:
                ctx.notes.append(
                    f"W3: selectinload fetches `previous` in batches of {SELECTIN_BATCH} keys, so "
                    f"{len(versions):,} versions take 1 + {-(-len(versions) // SELECTIN_BATCH)} "
                    "queries; see the joinedload columns for `.options(joinedload(V.previous))`"
                )
            return span, changesets, [v.transaction_id for v in versions]
        step = "versions"
        try:
            with measured(ctx) as span:
                if mode.library == "sqlalchemy-history":
                    # support_async=True makes `versions` write-only: the documented async read.
                    versions = (await session.scalars(obj.versions.select())).all()
                else:
                    versions = list(obj.versions)
                step = "changeset"
                changesets = [v.changeset for v in versions]
            return span, changesets, [v.transaction_id for v in versions]
        except Exception as exc:
            if not _is_missing_greenlet(exc):
                raise
            ctx.notes.append(
                f"W3: `{'obj.versions' if step == 'versions' else 'version.changeset'}` raised "
                "MissingGreenlet under AsyncSession; the history read is measured through "
                "`await session.run_sync(...)` instead"
            )

    def read_sync(sync_session: Any, obj: Any) -> tuple[list[dict[str, Any]], list[int]]:
        if mode.library == "sqlalchemy-history":
            versions = sync_session.scalars(obj.versions.select()).all()
        else:
            versions = list(obj.versions)
        return [v.changeset for v in versions], [v.transaction_id for v in versions]

    async with ctx.Session() as session:
        obj = await session.get(mode.Article, pk)
        with measured(ctx) as span:
            changesets, txs = await session.run_sync(read_sync, obj)
    return span, changesets, txs


async def _read_history_joined(ctx: Ctx, pk: int) -> tuple[Span, list[dict[str, Any]]]:
    """Ours only: the same read with ``joinedload(V.previous)`` (one query, a self-join)."""
    V = ctx.mode.Version
    assert V is not None
    async with ctx.Session() as session:
        await session.get(ctx.mode.Article, pk)
        with measured(ctx) as span:
            versions = (
                await session.scalars(
                    sa.select(V)
                    .where(V.id == pk)
                    .order_by(V.transaction_id)
                    .options(joinedload(V.previous))
                )
            ).all()
            changesets = [v.changeset for v in versions]
    return span, changesets


def _is_missing_greenlet(exc: BaseException) -> bool:
    return isinstance(exc, MissingGreenlet) or isinstance(
        getattr(exc, "orig", None), MissingGreenlet
    )


async def _build_lookup_table(ctx: Ctx) -> tuple[Callable[[int, int], int], int, int]:
    """Fill the version table directly (Core executemany): ``rows`` rows x ``per_row`` versions.

    Versions are written in rounds: round ``k`` holds version ``k`` of every row, 100 rows per
    transaction. Returns ``tx(k, r)``, the first and the last transaction id.
    """
    mode = ctx.mode
    rows, per_row = ctx.scale["w3_rows"], ctx.scale["w3_per_row"]
    rows_per_tx = 100
    tx_per_round = rows // rows_per_tx
    vt = mode.version_table if mode.versioned else mode.HandRolled.__table__  # type: ignore[union-attr]
    tt = mode.transaction_table
    first_id = LOOKUP_FIRST_ID
    async with ctx.engine.begin() as conn:
        if tt is not None:
            max_tx = await conn.scalar(sa.select(sa.func.max(tt.c.id)))
        else:
            max_tx = await conn.scalar(sa.select(sa.func.max(vt.c.transaction_id)))
        base = (max_tx or 0) + 1

        def tx(k: int, r: int) -> int:
            return base + k * tx_per_round + r // rows_per_tx

        last_tx = tx(per_row - 1, rows - 1)
        if tt is not None:
            stamp = mode.timestamp()
            await conn.execute(
                sa.insert(tt), [{"id": t, "issued_at": stamp} for t in range(base, last_tx + 1)]
            )
        has_end = "end_transaction_id" in vt.c
        chunk: list[dict[str, Any]] = []
        for r in range(rows):
            for k in range(per_row):
                row = {
                    "id": first_id + r,
                    "title": f"row {r} v{k}",
                    "body": f"v{k}",
                    "counter": k,
                    "transaction_id": tx(k, r),
                    "operation_type": 0 if k == 0 else 1,
                }
                if has_end:
                    row["end_transaction_id"] = tx(k + 1, r) if k + 1 < per_row else None
                chunk.append(row)
            if len(chunk) >= 10_000:
                await conn.execute(sa.insert(vt), chunk)
                chunk = []
        if chunk:
            await conn.execute(sa.insert(vt), chunk)
    return tx, base, last_tx


async def w3(ctx: Ctx) -> dict[str, Any]:
    """Reads: a row's whole history with changesets; current and as-of lookups in a big table."""
    mode = ctx.mode
    n_versions = ctx.scale["w3_versions"]
    out: dict[str, Any] = {}

    # Part A: one row with n_versions versions, built through the ORM (not measured).
    if mode.versioned:
        async with ctx.Session() as session:
            obj = ctx.article(0)
            session.add(obj)
            await session.commit()
            for i in range(1, n_versions):
                obj.counter = i
                await session.commit()
            pk = obj.id
        await verify(ctx, rows=1, versions=n_versions, transactions=n_versions)
        span, changesets, txs = await _read_history(ctx, pk)
        expect(len(changesets) == n_versions, f"read {len(changesets)} versions of {n_versions}")
        expect(txs == sorted(txs), "versions are not in transaction order")
        expect(
            changesets[0].get("counter") == [None, 0]
            and changesets[0].get("title") == [None, "article 0"],
            f"first changeset is {changesets[0]!r}",
        )
        wrong = [i for i in range(1, n_versions) if changesets[i] != {"counter": [i - 1, i]}]
        expect(not wrong, f"{len(wrong)} wrong changesets, e.g. {wrong[:3]}")
        out.update(
            history_read_seconds=span.seconds,
            history_read_queries=span.statements,
            versions_read=len(changesets),
        )
        if mode.library == "sqlalchemy-history-async":
            joined, joined_changesets = await _read_history_joined(ctx, pk)
            expect(joined_changesets == changesets, "joinedload read differs from selectinload")
            out.update(
                history_read_joined_seconds=joined.seconds,
                history_read_joined_queries=joined.statements,
            )

    # Part B: current and as-of lookups of single rows in a large version table.
    build_start = time.perf_counter()
    tx, _, last_tx = await _build_lookup_table(ctx)
    out["lookup_table_build_seconds"] = time.perf_counter() - build_start
    rows, per_row, lookups = ctx.scale["w3_rows"], ctx.scale["w3_per_row"], ctx.scale["w3_lookups"]
    out["lookup_table_versions"] = rows * per_row
    first_id = LOOKUP_FIRST_ID
    rng = random.Random(SEED)
    current_keys = [rng.randrange(rows) for _ in range(lookups)]
    asof_keys = []
    for _ in range(lookups):
        r = rng.randrange(rows)
        asof_keys.append((r, rng.randrange(tx(0, r), last_tx + 1)))

    async with ctx.Session() as session:
        with measured(ctx) as current:
            found = []
            for r in current_keys:
                found.append(
                    (await session.scalars(mode.current_version_select(first_id + r))).all()
                )
        for r, got in zip(current_keys, found, strict=True):
            expect(
                len(got) == 1 and got[0].transaction_id == tx(per_row - 1, r),
                f"current version of row {r}: {got!r}",
            )
        session.expunge_all()
        with measured(ctx) as asof:
            found = []
            for r, t in asof_keys:
                found.append(
                    (await session.scalars(mode.version_as_of_select(first_id + r, t))).all()
                )
        for (r, t), got in zip(asof_keys, found, strict=True):
            k = max(k for k in range(per_row) if tx(k, r) <= t)
            expect(
                len(got) == 1 and got[0].transaction_id == tx(k, r) and got[0].counter == k,
                f"version of row {r} as of {t}: {got!r}",
            )
    out.update(
        seconds=current.seconds + asof.seconds,
        statements=current.statements + asof.statements,
        current_seconds=current.seconds,
        asof_seconds=asof.seconds,
        lookups=lookups,
    )
    return out


# --- W4: big identity map -----------------------------------------------------------------


async def _warm_up(ctx: Ctx, first: int) -> int:
    """A few single-row commits so statement compilation is not measured; returns versions."""
    async with ctx.Session() as session:
        objs = [ctx.article(first + i) for i in range(WARMUP_COMMITS // 2)]
        for obj in objs:
            session.add(obj)
            await session.commit()
        for obj in objs:
            obj.counter += 1
            await session.commit()
    return WARMUP_COMMITS


async def w4(ctx: Ctx) -> dict[str, Any]:
    """Many objects loaded in the session, then single-row commits: cost per commit."""
    loaded, commits = ctx.scale["w4_loaded"], ctx.scale["w4_commits"]
    warm = await _warm_up(ctx, 0)
    async with ctx.engine.begin() as conn:
        await conn.execute(
            sa.insert(ctx.mode.Article.__table__),
            [{"title": f"bulk {i}", "body": BODY, "counter": 0} for i in range(loaded)],
        )
    rng = random.Random(SEED)
    async with ctx.Session() as session:
        objs = (await session.scalars(sa.select(ctx.mode.Article))).all()
        expect(len(objs) == loaded + WARMUP_COMMITS // 2, f"loaded {len(objs)} objects")
        identity_map = len(session.identity_map)
        inserts = commits // 2
        with measured(ctx) as span:
            for i in range(inserts):
                session.add(ctx.article(1_000_000 + i))
                await session.commit()
            for _ in range(commits - inserts):
                obj = rng.choice(objs)
                obj.counter += 1
                await session.commit()
        counters = {obj.id: obj.counter for obj in objs}
    await verify(
        ctx,
        rows=loaded + WARMUP_COMMITS // 2 + inserts,
        versions=history_count(ctx, warm + commits),
        transactions=history_count(ctx, warm + commits),
        counters=counters,
    )
    return {
        "seconds": span.seconds,
        "statements": span.statements,
        "commits": commits,
        "identity_map": identity_map,
        "per_commit_ms": span.seconds / commits * 1000,
    }


# --- W5: growth ---------------------------------------------------------------------------


async def w5(ctx: Ctx) -> dict[str, Any]:
    """One row per commit, a session per commit (as a web request), alternating insert and
    update of a random row: does the cost of a commit grow with the history behind it?"""
    total, window, mid = ctx.scale["w5_commits"], ctx.scale["w5_window"], ctx.scale["w5_mid"]
    warm = await _warm_up(ctx, 0)
    rng = random.Random(SEED)
    Article = ctx.mode.Article
    ids: list[int] = []
    counters: dict[int, int] = {}
    times: list[float] = []
    stmts: list[int] = []
    rss: dict[int, float] = {}

    async def one_commit(i: int) -> None:
        async with ctx.Session() as session:
            if i % 2 == 1:  # odd commits insert, even ones update: 25/25 in every window
                obj = ctx.article(i)
                session.add(obj)
                await session.commit()
                ids.append(obj.id)
                counters[obj.id] = 0
            else:
                pk = rng.choice(ids)
                obj = await session.get(Article, pk)
                obj.counter += 1
                await session.commit()
                counters[pk] = obj.counter

    with measured(ctx) as span:
        for i in range(1, total + 1):
            start_count = ctx.stmts.count
            start = time.perf_counter()
            await one_commit(i)
            times.append(time.perf_counter() - start)
            stmts.append(ctx.stmts.count - start_count)
            if i in (mid, total):
                rss[i] = current_rss_mb()
    first = slice(0, window)
    later = slice(mid - window, mid)
    await verify(
        ctx,
        rows=len(ids) + WARMUP_COMMITS // 2,
        versions=history_count(ctx, warm + total),
        transactions=history_count(ctx, warm + total),
        counters=counters,
    )

    def ms(values: list[float]) -> float:
        return sum(values) / len(values) * 1000

    return {
        "seconds": span.seconds,
        "statements": span.statements,
        "commits": total,
        "ms_per_commit_first": ms(times[first]),
        "ms_per_commit_mid": ms(times[later]),
        "ms_per_commit_median_first": sorted(times[first])[window // 2] * 1000,
        "ms_per_commit_median_mid": sorted(times[later])[window // 2] * 1000,
        "statements_per_commit_first": sum(stmts[first]) / window,
        "statements_per_commit_mid": sum(stmts[later]) / window,
        "rss_mid_mb": rss[mid],
        "rss_end_mb": rss[total],
        "window": window,
        "mid": mid,
    }


# --- W6: bulk statements ------------------------------------------------------------------


async def w6(ctx: Ctx) -> dict[str, Any]:
    """One ORM bulk INSERT of ``w6_rows`` rows, then one ``update().values()`` of all of them.

    A mode that records nothing for these statements fails (its history would be silently
    missing): the result says so instead of reporting a time.
    """
    n = ctx.scale["w6_rows"]
    Article = ctx.mode.Article
    rows = [{"title": f"article {i}", "body": BODY, "counter": 0} for i in range(n)]
    async with ctx.Session() as session:
        with measured(ctx) as total:
            with measured(ctx) as inserts:
                await session.execute(sa.insert(Article), rows)
                await session.commit()
            with measured(ctx) as updates:
                await session.execute(sa.update(Article).values(counter=Article.counter + 1))
                await session.commit()
        ids = (await session.scalars(sa.select(Article.id))).all()
    await verify(
        ctx,
        rows=n,
        versions=history_count(ctx, 2 * n),
        transactions=history_count(ctx, 2),
        counters=dict.fromkeys(ids, 1),
    )
    return _inserts_then_updates(total, inserts, updates, 2)


WORKLOADS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "W1": w1,
    "W2": w2,
    "W2c": w2c,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
}
#: workloads that only make sense on some databases
ONLY_ON: dict[str, set[str]] = {"W2c": {"postgresql"}}
