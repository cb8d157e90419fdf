"""Baseline versions: a starting point in history for rows that existed before versioning.

A row written before its model was versioned has no version: its first recorded UPDATE has no
previous version to compare with, and ``select_as_of()`` leaves it out until it changes.
:func:`baseline_sync` gives every such row one ``INSERT`` version holding its current values,
all under one transaction row, in batches of keys; rows that have a version already are left
alone, so running it again adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ._context import TransactionContext, current_context
from ._dml import after_key
from ._info import TableVersioning, history_tables, one_transaction_table
from ._order import CommitLocks
from ._queries import model_info
from ._schema import Operation
from ._writes import insert_transaction

__all__ = ["backfill_versions", "backfill_versions_sync", "baseline", "baseline_sync"]

#: ``value`` not given: the column's default.
_DEFAULT: Any = object()

#: ``progress(done, table)``: called after each batch with the rows given a version so far.
Progress = Callable[[int, str], None]


def baseline_sync(
    bind: Connection | Session,
    model: type[Any],
    *models: type[Any],
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> int:
    """Give every row of ``model`` (and of each of ``models``) without a version an
    ``INSERT`` version of its current values; return how many rows got one.

    Runs in ``bind``'s transaction (a ``Connection`` — in an Alembic migration,
    ``op.get_bind()`` — or a ``Session``), which the caller commits. All the new versions
    share one transaction row recording the :func:`versioning_context` in force (with
    ``meta["baseline"]`` naming the models' tables, comma-separated); the commit-order lock is
    taken first. Keys are read
    ``batch_size`` at a time, in key order; ``progress(done, table)`` is called after each
    batch. A model of a joined-table hierarchy gets a version in each of its tables; for
    single-table inheritance, pass the base model. The links of the model's many-to-many
    relationships (rows of their association tables) get an ``INSERT`` version in the same
    transaction. Baseline related models in one call (``baseline_sync(bind, Article, Tag)``):
    a version's temporal relationships show the related versions in force at its transaction,
    so related rows baselined in a later transaction are missing from it.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"baseline(batch_size=...) takes a positive int, got {batch_size!r}")
    infos = [model_info(m) for m in (model, *models)]
    for info in infos:
        info.parent_mapper.registry.configure()  # many-to-many links are known from here on
    one_transaction_table(infos, "baseline")
    tables = history_tables(infos)
    meta = ", ".join(dict.fromkeys(info.tables[0].parent_table.name for info in infos))
    done = 0
    transaction_id: int | None = None
    for table in tables:
        connection = _connection(bind, table)
        last: tuple[Any, ...] | None = None
        while True:
            keys = _keys_without_version(connection, table, last, batch_size)
            if not keys:
                break
            if transaction_id is None:
                CommitLocks().take(connection, table.transaction_table)
                transaction_id = insert_transaction(
                    connection, table.transaction_table, _context(meta)
                )
            connection.execute(_copy(table, keys, transaction_id))
            done += len(keys)
            last = keys[-1]
            if progress is not None:
                progress(done, table.parent_table.name)
            if len(keys) < batch_size:
                break
    return done


async def baseline(
    bind: AsyncConnection | AsyncSession,
    model: type[Any],
    *models: type[Any],
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> int:
    """:func:`baseline_sync` on an ``AsyncConnection`` or ``AsyncSession``."""

    def run(sync: Connection | Session) -> int:
        return baseline_sync(sync, model, *models, batch_size=batch_size, progress=progress)

    return await bind.run_sync(run)


def backfill_versions_sync(
    bind: Connection | Session, model: type[Any], attribute: str, value: Any = _DEFAULT
) -> int:
    """Give the versions that predate a column added to ``model`` a value for it; return how
    many versions changed.

    Run it in the migration that adds the column: the versions written before it hold NULL
    there, so the next version's changeset would show ``[None, value]`` and reverting to an
    old version would write NULL (or fail on a NOT NULL column). Every version whose
    ``attribute`` is NULL gets ``value`` — by default the column's default (a scalar
    ``default=`` or a ``server_default=``), which is what the rows themselves got.
    """
    info = model_info(model)
    if attribute not in info.attr_set:
        raise ValueError(
            f"backfill_versions(): {model.__name__} has no versioned attribute {attribute!r}"
        )
    table = next(t for t in info.tables if attribute in t.attrs)
    column = table.parent_table.c[table.attrs[attribute]]
    filler = _column_default(model, column) if value is _DEFAULT else sa.literal(value, column.type)
    vt = table.version_table
    target = vt.c[column.key]
    connection = _connection(bind, table)
    result = connection.execute(sa.update(vt).where(target.is_(None)).values({target: filler}))
    return int(result.rowcount)


async def backfill_versions(
    bind: AsyncConnection | AsyncSession, model: type[Any], attribute: str, value: Any = _DEFAULT
) -> int:
    """:func:`backfill_versions_sync` on an ``AsyncConnection`` or ``AsyncSession``."""

    def run(sync: Connection | Session) -> int:
        return backfill_versions_sync(sync, model, attribute, value)

    return await bind.run_sync(run)


def _column_default(model: type[Any], column: sa.Column[Any]) -> Any:
    """The value a row added before ``column`` existed got: its scalar or server default."""
    default = column.default
    if isinstance(default, sa.ColumnDefault) and default.is_scalar:
        return sa.literal(default.arg, column.type)
    server = column.server_default
    if isinstance(server, sa.DefaultClause):
        arg = server.arg
        if isinstance(arg, str):
            return sa.literal_column("'" + arg.replace("'", "''") + "'")
        return arg
    raise ValueError(
        f"backfill_versions(): {model.__name__}.{column.key} has no scalar or server default; "
        "pass value=..."
    )


def _connection(bind: Connection | Session, table: TableVersioning) -> Connection:
    if isinstance(bind, Session):
        return bind.connection(bind_arguments={"clause": table.parent_table})
    return bind


def _context(tables: str) -> TransactionContext:
    ctx = current_context()
    meta = {**ctx.meta, "baseline": tables}
    return TransactionContext(user_id=ctx.user_id, remote_addr=ctx.remote_addr, meta=meta)


def _key_columns(t: sa.Table, table: TableVersioning) -> list[sa.Column[Any]]:
    return [t.c[c] for c in table.key_columns]


def _keys_without_version(
    connection: Connection, table: TableVersioning, after: tuple[Any, ...] | None, limit: int
) -> list[tuple[Any, ...]]:
    """The next ``limit`` keys (in key order, after ``after``) of rows with no version."""
    pt, vt = table.parent_table, table.version_table
    keys = _key_columns(pt, table)
    versioned = sa.exists().where(
        *[v == p for v, p in zip(_key_columns(vt, table), keys, strict=True)]
    )
    stmt = sa.select(*keys).where(~versioned).order_by(*keys).limit(limit)
    if after is not None:
        stmt = stmt.where(after_key(keys, after))
    return [tuple(row) for row in connection.execute(stmt)]


def _copy(table: TableVersioning, keys: list[tuple[Any, ...]], tx: int) -> sa.Insert:
    """``INSERT INTO version SELECT`` the rows with ``keys`` as INSERT versions of ``tx``."""
    pt, vt = table.parent_table, table.version_table
    cols = list(table.attrs.values())
    key_columns = _key_columns(pt, table)
    target = key_columns[0] if len(key_columns) == 1 else sa.tuple_(*key_columns)
    chosen = [k[0] for k in keys] if len(key_columns) == 1 else keys
    source = sa.select(
        *[pt.c[c] for c in cols],
        sa.literal(tx, vt.c.transaction_id.type),
        sa.literal(int(Operation.INSERT), sa.SmallInteger),
    ).where(target.in_(chosen))
    return sa.insert(vt).from_select([*cols, "transaction_id", "operation_type"], source)
