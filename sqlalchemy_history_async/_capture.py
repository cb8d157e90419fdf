"""The flush hook (ORM capture): listeners → unit of work → plan.

How a flush is recorded
-----------------------
Mapper events (``after_insert``, ``after_update``, ``before_delete``) fire for exactly the rows
the ORM writes — never a scan of the identity map — and only note the row's key (and, for
many-to-many relationships, the links added or removed) in the session's
:class:`UnitOfWork`. ``after_flush`` folds what the flush noted into the transaction's
bookkeeping and hands the resulting plans to the :class:`~._writes.Writer`, which writes, per
version table, a handful of set-based statements (one statement in all on PostgreSQL).

One transaction row per database transaction, one version row per key per transaction carrying
the final state: when a later flush of the same transaction touches a key again, its version
row is replaced, and a key whose net effect is nothing (insert then delete) leaves no row — and
if nothing is left at all, no transaction row either.

State lives in ``session.info`` (one :class:`UnitOfWork` per manager) and is dropped when the
session's transaction ends. Savepoints snapshot it; a rolled-back savepoint restores the
snapshot, matching what the database undid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.base import NEVER_SET, NO_VALUE, PASSIVE_NO_INITIALIZE

from ._exceptions import ConfigurationError
from ._info import Catalog, LinkVersioning, TableVersioning, VersionInfo
from ._schema import INFO_KEY, Operation
from ._writes import Key, Plan, Row, Step, Writer

__all__ = ["SESSION_INFO_KEY", "Recorder", "UnitOfWork"]

#: ``session.info[SESSION_INFO_KEY]`` maps each recorder to its :class:`UnitOfWork`.
SESSION_INFO_KEY = INFO_KEY


@dataclass
class _KeyState:
    existed_before: bool  # the row existed when the transaction began
    has_row: bool  # a version row for this key exists in this transaction


Seen = dict[TableVersioning, dict[Key, _KeyState]]


@dataclass
class UnitOfWork:
    """History bookkeeping of one session transaction for one manager."""

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


class Recorder:
    """Records the ORM writes of one manager's models; its methods are the event listeners.

    A flush that writes a model declaring ``__versioned__`` that no manager built a version
    class for (it was defined before versioning was turned on) fails loudly instead of
    recording nothing.
    """

    def __init__(self, writer: Writer, catalog: Catalog) -> None:
        self.writer = writer
        self._catalog = catalog
        self._recordable: set[type[Any]] = set()  # classes that passed _check_versioned

    # --- per-session state ------------------------------------------------------------------

    def uow(self, session: Session) -> UnitOfWork:
        """This recorder's bookkeeping of the session's transaction (created on first use)."""
        states: dict[Recorder, UnitOfWork] = session.info.setdefault(SESSION_INFO_KEY, {})
        uow = states.get(self)
        if uow is None:
            uow = states[self] = UnitOfWork()
        return uow

    def _existing(self, session: Session) -> UnitOfWork | None:
        states: dict[Recorder, UnitOfWork] | None = session.info.get(SESSION_INFO_KEY)
        return None if states is None else states.get(self)

    def _drop(self, session: Session) -> None:
        states: dict[Recorder, UnitOfWork] | None = session.info.get(SESSION_INFO_KEY)
        if states is not None:
            states.pop(self, None)
            if not states:
                del session.info[SESSION_INFO_KEY]

    # --- mapper events ------------------------------------------------------------------------

    def after_insert(
        self, info: VersionInfo, mapper: Mapper[Any], connection: Connection, target: Any
    ) -> None:
        """Note the new row (in every table of the model)."""
        state: InstanceState[Any] = sa.inspect(target)
        self._note(info, state, _key_from_dict(info, state), Operation.INSERT, None)
        self._note_links(info, state, deleting=False)

    def after_update(
        self, info: VersionInfo, mapper: Mapper[Any], connection: Connection, target: Any
    ) -> None:
        """Note the row if a tracked column really changed.

        A changed primary key is recorded as what it is for history: the old key's row is gone
        (DELETE, with its last values) and a row with the new key appeared (INSERT).
        """
        state: InstanceState[Any] = sa.inspect(target)
        self._note_links(info, state, deleting=False)
        committed = state.committed_state
        if not committed or not any(
            state.get_history(attr, PASSIVE_NO_INITIALIZE).has_changes()
            for attr in committed.keys() & info.watched
        ):
            return
        key = _key_from_dict(info, state)
        old_key = state.identity  # still the key the row was loaded with
        if old_key is None or old_key == key:
            self._note(info, state, key, Operation.UPDATE, None)
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
            old = {**self.writer.load_values(connection, info, [key]).get(key, {}), **old}
        self._note(info, state, old_key, Operation.DELETE, old)
        self._note(info, state, key, Operation.INSERT, None)

    def before_delete(
        self, info: VersionInfo, mapper: Mapper[Any], connection: Connection, target: Any
    ) -> None:
        """Note the row with its last values (the row is gone after the flush)."""
        state: InstanceState[Any] = sa.inspect(target)
        key = state.identity
        assert key is not None
        session = state.session
        assert session is not None
        values = _stored_values(info, state)
        if len(values) < len(info.attrs):
            loaded = self.uow(session).preloaded.get(info, {}).get(key)
            if loaded is None:
                # Not seen by before_flush (e.g. a delete-orphan found during the flush).
                loaded = self.writer.load_values(connection, info, [key]).get(key, {})
            values = {**loaded, **values}
        self._note(info, state, key, Operation.DELETE, values)
        self._note_links(info, state, deleting=True)

    def _note_links(self, info: VersionInfo, state: InstanceState[Any], *, deleting: bool) -> None:
        """Remember links added to / removed from ``state``'s many-to-many collections."""
        for link in info.links:
            history = state.get_history(link.key, PASSIVE_NO_INITIALIZE)
            removed = [*history.deleted, *history.unchanged] if deleting else list(history.deleted)
            added = [] if deleting else list(history.added)
            if added or removed:
                session = state.session
                assert session is not None
                self.uow(session).links.append((link, state, added, removed))

    def _note(
        self,
        info: VersionInfo,
        state: InstanceState[Any],
        key: Key,
        op: Operation,
        values: dict[str, Any] | None,
    ) -> None:
        session = state.session
        assert session is not None
        pending = self.uow(session).pending
        for table in info.tables:
            row = None if values is None else {c: values.get(a) for a, c in table.attrs.items()}
            pending.setdefault(table, {})[key] = (op, row)

    # --- session events -----------------------------------------------------------------------

    def before_flush(self, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
        """Refuse unversioned ``__versioned__`` models; preload deleted rows' missing values."""
        for obj in (*session.new, *session.dirty):
            self._check_versioned(sa.inspect(obj))
        if not session.deleted:
            return
        wanted: dict[VersionInfo, list[Key]] = {}
        for obj in session.deleted:
            state: InstanceState[Any] = sa.inspect(obj)
            self._check_versioned(state)
            info: VersionInfo | None = state.manager.info.get(INFO_KEY)
            if (
                info is None
                or info.parent_mapper is not state.mapper
                or state.identity is None
                or info.transaction_class is not self._catalog.transaction_class
            ):
                continue
            if len(_stored_values(info, state)) < len(info.attrs):
                wanted.setdefault(info, []).append(state.identity)
        if not wanted:
            return
        uow = self.uow(session)
        for info, keys in wanted.items():
            connection = session.connection(bind_arguments={"mapper": info.parent_mapper})
            uow.preloaded.setdefault(info, {}).update(
                self.writer.load_values(connection, info, keys)
            )

    def _check_versioned(self, state: InstanceState[Any]) -> None:
        cls = state.class_
        if cls in self._recordable:
            return
        if hasattr(cls, "__versioned__") and INFO_KEY not in state.manager.info:
            raise ConfigurationError(
                f"{cls.__name__} declares __versioned__ but has no version class, so this flush "
                "would record no history for it: it was mapped before make_versioned() (or "
                "manager.install()) was called; call it before the models are defined"
            )
        self._recordable.add(cls)

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        """Write the history of this flush: a few set-based statements per version table."""
        uow = self._existing(session)
        if uow is None or not (uow.pending or uow.links):
            return
        if uow.links:
            _resolve_links(uow)
        pending, uow.pending = uow.pending, {}
        uow.preloaded.clear()
        plans = [_plan(uow, table, changes) for table, changes in pending.items()]
        uow.transaction_id = self.writer.write(session, uow.transaction_id, plans)
        if uow.rows == 0 and uow.transaction_id is not None:
            # Everything this transaction did cancelled out: leave no transaction row either.
            self.writer.delete_transaction(session, plans[0].table, uow.transaction_id)
            uow.transaction_id = None

    def after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        """Snapshot the bookkeeping when a savepoint begins."""
        if transaction.nested:
            uow = self.uow(session)
            seen = {
                table: {key: _KeyState(ks.existed_before, ks.has_row) for key, ks in keys.items()}
                for table, keys in uow.seen.items()
            }
            uow.savepoints[transaction] = (uow.transaction_id, seen, uow.rows)

    def after_soft_rollback(
        self, session: Session, previous_transaction: SessionTransaction
    ) -> None:
        """Undo the bookkeeping of what the database just rolled back."""
        uow = self._existing(session)
        if uow is None:
            return
        uow.pending.clear()
        uow.links.clear()
        uow.preloaded.clear()
        snapshot = uow.savepoints.pop(previous_transaction, None)
        if previous_transaction.nested and snapshot is not None:
            uow.transaction_id, uow.seen, uow.rows = snapshot
        elif previous_transaction.parent is None:
            self._drop(session)

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Drop all bookkeeping when the session's outermost transaction ends."""
        if transaction.parent is None:
            self._drop(session)


def _stored_values(info: VersionInfo, state: InstanceState[Any]) -> dict[str, Any]:
    """The tracked values the database holds for ``state``, as far as they are in memory.

    An attribute changed but not flushed yet counts with its value as loaded (a row deleted
    with pending changes never held them); one whose loaded value is unknown is left out.
    """
    values: dict[str, Any] = {}
    committed = state.committed_state
    for attr in info.attrs:
        if attr in committed:
            old = committed[attr]
            if old is not NO_VALUE and old is not NEVER_SET:
                values[attr] = old
        elif attr in state.dict:
            values[attr] = state.dict[attr]
    return values


def _key_from_dict(info: VersionInfo, state: InstanceState[Any]) -> Key:
    return tuple(state.dict[a] for a in info.pk_attrs)


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


def _plan(
    uow: UnitOfWork, table: TableVersioning, changes: dict[Key, tuple[Operation, Row | None]]
) -> Plan:
    """Fold this flush's changes into the transaction's bookkeeping; return what to write."""
    seen = uow.seen.setdefault(table, {})
    plan = Plan(table)
    for key, (op, row) in changes.items():
        ks = seen.get(key)
        if ks is None:
            ks = seen[key] = _KeyState(existed_before=op is not Operation.INSERT, has_row=False)
        net = _net_operation(ks.existed_before, exists_now=op is not Operation.DELETE)
        if ks.has_row:
            plan.keys[Step.DROP].append(key)
            if net is None:
                plan.keys[Step.REOPEN].append(key)
        elif net is not None:
            plan.keys[Step.CLOSE].append(key)
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
            step = Step.COPY_INSERT if net is Operation.INSERT else Step.COPY_UPDATE
            plan.keys[step].append(key)
    return plan


def _net_operation(existed_before: bool, exists_now: bool) -> Operation | None:
    if existed_before:
        return Operation.UPDATE if exists_now else Operation.DELETE
    return Operation.INSERT if exists_now else None
