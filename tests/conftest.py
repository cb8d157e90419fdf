"""Fixtures: every behavioural test runs on SQLite (aiosqlite) and PostgreSQL (asyncpg).

``HISTORY_TEST_DATABASES`` selects databases (default ``sqlite,postgresql``); PostgreSQL is a
throwaway server started for the run (``tests/pgserver.py``), or ``HISTORY_TEST_PG_URL`` when
set. If PostgreSQL is selected and cannot be started, the run fails: it never skips silently.
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
    for d in os.environ.get("HISTORY_TEST_DATABASES", "sqlite,postgresql").split(",")
    if d.strip()
]
_KNOWN = {"sqlite", "postgresql"}
if not DATABASES or set(DATABASES) - _KNOWN:
    raise pytest.UsageError(
        f"HISTORY_TEST_DATABASES={os.environ.get('HISTORY_TEST_DATABASES')!r}: "
        f"use a comma-separated subset of {sorted(_KNOWN)}"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"sqlalchemy {sa.__version__}; databases: {', '.join(DATABASES)}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """Async URL of the PostgreSQL server for this run."""
    url = os.environ.get("HISTORY_TEST_PG_URL")
    if url:
        yield url
        return
    from .pgserver import start_postgres

    server = start_postgres()
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
    """The database under test: ``sqlite`` or ``postgresql``."""
    name: str = request.param
    return name


@pytest.fixture
def async_url(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if db == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def reset_schema(engine: AsyncEngine, metadata: sa.MetaData) -> None:
    """Give the test an empty schema holding exactly ``metadata``'s tables."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
        await conn.run_sync(metadata.create_all)


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
async def session(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


@pytest.fixture
def sync_engine(engine: AsyncEngine, async_url: str) -> Iterator[sa.Engine]:
    """A sync engine (sqlite3 / psycopg) on the same, already created, schema."""
    url = sa.make_url(async_url)
    url = url.set(
        drivername="sqlite" if url.get_backend_name() == "sqlite" else "postgresql+psycopg"
    )
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
