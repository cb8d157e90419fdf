"""Fixtures: every behavioural test runs on SQLite (aiosqlite), PostgreSQL (asyncpg) and
MariaDB (asyncmy).

``HISTORY_TEST_DATABASES`` selects databases (default ``sqlite,postgresql,mariadb``).
PostgreSQL and MariaDB are throwaway servers started for the run (``devservers/`` at the
repository root), or ``HISTORY_TEST_PG_URL`` / ``HISTORY_TEST_MARIADB_URL`` when set. If a
selected server cannot be started, the run fails: it never skips silently.
Sync-``Session`` tests use sqlite3, psycopg and PyMySQL on the same databases.

Models: each test module gets its own manager and classes from one factory,
``models = versioned_models(define)`` (the shared ``tests/models.py`` set by default); tests that
install managers themselves use the ``bases`` fixture. Faces: a test that takes ``run`` is
written once, as a function of a sync ``Session``, and runs through ``AsyncSession`` and through
``Session`` (ids ``[sqlite-async]``, ``[sqlite-sync]``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from sqlalchemy_history_async import VersioningManager, make_versioned, remove_versioning

from .models import define_models

if TYPE_CHECKING:
    from typing_extensions import Unpack

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


# --- models -------------------------------------------------------------------------------------


class ModelSet(Protocol):
    """What a model-defining function returns: its classes, and the fresh base they share."""

    @property
    def Base(self) -> type[DeclarativeBase]: ...


ModelsT = TypeVar("ModelsT", bound=ModelSet)


class ManagerKeywords(TypedDict, total=False):
    """Keyword arguments of :func:`make_versioned`."""

    user_cls: type[Any] | str | None
    user_id_type: sa.types.TypeEngine[Any] | None
    transaction_table: str
    transaction_schema: str | None
    strict: bool


@contextmanager
def versioned(
    define: Callable[[], ModelsT], **options: Unpack[ManagerKeywords]
) -> Iterator[ModelsT]:
    """``make_versioned(**options)``, then ``define()`` the models and configure the mappers.

    On exit, versioning is removed and the models' registry disposed, so the next models start
    from a clean slate. ``define`` makes a fresh declarative base for its models.
    """
    make_versioned(**options)
    try:
        models = define()
    except BaseException:
        remove_versioning()
        raise
    try:
        sa.orm.configure_mappers()
        yield models
    finally:
        remove_versioning()
        models.Base.registry.dispose()


def versioned_models(
    define: Callable[[], ModelsT],
    *,
    scope: Literal["module", "class"] = "module",
    **options: Unpack[ManagerKeywords],
) -> object:
    """The ``models`` fixture of a test module: ``define()``'s models, versioned with ``options``.

    Assign it to ``models`` at module level; every module (or class, with ``scope="class"``) gets
    its own manager and classes::

        models = versioned_models(define_zoo)
    """

    @pytest.fixture(scope=scope, name="models")
    def fixture() -> Iterator[ModelsT]:
        with versioned(define, **options) as models:
            yield models

    return fixture


#: The shared models of ``tests/models.py``, for every module that does not define its own.
models = versioned_models(define_models, user_cls="User")


BaseT = TypeVar("BaseT", bound=type[DeclarativeBase])


class Bases:
    """Declarative bases and scoped managers made by one test; all undone after the test.

    ``bases()`` makes a fresh base to build models on with ``type()``; a base declared in the test
    itself (so that class statements can subclass it) is handed over with the ``@bases.track``
    decorator.
    """

    def __init__(self) -> None:
        self._bases: list[type[DeclarativeBase]] = []
        self._managers: list[VersioningManager] = []

    def __call__(self) -> type[DeclarativeBase]:
        class Base(DeclarativeBase):
            pass

        return self.track(Base)

    def track(self, base: BaseT) -> BaseT:
        self._bases.append(base)
        return base

    def manager(
        self, scope: object = None, **options: Unpack[ManagerKeywords]
    ) -> VersioningManager:
        """A :class:`VersioningManager` with ``options``, installed on ``scope``."""
        manager = VersioningManager(**options)
        self._managers.append(manager)
        return manager.install(scope)

    def close(self) -> None:
        for manager in self._managers:
            manager.remove()
        remove_versioning()
        for base in self._bases:
            base.registry.dispose()


@pytest.fixture
def bases() -> Iterator[Bases]:
    made = Bases()
    try:
        yield made
    finally:
        made.close()


# --- databases -----------------------------------------------------------------------------------


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


def dialect_named(name: str) -> sa.Dialect:
    """The default dialect of backend ``name`` (``"postgresql"``, ...), to compile without a server.

    Made from a URL because SQLAlchemy's dialect classes have unannotated constructors.
    """
    return sa.make_url(f"{name}://").get_dialect()()


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
async def engine(async_url: str, models: ModelSet) -> AsyncIterator[AsyncEngine]:
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


# --- one behaviour, both faces -------------------------------------------------------------------

Face = Literal["async", "sync"]
T = TypeVar("T")


class Run:
    """Runs a behaviour written once, as a function of a sync ``Session``, on one face::

        async def test_rollback_records_nothing(models: Models, run: Run) -> None:
            def behaviour(session: Session) -> None:
                ...

            await run(behaviour)

    ``async``: ``await async_session.run_sync(behaviour)``, so the behaviour runs on the session
    an ``AsyncSession`` wraps, over the async driver (aiosqlite, asyncpg, asyncmy), the way every
    ``await async_session.commit()`` runs. ``sync``: ``behaviour(session)`` on a plain ``Session``
    over the sync driver (sqlite3, psycopg, PyMySQL), on the same database. Each call opens a
    session of its own and closes it afterwards.
    """

    def __init__(
        self,
        face: Face,
        async_sessions: async_sessionmaker[AsyncSession],
        sync_sessions: sessionmaker[Session],
    ) -> None:
        self.face = face
        self._async_sessions = async_sessions
        self._sync_sessions = sync_sessions

    async def __call__(
        self, behaviour: Callable[[Session], T], *, expire_on_commit: bool = False
    ) -> T:
        if self.face == "async":
            async with self._async_sessions(expire_on_commit=expire_on_commit) as session:
                return await session.run_sync(behaviour)
        with self._sync_sessions(expire_on_commit=expire_on_commit) as sync_session:
            return behaviour(sync_session)


@pytest.fixture(params=["async", "sync"])
def face(request: pytest.FixtureRequest) -> Face:
    """The face a behaviour runs on: ``AsyncSession`` or ``Session``."""
    name: Face = request.param
    return name


@pytest.fixture
def run(db: str, face: Face, engine: AsyncEngine, sync_engine: sa.Engine) -> Run:
    """:class:`Run` on ``face``. Requests ``db`` first, so ids read ``[sqlite-async]``."""
    return Run(
        face,
        async_sessionmaker(engine, expire_on_commit=False),
        sessionmaker(sync_engine, expire_on_commit=False),
    )


class StatementLog:
    """Statements sent on an engine, one entry per cursor execute (executemany counts once)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(
        self,
        conn: sa.Connection,
        cursor: object,
        statement: str,
        parameters: object,
        context: object,
        executemany: bool,
    ) -> None:
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
