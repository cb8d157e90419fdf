"""Asking questions of history: select builders and the coroutines that await them.

Every builder returns a plain ``Select`` the caller can extend (``where``, ``order_by``,
``limit``) and run with ``await session.execute(...)`` / ``session.scalars(...)`` on an
``AsyncSession`` or a sync ``Session`` alike. The few coroutines are thin: they await one of
these builders, or run the same synchronous function through ``AsyncSession.run_sync``.

A point in history (``at``, ``since``, ``until``) is a transaction id, a
:class:`~sqlalchemy_history_async.Transaction`, or a timezone-aware ``datetime`` (resolved to
the last transaction issued at or before it; transaction ids grow with ``issued_at``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from .exceptions import VersioningError
from .manager import default_manager, version_info
from .models import Transaction, Version, VersionInfo
from .schema import Operation

__all__ = [
    "changes_in",
    "changes_in_sync",
    "diff",
    "json_patch",
    "select_as_of",
    "select_changed",
    "select_changes",
    "select_version_at",
    "stream_changes",
    "version_at",
]

PointInHistory = int | datetime | Transaction


# --- points in history ------------------------------------------------------------------------


def _as_transaction_id(
    at: PointInHistory, transactions: sa.Table, *, upper: bool
) -> int | sa.ScalarSelect[Any]:
    """A transaction id, or SQL finding the last (``upper``) / first transaction around ``at``."""
    if isinstance(at, Transaction):
        return at.id
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError(f"datetime {at!r} must be timezone-aware (e.g. UTC)")
        if upper:
            return (
                sa.select(sa.func.max(transactions.c.id))
                .where(transactions.c.issued_at <= at)
                .scalar_subquery()
            )
        return (
            sa.select(sa.func.min(transactions.c.id))
            .where(transactions.c.issued_at >= at)
            .scalar_subquery()
        )
    if isinstance(at, int) and not isinstance(at, bool):
        return at
    raise TypeError(
        f"expected a transaction id, a Transaction or an aware datetime, got {type(at).__name__}"
    )


def _valid_at(vt: Any, tx: Any) -> sa.ColumnElement[bool]:
    """Versions in force at transaction ``tx`` (validity: [transaction_id, end_transaction_id))."""
    return sa.and_(
        vt.transaction_id <= tx,
        sa.or_(vt.end_transaction_id.is_(None), vt.end_transaction_id > tx),
    )


# --- one model --------------------------------------------------------------------------------


def select_as_of(model: type[Any], at: PointInHistory) -> sa.Select[Any]:
    """Versions of ``model``'s rows as they were at ``at``; rows deleted by then are excluded."""
    info = _model_info(model)
    V = info.version_class
    tx = _as_transaction_id(at, info.tables[0].transaction_table, upper=True)
    return sa.select(V).where(_valid_at(V, tx), V.operation_type != Operation.DELETE)


def select_version_at(model: type[Any], pk: Any, at: PointInHistory) -> sa.Select[Any]:
    """The version of one row at ``at`` (no row if it did not exist then).

    ``pk`` is the primary key value, a tuple for composite keys, or a dict by attribute name.
    """
    info = _model_info(model)
    V = info.version_class
    return select_as_of(model, at).where(
        *[getattr(V, attr) == value for attr, value in _pk_values(info, pk).items()]
    )


async def version_at(
    session: AsyncSession, model: type[Any], pk: Any, at: PointInHistory
) -> Version | None:
    """Await the version of one row at ``at``, or ``None``: see :func:`select_version_at`."""
    version: Version | None = await session.scalar(select_version_at(model, pk, at))
    return version


def select_changed(model: type[Any], *attrs: str) -> sa.Select[Any]:
    """Versions of ``model`` in which any of ``attrs`` differs from the previous version.

    A row's first version counts as a change of every attribute that is not NULL, as in
    ``Version.changeset``. Computed in SQL against the previous version (joined through the
    indexed ``end_transaction_id``); see docs/querying.md for why no per-column flags are stored.
    """
    info = _model_info(model)
    if not attrs:
        raise VersioningError("select_changed() needs at least one attribute name")
    unknown = [a for a in attrs if a not in info.attr_set]
    if unknown:
        raise VersioningError(
            f"{model.__name__} has no versioned attribute(s) {', '.join(map(repr, unknown))}"
        )
    V: Any = info.version_class
    previous: Any = aliased(V, name="previous_version")
    same_row = [getattr(previous, a) == getattr(V, a) for a in info.pk_attrs]
    changed = [getattr(V, a).is_distinct_from(getattr(previous, a)) for a in attrs]
    return (
        sa.select(V)
        .outerjoin(previous, sa.and_(*same_row, previous.end_transaction_id == V.transaction_id))
        .where(sa.or_(*changed))
    )


def diff(older: Version, newer: Version) -> dict[str, tuple[Any, Any]]:
    """``{attr: (old, new)}`` for tracked attributes that differ between two versions of a row."""
    info = older.__history_info__
    if newer.__history_info__ is not info:
        raise VersioningError(f"cannot diff a {type(older).__name__} with a {type(newer).__name__}")
    if any(getattr(older, a) != getattr(newer, a) for a in info.pk_attrs):
        raise VersioningError(f"cannot diff versions of two different {info.parent.__name__} rows")
    out: dict[str, tuple[Any, Any]] = {}
    for attr in info.attrs:
        old, new = getattr(older, attr), getattr(newer, attr)
        if old != new:
            out[attr] = (old, new)
    return out


def json_patch(older: Version, newer: Version) -> list[dict[str, Any]]:
    """:func:`diff` as an RFC 6902 JSON Patch turning ``older``'s row into ``newer``'s.

    Every tracked attribute exists in both documents (NULL is ``None``), so each change is a
    ``replace``. Values are the Python values of the columns; serialize them as you need.
    """
    return [
        {"op": "replace", "path": "/" + attr.replace("~", "~0").replace("/", "~1"), "value": new}
        for attr, (_, new) in diff(older, newer).items()
    ]


# --- across models ----------------------------------------------------------------------------


def changes_in_sync(session: Session, transaction: int | Transaction) -> list[Version]:
    """Every version written by ``transaction``, ordered by table then primary key.

    One query per version table.
    """
    tx_id = transaction.id if isinstance(transaction, Transaction) else transaction
    out: list[Version] = []
    # Version queries load polymorphically, so each hierarchy is read through its base class.
    for info in dict.fromkeys(info.root for info in _infos(None)):
        V = info.version_class
        pk = [getattr(V, a) for a in info.pk_attrs]
        out.extend(session.scalars(sa.select(V).where(V.transaction_id == tx_id).order_by(*pk)))
    return out


async def changes_in(session: AsyncSession, transaction: int | Transaction) -> list[Version]:
    """Await :func:`changes_in_sync` on an ``AsyncSession``."""
    return await session.run_sync(changes_in_sync, transaction)


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


def select_changes(
    since: PointInHistory | None = None,
    until: PointInHistory | None = None,
    classes: Iterable[type[Any]] | None = None,
    user_id: Any = None,
    operations: Iterable[Operation] | None = None,
) -> sa.Select[Any]:
    """The unified change feed over all version tables (one ``UNION ALL``).

    ``classes`` selects the version tables read (a model of a joined-table hierarchy has one
    per table). Rows have ``table`` (the model's table name, schema-qualified when it has
    one), ``primary_key`` (a dict by attribute name, with JSON values: a UUID is a string;
    :func:`version_at` accepts it as it is), ``operation``, ``transaction_id``,
    ``issued_at``, ``user_id``, ``meta`` and ``key_text`` (the key as JSON text, which
    orders the rows of one transaction and table), ordered by
    ``(transaction_id, table, key_text)``. ``since``/``until`` are inclusive.
    """
    infos = _infos(classes)
    transactions = infos[0].tables[0].transaction_table
    ops = None if operations is None else [Operation(o) for o in operations]
    lower = None if since is None else _as_transaction_id(since, transactions, upper=False)
    upper = None if until is None else _as_transaction_id(until, transactions, upper=True)
    tables = dict.fromkeys(table for info in infos for table in info.tables)
    branches = []
    for table in sorted(tables, key=lambda t: t.parent_table.name):
        vt = table.version_table
        attr_of = {col: attr for attr, col in table.attrs.items()}
        pairs: list[sa.ColumnElement[Any]] = []
        for col in table.key_columns:
            pairs += [sa.literal_column(_sql_string(attr_of[col])), vt.c[col]]
        branch = sa.select(
            sa.literal_column(_sql_string(table.parent_table.fullname), sa.String).label("table"),
            _json_object(*pairs).label("key_text"),
            vt.c.operation_type.label("operation"),
            vt.c.transaction_id.label("transaction_id"),
        )
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
        )
        .join_from(feed, transactions, transactions.c.id == feed.c.transaction_id)
        .order_by(feed.c.transaction_id, feed.c.table, feed.c.key_text)
    )
    if user_id is not None:
        stmt = stmt.where(transactions.c.user_id == user_id)
    return stmt


async def stream_changes(
    session: AsyncSession,
    after: int | None = None,
    batch_size: int = 500,
    *,
    until: PointInHistory | None = None,
    classes: Iterable[type[Any]] | None = None,
    user_id: Any = None,
    operations: Iterable[Operation] | None = None,
) -> AsyncIterator[Row[Any]]:
    """Iterate the change feed after transaction ``after`` (exclusive), ``batch_size`` at a time.

    Keyset pagination on ``(transaction_id, table, key_text)``: memory stays constant and a
    consumer can resume from the last ``transaction_id`` it processed completely.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    classes = None if classes is None else list(classes)
    operations = None if operations is None else list(operations)
    cursor: tuple[int, str, str] | None = None
    while True:
        stmt = _select_feed_page(after, cursor, until, classes, user_id, operations)
        rows = (await session.execute(stmt.limit(batch_size))).all()
        for row in rows:
            yield row
        if len(rows) < batch_size:
            return
        last = rows[-1]
        cursor = (last.transaction_id, last.table, last.key_text)


def _select_feed_page(
    after: int | None,
    cursor: tuple[int, str, str] | None,
    until: PointInHistory | None,
    classes: Iterable[type[Any]] | None,
    user_id: Any,
    operations: Iterable[Operation] | None,
) -> sa.Select[Any]:
    """The feed after transaction ``after``, or after ``cursor`` once paging has started."""
    if cursor is None:
        return select_changes(
            None if after is None else after + 1, until, classes, user_id, operations
        )
    stmt = select_changes(cursor[0], until, classes, user_id, operations)
    feed = stmt.selected_columns
    return stmt.where(
        sa.tuple_(feed.transaction_id, feed.table, feed.key_text)
        > sa.tuple_(*[sa.literal(v) for v in cursor])
    )


# --- helpers ----------------------------------------------------------------------------------


def _model_info(model: type[Any]) -> VersionInfo:
    info = version_info(model)
    if isinstance(model, type) and issubclass(model, Version):
        raise VersioningError(f"pass the model, not its version class {model.__name__}")
    return info


def _infos(classes: Iterable[type[Any]] | None) -> Sequence[VersionInfo]:
    if classes is None:
        classes = default_manager().versioned_classes
    infos = sorted((_model_info(c) for c in classes), key=lambda i: i.tables[0].parent_table.name)
    if not infos:
        raise VersioningError("no versioned classes to read changes from")
    return infos


def _pk_values(info: VersionInfo, pk: Any) -> dict[str, Any]:
    if isinstance(pk, dict):
        if set(pk) != set(info.pk_attrs):
            raise VersioningError(
                f"{info.parent.__name__} primary key is {info.pk_attrs}, got keys {sorted(pk)}"
            )
        values = pk
    else:
        as_tuple = pk if isinstance(pk, tuple) else (pk,)
        if len(as_tuple) != len(info.pk_attrs):
            raise VersioningError(
                f"{info.parent.__name__} primary key is {info.pk_attrs}, got {pk!r}"
            )
        values = dict(zip(info.pk_attrs, as_tuple, strict=True))
    return {attr: _as_column_value(info.column(attr), v) for attr, v in values.items()}


def _as_column_value(column: sa.Column[Any], value: Any) -> Any:
    """Accept a key value in its JSON form (as the change feed gives it): "1f0c…" for a UUID."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if value is None or isinstance(value, python_type):
        return value
    if python_type is uuid.UUID:
        return uuid.UUID(str(value))
    if python_type in (int, str, Decimal):
        return python_type(value)
    return value


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
