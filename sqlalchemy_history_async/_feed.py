"""The change feed: every version of every table as one ordered stream of changes.

``select_changes()`` is one ``UNION ALL`` over the version tables joined to the transaction
table; ``stream_changes()`` / ``stream_changes_sync()`` page through it with a keyset cursor
and yield typed :class:`Change` rows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ._horizon import HORIZON_OPTION, Horizon, retention_table_of
from ._queries import PointInHistory, as_transaction_id, model_infos
from ._schema import Operation

__all__ = ["Change", "select_changes", "stream_changes", "stream_changes_sync"]


class Change(NamedTuple):
    """One row of the change feed: one version of one row, with its transaction's context."""

    #: the model's table name, schema-qualified when it has a schema
    table: str
    #: the row's primary key by attribute name, with JSON values (a UUID is a string)
    primary_key: dict[str, Any]
    operation: Operation
    transaction_id: int
    issued_at: datetime
    user_id: Any
    meta: dict[str, Any] | None
    #: the key as JSON text; orders the rows of one transaction and table
    key_text: str
    #: the transaction's ``remote_addr``
    remote_addr: str | None
    #: the attributes this version changed, as in its changeset (for a link: none)
    changed: list[str]


#: The change feed's select: the columns of :class:`Change`, in order.
FeedSelect = sa.Select[
    str,
    dict[str, Any],
    Operation,
    int,
    datetime,
    Any,
    dict[str, Any] | None,
    str,
    str | None,
    list[str],
]


class _json_object(FunctionElement[str]):
    """A JSON object text built in SQL from ``name, value, name, value, …``."""

    type = sa.Text()
    inherit_cache = True
    name = "json_object"


@compiles(_json_object)
def _json_object_default(element: _json_object, compiler: SQLCompiler, **kw: Any) -> str:
    raise sa.exc.CompileError(f"the change feed is not implemented for {compiler.dialect.name}")


@compiles(_json_object, "postgresql")
def _json_object_pg(element: _json_object, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(json_build_object({compiler.process(element.clauses, **kw)}) AS TEXT)"


@compiles(_json_object, "sqlite")
def _json_object_sqlite(element: _json_object, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_object({compiler.process(element.clauses, **kw)})"


@compiles(_json_object, "mysql")
@compiles(_json_object, "mariadb")
def _json_object_mysql(element: _json_object, compiler: SQLCompiler, **kw: Any) -> str:
    return f"JSON_OBJECT({compiler.process(element.clauses, **kw)})"


class _JsonDict(sa.types.TypeDecorator[dict[str, Any]]):
    """Reads a JSON object text as a dict."""

    impl = sa.Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> dict[str, Any] | None:
        return None if value is None else dict(json.loads(value))


class _differs(FunctionElement[bool]):
    """``a`` and ``b`` differ, NULL being a value (``IS DISTINCT FROM``), compared exactly: byte
    for byte on MySQL / MariaDB (whose default collations ignore case), as text for JSON on
    PostgreSQL (whose ``json`` type has no equality)."""

    type = sa.Boolean()
    inherit_cache = True
    name = "history_differs"


def _operands(element: _differs, compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(clause, **kw) for clause in element.clauses]


@compiles(_differs)
def _differs_default(element: _differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _operands(element, compiler, **kw)
    return f"({a} IS DISTINCT FROM {b})"


@compiles(_differs, "postgresql")
def _differs_pg(element: _differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _operands(element, compiler, **kw)
    if isinstance(next(iter(element.clauses)).type, sa.JSON):
        a, b = f"CAST({a} AS TEXT)", f"CAST({b} AS TEXT)"
    return f"({a} IS DISTINCT FROM {b})"


@compiles(_differs, "sqlite")
def _differs_sqlite(element: _differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _operands(element, compiler, **kw)
    if isinstance(next(iter(element.clauses)).type, sa.DateTime):
        # Timestamps are text: the database writes CURRENT_TIMESTAMP without a fraction,
        # SQLAlchemy with one. Compare points in time, and the text where both have one.
        return (
            f"(julianday({a}) IS NOT julianday({b}) OR "
            f"({a} LIKE '%.%' AND {b} LIKE '%.%' AND {a} IS NOT {b}))"
        )
    return f"({a} IS NOT {b})"


@compiles(_differs, "mysql")
@compiles(_differs, "mariadb")
def _differs_mysql(element: _differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _operands(element, compiler, **kw)
    return f"NOT (CAST({a} AS BINARY) <=> CAST({b} AS BINARY))"


def _changed_names(attrs: dict[str, str], vt: sa.Table, previous: Any) -> sa.ColumnElement[str]:
    """The names of the attributes in which a version differs from ``previous`` (``None``: a
    first version, whose non-NULL attributes count as changed), as text: ``"title,body,"``."""
    text: sa.ColumnElement[str] = sa.literal_column("''", sa.String)
    for attr, col in attrs.items():
        differs = (
            vt.c[col].is_not(None) if previous is None else _differs(vt.c[col], previous.c[col])
        )
        flag = sa.case(
            (differs, sa.literal_column(_sql_string(attr + ","))),
            else_=sa.literal_column("''"),
        )
        text = text + sa.type_coerce(flag, sa.String)
    return text


class _Names(sa.types.TypeDecorator[list[str]]):
    """Reads ``"a,b,"`` as ``["a", "b"]``."""

    impl = sa.Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str]:
        return [name for name in (value or "").split(",") if name]


def select_changes(
    since: PointInHistory | None = None,
    until: PointInHistory | None = None,
    classes: Iterable[type[Any]] | None = None,
    user_id: Any = None,
    operations: Iterable[Operation] | None = None,
) -> FeedSelect:
    """The unified change feed over all version tables (one ``UNION ALL``).

    ``classes`` selects the version tables read (a model of a joined-table hierarchy has one
    per table), and the versioned many-to-many association tables of their relationships:
    a link added or removed is a row of its own (``table`` is the association table,
    ``primary_key`` the link's columns, ``operation`` INSERT or DELETE). Rows have
    ``table`` (the model's table name, schema-qualified when it has one), ``primary_key``
    (a dict by attribute name, with JSON values: a UUID is a string; :func:`version_at`
    accepts it as it is), ``operation``, ``transaction_id``, ``issued_at``, ``user_id``,
    ``meta``, ``key_text`` (the key as JSON text, which orders the rows of one transaction
    and table), ``remote_addr`` and ``changed`` (the names of the attributes the version
    changed, as in its changeset; computed in SQL against the previous version), ordered by
    ``(transaction_id, table, key_text)``.
    ``since``/``until`` are inclusive. ``classes`` defaults to every model versioned by
    ``make_versioned()``. Run through a session, it raises :class:`HistoryPrunedError` when
    ``since`` (or no ``since``: from the start) reaches before the history that retention kept.
    """
    infos = model_infos(classes)
    transactions = infos[0].tables[0].transaction_table
    ops = None if operations is None else [Operation(o) for o in operations]
    lower = None if since is None else as_transaction_id(since, transactions, upper=False)
    upper = None if until is None else as_transaction_id(until, transactions, upper=True)
    tables = dict.fromkeys(table for info in infos for table in info.tables)
    links = {link.table for info in infos for link in info.links}
    tables.update(dict.fromkeys(links))  # many-to-many links, as rows of their own
    branches: list[sa.Select[Any]] = []
    for table in sorted(tables, key=lambda t: t.parent_table.name):
        vt = table.version_table
        attr_of = {col: attr for attr, col in table.attrs.items()}
        pairs: list[sa.ColumnElement[Any]] = []
        for col in table.key_columns:
            pairs += [sa.literal_column(_sql_string(attr_of[col])), vt.c[col]]
        columns: list[Any] = [
            sa.literal_column(_sql_string(table.parent_table.fullname), sa.String).label("table"),
            _json_object(*pairs).label("key_text"),
            vt.c.operation_type.label("operation"),
            vt.c.transaction_id.label("transaction_id"),
        ]
        if table in links:
            changed: sa.ColumnElement[str] = sa.literal_column("''", sa.String)
        else:
            # Against the previous version of the row (the one this version's transaction
            # closed), looked up per row returned: a page reads only its own rows' previous
            # versions, through the key index. A first version has none: its non-NULL values.
            previous = vt.alias(f"previous_{len(branches)}")
            same_row = [previous.c[c] == vt.c[c] for c in table.key_columns]
            closed = previous.c.end_transaction_id == vt.c.transaction_id
            against = (
                sa.select(_changed_names(table.attrs, vt, previous))
                .where(*same_row, closed)
                .scalar_subquery()
            )
            changed = sa.func.coalesce(against, _changed_names(table.attrs, vt, None))
        branch = sa.select(*columns, changed.label("changed"))
        # Bounds go into every branch so each version table is read through its index.
        if lower is not None:
            branch = branch.where(vt.c.transaction_id >= lower)
        if upper is not None:
            branch = branch.where(vt.c.transaction_id <= upper)
        if ops is not None:
            branch = branch.where(vt.c.operation_type.in_(ops))
        branches.append(branch)
    feed = sa.union_all(*branches).subquery("changes")
    stmt = (
        sa.select(
            feed.c.table,
            sa.type_coerce(feed.c.key_text, _JsonDict()).label("primary_key"),
            feed.c.operation,
            feed.c.transaction_id,
            transactions.c.issued_at,
            transactions.c.user_id,
            transactions.c.meta,
            feed.c.key_text,
            transactions.c.remote_addr,
            sa.type_coerce(feed.c.changed, _Names()).label("changed"),
        )
        .join_from(feed, transactions, transactions.c.id == feed.c.transaction_id)
        .order_by(feed.c.transaction_id, feed.c.table, feed.c.key_text)
    )
    if user_id is not None:
        stmt = stmt.where(transactions.c.user_id == user_id)
    horizon = Horizon(
        retention_table_of(transactions),
        tuple(t.version_table.fullname for t in tables),
        lower,
        "changes",
    )
    return stmt.execution_options(**{HORIZON_OPTION: horizon})


async def stream_changes(
    session: AsyncSession,
    after: int | None = None,
    batch_size: int = 500,
    *,
    until: PointInHistory | None = None,
    classes: Iterable[type[Any]] | None = None,
    user_id: Any = None,
    operations: Iterable[Operation] | None = None,
) -> AsyncIterator[Change]:
    """Iterate the change feed after transaction ``after`` (exclusive), ``batch_size`` at a time.

    Keyset pagination on ``(transaction_id, table, key_text)``: memory stays constant and a
    consumer can resume from the last ``transaction_id`` it processed completely.
    """
    pages = _Pages(after, batch_size, until, classes, user_id, operations)
    while (stmt := pages.next_statement()) is not None:
        for change in pages.take((await session.execute(stmt)).all()):
            yield change


def stream_changes_sync(
    session: Session,
    after: int | None = None,
    batch_size: int = 500,
    *,
    until: PointInHistory | None = None,
    classes: Iterable[type[Any]] | None = None,
    user_id: Any = None,
    operations: Iterable[Operation] | None = None,
) -> Iterator[Change]:
    """:func:`stream_changes` on a sync ``Session``."""
    pages = _Pages(after, batch_size, until, classes, user_id, operations)
    while (stmt := pages.next_statement()) is not None:
        yield from pages.take(session.execute(stmt).all())


class _Pages:
    """The keyset paging of the change feed, shared by the async and the sync iterator."""

    def __init__(
        self,
        after: int | None,
        batch_size: int,
        until: PointInHistory | None,
        classes: Iterable[type[Any]] | None,
        user_id: Any,
        operations: Iterable[Operation] | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.after = after
        self.batch_size = batch_size
        self.until = until
        self.classes = None if classes is None else list(classes)
        self.user_id = user_id
        self.operations = None if operations is None else list(operations)
        self.cursor: tuple[int, str, str] | None = None
        self.done = False

    def next_statement(self) -> FeedSelect | None:
        """The statement fetching the next page, ``None`` once the feed is exhausted."""
        if self.done:
            return None
        if self.cursor is None:
            since = None if self.after is None else self.after + 1
            stmt = select_changes(since, self.until, self.classes, self.user_id, self.operations)
        else:
            stmt = select_changes(
                self.cursor[0], self.until, self.classes, self.user_id, self.operations
            )
            feed = stmt.selected_columns
            stmt = stmt.where(
                sa.tuple_(feed.transaction_id, feed.table, feed.key_text)
                > sa.tuple_(*[sa.literal(v) for v in self.cursor])
            )
        return stmt.limit(self.batch_size)

    def take(self, rows: Iterable[Any]) -> list[Change]:
        """Turn a fetched page into changes and move the cursor past it."""
        changes = [Change(*row) for row in rows]
        if len(changes) < self.batch_size:
            self.done = True
        else:
            last = changes[-1]
            self.cursor = (last.transaction_id, last.table, last.key_text)
        return changes


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
