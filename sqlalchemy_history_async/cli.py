"""The ``history`` command: read, check and look after recorded history from a shell.

Installed as a console script by the ``[cli]`` extra (Typer and Rich), which the library
itself never imports. Every command takes the database URL (``--url`` or
``HISTORY_DATABASE_URL``; sync and async drivers alike) and the application's models
(``--models app.models``, importable module paths whose import defines the versioned
models), prints Rich tables on a terminal and stable JSON with ``--json``::

    history log --url sqlite:///app.db --models app.models --limit 10
    history show Article 42 --url ... --models app.models --json
    history check --url postgresql+asyncpg://... --models app.models

Exit codes: 0 success, 1 ``check`` found problems, 2 usage errors (an unknown model, a bad
URL, a key that does not fit the model's primary key, ...), 3 the database failed a
statement (e.g. the history tables do not exist). See docs/cli.md.

Each command is one function over a :class:`Target` (the database and the models it was
pointed at): ``target.run(work)`` runs a sync function of a ``Connection`` in one
transaction, through ``create_async_engine`` and ``run_sync`` for an async driver. A new
command takes the shared ``Url``, ``Models`` and ``Json`` options, calls
``Target.open(url, models)``, ``target.find(name, param)`` for a model argument,
``target.run(work, write=True)`` around the library's sync function, and
``Output(as_json).emit(data, render)``; usage errors go through :func:`fail`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import importlib
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Mapper, Session, selectinload, undefer

from ._baseline import baseline_sync
from ._context import versioning_context
from ._exceptions import VersioningError
from ._info import TableVersioning, VersionInfo, default_catalog
from ._integrity import IntegrityProblem, check_integrity_sync, checked_tables
from ._manager import VersioningManager
from ._models import Version
from ._queries import PointInHistory, as_transaction_id, diff, pk_values, version_at_sync
from ._retention import prune, prune_sync
from ._schema import INFO_KEY

try:
    import typer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table
    from rich.text import Text
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the history command needs the [cli] extra: pip install 'sqlalchemy-history-async[cli]'"
    ) from error

__all__ = ["EXIT_DATABASE", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "Target", "app", "main"]

EXIT_OK = 0
#: ``check`` found problems
EXIT_PROBLEMS = 1
#: a usage error: bad option values, an unknown model, a bad URL or key
EXIT_USAGE = 2
#: the database failed a statement
EXIT_DATABASE = 3

T = TypeVar("T")

app = typer.Typer(
    name="history",
    help="Read, check and look after the history recorded by sqlalchemy-history-async.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --- options shared by every command ---------------------------------------------------------

Url = Annotated[
    str,
    typer.Option(
        "--url",
        metavar="URL",
        envvar="HISTORY_DATABASE_URL",
        show_envvar=True,
        help="Database URL, e.g. sqlite:///app.db or postgresql+asyncpg://user@host/db.",
    ),
]
Models = Annotated[
    list[str],
    typer.Option(
        "--models",
        metavar="MODULE",
        envvar="HISTORY_MODELS",
        show_envvar=True,
        help="Module defining the versioned models (importable path, e.g. app.models); "
        "repeat for several.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


# --- errors -----------------------------------------------------------------------------------


def fail(message: str, param: str) -> NoReturn:
    """A usage error naming the option or argument at fault (exit code 2)."""
    raise typer.BadParameter(message, param_hint=f"'{param}'")


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, markup=False, emoji=False)


def _database_failure(error: sa.exc.SQLAlchemyError) -> NoReturn:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    _stderr().print(Text("Error: the database failed a statement: ", style="bold red") + first)
    raise typer.Exit(EXIT_DATABASE)


# --- the database and the models --------------------------------------------------------------


@dataclass
class Target:
    """What a command works on: a database URL and the versioned models of ``--models``."""

    url: sa.URL
    infos: list[VersionInfo]

    @classmethod
    def open(cls, url: str, modules: Sequence[str]) -> Target:
        """Check the URL, import the model modules and find their versioned models."""
        return cls(_parse_url(url), _load_models(modules))

    @property
    def is_async(self) -> bool:
        """Whether the URL names an asyncio driver (run through ``create_async_engine``)."""
        return bool(self.url.get_dialect().is_async)

    def run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """``work(connection)`` in one transaction: committed with ``write``, else rolled back.

        With an async driver, ``work`` runs through ``AsyncConnection.run_sync``. A failed
        connection is a usage error naming ``--url``; a failed statement exits with code 3; a
        question the library refuses (a ``VersioningError``) exits with code 2.
        """
        with self._failures():
            if self.is_async:
                return asyncio.run(self._run_async(work, write))
            return self._run_sync(work, write)

    def run_engine(
        self, work: Callable[[sa.Engine], T], async_work: Callable[[AsyncEngine], Awaitable[T]]
    ) -> T:
        """``work(engine)``, or ``await async_work(engine)`` with an async driver, for work
        that commits transactions of its own (such as ``prune``); errors as for :meth:`run`."""

        async def run_async() -> T:
            with self._creating():
                async_engine = create_async_engine(self.url)
            try:
                return await async_work(async_engine)
            finally:
                await async_engine.dispose()

        with self._failures():
            if self.is_async:
                return asyncio.run(run_async())
            with self._creating():
                engine = sa.create_engine(self.url)
            try:
                return work(engine)
            finally:
                engine.dispose()

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """A failed statement exits with code 3; a question the library refuses (a
        ``VersioningError``) with code 2."""
        try:
            yield
        except sa.exc.SQLAlchemyError as error:
            _database_failure(error)
        except VersioningError as error:
            _stderr().print(Text("Error: ", style="bold red") + str(error))
            raise typer.Exit(EXIT_USAGE) from error

    def _run_sync(self, work: Callable[[Connection], T], write: bool) -> T:
        with self._creating():
            engine = sa.create_engine(self.url)
        try:
            try:
                connection = engine.connect()
            except Exception as error:
                self._cannot_connect(error)
            with connection:
                result = work(connection)
                if write:
                    connection.commit()
                return result
        finally:
            engine.dispose()

    async def _run_async(self, work: Callable[[Connection], T], write: bool) -> T:
        with self._creating():
            async_engine = create_async_engine(self.url)
        try:
            async_connection = async_engine.connect()
            try:
                await async_connection.start()
            except Exception as error:
                self._cannot_connect(error)
            try:
                result = await async_connection.run_sync(work)
                if write:
                    await async_connection.commit()
                return result
            finally:
                await async_connection.close()  # rolls back what was not committed
        finally:
            await async_engine.dispose()

    @contextlib.contextmanager
    def _creating(self) -> Iterator[None]:
        """Creating the engine: a missing driver or a bad URL argument is a usage error."""
        try:
            yield
        except (ImportError, sa.exc.ArgumentError) as error:
            fail(f"cannot use {self._shown()}: {error}", "--url")

    def _cannot_connect(self, error: Exception) -> NoReturn:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        fail(f"cannot connect to {self._shown()}: {first}", "--url")

    def _shown(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def find(self, name: str, param: str) -> VersionInfo:
        """The versioned model named ``name``: a class name, ``module.Class`` or table name."""
        candidates = (
            [i for i in self.infos if i.parent.__name__ == name],
            [i for i in self.infos if f"{i.parent.__module__}.{i.parent.__qualname__}" == name],
            [
                i
                for i in self.infos
                if name in (i.tables[-1].parent_table.name, i.tables[-1].parent_table.fullname)
                and (i.base is None or i.base.tables[-1] is not i.tables[-1])
            ],
        )
        for found in candidates:
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                names = ", ".join(
                    sorted(f"{i.parent.__module__}.{i.parent.__name__}" for i in found)
                )
                fail(f"{name!r} names several versioned models: {names}", param)
        known = ", ".join(sorted(i.parent.__name__ for i in self.infos))
        fail(f"unknown model {name!r}; the versioned models are: {known}", param)

    def group(self, infos: Sequence[VersionInfo], param: str) -> list[VersionInfo]:
        """``infos`` (default: all), checked to share one transaction table."""
        chosen = list(infos) or self.infos
        tables = dict.fromkeys(i.tables[0].transaction_table.fullname for i in chosen)
        if len(tables) > 1:
            fail(
                f"the models are versioned by several managers (transaction tables "
                f"{', '.join(tables)}): choose the models of one with {param}",
                param,
            )
        return chosen


def _parse_url(text: str) -> sa.URL:
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        fail(f"{text!r} is not a database URL (e.g. sqlite:///app.db)", "--url")
    try:
        url.get_dialect()
    except sa.exc.NoSuchModuleError:
        fail(f"unknown database or driver {url.drivername!r} in {text!r}", "--url")
    database = url.database
    if (
        url.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not Path(database).exists()
    ):
        fail(f"no SQLite database file at {database!r}", "--url")
    return url


def _load_models(modules: Sequence[str]) -> list[VersionInfo]:
    """Import ``modules`` and return the versioned models they define, by table name.

    Models of ``make_versioned()`` are found through its catalog; models of scoped managers
    through the managers, declarative bases, registries and mapped classes the modules hold.
    """
    if not modules:
        fail(
            "give the module that defines the versioned models, e.g. --models app.models",
            "--models",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: app.models from here
    registries: dict[sa.orm.registry, None] = {}
    infos: dict[VersionInfo, None] = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            fail(f"cannot import {name!r}: {error}", "--models")
        for value in list(vars(module).values()):
            if isinstance(value, VersioningManager):
                infos.update(dict.fromkeys(i for i in value.catalog.infos if i.live))
            elif isinstance(value, sa.orm.registry):
                registries[value] = None
            elif isinstance(value, type):
                mapper: Any = sa.inspect(value, raiseerr=False)
                if isinstance(mapper, Mapper):
                    registries[mapper.registry] = None
    try:
        sa.orm.configure_mappers()
    except (VersioningError, sa.exc.SQLAlchemyError) as error:
        fail(f"the models of {', '.join(modules)} do not configure: {error}", "--models")
    with contextlib.suppress(VersioningError):  # without make_versioned(): scoped managers
        infos.update(dict.fromkeys(i for i in default_catalog().infos if i.live))
    for registry in registries:
        for mapper in registry.mappers:
            info: VersionInfo | None = mapper.class_manager.info.get(INFO_KEY)
            if info is not None and info.parent is mapper.class_ and info.live:
                infos[info] = None
    if not infos:
        fail(f"found no versioned models in {', '.join(modules)}", "--models")
    return sorted(infos, key=lambda i: (i.tables[-1].parent_table.fullname, i.parent.__name__))


# --- parsing arguments ------------------------------------------------------------------------


def parse_key(info: VersionInfo, text: str, param: str = "KEY") -> dict[str, Any]:
    """A primary key from the command line: ``42``, ``1,fr`` (composite), or JSON
    (``[1, "fr"]``, ``{"article_id": 1, "lang": "fr"}``)."""
    raw: Any
    try:
        if text.lstrip().startswith(("{", "[")):
            raw = json.loads(text)
            raw = tuple(raw) if isinstance(raw, list) else raw
        elif len(info.pk_attrs) > 1:
            raw = tuple(part.strip() for part in text.split(","))
        else:
            raw = text
        return pk_values(info, raw)
    except (VersioningError, ValueError, TypeError) as error:
        keys = ", ".join(info.pk_attrs)
        fail(f"bad key {text!r} for {info.parent.__name__} (primary key: {keys}): {error}", param)


def parse_point(text: str, param: str) -> int | datetime:
    """A point in history: a transaction id, or an ISO 8601 datetime (UTC unless it says)."""
    if text.strip().isdigit():
        return int(text)
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{text!r} is neither a transaction id nor an ISO 8601 datetime", param)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _user_value(column: sa.Column[Any], text: str) -> Any:
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return text
    if python_type is int:
        try:
            return int(text)
        except ValueError:
            fail(f"{text!r} is not a user id: transaction.user_id holds integers", "--user")
    if python_type is uuid.UUID:
        try:
            return uuid.UUID(text)
        except ValueError:
            fail(f"{text!r} is not a user id: transaction.user_id holds UUIDs", "--user")
    return text


# --- output -----------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` in JSON terms: ISO 8601 datetimes, operations by name, exact decimals as
    strings, UUIDs as strings, bytes as base64."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return str(value)


def _shown(value: Any) -> str:
    """A value in a table cell: its JSON form (``null``, ``"text"``, ``42``)."""
    return json.dumps(jsonable(value), ensure_ascii=False)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(sep=" ", timespec="seconds")


_OPERATION_STYLES = {"INSERT": "green", "UPDATE": "yellow", "DELETE": "red"}


def _operation(name: str) -> Text:
    return Text(name, style=_OPERATION_STYLES.get(name, ""))


class Output:
    """Where a command's result goes: Rich tables on stdout, or JSON with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False, markup=False, emoji=False)

    def emit(self, data: Any, render: Callable[[Console], None]) -> None:
        """Print ``data`` as JSON, or call ``render`` with the console."""
        if self.as_json:
            sys.stdout.write(json.dumps(jsonable(data), indent=2) + "\n")
        else:
            render(self.console)


#: columns kept on one line; the others wrap to fit the terminal
_NO_WRAP = {"Index", "Transaction", "Issued at", "Operation", "Problem"}


def _table(*columns: str) -> Table:
    table = Table(header_style="bold cyan")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in _NO_WRAP)
    return table


def _heading(console: Console, text: str) -> None:
    console.print(Text(text, style="bold"))


def _key_text(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_shown(v)}" for k, v in key.items())


# --- log --------------------------------------------------------------------------------------


def read_log(
    connection: Connection,
    infos: Sequence[VersionInfo],
    *,
    only: Sequence[VersionInfo] = (),
    key: dict[str, Any] | None = None,
    user: str | None = None,
    since: PointInHistory | None = None,
    until: PointInHistory | None = None,
    limit: int = 20,
    page: int = 1,
    before: int | None = None,
) -> dict[str, Any]:
    """One page of transactions, newest first, with per-table counts of their versions.

    Two queries: the page of transaction rows (filters as ``EXISTS`` on the version tables of
    ``only``), then the counts of the page's versions in one ``UNION ALL``.
    """
    t = infos[0].tables[0].transaction_table
    stmt = sa.select(t.c.id, t.c.issued_at, t.c.user_id, t.c.remote_addr, t.c.meta)
    if only:
        if key is not None:
            root = only[0].tables[0]
            vt = root.version_table
            wrote: sa.ColumnElement[bool] = sa.exists().where(
                vt.c.transaction_id == t.c.id,
                *[vt.c[root.attrs[attr]] == value for attr, value in key.items()],
            )
        else:
            wrote = sa.or_(
                *[
                    sa.exists().where(table.version_table.c.transaction_id == t.c.id)
                    for table in checked_tables(only)
                ]
            )
        stmt = stmt.where(wrote)
    if user is not None:
        stmt = stmt.where(t.c.user_id == _user_value(t.c.user_id, user))
    if since is not None:
        stmt = stmt.where(t.c.id >= as_transaction_id(since, t, upper=False))
    if until is not None:
        stmt = stmt.where(t.c.id <= as_transaction_id(until, t, upper=True))
    if before is not None:
        stmt = stmt.where(t.c.id < before)
    stmt = stmt.order_by(t.c.id.desc()).limit(limit + 1).offset((page - 1) * limit)
    rows = connection.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    counts = _version_counts(connection, checked_tables(infos), [r.id for r in rows])
    entries = [
        {
            "id": r.id,
            "issued_at": r.issued_at,
            "user_id": r.user_id,
            "remote_addr": r.remote_addr,
            "meta": r.meta,
            "versions": counts.get(r.id, {}),
        }
        for r in rows
    ]
    return {"transactions": entries, "next_before": rows[-1].id if more else None}


def _version_counts(
    connection: Connection, tables: Sequence[TableVersioning], ids: Sequence[int]
) -> dict[int, dict[str, int]]:
    if not ids or not tables:
        return {}
    branches = [
        sa.select(
            sa.literal(table.parent_table.fullname, sa.String).label("name"),
            table.version_table.c.transaction_id.label("transaction_id"),
            sa.func.count().label("versions"),
        )
        .where(table.version_table.c.transaction_id.in_(ids))
        .group_by(table.version_table.c.transaction_id)
        for table in tables
    ]
    counts: dict[int, dict[str, int]] = {}
    for name, tx, n in connection.execute(sa.union_all(*branches)):
        counts.setdefault(int(tx), {})[name] = int(n)
    return {tx: dict(sorted(by_table.items())) for tx, by_table in counts.items()}


@app.command()
def log(
    url: Url,
    models: Models,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            metavar="MODEL",
            help="Only transactions that wrote versions of MODEL; repeatable.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", help="Only transactions that wrote a version of this row (one --model)."
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="Only transactions of this actor.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="From this transaction id or ISO 8601 datetime (inclusive).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            metavar="WHEN",
            help="Up to this transaction id or ISO 8601 datetime (inclusive).",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, metavar="N", help="Transactions per page.")
    ] = 20,
    page: Annotated[
        int | None, typer.Option("--page", min=1, metavar="N", help="Page number, from 1.")
    ] = None,
    before: Annotated[
        int | None,
        typer.Option("--before", metavar="ID", help="Only transactions with an id below this one."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Transactions, newest first: who, when, from where, why, and how many versions per table."""
    target = Target.open(url, models)
    only = [target.find(name, "--model") for name in model or ()]
    transactions = target.group(only, "--model")[0].tables[0].transaction_table
    # counts of every model recorded under that transaction table, not only of --model's
    infos = [i for i in target.infos if i.tables[0].transaction_table is transactions]
    parsed_key = None
    if key is not None:
        if len(only) != 1:
            fail("--key needs exactly one --model", "--key")
        parsed_key = parse_key(only[0], key, "--key")
    if page is not None and before is not None:
        fail("give --page or --before, not both", "--before")
    start = None if since is None else parse_point(since, "--since")
    end = None if until is None else parse_point(until, "--until")
    result = target.run(
        lambda c: read_log(
            c,
            infos,
            only=only,
            key=parsed_key,
            user=user,
            since=start,
            until=end,
            limit=limit,
            page=page or 1,
            before=before,
        )
    )

    def render(console: Console) -> None:
        if not result["transactions"]:
            console.print("No transactions.")
            return
        _heading(console, "Transactions (newest first)")
        table = _table(
            "Transaction",
            "Issued at",
            "Actor",
            "Remote address",
            "Meta",
            "Versions",
        )
        for entry in result["transactions"]:
            table.add_row(
                Text(str(entry["id"]), style="bold"),
                Text(_when(entry["issued_at"])),
                Text("" if entry["user_id"] is None else str(entry["user_id"])),
                Text(entry["remote_addr"] or ""),
                Text("" if entry["meta"] is None else _shown(entry["meta"])),
                Text(", ".join(f"{name}: {n}" for name, n in entry["versions"].items())),
            )
        console.print(table)
        if result["next_before"] is not None:
            console.print(Text(f"More: --before {result['next_before']}", style="dim"))

    Output(as_json).emit(result, render)


# --- show, diff, as-of ------------------------------------------------------------------------


def _record(version: Version[Any], *, changeset: bool = True) -> dict[str, Any]:
    info = version.__history_info__
    tx = version.transaction
    record: dict[str, Any] = {
        "index": version.index,
        "transaction_id": version.transaction_id,
        "end_transaction_id": version.end_transaction_id,
        "issued_at": None if tx is None else tx.issued_at,
        "user_id": None if tx is None else tx.user_id,
        "remote_addr": None if tx is None else tx.remote_addr,
        "meta": None if tx is None else tx.meta,
        "operation": version.operation_type.name,
    }
    if changeset:
        record["changeset"] = version.changeset
    record["values"] = {attr: getattr(version, attr) for attr in info.attrs}
    return record


def _versions(session: Session, info: VersionInfo, key: dict[str, Any]) -> list[Version[Any]]:
    V: Any = info.version_class
    stmt = (
        sa.select(V)
        .where(*[getattr(V, attr) == value for attr, value in key.items()])
        .order_by(V.transaction_id)
        .options(selectinload(V.previous), selectinload(V.transaction), undefer(V.index))
    )
    return list(session.scalars(stmt))


def read_versions(
    connection: Connection, info: VersionInfo, key: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every version of one row, oldest first, with its transaction and changeset (3 queries)."""
    with Session(bind=connection) as session:
        return [_record(v) for v in _versions(session, info, key)]


def _head(info: VersionInfo, key: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": info.parent.__name__,
        "table": info.tables[-1].parent_table.fullname,
        "key": key,
    }


@app.command()
def show(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model class or table name.")],
    key: Annotated[str, typer.Argument(metavar="KEY", help="Primary key: 42, 1,fr or JSON.")],
    url: Url,
    models: Models,
    as_json: Json = False,
) -> None:
    """A row's versions, oldest first: transaction, time, actor, operation and changeset."""
    target = Target.open(url, models)
    info = target.find(model, "MODEL")
    pk = parse_key(info, key)
    versions = target.run(lambda c: read_versions(c, info, pk))
    data = {**_head(info, pk), "versions": versions}

    def render(console: Console) -> None:
        name = f"{info.parent.__name__} {_key_text(pk)}"
        if not versions:
            console.print(f"{name} has no versions.")
            return
        _heading(console, f"{name}: {len(versions)} versions")
        table = _table(
            "Index",
            "Transaction",
            "Issued at",
            "Actor",
            "Operation",
            "Changes",
        )
        for v in versions:
            changes = "\n".join(
                f"{attr}: {_shown(old)} → {_shown(new)}"
                for attr, (old, new) in v["changeset"].items()
            )
            table.add_row(
                Text(str(v["index"])),
                Text(str(v["transaction_id"]), style="bold"),
                Text(_when(v["issued_at"])),
                Text("" if v["user_id"] is None else str(v["user_id"])),
                _operation(v["operation"]),
                Text(changes),
            )
        console.print(table)

    Output(as_json).emit(data, render)


def read_diff(
    connection: Connection,
    info: VersionInfo,
    key: dict[str, Any],
    start: int,
    end: int,
    by_index: bool,
) -> dict[str, Any]:
    """:func:`diff` of two versions of one row: in force at transactions ``start`` and ``end``,
    or (``by_index``) at those indexes of the row's versions (negative: from the newest)."""
    with Session(bind=connection) as session:
        if by_index:
            versions = _versions(session, info, key)
            chosen = []
            for param, index in (("FROM", start), ("TO", end)):
                try:
                    chosen.append(versions[index])
                except IndexError:
                    fail(
                        f"{info.parent.__name__} {_key_text(key)} has {len(versions)} versions: "
                        f"no version {index}",
                        param,
                    )
        else:
            chosen = []
            for param, tx in (("FROM", start), ("TO", end)):
                version = version_at_sync(session, info.parent, key, tx)
                if version is None:
                    fail(
                        f"{info.parent.__name__} {_key_text(key)} did not exist at transaction "
                        f"{tx}",
                        param,
                    )
                chosen.append(version)
        older, newer = chosen
        return {
            **_head(info, key),
            "from": _record(older, changeset=False),
            "to": _record(newer, changeset=False),
            "changes": {attr: list(pair) for attr, pair in diff(older, newer).items()},
        }


@app.command(name="diff")
def diff_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model class or table name.")],
    key: Annotated[str, typer.Argument(metavar="KEY", help="Primary key: 42, 1,fr or JSON.")],
    start: Annotated[
        int, typer.Argument(metavar="FROM", help="Transaction id (with --index: version index).")
    ],
    end: Annotated[
        int, typer.Argument(metavar="TO", help="Transaction id (with --index: version index).")
    ],
    url: Url,
    models: Models,
    by_index: Annotated[
        bool,
        typer.Option(
            "--index",
            help="FROM and TO are version indexes (0 is the first; -1 the newest, after --).",
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """What changed in a row between two transactions (or two versions, with --index)."""
    target = Target.open(url, models)
    info = target.find(model, "MODEL")
    pk = parse_key(info, key)
    data = target.run(lambda c: read_diff(c, info, pk, start, end, by_index))

    def render(console: Console) -> None:
        older, newer = data["from"], data["to"]
        title = (
            f"{info.parent.__name__} {_key_text(pk)}: transaction {older['transaction_id']} "
            f"({older['operation']}) → {newer['transaction_id']} ({newer['operation']})"
        )
        if not data["changes"]:
            console.print(f"{title}: no differences.")
            return
        _heading(console, title)
        table = _table("Attribute", "From", "To")
        for attr, (old, new) in data["changes"].items():
            table.add_row(
                Text(attr), Text(_shown(old), style="red"), Text(_shown(new), style="green")
            )
        console.print(table)

    Output(as_json).emit(data, render)


def read_as_of(
    connection: Connection, info: VersionInfo, key: dict[str, Any], at: int | datetime
) -> dict[str, Any] | None:
    """The row as it was at ``at`` (:func:`version_at`), ``None`` if it did not exist then."""
    with Session(bind=connection) as session:
        version = version_at_sync(session, info.parent, key, at)
        return None if version is None else _record(version, changeset=False)


@app.command(name="as-of")
def as_of(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model class or table name.")],
    key: Annotated[str, typer.Argument(metavar="KEY", help="Primary key: 42, 1,fr or JSON.")],
    when: Annotated[
        str,
        typer.Argument(metavar="WHEN", help="Transaction id or ISO 8601 datetime (UTC if naive)."),
    ],
    url: Url,
    models: Models,
    as_json: Json = False,
) -> None:
    """A row as it was at a transaction or a point in time."""
    target = Target.open(url, models)
    info = target.find(model, "MODEL")
    pk = parse_key(info, key)
    at = parse_point(when, "WHEN")
    version = target.run(lambda c: read_as_of(c, info, pk, at))
    data = {**_head(info, pk), "at": at, "exists": version is not None, "version": version}

    def render(console: Console) -> None:
        point = f"transaction {at}" if isinstance(at, int) else _when(at)
        name = f"{info.parent.__name__} {_key_text(pk)}"
        if version is None:
            console.print(f"{name} did not exist at {point}.")
            return
        _heading(
            console,
            f"{name} at {point} (version of transaction {version['transaction_id']}, "
            f"{version['operation']})",
        )
        table = _table("Attribute", "Value")
        for attr, value in version["values"].items():
            table.add_row(Text(attr), Text(_shown(value)))
        console.print(table)

    Output(as_json).emit(data, render)


# --- baseline ---------------------------------------------------------------------------------


def count_unversioned(connection: Connection, info: VersionInfo) -> int:
    """How many rows of ``info``'s tables (and links) have no version: what ``baseline`` adds."""
    total = 0
    for table in checked_tables([info]):
        pt, vt = table.parent_table, table.version_table
        versioned = sa.exists().where(*[vt.c[c] == pt.c[c] for c in table.key_columns])
        total += (
            connection.scalar(sa.select(sa.func.count()).select_from(pt).where(~versioned)) or 0
        )
    return total


@app.command()
def baseline(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model class or table name.")],
    url: Url,
    models: Models,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N", help="Keys per batch.")
    ] = 1000,
    user: Annotated[
        str | None,
        typer.Option("--user", metavar="USER", help="Actor recorded by the transaction row."),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="TEXT", help="meta['reason'] of the transaction row."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Give every row of MODEL that has no version an INSERT version of its current values."""
    target = Target.open(url, models)
    info = target.find(model, "MODEL")
    output = Output(as_json)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_stderr(),
        disable=as_json,
    )

    def work(connection: Connection) -> int:
        task = progress.add_task(info.parent.__name__, total=count_unversioned(connection, info))
        meta = {} if reason is None else {"reason": reason}
        with progress, versioning_context(user_id=user, **meta):
            return baseline_sync(
                connection,
                info.parent,
                batch_size=batch_size,
                progress=lambda done, table: progress.update(task, completed=done),
            )

    rows = target.run(work, write=True)
    data = {
        "model": info.parent.__name__,
        "table": info.tables[-1].parent_table.fullname,
        "rows": rows,
    }

    def render(console: Console) -> None:
        console.print(
            f"{info.parent.__name__}: {rows} row{'s' if rows != 1 else ''} got a version."
        )

    output.emit(data, render)


# --- prune ------------------------------------------------------------------------------------


@app.command(name="prune")
def prune_command(
    model: Annotated[
        list[str], typer.Argument(metavar="MODEL...", help="Model class or table names.")
    ],
    url: Url,
    models: Models,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            metavar="WHEN",
            help="Delete the versions no longer in force at WHEN (transaction id or datetime).",
        ),
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option("--keep-last", min=1, metavar="N", help="Keep each row's N newest versions."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N", help="Keys per transaction.")
    ] = 1000,
    as_json: Json = False,
) -> None:
    """Delete old versions of MODEL (retention), one transaction per batch of keys.

    The versions left keep consistent chains; as-of questions and the change feed before the
    cut are refused from then on instead of answered without the deleted versions.
    """
    target = Target.open(url, models)
    infos = target.group([target.find(name, "MODEL") for name in model], "MODEL")
    if (before is None) == (keep_last is None):
        fail("give either --before WHEN or --keep-last N", "--before" if before else "--keep-last")
    point = None if before is None else parse_point(before, "--before")
    classes = [info.parent for info in infos]
    progress = Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.completed} versions deleted"),
        console=_stderr(),
        disable=as_json,
    )
    task = progress.add_task(", ".join(c.__name__ for c in classes), total=None)
    options: dict[str, Any] = {
        "before": point,
        "keep_last": keep_last,
        "batch_size": batch_size,
        "progress": lambda done, table: progress.update(task, completed=done),
    }

    def work(engine: sa.Engine) -> int:
        with progress:
            return prune_sync(engine, *classes, **options)

    async def async_work(engine: AsyncEngine) -> int:
        with progress:
            return await prune(engine, *classes, **options)

    deleted = target.run_engine(work, async_work)
    data = {
        "models": [c.__name__ for c in classes],
        "before": point,
        "keep_last": keep_last,
        "deleted": deleted,
    }

    def render(console: Console) -> None:
        names = ", ".join(c.__name__ for c in classes)
        console.print(f"{names}: {deleted} version{'s' if deleted != 1 else ''} deleted.")

    Output(as_json).emit(data, render)


# --- check ------------------------------------------------------------------------------------


@app.command()
def check(
    url: Url,
    models: Models,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", metavar="MODEL", help="Check MODEL only; repeatable."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, metavar="N", help="At most this many problems of each kind per table."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Check history's integrity; exit code 1 when something is wrong.

    One open version per live row and none for a deleted row; validity intervals that neither
    overlap nor invert; no version without its transaction row; version tables whose columns
    match the models.
    """
    target = Target.open(url, models)
    chosen = [target.find(name, "--model") for name in model or ()] or target.infos
    classes = [info.parent for info in chosen]
    problems: list[IntegrityProblem] = target.run(
        lambda c: check_integrity_sync(c, classes, limit=limit)
    )
    tables = sorted(t.version_table.fullname for t in checked_tables(chosen))
    data = {
        "ok": not problems,
        "tables": tables,
        "problems": [
            {
                "kind": p.kind.value,
                "table": p.table,
                "key": p.key,
                "transaction_id": p.transaction_id,
                "column": p.column,
                "detail": p.detail,
            }
            for p in problems
        ],
    }

    def render(console: Console) -> None:
        if not problems:
            console.print(
                Text(f"No problems found in {len(tables)} version tables.", style="green")
            )
            return
        _heading(console, f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found")
        table = _table("Problem", "Table", "Key", "Detail")
        for p in problems:
            table.add_row(
                Text(p.kind.value, style="red"),
                Text(p.table),
                Text("" if p.key is None else _key_text(p.key)),
                Text(p.detail),
            )
        console.print(table)

    Output(as_json).emit(data, render)
    if problems:
        raise typer.Exit(EXIT_PROBLEMS)


def main() -> None:
    """The ``history`` console script."""
    app(prog_name="history")


if __name__ == "__main__":
    main()
