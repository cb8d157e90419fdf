"""The flush hook: records every versioned insert, update and delete, set-based.

How a flush is recorded
-----------------------
Mapper events (``after_insert``, ``after_update``, ``before_delete``) fire for exactly the rows
the ORM writes — never a scan of the identity map — and only note the row's key (and, for
many-to-many relationships, the links added or removed) in the session's
:class:`UnitOfWork`. ``after_flush`` then writes, per version table, a handful of set-based
statements:

* one ``UPDATE`` closing the previous versions (``end_transaction_id``) of those keys;
* ``INSERT … SELECT`` from the parent table for inserted and updated rows, so the version holds
  what the database holds (server defaults, triggers and type processing included);
* one executemany ``INSERT`` of the deleted rows' last values, captured before the ``DELETE``.

On PostgreSQL the statements of a flush, with the transaction row, go as one statement of
chained data-modifying CTEs: one round trip per flush.

One transaction row per database transaction, one version row per key per transaction carrying
the final state: when a later flush of the same transaction touches a key again, its version
row is replaced, and a key whose net effect is nothing (insert then delete) leaves no row — and
if nothing is left at all, no transaction row either.

State lives in ``session.info`` and is dropped when the session's transaction ends. Savepoints
snapshot it; a rolled-back savepoint restores the snapshot, matching what the database undid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE

from .context import current_context
from .models import LinkVersioning, TableVersioning, VersionInfo
from .schema import INFO_KEY, Operation, OperationType, copy_late_types

__all__ = ["SESSION_INFO_KEY", "UnitOfWork"]

SESSION_INFO_KEY = INFO_KEY
# Keys per statement: keeps every backend's bound-parameter limit out of reach.
_CHUNK = 1000

Key = tuple[Any, ...]
Row = dict[str, Any]


@dataclass
class _KeyState:
    existed_before: bool  # the row existed when the transaction began
    has_row: bool  # a version row for this key exists in this transaction


Seen = dict[TableVersioning, dict[Key, _KeyState]]


@dataclass
class UnitOfWork:
    """History bookkeeping of one session transaction (kept in ``session.info``)."""

    transaction_id: int | None = None
    seen: Seen = field(default_factory=dict)
    rows: int = 0  # how many keys currently have a version row in this transaction
    # Filled by mapper events during a flush, drained by after_flush; deleted rows carry
    # their last values by column key.
    pending: dict[TableVersioning, dict[Key, tuple[Operation, Row | None]]] = field(
        default_factory=dict
    )
    # Many-to-many link changes seen by mapper events; resolved to keys once the flush has
    # assigned every primary key.
    links: list[tuple[LinkVersioning, InstanceState[Any], list[Any], list[Any]]] = field(
        default_factory=list
    )
    # Attribute values of deleted objects that were not loaded, fetched before the flush.
    preloaded: dict[VersionInfo, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    savepoints: dict[SessionTransaction, tuple[int | None, Seen, int]] = field(default_factory=dict)


def _uow(session: Session) -> UnitOfWork:
    uow: UnitOfWork | None = session.info.get(SESSION_INFO_KEY)
    if uow is None:
        uow = session.info[SESSION_INFO_KEY] = UnitOfWork()
    return uow


# --- mapper events ----------------------------------------------------------------------------


def record_insert(info: VersionInfo, state: InstanceState[Any]) -> None:
    """``after_insert``: note the new row (in every table of the model)."""
    _note(info, state, _key_from_dict(info, state), Operation.INSERT, None)
    _note_links(info, state, deleting=False)


def record_update(info: VersionInfo, state: InstanceState[Any], connection: Connection) -> None:
    """``after_update``: note the row if a tracked column really changed.

    A changed primary key is recorded as what it is for history: the old key's row is gone
    (DELETE, with its last values) and a row with the new key appeared (INSERT).
    """
    _note_links(info, state, deleting=False)
    committed = state.committed_state
    if not committed or not any(
        state.get_history(attr, PASSIVE_NO_INITIALIZE).has_changes()
        for attr in committed.keys() & info.watched
    ):
        return
    key = _key_from_dict(info, state)
    old_key = state.identity  # still the key the row was loaded with
    if old_key is None or old_key == key:
        _note(info, state, key, Operation.UPDATE, None)
        return
    old: dict[str, Any] = {}
    for attr in info.attrs:
        history = state.get_history(attr, PASSIVE_NO_INITIALIZE)
        before = history.deleted or history.unchanged
        if before:
            old[attr] = before[0]
    if len(old) < len(info.attrs):
        # Attributes never loaded were not changed either: the row (now under its new key)
        # still holds their old values.
        old = {**_load_values(connection, info, [key]).get(key, {}), **old}
    _note(info, state, old_key, Operation.DELETE, old)
    _note(info, state, key, Operation.INSERT, None)


def record_delete(info: VersionInfo, state: InstanceState[Any], connection: Connection) -> None:
    """``before_delete``: note the row with its last values (the row is gone after the flush)."""
    key = state.identity
    assert key is not None
    session = state.session
    assert session is not None
    values = {a: state.dict[a] for a in info.attrs if a in state.dict}
    if len(values) < len(info.attrs):
        loaded = _uow(session).preloaded.get(info, {}).get(key)
        if loaded is None:
            # Not seen by before_flush (e.g. a delete-orphan found during the flush).
            loaded = _load_values(connection, info, [key]).get(key, {})
        values = {**loaded, **values}
    _note(info, state, key, Operation.DELETE, values)
    _note_links(info, state, deleting=True)


def _note_links(info: VersionInfo, state: InstanceState[Any], *, deleting: bool) -> None:
    """Remember links added to / removed from ``state``'s many-to-many collections."""
    for link in info.links:
        history = state.get_history(link.key, PASSIVE_NO_INITIALIZE)
        removed = [*history.deleted, *history.unchanged] if deleting else list(history.deleted)
        added = [] if deleting else list(history.added)
        if added or removed:
            session = state.session
            assert session is not None
            _uow(session).links.append((link, state, added, removed))


def _key_from_dict(info: VersionInfo, state: InstanceState[Any]) -> Key:
    return tuple(state.dict[a] for a in info.pk_attrs)


def _note(
    info: VersionInfo,
    state: InstanceState[Any],
    key: Key,
    op: Operation,
    values: dict[str, Any] | None,
) -> None:
    session = state.session
    assert session is not None
    pending = _uow(session).pending
    for table in info.tables:
        row = None if values is None else {c: values.get(a) for a, c in table.attrs.items()}
        pending.setdefault(table, {})[key] = (op, row)


# --- session events ---------------------------------------------------------------------------


def before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    """Fetch, one query per table, the values of deleted rows that are not loaded."""
    if not session.deleted:
        return
    wanted: dict[VersionInfo, list[Key]] = {}
    for obj in session.deleted:
        state: InstanceState[Any] = sa.inspect(obj)
        info: VersionInfo | None = state.manager.info.get(INFO_KEY)
        if info is None or info.parent_mapper is not state.mapper or state.identity is None:
            continue
        if any(a not in state.dict for a in info.attrs):
            wanted.setdefault(info, []).append(state.identity)
    if not wanted:
        return
    uow = _uow(session)
    for info, keys in wanted.items():
        connection = session.connection(bind_arguments={"mapper": info.parent_mapper})
        uow.preloaded.setdefault(info, {}).update(_load_values(connection, info, keys))


def after_flush(session: Session, flush_context: UOWTransaction) -> None:
    """Write the history of this flush: a few set-based statements per version table."""
    uow: UnitOfWork | None = session.info.get(SESSION_INFO_KEY)
    if uow is None or not (uow.pending or uow.links):
        return
    if uow.links:
        _resolve_links(uow)
    pending, uow.pending = uow.pending, {}
    uow.preloaded.clear()
    plans = [_plan(uow, table, changes) for table, changes in pending.items()]
    transactions = plans[0].table.transaction_table
    connection = session.connection(bind_arguments={"clause": plans[0].table.parent_table})
    if connection.dialect.name == "postgresql" and all(p.combinable for p in plans):
        _write_combined(connection, uow, plans)
    else:
        for plan in plans:
            _write_sequential(
                session.connection(bind_arguments={"clause": plan.table.parent_table}),
                uow,
                plan,
            )
    if uow.rows == 0 and uow.transaction_id is not None:
        # Everything this transaction did cancelled out: leave no transaction row either.
        connection.execute(sa.delete(transactions).where(transactions.c.id == uow.transaction_id))
        uow.transaction_id = None


def _resolve_links(uow: UnitOfWork) -> None:
    """Turn remembered link changes into keyed changes of the association version tables."""
    for link, state, added, removed in uow.links:
        table = link.table
        pending = uow.pending.setdefault(table, {})
        local = {col: _value(state, attr) for col, attr in link.local_attrs.items()}
        for op, targets in ((Operation.DELETE, removed), (Operation.INSERT, added)):
            for target in targets:
                target_state: InstanceState[Any] = sa.inspect(target)
                values = {
                    **local,
                    **{col: _value(target_state, a) for col, a in link.remote_attrs.items()},
                }
                key = tuple(values[c] for c in table.key_columns)
                pending[key] = (op, None if op is Operation.INSERT else values)
    uow.links.clear()


def _value(state: InstanceState[Any], attr: str) -> Any:
    return state.dict[attr] if attr in state.dict else getattr(state.obj(), attr)


def after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    """Snapshot the bookkeeping when a savepoint begins."""
    if transaction.nested:
        uow = _uow(session)
        seen = {
            table: {key: _KeyState(ks.existed_before, ks.has_row) for key, ks in keys.items()}
            for table, keys in uow.seen.items()
        }
        uow.savepoints[transaction] = (uow.transaction_id, seen, uow.rows)


def after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    """Undo the bookkeeping of what the database just rolled back."""
    uow: UnitOfWork | None = session.info.get(SESSION_INFO_KEY)
    if uow is None:
        return
    uow.pending.clear()
    uow.links.clear()
    uow.preloaded.clear()
    snapshot = uow.savepoints.pop(previous_transaction, None)
    if previous_transaction.nested and snapshot is not None:
        uow.transaction_id, uow.seen, uow.rows = snapshot
    elif previous_transaction.parent is None:
        session.info.pop(SESSION_INFO_KEY, None)


def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """Drop all bookkeeping when the session's outermost transaction ends."""
    if transaction.parent is None:
        session.info.pop(SESSION_INFO_KEY, None)


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The statements one flush needs for one version table."""

    table: TableVersioning
    drop: list[Key] = field(default_factory=list)  # this transaction's rows to replace/remove
    reopen: list[Key] = field(default_factory=list)  # net change vanished: previous is current
    close: list[Key] = field(default_factory=list)  # first version row in this transaction
    copy: dict[Operation, list[Key]] = field(
        default_factory=lambda: {Operation.INSERT: [], Operation.UPDATE: []}
    )
    deleted: list[Row] = field(default_factory=list)  # last values of deleted rows

    @property
    def writes(self) -> bool:
        """Whether version rows are added (which needs a transaction row)."""
        return bool(self.close or self.deleted or any(self.copy.values()))

    @property
    def combinable(self) -> bool:
        """Whether it fits in one combined statement (keys within one chunk, no deletes)."""
        sizes = [self.drop, self.reopen, self.close, *self.copy.values()]
        return not self.deleted and all(len(keys) <= _CHUNK for keys in sizes)


def _plan(
    uow: UnitOfWork, table: TableVersioning, changes: dict[Key, tuple[Operation, Row | None]]
) -> _Plan:
    """Fold this flush's changes into the transaction's bookkeeping; return what to write."""
    seen = uow.seen.setdefault(table, {})
    plan = _Plan(table)
    for key, (op, row) in changes.items():
        ks = seen.get(key)
        if ks is None:
            ks = seen[key] = _KeyState(existed_before=op is not Operation.INSERT, has_row=False)
        net = _net_operation(ks.existed_before, exists_now=op is not Operation.DELETE)
        if ks.has_row:
            plan.drop.append(key)
            if net is None:
                plan.reopen.append(key)
        elif net is not None:
            plan.close.append(key)
        if net is None:
            uow.rows -= ks.has_row
            ks.has_row = False
            continue
        uow.rows += not ks.has_row
        ks.has_row = True
        if net is Operation.DELETE:
            assert row is not None
            plan.deleted.append(row)
        else:
            plan.copy[net].append(key)
    return plan


def _write_sequential(connection: Connection, uow: UnitOfWork, plan: _Plan) -> None:
    """Run a plan as separate statements (compiled once per table, cached)."""
    stmts = _statements(plan.table)
    if plan.drop:
        _run_keyed(connection, stmts["drop"], plan.drop, {"_tx": uow.transaction_id})
    if plan.reopen:
        _run_keyed(connection, stmts["reopen"], plan.reopen, {"_tx": uow.transaction_id})
    if not plan.writes:
        return
    if uow.transaction_id is None:
        uow.transaction_id = _insert_transaction(connection, plan.table.transaction_table)
    tx = uow.transaction_id
    if plan.close:
        _run_keyed(connection, stmts["close"], plan.close, {"_tx": tx})
    for op, keys in plan.copy.items():
        if keys:
            _run_keyed(connection, stmts["copy"], keys, {"_tx": tx, "_op": op})
    if plan.deleted:
        for row in plan.deleted:
            row["transaction_id"] = tx
            row["operation_type"] = Operation.DELETE
        connection.execute(sa.insert(plan.table.version_table), plan.deleted)


def _write_combined(connection: Connection, uow: UnitOfWork, plans: list[_Plan]) -> None:
    """Run every plan of a flush as ONE statement of chained data-modifying CTEs (PostgreSQL).

    For one-row commits the history statements are the whole cost, so this turns three round
    trips (transaction row, closing UPDATE, version INSERT) into one. Each CTE waits for the
    previous one (it counts its rows first): closing a version must precede inserting the next
    one, which the unique "current version" index would otherwise reject. The statement is
    built once per shape of flush (which steps, on which tables) and reused with parameters.
    """
    new_transaction = uow.transaction_id is None and any(p.writes for p in plans)
    steps: list[tuple[TableVersioning, str, Operation | None]] = []
    params: dict[str, Any] = {}
    for plan in plans:
        for kind, keys, op in (
            ("drop", plan.drop, None),
            ("reopen", plan.reopen, None),
            ("close", plan.close, None),
            ("copy", plan.copy[Operation.INSERT], Operation.INSERT),
            ("copy", plan.copy[Operation.UPDATE], Operation.UPDATE),
        ):
            if keys:
                params[f"_k{len(steps)}"] = _bind_keys(keys)
                steps.append((plan.table, kind, op))
    if not steps:
        return
    shape = (new_transaction, tuple((table, kind) for table, kind, _ in steps))
    cache = plans[0].table.statements.setdefault("combined", {})
    stmt = cache.get(shape)
    if stmt is None:
        stmt = cache[shape] = _combined_statement(plans[0].table.transaction_table, shape)
    for i, (_, _, op) in enumerate(steps):
        if op is not None:
            params[f"_op{i}"] = op
    if new_transaction:
        params.update({f"_t_{k}": v for k, v in _transaction_values().items()})
    else:
        params["_tx"] = uow.transaction_id
    result = connection.execute(stmt, params)
    if new_transaction:
        uow.transaction_id = int(result.scalar_one())


def _combined_statement(
    transactions: sa.Table, shape: tuple[bool, tuple[tuple[TableVersioning, str], ...]]
) -> sa.Select[Any]:
    new_transaction, steps = shape
    ctes: list[Any] = []
    tx: Any
    if new_transaction:
        tx_cte = (
            sa.insert(transactions)
            .values({k: sa.bindparam(f"_t_{k}") for k in _transaction_values()})
            .returning(transactions.c.id)
            .cte("history_transaction")
        )
        ctes.append(tx_cte)
        tx = sa.select(tx_cte.c.id).scalar_subquery()
    else:
        tx = sa.bindparam("_tx", type_=transactions.c.id.type)

    for i, (table, kind) in enumerate(steps):
        op = sa.bindparam(f"_op{i}", type_=OperationType()) if kind == "copy" else None
        after = _after(ctes[-1]) if ctes else None
        stmt = _step(table, kind, sa.bindparam(f"_k{i}", expanding=True), tx, op, after)
        ctes.append(stmt.returning(sa.literal_column("1")).cte(f"history_{i}"))
    final = sa.select(ctes[0].c.id) if new_transaction else sa.select(sa.literal_column("1"))
    return final.add_cte(*ctes)


def _after(previous: Any) -> sa.ColumnElement[bool]:
    """A condition that makes a CTE wait until ``previous`` has run (by counting its rows)."""
    return sa.select(sa.func.count()).select_from(previous).scalar_subquery() >= 0


def _bind_keys(keys: Sequence[Key]) -> list[Any]:
    return [k[0] for k in keys] if len(keys[0]) == 1 else list(keys)


def _keys_in(table: TableVersioning, t: sa.Table, keys: Any) -> sa.ColumnElement[bool]:
    cols = [t.c[k] for k in table.key_columns]
    target = cols[0] if len(cols) == 1 else sa.tuple_(*cols)
    return target.in_(keys)


def _net_operation(existed_before: bool, exists_now: bool) -> Operation | None:
    if existed_before:
        return Operation.UPDATE if exists_now else Operation.DELETE
    return Operation.INSERT if exists_now else None


def _transaction_values() -> dict[str, Any]:
    ctx = current_context()
    return {
        "issued_at": datetime.now(timezone.utc),
        "user_id": ctx.user_id,
        "remote_addr": ctx.remote_addr,
        "meta": dict(ctx.meta) or None,
    }


def _insert_transaction(connection: Connection, transactions: sa.Table) -> int:
    # Values go as parameters, not .values(), so the compiled INSERT is cached and reused.
    result = connection.execute(sa.insert(transactions), _transaction_values())
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _run_keyed(
    connection: Connection, stmt: sa.Executable, keys: Sequence[Key], params: dict[str, Any]
) -> None:
    for start in range(0, len(keys), _CHUNK):
        connection.execute(stmt, {**params, "_keys": _bind_keys(keys[start : start + _CHUNK])})


def _load_values(
    connection: Connection, info: VersionInfo, keys: Iterable[Key]
) -> dict[Key, dict[str, Any]]:
    """Current values of ``info``'s tracked attributes for ``keys``, one query per table."""
    keys = list(keys)
    out: dict[Key, dict[str, Any]] = {}
    for table in info.tables:
        stmt = _statements(table)["load"]
        for start in range(0, len(keys), _CHUNK):
            chunk = _bind_keys(keys[start : start + _CHUNK])
            for row in connection.execute(stmt, {"_keys": chunk}).mappings():
                key = tuple(row[c] for c in table.key_columns)
                out.setdefault(key, {}).update(
                    {a: row[c] for a, c in table.attrs.items() if a in info.attr_set}
                )
    return out


def _step(
    table: TableVersioning,
    kind: str,
    keys: Any,
    tx: Any,
    op: Any = None,
    after: sa.ColumnElement[bool] | None = None,
) -> Any:
    """One history statement for ``keys`` of ``table``: drop, reopen, close or copy.

    ``after`` is an extra condition (the combined statement's ordering between CTEs).
    """
    vt, pt = table.version_table, table.parent_table
    extra = [] if after is None else [after]
    if kind == "copy":
        cols = list(table.attrs.values())
        source = sa.select(*[pt.c[c] for c in cols], tx, op).where(
            _keys_in(table, pt, keys), *extra
        )
        return sa.insert(vt).from_select([*cols, "transaction_id", "operation_type"], source)
    if kind == "drop":
        return sa.delete(vt).where(_keys_in(table, vt, keys), vt.c.transaction_id == tx, *extra)
    if kind == "reopen":
        return (
            sa.update(vt)
            .where(_keys_in(table, vt, keys), vt.c.end_transaction_id == tx, *extra)
            .values(end_transaction_id=None)
        )
    assert kind == "close", kind
    return (
        sa.update(vt)
        .where(_keys_in(table, vt, keys), vt.c.end_transaction_id.is_(None), *extra)
        .values(end_transaction_id=tx)
    )


def _statements(table: TableVersioning) -> dict[str, Any]:
    """Build (once per table) the statements the hook runs, with bound parameters only."""
    if "load" in table.statements:
        return table.statements
    pt = table.parent_table
    copy_late_types(pt, table.version_table)
    keys: Any = sa.bindparam("_keys", expanding=True)
    tx = sa.bindparam("_tx", type_=table.version_table.c.transaction_id.type)
    op = sa.bindparam("_op", type_=OperationType())
    table.statements.update(
        {kind: _step(table, kind, keys, tx, op) for kind in ("drop", "reopen", "close", "copy")},
        load=sa.select(*[pt.c[c] for c in table.attrs.values()]).where(_keys_in(table, pt, keys)),
    )
    return table.statements
