"""The flush hook (ORM capture): listeners → unit of work → plan.

How a flush is recorded
-----------------------
Mapper events (``after_insert``, ``after_update``, ``before_delete``) fire for exactly the rows
the ORM writes — never a scan of the identity map — and only note the row's key in the
session's :class:`UnitOfWork`. Many-to-many links are noted from the statements the flush runs
on the association tables (the ``before_execute`` event while the session flushes): exactly
the links the database gains and loses, whatever the state of the collections in memory. Statements
run through ``Session.execute()`` (ORM bulk and Core DML) are noted into the same
:class:`UnitOfWork` by :mod:`._bulk`.
What the flushes noted accumulates until the transaction commits: ``before_commit`` flushes
the session, takes the commit-order lock (:mod:`._order`) and hands the plans to the
:class:`~._writes.Writer`, which writes, per version table, a handful of set-based statements
(one statement in all on PostgreSQL). Transaction ids, validity chains and the change feed
therefore follow commit order. Once a transaction holds the lock (it committed its history,
or :func:`flush_history_sync` asked for the history early), each later flush writes its
history at once.

One transaction row per database transaction, one version row per key per transaction carrying
the final state; a key whose net effect is nothing (insert then delete) leaves no row — and if
nothing is left at all, no transaction row either. (After an early write, a later flush that
touches a key again replaces its version row.)

State lives in ``session.info`` (one :class:`UnitOfWork` per manager) and is dropped when the
session's transaction ends. Savepoints snapshot it; a rolled-back savepoint restores the
snapshot, matching what the database undid.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstanceState, Mapper, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.base import NEVER_SET, NO_VALUE, PASSIVE_NO_INITIALIZE, instance_state

from ._context import TransactionContext, current_context, recording
from ._exceptions import ConfigurationError, UnrecordedWriteError
from ._info import Catalog, TableVersioning, VersionInfo
from ._order import CommitLocks
from ._schema import INFO_KEY, Operation
from ._sqlite import begin_before_savepoint
from ._writes import Key, Plan, Row, Step, Writer

__all__ = [
    "SESSION_INFO_KEY",
    "Recorder",
    "UnitOfWork",
    "flush_history",
    "flush_history_sync",
    "listen",
    "pend",
    "unlisten",
]

#: ``session.info[SESSION_INFO_KEY]`` maps each recorder to its :class:`UnitOfWork`.
SESSION_INFO_KEY = INFO_KEY


@dataclass(slots=True)
class _KeyState:
    existed_before: bool  # the row existed when the transaction began
    has_row: bool  # a version row for this key exists in this transaction


Seen = dict[TableVersioning, dict[Key, _KeyState]]


#: A key's change in this flush: the first operation seen (did the row exist before?), the
#: last one (``None``: the row is back to what it held when the transaction began), and for
#: deletes the row's last values by column key.
Pending = tuple[Operation | None, Operation | None, Row | None]

_RANKS = itertools.count()

#: An attribute's value at the start of the transaction that is not known.
_UNKNOWN = object()


def pend(pending: dict[Key, Pending], key: Key, op: Operation | None, row: Row | None) -> None:
    """Note a key's change: its first operation stays, the last one and its values replace."""
    earlier = pending.get(key)
    pending[key] = (op if earlier is None else earlier[0], op, row)


Changes = dict[TableVersioning, dict[Key, Pending]]


@dataclass
class _Snapshot:
    """The bookkeeping when a savepoint began, restored when it rolls back."""

    transaction_id: int | None
    seen: Seen
    rows: int
    pending: Changes
    ordered: bool
    context: TransactionContext | None
    bulk_touched: dict[TableVersioning, set[Key]]
    unrecorded: str | None


@dataclass
class UnitOfWork:
    """History bookkeeping of one session transaction for one manager."""

    transaction_id: int | None = None
    seen: Seen = field(default_factory=dict)  # keys with history written in this transaction
    rows: int = 0  # how many keys currently have a version row in this transaction
    # Filled by mapper events, drained when the history is written (at commit, or at each
    # flush once ``ordered``); deleted rows carry their last values by column key.
    pending: Changes = field(default_factory=dict)
    # The transaction holds the commit-order lock: its history is written at each flush.
    ordered: bool = False
    # The context in force at the first flush that noted a change: the transaction row's.
    context: TransactionContext | None = None
    # Keys changed by statements run through Session.execute() (``_bulk``): the objects in
    # memory may not hold what the database does, so their values are read from the database.
    bulk_touched: dict[TableVersioning, set[Key]] = field(default_factory=dict)
    # Why a statement changed rows whose history could not be recorded: the commit refuses.
    unrecorded: str | None = None
    # Attribute values of deleted objects that were not loaded, fetched before the flush.
    preloaded: dict[VersionInfo, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    # Values the attributes changed so far had when the transaction began, per row: a row
    # changed and changed back by later flushes records nothing.
    originals: dict[tuple[VersionInfo, Key], dict[str, Any]] = field(default_factory=dict)
    savepoints: dict[SessionTransaction, _Snapshot] = field(default_factory=dict)
    # Listeners put on the session's connections, see :func:`listen`: (connection, event
    # name, listener, owner). The recorder's note association-table statements during a flush;
    # ``_bulk``'s the statements sent on the connection. All are gone when the transaction
    # ends.
    listening: list[tuple[Connection, str, Callable[..., Any], object]] = field(
        default_factory=list
    )
    # Statements sent on a watched connection that are running, by id: the recording step
    # that finishes once the statement has run (``_bulk``).
    steps: dict[int, Generator[Any, Any, Any]] = field(default_factory=dict)
    # The subtransaction of a legacy ``Session.bulk_*`` call that is running.
    bulk_method: SessionTransaction | None = None

    def existed_before(self, table: TableVersioning, key: Key) -> bool | None:
        """Whether the row existed when the transaction began (``None``: not touched yet)."""
        ks = self.seen.get(table, {}).get(key)
        if ks is not None:
            return ks.existed_before
        change = self.pending.get(table, {}).get(key)
        return None if change is None else change[0] is not Operation.INSERT

    def snapshot(self) -> _Snapshot:
        """A copy of the bookkeeping a rolled-back savepoint goes back to."""
        seen = {
            table: {key: _KeyState(ks.existed_before, ks.has_row) for key, ks in keys.items()}
            for table, keys in self.seen.items()
        }
        pending = {table: dict(changes) for table, changes in self.pending.items()}
        touched = {table: set(keys) for table, keys in self.bulk_touched.items()}
        return _Snapshot(
            self.transaction_id,
            seen,
            self.rows,
            pending,
            self.ordered,
            self.context,
            touched,
            self.unrecorded,
        )

    def restore(self, snapshot: _Snapshot) -> None:
        """Go back to ``snapshot``."""
        self.transaction_id, self.seen = snapshot.transaction_id, snapshot.seen
        self.rows, self.pending = snapshot.rows, snapshot.pending
        self.ordered, self.context = snapshot.ordered, snapshot.context
        self.bulk_touched, self.unrecorded = snapshot.bulk_touched, snapshot.unrecorded

    def touched_in_bulk(self, table: TableVersioning, key: Key) -> bool:
        """Whether a statement run through ``Session.execute()`` changed the row."""
        return key in self.bulk_touched.get(table, ())


class Recorder:
    """Records the ORM writes of one manager's models; its methods are the event listeners.

    A flush that writes a model declaring ``__versioned__`` that no manager built a version
    class for (it was defined before versioning was turned on) fails loudly instead of
    recording nothing.
    """

    def __init__(self, writer: Writer, catalog: Catalog) -> None:
        self.writer = writer
        #: creation order: a session with several managers takes their locks in this order
        self.rank = next(_RANKS)
        self._catalog = catalog
        self._recordable: set[type[Any]] = set()  # classes that passed _check_versioned
        self._locks = CommitLocks()

    # --- per-session state ------------------------------------------------------------------

    def uow(self, session: Session) -> UnitOfWork:
        """This recorder's bookkeeping of the session's transaction (created on first use)."""
        states: dict[Recorder, UnitOfWork] = session.info.setdefault(SESSION_INFO_KEY, {})
        uow = states.get(self)
        if uow is None:
            uow = states[self] = UnitOfWork()
        return uow

    def existing(self, session: Session) -> UnitOfWork | None:
        """This recorder's bookkeeping of the session's transaction, if it has any."""
        states: dict[Recorder, UnitOfWork] | None = session.info.get(SESSION_INFO_KEY)
        return None if states is None else states.get(self)

    def _drop(self, session: Session) -> None:
        states: dict[Recorder, UnitOfWork] | None = session.info.get(SESSION_INFO_KEY)
        if states is not None:
            uow = states.pop(self, None)
            if uow is not None:
                unlisten(uow, None)
            if not states:
                del session.info[SESSION_INFO_KEY]

    # --- mapper events ------------------------------------------------------------------------

    def after_insert(
        self,
        info: VersionInfo,
        mapper: Mapper[Any],
        connection: Connection,
        state: InstanceState[Any],
    ) -> None:
        """Note the new row (in every table of the model)."""
        if not recording():
            return
        self._note(info, state, _key_from_dict(info, state), Operation.INSERT, None)

    def after_update(
        self,
        info: VersionInfo,
        mapper: Mapper[Any],
        connection: Connection,
        state: InstanceState[Any],
    ) -> None:
        """Note the row if a tracked column really changed.

        A changed primary key is recorded as what it is for history: the old key's row is gone
        (DELETE, with its last values) and a row with the new key appeared (INSERT).
        """
        committed = state.committed_state
        if not committed or not recording():
            return
        session = state.session
        assert session is not None
        uow = self.uow(session)
        stored = uow.preloaded.get(info, {}).get(state.identity or ())
        if not any(_changed(info, state, attr, stored) for attr in committed.keys() & info.watched):
            return
        key = _key_from_dict(info, state)
        old_key = state.identity  # still the key the row was loaded with
        if old_key is None or old_key == key:
            back = self._back_to_start(uow, info, state, key, stored)
            self._note(info, state, key, None if back else Operation.UPDATE, None)
            return
        old = _stored_values(info, state)  # the flush has not reset committed_state yet
        if stored is not None:
            # values the row held before the flush, for attributes assigned while not loaded
            old = {**stored, **old}
        if len(old) < len(info.attrs):
            # Attributes never loaded were not changed either: the row (now under its new key)
            # still holds their old values.
            old = {**self.writer.load_values(connection, info, [key]).get(key, {}), **old}
        self._note(info, state, old_key, Operation.DELETE, old)
        self._note(info, state, key, Operation.INSERT, None)

    def _back_to_start(
        self,
        uow: UnitOfWork,
        info: VersionInfo,
        state: InstanceState[Any],
        key: Key,
        stored: dict[str, Any] | None,
    ) -> bool:
        """Whether every attribute this transaction changed holds its starting value again."""
        existed = uow.existed_before(info.tables[0], key)
        if existed is False:
            return False  # inserted by this transaction
        if uow.touched_in_bulk(info.tables[0], key):
            return False  # the values in memory are not what the statement left
        committed = state.committed_state
        if any(a not in info.attr_set for a in committed.keys() & info.watched):
            return False  # a tracked relationship changed
        originals = uow.originals.setdefault((info, key), {})
        for attr in committed.keys() & info.attr_set:
            if attr not in originals:
                history = state.get_history(attr, PASSIVE_NO_INITIALIZE)
                if history.deleted:
                    originals[attr] = history.deleted[0]
                elif stored is not None and attr in stored:
                    originals[attr] = stored[attr]
                else:
                    originals[attr] = _UNKNOWN
        if existed is None:
            return False  # the transaction's first change of the row changes something
        for attr, original in originals.items():
            if original is _UNKNOWN or attr not in state.dict:
                return False
            column = info.parent_mapper.get_property(attr).columns[0]
            if not column.type.compare_values(original, state.dict[attr]):
                return False
        return True

    def before_delete(
        self,
        info: VersionInfo,
        mapper: Mapper[Any],
        connection: Connection,
        state: InstanceState[Any],
    ) -> None:
        """Note the row with its last values (the row is gone after the flush)."""
        if not recording():
            return
        key = state.identity
        assert key is not None
        session = state.session
        assert session is not None
        uow = self.uow(session)
        if uow.touched_in_bulk(info.tables[0], key):
            # A statement changed the row since it was loaded: what memory holds is stale.
            values = self.writer.load_values(connection, info, [key]).get(key, {})
            self._note(info, state, key, Operation.DELETE, values)
            return
        values = _stored_values(info, state)
        if len(values) < len(info.attrs):
            loaded = uow.preloaded.get(info, {}).get(key)
            if loaded is None:
                # Not seen by before_flush (e.g. a delete-orphan found during the flush).
                loaded = self.writer.load_values(connection, info, [key]).get(key, {})
            values = {**loaded, **values}
        self._note(info, state, key, Operation.DELETE, values)

    def _note(
        self,
        info: VersionInfo,
        state: InstanceState[Any],
        key: Key,
        op: Operation | None,
        values: dict[str, Any] | None,
    ) -> None:
        session = state.session
        assert session is not None
        pending = self.uow(session).pending
        for table in info.tables:
            row = None if values is None else {c: values.get(a) for a, c in table.attrs.items()}
            pend(pending.setdefault(table, {}), key, op, row)

    # --- association tables -------------------------------------------------------------------

    def _watch_associations(self, session: Session) -> None:
        """Note this flush's statements on versioned association tables.

        A ``before_execute`` listener goes on the session's connection for the time of the
        flush only: a listener on the Engine class would slow down every statement of the
        process.
        """
        uow = self.uow(session)
        listener = partial(self._association_statement, uow)
        for table in self._catalog.associations.values():
            connection = session.connection(bind_arguments={"clause": table.parent_table})
            listen(uow, self, connection, "before_execute", listener)

    def _unwatch(self, uow: UnitOfWork) -> None:
        unlisten(uow, self)

    def _association_statement(
        self,
        uow: UnitOfWork,
        connection: Connection,
        statement: Any,
        multiparams: list[dict[str, Any]],
        params: dict[str, Any],
        execution_options: Any,
    ) -> None:
        """``before_execute`` during a flush: note the links a statement adds or removes."""
        if not isinstance(statement, sa.Insert | sa.Delete | sa.Update):
            return
        target = statement.table
        table = self._catalog.associations.get(target) if isinstance(target, sa.Table) else None
        if table is None:
            return
        rows = multiparams or [params]
        pending = uow.pending.setdefault(table, {})
        if isinstance(statement, sa.Insert):
            for row in rows:
                pend(pending, tuple(row[c] for c in table.key_columns), Operation.INSERT, None)
            return
        # DELETE, or UPDATE of the key (the parent's primary key changed): the old link is gone
        prefix = "old_" if isinstance(statement, sa.Update) else ""
        old_keys = [tuple(row[prefix + c] for c in table.key_columns) for row in rows]
        stored = self.writer.load_rows(connection, table, old_keys)
        for key in old_keys:
            values = stored.get(key) or dict(zip(table.key_columns, key, strict=True))
            pend(pending, key, Operation.DELETE, values)
        if prefix:
            for row in rows:
                pend(pending, tuple(row[c] for c in table.key_columns), Operation.INSERT, None)

    # --- session events -----------------------------------------------------------------------

    def before_flush(self, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
        """Refuse unversioned ``__versioned__`` models; preload stored values not in memory.

        One query per table fetches what the database holds for rows about to be deleted
        whose values are not all loaded, and for rows about to be updated where a tracked
        attribute was assigned without its old value being known (expired, deferred): the
        update records nothing if the value assigned is the value stored.
        """
        if not recording():
            return
        for obj in session.new:
            self._check_versioned(instance_state(obj))
        if self._catalog.associations:
            self._watch_associations(session)
        wanted: dict[VersionInfo, list[Key]] = {}
        for obj in session.dirty:
            state: InstanceState[Any] = instance_state(obj)
            self._check_versioned(state)
            info = self._info_of(state)
            if info is not None and _stored_value_needed(info, state):
                wanted.setdefault(info, []).append(_identity(state))
        for obj in session.deleted:
            state = instance_state(obj)
            self._check_versioned(state)
            info = self._info_of(state)
            if info is not None and len(_stored_values(info, state)) < len(info.attrs):
                wanted.setdefault(info, []).append(_identity(state))
        if not wanted:
            return
        uow = self.uow(session)
        for info, keys in wanted.items():
            connection = session.connection(bind_arguments={"mapper": info.parent_mapper})
            uow.preloaded.setdefault(info, {}).update(
                self.writer.load_values(connection, info, keys)
            )

    def _info_of(self, state: InstanceState[Any]) -> Any:
        """The info of a persistent object this manager records (``None`` otherwise)."""
        info: VersionInfo | None = state.manager.info.get(INFO_KEY)
        if (
            info is None
            or info.parent_mapper is not state.mapper
            or state.identity is None
            or info.transaction_class is not self._catalog.transaction_class
        ):
            return None
        return info

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
        """Keep what the flush noted for the commit (or write it now, once ordered)."""
        uow = self.existing(session)
        if uow is None:
            return
        self._unwatch(uow)
        uow.preloaded.clear()
        self.keep(session, uow)

    def keep(self, session: Session, uow: UnitOfWork) -> None:
        """Keep what was just noted for the commit, with the context in force at the first
        change; once the transaction is ordered, write it now."""
        if not uow.pending:
            return
        if uow.context is None:
            uow.context = current_context()
        if uow.ordered:
            self._write(session, uow)

    def before_commit(self, session: Session) -> None:
        """Write the transaction's history under the commit-order lock, just before COMMIT.

        The session is flushed first, so the history covers every change; a flush that runs
        after this (another ``before_commit`` listener changed objects) writes its own history
        at once, as the transaction holds the lock by then.
        """
        if session.in_nested_transaction():
            return  # a savepoint is released, not the transaction committed
        session.flush()
        uow = self.existing(session)
        if uow is not None and uow.unrecorded is not None:
            raise UnrecordedWriteError(f"{uow.unrecorded}; the transaction cannot be committed")
        if uow is not None and uow.pending:
            self.write_now(session, uow)

    def write_now(self, session: Session, uow: UnitOfWork) -> None:
        """Take the commit-order lock and write the history noted so far; from now on each
        flush of the transaction writes its history at once."""
        if not uow.ordered:
            table = next(iter(uow.pending))
            connection = session.connection(bind_arguments={"clause": table.parent_table})
            self._locks.take(connection, table.transaction_table)
            uow.ordered = True
        self._write(session, uow)

    def _write(self, session: Session, uow: UnitOfWork) -> None:
        """Write the noted changes: a few set-based statements per version table."""
        pending, uow.pending = uow.pending, {}
        plans = [_plan(uow, table, changes) for table, changes in pending.items()]
        context = uow.context if uow.context is not None else current_context()
        uow.transaction_id = self.writer.write(session, uow.transaction_id, plans, context)
        if uow.rows == 0 and uow.transaction_id is not None:
            # Everything this transaction did cancelled out: leave no transaction row either.
            self.writer.delete_transaction(session, plans[0].table, uow.transaction_id)
            uow.transaction_id = None

    def after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        """Snapshot the bookkeeping when a savepoint begins."""
        if transaction.nested:
            begin_before_savepoint(session, transaction)
            uow = self.uow(session)
            uow.savepoints[transaction] = uow.snapshot()

    def after_soft_rollback(
        self, session: Session, previous_transaction: SessionTransaction
    ) -> None:
        """Undo the bookkeeping of what the database just rolled back."""
        uow = self.existing(session)
        if uow is None:
            return
        uow.preloaded.clear()
        self._unwatch(uow)
        snapshot = uow.savepoints.pop(previous_transaction, None)
        if previous_transaction.nested and snapshot is not None:
            uow.restore(snapshot)
        elif previous_transaction.parent is None:
            self._drop(session)

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Drop all bookkeeping when the session's outermost transaction ends."""
        if transaction.parent is None:
            self._drop(session)


def listen(
    uow: UnitOfWork,
    owner: object,
    connection: Connection,
    name: str,
    listener: Callable[..., Any],
    **kw: Any,
) -> None:
    """Put ``owner``'s ``listener`` on ``connection`` for event ``name`` (once: a connection
    it already listens to is left as it is) until :func:`unlisten` or the transaction's end."""
    if any(c is connection and n == name and by is owner for c, n, _, by in uow.listening):
        return
    event.listen(connection, name, listener, **kw)
    uow.listening.append((connection, name, listener, owner))


def unlisten(uow: UnitOfWork, owner: object | None) -> None:
    """Remove the connection listeners ``owner`` put (all of them for ``None``)."""
    kept = []
    for connection, name, listener, by in uow.listening:
        if owner is None or by is owner:
            if event.contains(connection, name, listener):
                event.remove(connection, name, listener)
        else:
            kept.append((connection, name, listener, by))
    uow.listening = kept


def flush_history_sync(session: Session) -> None:
    """Flush ``session`` and write its history now instead of at commit.

    History is written when the transaction commits, so that transaction ids follow commit
    order; until then queries in the writing transaction do not see its own versions. Call
    this to read them before committing (a test, a check before commit). It takes the
    commit-order lock, which the transaction then holds until it ends: other transactions'
    commits that write history wait for it, so keep the rest of the transaction short. Each
    later flush of the transaction writes its history at once.
    """
    session.flush()
    states: dict[Recorder, UnitOfWork] = session.info.get(SESSION_INFO_KEY, {})
    for recorder, uow in sorted(states.items(), key=lambda item: item[0].rank):
        if uow.pending:
            recorder.write_now(session, uow)


async def flush_history(session: AsyncSession) -> None:
    """:func:`flush_history_sync` for an ``AsyncSession``."""
    await session.run_sync(flush_history_sync)


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


def _stored_value_needed(info: VersionInfo, state: InstanceState[Any]) -> bool:
    """Whether the flush may write a tracked column whose stored value is not in memory.

    An attribute assigned while not loaded (expired, deferred), or the foreign key columns of a
    many-to-one relationship assigned while they are not loaded (the flush sets them).
    """
    committed = state.committed_state
    if any(committed[a] is NO_VALUE for a in committed.keys() & info.attr_set):
        return True
    for rel, columns in info.foreign_key_attrs.items():
        if rel in committed and any(c not in state.dict for c in columns):
            return True
    return False


def _changed(
    info: VersionInfo, state: InstanceState[Any], attr: str, stored: dict[str, Any] | None
) -> bool:
    """Whether the flush changes ``attr``: compared with its stored value when that was not
    loaded (``stored``, fetched by before_flush)."""
    history = state.get_history(attr, PASSIVE_NO_INITIALIZE)
    if not history.has_changes():
        return False
    if history.deleted or history.unchanged or stored is None or attr not in stored:
        return True
    column = info.parent_mapper.get_property(attr).columns[0]
    return not column.type.compare_values(stored[attr], next(iter(history.added)))


def _identity(state: InstanceState[Any]) -> Key:
    key = state.identity
    assert key is not None
    return key


def _key_from_dict(info: VersionInfo, state: InstanceState[Any]) -> Key:
    return tuple(state.dict[a] for a in info.pk_attrs)


def _plan(uow: UnitOfWork, table: TableVersioning, changes: dict[Key, Pending]) -> Plan:
    """Fold this flush's changes into the transaction's bookkeeping; return what to write."""
    seen = uow.seen.setdefault(table, {})
    plan = Plan(table)
    steps = plan.keys
    drop, reopen, close = steps[Step.DROP], steps[Step.REOPEN], steps[Step.CLOSE]
    copy_insert, copy_update = steps[Step.COPY_INSERT], steps[Step.COPY_UPDATE]
    insert, update, delete = Operation.INSERT, Operation.UPDATE, Operation.DELETE
    rows = uow.rows
    for key, (first, op, row) in changes.items():
        ks = seen.get(key)
        if ks is None:
            ks = seen[key] = _KeyState(first is not insert, False)
        # the net operation since the transaction began (None: back to what the row held)
        if op is None:
            net = None
        elif ks.existed_before:
            net = update if op is not delete else delete
        else:
            net = insert if op is not delete else None
        if ks.has_row:
            drop.append(key)
            if net is None:
                reopen.append(key)
        elif net is not None:
            close.append(key)
        if net is None:
            rows -= ks.has_row
            ks.has_row = False
            continue
        rows += not ks.has_row
        ks.has_row = True
        if net is delete:
            assert row is not None
            plan.deleted.append(row)
        elif net is insert:
            copy_insert.append(key)
        else:
            copy_update.append(key)
    uow.rows = rows
    return plan
