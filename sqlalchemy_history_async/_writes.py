"""The statements that write history, and the one driver that runs them.

A flush's history is a :class:`Plan` per version table: which keys each :class:`Step` touches,
plus the last values of deleted rows. :data:`STEP_ORDER` is the one place the order of the
steps is spelled out; :class:`Writer` runs the plans either as one statement per step
(compiled once per table, :class:`TableStatements`) or, on PostgreSQL, as ONE statement of
chained data-modifying CTEs built from the same step statements (one round trip per flush).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from ._context import TransactionContext
from ._info import TableVersioning, VersionInfo
from ._schema import Operation, copy_late_types

__all__ = [
    "STEP_ORDER",
    "Binding",
    "Key",
    "Plan",
    "Row",
    "Step",
    "TableStatements",
    "Writer",
    "for_update",
    "logger",
    "rows_by_key",
]

#: ``logging.getLogger("sqlalchemy_history_async")``: DEBUG lines say what each history write
#: does (tables, steps and how many keys), never row values.
logger = logging.getLogger("sqlalchemy_history_async")

#: Keys per statement when each key is a bound parameter of its own: keeps every backend's
#: bound-parameter limit out of reach.
CHUNK = 1000

#: Up to this many keys, a parameter per key (rather than one for all) costs less.
FEW = 16

Key = tuple[Any, ...]
Row = dict[str, Any]


class Binding(enum.Enum):
    """How a statement receives its set of keys."""

    #: ``key IN (:k_1, :k_2, ...)``: a parameter per key, in chunks of :data:`CHUNK` keys
    EXPANDING = "expanding"
    #: ``key = ANY(:keys)``: one array parameter, however many keys (PostgreSQL)
    ARRAY = "array"
    #: ``key IN (SELECT value FROM json_each(:keys))``: one JSON parameter (SQLite)
    JSON = "json"

    @classmethod
    def of(cls, dialect: Dialect, table: TableVersioning, count: int) -> Binding:
        """The binding for ``count`` keys of ``table`` on ``dialect``: one parameter for many
        keys of one integer or string column, a parameter per key otherwise (cheaper for a
        few keys)."""
        if count <= FEW or len(table.key_columns) != 1:
            return cls.EXPANDING
        column = table.parent_table.c[table.key_columns[0]]
        if not isinstance(column.type, sa.Integer | sa.String):
            return cls.EXPANDING
        if dialect.name == "postgresql":
            return cls.ARRAY
        if dialect.name == "sqlite" and column.type.bind_processor(dialect) is None:
            return cls.JSON
        return cls.EXPANDING

    def chunks(self, keys: Sequence[Key]) -> Iterator[Sequence[Key]]:
        """``keys`` in as few statements as the binding allows."""
        size = CHUNK if self is Binding.EXPANDING else max(len(keys), 1)
        for start in range(0, len(keys), size):
            yield keys[start : start + size]

    def values(self, table: TableVersioning, keys: Sequence[Key]) -> Any:
        """The parameter value that binds ``keys``."""
        if self is Binding.EXPANDING:
            return _bind_keys(keys)
        column = table.parent_table.c[table.key_columns[0]]
        convert = int if isinstance(column.type, sa.Integer) else str
        values = [convert(k[0]) for k in keys]
        return json.dumps(values) if self is Binding.JSON else values


class Step(enum.Enum):
    """One set-based history statement for a set of keys of one version table."""

    #: remove this transaction's own version rows of keys written again (replaced below)
    DROP = "drop"
    #: the net change of the transaction vanished: the previous version is current again
    REOPEN = "reopen"
    #: the key's first version in this transaction: close the version open until now
    CLOSE = "close"
    #: copy inserted rows from the parent table (what the database holds, defaults included)
    COPY_INSERT = "copy_insert"
    #: copy updated rows from the parent table
    COPY_UPDATE = "copy_update"

    @property
    def operation(self) -> Operation | None:
        """The operation a copy step records (``None`` for the other steps)."""
        return _COPY_OPERATIONS.get(self)


_COPY_OPERATIONS = {Step.COPY_INSERT: Operation.INSERT, Step.COPY_UPDATE: Operation.UPDATE}

#: The order of the steps, for every table and both ways of running them. A replaced row must
#: be gone before its key is written again, and a version must be closed before the next one
#: is inserted (the unique "current version" index would reject it otherwise). Deleted rows'
#: last values are inserted after all of them.
STEP_ORDER = (Step.DROP, Step.REOPEN, Step.CLOSE, Step.COPY_INSERT, Step.COPY_UPDATE)


@dataclass
class Plan:
    """What one flush writes to one version table."""

    table: TableVersioning
    keys: dict[Step, list[Key]] = field(default_factory=lambda: {s: [] for s in STEP_ORDER})
    #: last values of deleted rows, by column key
    deleted: list[Row] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        """Whether version rows are added (which needs a transaction row)."""
        return bool(self.deleted) or any(
            self.keys[s] for s in (Step.CLOSE, Step.COPY_INSERT, Step.COPY_UPDATE)
        )

    def steps(self) -> Iterator[tuple[Step, list[Key]]]:
        """The steps that have keys, in :data:`STEP_ORDER`."""
        for step in STEP_ORDER:
            if self.keys[step]:
                yield step, self.keys[step]

    def combinable(self, dialect: Dialect) -> bool:
        """Whether it fits in one combined statement (each step's keys bound as one parameter
        or within one chunk, no deleted rows)."""
        if self.deleted:
            return False
        return all(
            len(keys) <= CHUNK
            or Binding.of(dialect, self.table, len(keys)) is not Binding.EXPANDING
            for keys in self.keys.values()
        )


@dataclass(frozen=True)
class TableStatements:
    """The statements of one version table, built once with bound parameters only."""

    steps: dict[Step, sa.Executable]
    #: current tracked values of the parent rows with the given keys
    load: sa.Select[Any]
    #: executemany INSERT of deleted rows' last values
    insert_deleted: sa.Insert


#: A combined statement's shape: a new transaction row or not, and its (table, step) list;
#: with each table's revision, so a table that gained columns gets a new statement, and how
#: each step's keys are bound.
Shape = tuple[bool, tuple[tuple[TableVersioning, Step], ...], tuple[int, ...], tuple[Binding, ...]]


class Writer:
    """The history statements of one manager's tables, built once, and the driver."""

    def __init__(self) -> None:
        self._tables: dict[tuple[TableVersioning, Binding], tuple[int, TableStatements]] = {}
        self._combined: dict[Shape, sa.Select[Any]] = {}
        self._loads: dict[tuple[Any, ...], sa.Select[Any]] = {}

    def write(
        self,
        session: Session,
        transaction_id: int | None,
        plans: list[Plan],
        context: TransactionContext,
    ) -> int | None:
        """Run ``plans`` in the session's transaction; return the transaction row's id.

        The transaction row (recording ``context``) is inserted with the first version row
        (``transaction_id`` is ``None`` until then).
        """
        first = plans[0].table
        connection = session.connection(bind_arguments={"clause": first.parent_table})
        dialect = connection.dialect
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "writing history%s: %s",
                "" if transaction_id is None else f" of transaction {transaction_id}",
                "; ".join(_describe(plan) for plan in plans) or "nothing",
            )
        if dialect.name == "postgresql" and all(p.combinable(dialect) for p in plans):
            return self._write_combined(connection, transaction_id, plans, context)
        for plan in plans:
            connection = session.connection(bind_arguments={"clause": plan.table.parent_table})
            if transaction_id is None and plan.writes:
                transaction_id = insert_transaction(
                    connection, plan.table.transaction_table, context
                )
            self._write_one(connection, transaction_id, plan)
        return transaction_id

    def delete_transaction(self, session: Session, table: TableVersioning, tx: int) -> None:
        """Remove a transaction row whose versions all cancelled out."""
        transactions = table.transaction_table
        connection = session.connection(bind_arguments={"clause": table.parent_table})
        connection.execute(sa.delete(transactions).where(transactions.c.id == tx))

    def load_values(
        self, connection: Connection, info: VersionInfo, keys: Sequence[Key]
    ) -> dict[Key, dict[str, Any]]:
        """Current values of ``info``'s tracked attributes for ``keys``, one query per table."""
        out: dict[Key, dict[str, Any]] = {}
        for table in info.tables:
            for key, row in self.load_rows(connection, table, keys).items():
                out.setdefault(key, {}).update(
                    {a: row[c] for a, c in table.attrs.items() if a in info.attr_set}
                )
        return out

    def load_rows(
        self,
        connection: Connection,
        table: TableVersioning,
        keys: Sequence[Key],
        lock: bool = False,
        columns: tuple[str, ...] | None = None,
    ) -> dict[Key, Row]:
        """Current rows of ``table``'s parent table for ``keys``, by column key: every tracked
        column, or ``columns`` (which include the key); ``lock``: locked until the transaction
        ends, see :func:`for_update`."""
        binding = Binding.of(connection.dialect, table, len(keys))
        names = tuple(table.attrs.values()) if columns is None else columns
        stmt = self._load(table, binding, names)
        if lock:
            stmt = for_update(stmt, connection, table.parent_table)
        out: dict[Key, Row] = {}
        for chunk in binding.chunks(keys):
            values = binding.values(table, chunk)
            out.update(rows_by_key(connection.execute(stmt, {"_keys": values}), table, names))
        return out

    def _load(
        self, table: TableVersioning, binding: Binding, names: tuple[str, ...]
    ) -> sa.Select[Any]:
        if names == tuple(table.attrs.values()):
            return self.statements(table, binding).load
        shape = (table, binding, names, table.revision)
        stmt = self._loads.get(shape)
        if stmt is None:
            pt = table.parent_table
            stmt = sa.select(*[pt.c[c] for c in names]).where(_keys_in(table, pt, binding, "_keys"))
            self._loads[shape] = stmt
        return stmt

    def statements(
        self, table: TableVersioning, binding: Binding = Binding.EXPANDING
    ) -> TableStatements:
        """The statements of ``table`` with its keys bound by ``binding`` (built on first
        use)."""
        cached = self._tables.get((table, binding))
        if cached is None or cached[0] != table.revision:
            built = _table_statements(table, binding)
            cached = self._tables[(table, binding)] = (table.revision, built)
        return cached[1]

    def _write_one(self, connection: Connection, tx: int | None, plan: Plan) -> None:
        """Run a plan as one statement per step (executemany for deleted rows)."""
        table = plan.table
        for step, keys in plan.steps():
            binding = Binding.of(connection.dialect, table, len(keys))
            statements = self.statements(table, binding)
            for chunk in binding.chunks(keys):
                values = binding.values(table, chunk)
                connection.execute(statements.steps[step], {"_tx": tx, "_keys": values})
        if plan.deleted:
            for row in plan.deleted:
                row["transaction_id"] = tx
                row["operation_type"] = Operation.DELETE
            connection.execute(statements.insert_deleted, plan.deleted)

    def _write_combined(
        self,
        connection: Connection,
        transaction_id: int | None,
        plans: list[Plan],
        context: TransactionContext,
    ) -> int | None:
        """Run every plan of a flush as ONE statement of chained data-modifying CTEs.

        For one-row commits the history statements are the whole cost, so this turns three
        round trips (transaction row, closing UPDATE, version INSERT) into one. The statement
        is built once per shape of flush (which steps, on which tables) and reused.
        """
        new_transaction = transaction_id is None and any(p.writes for p in plans)
        steps: list[tuple[TableVersioning, Step]] = []
        params: dict[str, Any] = {}
        bindings: list[Binding] = []
        for plan in plans:
            for step, keys in plan.steps():
                binding = Binding.of(connection.dialect, plan.table, len(keys))
                params[f"_k{len(steps)}"] = binding.values(plan.table, keys)
                steps.append((plan.table, step))
                bindings.append(binding)
        if not steps:
            return transaction_id
        revisions = tuple(t.revision for t, _ in steps)
        shape: Shape = (new_transaction, tuple(steps), revisions, tuple(bindings))
        stmt = self._combined.get(shape)
        if stmt is None:
            stmt = self._combined[shape] = _combined_statement(plans[0].table, shape)
        if new_transaction:
            params.update({f"_t_{k}": v for k, v in transaction_values(context).items()})
        else:
            params["_tx"] = transaction_id
        result = connection.execute(stmt, params)
        return int(result.scalar_one()) if new_transaction else transaction_id


def rows_by_key(rows: Any, table: TableVersioning, names: Sequence[str]) -> dict[Key, Row]:
    """Result ``rows`` of the columns ``names`` (which include the key) by key, each a dict by
    column key."""
    at = [names.index(c) for c in table.key_columns]
    return {tuple(row[i] for i in at): dict(zip(names, row, strict=True)) for row in rows}


def _describe(plan: Plan) -> str:
    """``article_version: close 3, copy_update 3, deleted 1`` (counts of keys, no values)."""
    steps = [f"{step.value} {len(keys)}" for step, keys in plan.steps()]
    if plan.deleted:
        steps.append(f"deleted {len(plan.deleted)}")
    return f"{plan.table.version_table.name}: {', '.join(steps) or 'nothing'}"


def for_update(select: sa.Select[Any], connection: Connection, table: sa.Table) -> sa.Select[Any]:
    """``select`` locking the rows of ``table`` it reads (``FOR UPDATE``; SQLite has one
    writer at a time and no row locks)."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        return select
    return select.with_for_update(of=table) if dialect == "postgresql" else select.with_for_update()


def _step_statement(
    table: TableVersioning,
    step: Step,
    binding: Binding,
    name: str,
    tx: Any,
    after: sa.ColumnElement[bool] | None = None,
) -> sa.Insert | sa.Update | sa.Delete:
    """The statement of ``step`` for the keys of ``table`` bound as parameter ``name``,
    recording transaction ``tx``.

    ``after`` is an extra condition (the combined statement's ordering between CTEs).
    """
    vt, pt = table.version_table, table.parent_table

    def keys_in(t: sa.Table) -> sa.ColumnElement[bool]:
        return _keys_in(table, t, binding, name)

    extra = [] if after is None else [after]
    op = step.operation
    if op is not None:
        cols = list(table.attrs.values())
        source = sa.select(
            *[pt.c[c] for c in cols], tx, sa.literal_column(str(int(op)), sa.SmallInteger)
        ).where(keys_in(pt), *extra)
        return sa.insert(vt).from_select([*cols, "transaction_id", "operation_type"], source)
    if step is Step.DROP:
        return sa.delete(vt).where(keys_in(vt), vt.c.transaction_id == tx, *extra)
    if step is Step.REOPEN:
        return (
            sa.update(vt)
            .where(keys_in(vt), vt.c.end_transaction_id == tx, *extra)
            .values(end_transaction_id=None)
        )
    assert step is Step.CLOSE, step
    return (
        sa.update(vt)
        .where(keys_in(vt), vt.c.end_transaction_id.is_(None), *extra)
        .values(end_transaction_id=tx)
    )


def _table_statements(table: TableVersioning, binding: Binding) -> TableStatements:
    pt = table.parent_table
    copy_late_types(pt, table.version_table)
    tx = sa.bindparam("_tx", type_=table.version_table.c.transaction_id.type)
    load = sa.select(*[pt.c[c] for c in table.attrs.values()])
    return TableStatements(
        steps={step: _step_statement(table, step, binding, "_keys", tx) for step in STEP_ORDER},
        load=load.where(_keys_in(table, pt, binding, "_keys")),
        insert_deleted=sa.insert(table.version_table),
    )


def _combined_statement(first: TableVersioning, shape: Shape) -> sa.Select[Any]:
    new_transaction, steps, _, bindings = shape
    transactions = first.transaction_table
    ctes: list[Any] = []
    tx: Any
    if new_transaction:
        tx_cte = (
            sa.insert(transactions)
            .values({k: sa.bindparam(f"_t_{k}") for k in TRANSACTION_COLUMNS})
            .returning(transactions.c.id)
            .cte("history_transaction")
        )
        ctes.append(tx_cte)
        tx = sa.select(tx_cte.c.id).scalar_subquery()
    else:
        tx = sa.bindparam("_tx", type_=transactions.c.id.type)
    for i, (table, step) in enumerate(steps):
        copy_late_types(table.parent_table, table.version_table)
        after = _after(ctes[-1]) if ctes else None
        stmt = _step_statement(table, step, bindings[i], f"_k{i}", tx, after)
        ctes.append(stmt.returning(sa.literal_column("1")).cte(f"history_{i}"))
    final = sa.select(ctes[0].c.id) if new_transaction else sa.select(sa.literal_column("1"))
    return final.add_cte(*ctes)


def _after(previous: Any) -> sa.ColumnElement[bool]:
    """A condition that makes a CTE wait until ``previous`` has run (by counting its rows)."""
    return sa.select(sa.func.count()).select_from(previous).scalar_subquery() >= 0


def _bind_keys(keys: Sequence[Key]) -> list[Any]:
    return [k[0] for k in keys] if len(keys[0]) == 1 else list(keys)


def _keys_in(
    table: TableVersioning, t: sa.Table, binding: Binding, name: str
) -> sa.ColumnElement[bool]:
    """``t``'s key columns are among the keys bound as parameter ``name``."""
    cols = [t.c[k] for k in table.key_columns]
    if binding is Binding.ARRAY:
        array = sa.bindparam(name, type_=postgresql.ARRAY(cols[0].type))
        return cols[0] == sa.any_(array)
    if binding is Binding.JSON:
        each = sa.func.json_each(sa.bindparam(name, type_=sa.String)).table_valued("value")
        return cols[0].in_(sa.select(each.c.value))
    target = cols[0] if len(cols) == 1 else sa.tuple_(*cols)
    return target.in_(sa.bindparam(name, expanding=True))


#: The columns a new transaction row is given values for.
TRANSACTION_COLUMNS = ("issued_at", "user_id", "remote_addr", "meta")


def transaction_values(ctx: TransactionContext) -> dict[str, Any]:
    """The values of a new transaction row: now, and the transaction's context."""
    return {
        "issued_at": datetime.now(timezone.utc),
        "user_id": ctx.user_id,
        "remote_addr": ctx.remote_addr,
        "meta": dict(ctx.meta) or None,
    }


def insert_transaction(
    connection: Connection, transactions: sa.Table, context: TransactionContext
) -> int:
    """Insert a transaction row recording ``context``; return its id."""
    # Values go as parameters, not .values(), so the compiled INSERT is cached and reused.
    result = connection.execute(sa.insert(transactions), transaction_values(context))
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])
