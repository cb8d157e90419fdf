"""Fixtures: every behavioural test runs on SQLite (aiosqlite), PostgreSQL (asyncpg) and
MariaDB (asyncmy).

``HISTORY_TEST_DATABASES`` selects databases (default ``sqlite,postgresql,mariadb``).
PostgreSQL and MariaDB are throwaway servers started for the run (``devservers/`` at the
repository root), or ``HISTORY_TEST_PG_URL`` / ``HISTORY_TEST_MARIADB_URL`` when set. If a
selected server cannot be started, the run fails: it never skips silently.
Sync-``Session`` tests use sqlite3, psycopg and PyMySQL on the same databases.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_history_async import make_versioned, remove_versioning

from .models import Models, define_models

DATABASES = [
    d.strip()
    for d in os.environ.get("HISTORY_TEST_DATABASES", "sqlite,postgresql,mariadb").split(",")
    if d.strip()
]
_KNOWN = {"sqlite", "postgresql", "mariadb"}
if not DATABASES or set(DATABASES) - _KNOWN:
    raise pytest.UsageError(
        f"HISTORY_TEST_DATABASES={os.environ.get('HISTORY_TEST_DATABASES')!r}: "
        f"use a comma-separated subset of {sorted(_KNOWN)}"
    )


def pytest_report_header(config: pytest.Config) -> str:
    drivers = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mariadb": "asyncmy"}
    for db, var in (("postgresql", "HISTORY_TEST_PG_URL"), ("mariadb", "HISTORY_TEST_MARIADB_URL")):
        if os.environ.get(var):
            drivers[db] = f"{sa.make_url(os.environ[var]).get_driver_name()} via {var}"
    return f"sqlalchemy {sa.__version__}; databases: " + ", ".join(
        f"{db} ({drivers[db]})" for db in DATABASES
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """Async URL of the PostgreSQL server for this run."""
    url = os.environ.get("HISTORY_TEST_PG_URL")
    if url:
        yield url
        return
    from devservers import start_postgres

    server = start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """Async URL of the MariaDB database for this run."""
    url = os.environ.get("HISTORY_TEST_MARIADB_URL")
    if url:
        yield url
        return
    from devservers import start_mariadb

    server = start_mariadb()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def models() -> Iterator[Models]:
    """A fresh versioning manager and model set for each test module."""
    make_versioned(user_cls="User")
    ns = define_models()
    try:
        sa.orm.configure_mappers()
        yield ns
    finally:
        remove_versioning()
        ns.Base.registry.dispose()


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest) -> str:
    """The database under test: ``sqlite``, ``postgresql`` or ``mariadb``."""
    name: str = request.param
    return name


@pytest.fixture
def async_url(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if db == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("mariadb_url" if db == "mariadb" else "pg_url")
    return url


async def reset_schema(engine: AsyncEngine, metadata: sa.MetaData) -> None:
    """Give the test an empty schema holding exactly ``metadata``'s tables."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
        elif engine.dialect.name in ("mysql", "mariadb"):
            await conn.run_sync(_drop_mysql_tables)
        await conn.run_sync(metadata.create_all)


def _drop_mysql_tables(conn: sa.Connection) -> None:
    """Drop every table and view of the connection's database, whatever references them."""
    rows = conn.execute(
        sa.text(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = DATABASE()"
        )
    ).all()
    quote = conn.dialect.identifier_preparer.quote
    views = [quote(name) for name, kind in rows if kind == "VIEW"]
    tables = [quote(name) for name, kind in rows if kind != "VIEW"]
    if views:
        conn.execute(sa.text(f"DROP VIEW IF EXISTS {', '.join(views)}"))
    if tables:
        # One statement for all tables; foreign keys between them do not dictate an order.
        conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {', '.join(tables)}"))
        conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 1"))


@pytest.fixture
async def engine(async_url: str, models: Models) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url)
    await reset_schema(engine, models.Base.metadata)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def concurrent_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for tests that write from several transactions at once.

    On MySQL/MariaDB they use READ COMMITTED, as the README recommends: under InnoDB's default
    REPEATABLE READ, the gap locks taken while closing previous versions make concurrent
    transactions that add versions deadlock.
    """
    if engine.dialect.name in ("mysql", "mariadb"):
        engine = engine.execution_options(isolation_level="READ COMMITTED")
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
async def session(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


@pytest.fixture
def sync_engine(engine: AsyncEngine, async_url: str) -> Iterator[sa.Engine]:
    """A sync engine (sqlite3 / psycopg / PyMySQL) on the same, already created, schema."""
    url = sa.make_url(async_url)
    backend = url.get_backend_name()
    drivers = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
    url = url.set(drivername=drivers.get(backend, f"{backend}+pymysql"))
    sync = sa.create_engine(url)
    try:
        yield sync
    finally:
        sync.dispose()


@pytest.fixture
def sync_session(sync_engine: sa.Engine) -> Iterator[Session]:
    with sessionmaker(sync_engine, expire_on_commit=False)() as session:
        yield session


class StatementLog:
    """Statements sent on an engine, one entry per cursor execute (executemany counts once)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def clear(self) -> None:
        self.statements.clear()

    def matching(self, fragment: str) -> list[str]:
        return [s for s in self.statements if fragment in s]


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[StatementLog]:
    log = StatementLog()
    sa.event.listen(engine.sync_engine, "before_cursor_execute", log)
    try:
        yield log
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", log)
