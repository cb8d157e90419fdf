"""Capture of statements run through ``Session.execute()``: ORM bulk and Core DML.

``update(Model).where(...)``, ``delete(Model).where(...)``, ORM bulk INSERT and bulk UPDATE by
primary key, and Core ``insert`` / ``update`` / ``delete`` on a versioned table reach the
``do_orm_execute`` event, never the mapper events. Each is recorded set-based, into the same
:class:`~._capture.UnitOfWork` the flushes use, so history is written at commit exactly as for
the unit of work (one version per key per transaction, holding the final state):

- UPDATE / DELETE: one SELECT finds (and on PostgreSQL and MariaDB locks, ``FOR UPDATE``) the
  rows the statement's WHERE matches, with their tracked values; the statement then runs
  restricted to those keys, so a row another transaction adds meanwhile (READ COMMITTED) is
  neither changed nor missed. After an UPDATE one SELECT reads the new values: a row whose
  tracked values did not change records nothing. A DELETE records the values read before it.
- INSERT: the keys come from the parameters, or from ``RETURNING`` when the database assigns
  them.
- Upsert on the primary key: the rows that exist are read (and locked) before it, every row
  after it; new rows record an INSERT, changed rows an UPDATE.

What cannot be recorded this way is refused with :class:`~._exceptions.UnrecordedWriteError`
before anything is written, so a write never silently goes without history.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Mapping, Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from ._capture import Recorder, UnitOfWork, listen, pend, unlisten
from ._context import recording
from ._dml import (
    TEXTUAL_WRITE,
    compared_columns,
    conflicts_on_key_only,
    differs,
    entity_of,
    has_inline_values,
    has_returning,
    inline_rows,
    key_binds,
    keys_from_params,
    keys_in,
    param_rows,
    plain_table,
    sets_key,
    sets_tracked,
)
from ._exceptions import UnrecordedWriteError
from ._horizon import HORIZON_OPTION, check_horizon
from ._info import Catalog, TableVersioning
from ._schema import Operation
from ._writes import Key, Row, for_update, logger, rows_by_key

__all__ = ["BulkRecorder"]

#: The execution option that marks a statement ``do_orm_execute`` records (the connection's
#: listener leaves it alone).
_SEEN_OPTION = "sqlalchemy_history_async_recorded"
_SEEN = {_SEEN_OPTION: True}

#: The legacy ``Session.bulk_*`` methods run their statements from this function.
_BULK_METHOD = Session._bulk_save_mappings.__code__

#: Above this many bound key values the statement is not restricted to the keys found (every
#: driver's parameter limit stays out of reach); the row count check still applies.
_RESTRICT_LIMIT = 30000


class _Target:
    """A versioned table a statement writes to, as this manager knows it."""

    def __init__(self, table: TableVersioning, joined: bool) -> None:
        self.table = table
        #: the table is one of several of a joined-table inheritance hierarchy
        self.joined = joined


class _Call:
    """One INSERT, UPDATE or DELETE on a versioned table, however it was run."""

    def __init__(
        self,
        statement: Any,
        params: Any,
        session: Session,
        table: TableVersioning,
        *,
        connection: Connection | None = None,
        orm: bool = False,
        autoflush: bool = False,
    ) -> None:
        self.statement = statement
        self.params = params
        self.session = session
        self.table = table
        #: an ORM-enabled statement (``update(Model)``), not a Core one (``update(table)``)
        self.orm = orm
        #: flush the session before the statement, as the ORM does
        self.autoflush = autoflush
        #: run through ``session.execute()``: the result it returns may be replaced
        self.replaceable = connection is None
        self._connection = connection

    @property
    def connection(self) -> Connection:
        """The connection the statement runs on (the library's own SELECTs run there too)."""
        if self._connection is None:
            clause = {"clause": self.table.parent_table}
            self._connection = self.session.connection(bind_arguments=clause)
        return self._connection

    @property
    def verb(self) -> str:
        return _verb(self.statement)

    @property
    def many(self) -> bool:
        """Run with a list of parameter sets (executemany)."""
        params = self.params
        return isinstance(params, Sequence) and not isinstance(params, Mapping)


#: A recording step: yields the statement to run, receives its result, returns the result the
#: caller gets.
_Step = Generator[Any, Any, Any]


def _verb(stmt: Any) -> str:
    return "INSERT" if stmt.is_insert else "UPDATE" if stmt.is_update else "DELETE"


def _finish(step: _Step, result: Any) -> Any:
    try:
        step.send(result)
    except StopIteration as done:
        return done.value
    raise AssertionError("a recording step runs one statement")  # pragma: no cover


class BulkRecorder:
    """The listeners of one manager that record DML run outside the unit of work.

    ``do_orm_execute`` sees everything run through ``Session.execute()``. Statements sent on
    the session's connection are seen by a ``before_execute`` / ``after_execute`` listener on
    that connection, put there for the legacy ``Session.bulk_*`` methods while they run, and
    for the whole transaction with ``strict=True`` (a listener on a connection makes each of
    its statements a little slower, so it is not there by default).
    """

    def __init__(self, recorder: Recorder, catalog: Catalog, *, strict: bool = False) -> None:
        self._recorder = recorder
        self._catalog = catalog
        self._strict = strict
        self._targets: dict[sa.Table, _Target] = {}
        self._built_for: tuple[int, int] = (-1, -1)

    def _target(self, table: Any) -> _Target | None:
        return self._refreshed().get(table)

    def _refreshed(self) -> dict[sa.Table, _Target]:
        """The versioned tables by parent table, rebuilt when the catalog has grown."""
        catalog = self._catalog
        size = (len(catalog.infos), len(catalog.associations))
        if size != self._built_for:
            targets: dict[sa.Table, _Target] = {}
            for info in catalog.infos:
                for t in info.tables:
                    known = targets.get(t.parent_table)
                    joined = len(info.tables) > 1 or (known is not None and known.joined)
                    targets[t.parent_table] = _Target(t, joined)
            for t in catalog.associations.values():
                targets[t.parent_table] = _Target(t, False)
            self._targets, self._built_for = targets, size
        return self._targets

    def _recordable(self, stmt: Any) -> TableVersioning | None:
        """The versioned table a DML statement writes to (``None``: not ours, or recording is
        off); refuses one it cannot record."""
        target = self._target(plain_table(stmt))
        if target is None or not recording():
            return None
        if target.joined:
            name = target.table.parent_table.name
            raise UnrecordedWriteError(
                f"{_verb(stmt)} on {name!r} cannot be recorded: the table is part of a "
                "joined-table inheritance hierarchy, whose history spans several tables; "
                "change these rows through the unit of work (session.add / attribute changes)"
            )
        return target.table

    # --- Session.execute() --------------------------------------------------------------------

    def do_orm_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        """Record an INSERT, UPDATE or DELETE on a versioned table (``None``: not ours); check
        that a read of history does not reach before what retention kept."""
        if not (state.is_insert or state.is_update or state.is_delete):
            horizon = state.execution_options.get(HORIZON_OPTION)
            if horizon is not None:
                check_horizon(
                    state.session.connection(bind_arguments=state.bind_arguments), horizon
                )
            if self._strict and isinstance(state.statement, sa.TextClause) and recording():
                self._refuse_textual_write(state.statement.text)
            return None
        table = self._recordable(state.statement)
        if table is None:
            return None
        session = state.session
        autoflush = state.execution_options.get("autoflush", True) and session.autoflush
        call = _Call(
            state.statement,
            state.parameters,
            session,
            table,
            orm=state.is_orm_statement,
            autoflush=state.is_orm_statement and autoflush,
        )
        uow = self._recorder.uow(session)
        step = self._step(call, uow)
        statement = next(step)
        result = state.invoke_statement(statement=statement, execution_options=_SEEN)
        result = _finish(step, result)
        self._recorder.keep(session, uow)
        return result  # type: ignore[no-any-return]

    def _refuse_textual_write(self, sql: str) -> None:
        """``strict``: refuse textual SQL whose INSERT / UPDATE / DELETE names a versioned
        table (a cheap look at the text: it cannot see through functions or dynamic SQL)."""
        lowered = sql.lower()
        names = {t.name.lower() for t in self._refreshed() if t.name.lower() in lowered}
        if not names:
            return
        for match in TEXTUAL_WRITE.finditer(sql):
            table = match.group("table").lower()
            if table in names:
                raise UnrecordedWriteError(
                    f"textual SQL writes to the versioned table {table!r} "
                    f"({match.group(0).strip()!r} ...), which cannot be recorded; use "
                    "insert() / update() / delete() through session.execute(), or run it inside "
                    "versioning_disabled() if it needs no history (strict=True)"
                )

    def _step(self, call: _Call, uow: UnitOfWork) -> _Step:
        if call.statement.is_insert:
            return self._insert(call, uow)
        return self._update_or_delete(call, uow)

    # --- statements on the session's connection -----------------------------------------------

    def after_begin(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        """Watch the statements of a connection the session begins on (``strict``, or while
        a legacy ``bulk_*`` method runs)."""
        uow = None if self._strict else self._recorder.existing(session)
        if self._strict or (uow is not None and uow.bulk_method is not None):
            self._watch(session, connection)

    def after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        """A legacy ``Session.bulk_insert_mappings()`` / ``bulk_update_mappings()`` /
        ``bulk_save_objects()`` runs in a subtransaction of its own: watch the session's
        connections while it lasts."""
        if transaction.nested or transaction.parent is None or not _in_bulk_method():
            return
        uow = self._recorder.uow(session)
        uow.bulk_method = transaction
        for connection in _connections(transaction):
            self._watch(session, connection)

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Stop watching when the legacy ``bulk_*`` call is over (its statements' history
        stays noted for the commit)."""
        uow = self._recorder.existing(session)
        if uow is None or uow.bulk_method is not transaction:
            return
        uow.bulk_method = None
        if not self._strict:
            unlisten(uow, self)

    def _watch(self, session: Session, connection: Connection) -> None:
        uow = self._recorder.uow(session)
        before = partial(self._before_execute, session)
        listen(uow, self, connection, "before_execute", before, retval=True)
        listen(uow, self, connection, "after_execute", partial(self._after_execute, session))

    def _before_execute(
        self,
        session: Session,
        connection: Connection,
        statement: Any,
        multiparams: Any,
        params: Any,
        execution_options: Any,
    ) -> tuple[Any, Any, Any]:
        unchanged = statement, multiparams, params
        if not isinstance(statement, sa.Insert | sa.Update | sa.Delete):
            if self._strict and isinstance(statement, sa.TextClause) and recording():
                self._refuse_textual_write(statement.text)
            return unchanged
        if execution_options.get(_SEEN_OPTION):
            return unchanged  # run by do_orm_execute, which records it
        uow = self._recorder.uow(session)
        if session._flushing and uow.bulk_method is None:
            return unchanged  # the unit of work's own statements: the mapper events note them
        table = self._recordable(statement)
        if table is None:
            return unchanged
        call = _Call(statement, multiparams or params, session, table, connection=connection)
        step = self._step(call, uow)
        run = next(step)
        uow.steps[id(run)] = step
        return run, multiparams, params

    def _after_execute(
        self,
        session: Session,
        connection: Connection,
        statement: Any,
        multiparams: Any,
        params: Any,
        execution_options: Any,
        result: Any,
    ) -> None:
        uow = self._recorder.existing(session)
        step = None if uow is None else uow.steps.pop(id(statement), None)
        if uow is None or step is None:
            return
        _finish(step, result)
        self._recorder.keep(session, uow)

    # --- UPDATE and DELETE --------------------------------------------------------------------

    def _update_or_delete(self, call: _Call, uow: UnitOfWork) -> _Step:
        stmt: Any = call.statement
        table = call.table
        name = table.parent_table.name
        verb = call.verb
        if stmt.is_update and sets_key(stmt, table):
            raise UnrecordedWriteError(
                f"{verb} on {name!r} changes the primary key, which cannot be recorded in bulk; "
                "change the key through the unit of work (assign it on the object and flush)"
            )
        if stmt.is_update and not sets_tracked(stmt, table):
            return (yield stmt)  # only untracked columns change: nothing to record
        if call.autoflush:
            call.session.flush()  # what the ORM does before the statement, so we see its rows
        entity = entity_of(stmt)
        # An UPDATE compares (and reads) only the columns it can change; a DELETE reads every
        # tracked column, its rows' last values.
        columns = compared_columns(stmt, table) if stmt.is_update else None
        if call.many:
            keys = _keys_of_each(call, entity)
            before = self._lock_keys(call, keys, columns)
            result = yield stmt
        else:
            before = self._lock_rows(call, columns)
            restricted = stmt
            if before and _restrictable(call.connection, table, len(before)):
                restricted = stmt.where(keys_in(table, entity, list(before)))
            result = yield restricted
            _check_count(result, len(before), verb, name, uow)
        self._note_changes(call, uow, before, result, columns)
        return result

    def _lock_rows(self, call: _Call, names: tuple[str, ...] | None) -> dict[Key, Row]:
        """The rows an UPDATE / DELETE's WHERE matches, with their tracked values (those in
        ``names``), locked where the database can lock rows."""
        stmt: Any = call.statement
        table = call.table
        pt = table.parent_table
        names = tuple(table.attrs.values()) if names is None else names
        select = sa.select(*[pt.c[c] for c in names])
        entity = entity_of(stmt)
        if entity is not None:
            select = select.select_from(entity)  # the ORM adds single-table criteria
        if stmt.whereclause is not None:
            select = select.where(stmt.whereclause)
        # On the connection, not session.execute(): the session's own do_orm_execute hooks
        # (criteria added to every query) are for the application's queries.
        connection = call.connection
        params = call.params if isinstance(call.params, Mapping) and call.params else None
        rows = connection.execute(for_update(select, connection, pt), params)
        return rows_by_key(rows, table, names)

    def _lock_keys(
        self, call: _Call, keys: list[Key], names: tuple[str, ...] | None = None
    ) -> dict[Key, Row]:
        """The rows with ``keys`` that exist, with their tracked values, locked."""
        writer = self._recorder.writer
        return writer.load_rows(call.connection, call.table, keys, lock=True, columns=names)

    def _note_changes(
        self,
        call: _Call,
        uow: UnitOfWork,
        before: dict[Key, Row],
        result: Any,
        names: tuple[str, ...] | None = None,
    ) -> None:
        if not before:
            return
        table = call.table
        pending = uow.pending.setdefault(table, {})
        keys = list(before)
        uow.bulk_touched.setdefault(table, set()).update(keys)
        writer = self._recorder.writer
        if call.statement.is_delete:
            remaining: dict[Key, Row] = {}
            if getattr(result, "rowcount", -1) != len(before):
                # The statement deleted fewer rows than the SELECT found (criteria the ORM or
                # a session hook added to it, or per parameter set): only the rows that are
                # gone record a DELETE.
                remaining = writer.load_rows(call.connection, table, keys)
            gone = [key for key in before if key not in remaining]
            for key in gone:
                pend(pending, key, Operation.DELETE, before[key])
            _noted(call, len(before), len(gone))
            return
        after = writer.load_rows(call.connection, table, keys, columns=names)
        changed = 0
        for key, old in before.items():
            new = after.get(key)
            if new is None:
                continue  # not there any more (cannot happen: the row is locked)
            if differs(table, old, new):
                pend(pending, key, Operation.UPDATE, None)
                changed += 1
        _noted(call, len(before), changed)

    # --- INSERT -------------------------------------------------------------------------------

    def _insert(self, call: _Call, uow: UnitOfWork) -> _Step:
        stmt: Any = call.statement
        table = call.table
        upsert = getattr(stmt, "_post_values_clause", None)
        if upsert is not None:
            return (yield from self._upsert(call, uow, upsert))
        entity = entity_of(stmt)
        rows = param_rows(call.params)
        keys = None
        if (
            rows
            and getattr(stmt, "select", None) is None
            and not has_inline_values(stmt)
            and not has_returning(stmt)
        ):
            keys = keys_from_params(rows, table, entity, call.verb, required=False)
        if keys is not None:
            result = yield stmt
        else:
            result, keys = yield from self._insert_returning_keys(call, entity, uow)
        pending = uow.pending.setdefault(table, {})
        for key in keys:
            pend(pending, key, Operation.INSERT, None)
        _noted(call, len(keys), len(keys))
        return result

    def _upsert(self, call: _Call, uow: UnitOfWork, clause: Any) -> _Step:
        """INSERT ... ON CONFLICT / ON DUPLICATE KEY on the primary key: the rows that existed
        are read (and locked) before, every row after; new rows record an INSERT, changed ones
        an UPDATE, untouched ones nothing."""
        stmt: Any = call.statement
        table = call.table
        pt = table.parent_table
        verb = "an upsert (INSERT ... ON CONFLICT / ON DUPLICATE KEY)"
        if not conflicts_on_key_only(clause, pt):
            raise UnrecordedWriteError(
                f"{verb} on {pt.name!r} cannot be recorded: it may change a row found through "
                "another unique constraint than the primary key, whose key the statement does "
                "not name; make the primary key the conflict target (index_elements=[...]), "
                "or load the rows and change them through the unit of work"
            )
        rows = param_rows(call.params)
        if has_inline_values(stmt):
            rows = [] if any(rows) else inline_rows(stmt)
        keys = keys_from_params(rows, table, entity_of(stmt), verb, required=False)
        if not rows or keys is None:
            raise UnrecordedWriteError(
                f"{verb} on {pt.name!r} can be recorded only with the primary key in every "
                "parameter set (session.execute(stmt, [{...}, ...])), so the rows it touches "
                "are known"
            )
        before = self._lock_keys(call, keys)
        result = yield stmt
        after = self._recorder.writer.load_rows(call.connection, table, keys)
        pending = uow.pending.setdefault(table, {})
        touched = uow.bulk_touched.setdefault(table, set())
        for key, new in after.items():
            old = before.get(key)
            if old is None:
                pend(pending, key, Operation.INSERT, None)
            elif differs(table, old, new):
                touched.add(key)
                pend(pending, key, Operation.UPDATE, None)
        return result

    def _insert_returning_keys(
        self, call: _Call, entity: Any, uow: UnitOfWork
    ) -> Generator[Any, Any, tuple[Any, list[Key]]]:
        """Run the INSERT with the key columns added to its RETURNING; keep the caller's rows."""
        stmt: Any = call.statement
        table = call.table
        pt = table.parent_table
        verb = "INSERT ... FROM SELECT" if getattr(stmt, "select", None) is not None else "INSERT"
        dialect = call.connection.dialect
        if not dialect.insert_returning:
            raise UnrecordedWriteError(
                f"{verb} on {pt.name!r} cannot be recorded on {dialect.name}: the database "
                "assigns the keys and cannot return them; give the primary key in the "
                "parameters, or insert through the unit of work"
            )
        if entity is not None:
            mapper = sa.inspect(entity)
            key_exprs = [
                mapper.get_property_by_column(pt.c[c]).class_attribute for c in table.key_columns
            ]
        else:
            key_exprs = [pt.c[c] for c in table.key_columns]
        if has_returning(stmt) or entity is not None or getattr(stmt, "select", None) is not None:
            user_columns = len(stmt._returning) if has_returning(stmt) else 0
            if user_columns and not call.replaceable:
                raise UnrecordedWriteError(
                    f"{verb} ... RETURNING on {pt.name!r} sent on a connection cannot be "
                    "recorded without the primary key in its parameters; run it through "
                    "session.execute(), or give the key"
                )
            result = yield stmt.returning(*key_exprs)
            if not user_columns:
                # Only the library asked for rows: read them, the caller keeps the result
                # (and its rowcount) as if nothing had been returned.
                keys = [tuple(row) for row in result.all()]
                if isinstance(result, CursorResult):
                    # what the statement inserted: some drivers forget it once rows are read
                    result.__dict__["rowcount"] = len(keys)
                return result, keys
            frozen = result.freeze()
            width = len(key_exprs)
            keys = [tuple(row[len(row) - width :]) for row in frozen.data]
            replay: Result[Any] = frozen()
            if user_columns:
                return replay.columns(*range(user_columns)), keys
            return replay, keys
        # Core: the keys come back as the result's inserted primary keys, the result stays the
        # one the caller expects (rowcount, inserted_primary_key).
        cursor: Any = yield (stmt if stmt._return_defaults else stmt.return_defaults(*key_exprs))
        keys = [tuple(row) for row in cursor.inserted_primary_key_rows]
        if any(v is None for key in keys for v in key):
            uow.unrecorded = (
                f"{verb} on {pt.name!r}: {dialect.name} did not return the keys it "
                "assigned, so the rows' history cannot be recorded"
            )
            raise UnrecordedWriteError(uow.unrecorded)
        return cursor, keys


def _noted(call: _Call, found: int, noted: int) -> None:
    logger.debug(
        "%s on %s: %d rows found, %d with history to write at commit",
        call.verb,
        call.table.parent_table.name,
        found,
        noted,
    )


def _in_bulk_method() -> bool:
    """Whether a subtransaction being created is the one of a legacy ``Session.bulk_*`` call
    (the unit of work's flushes make one too)."""
    frame = sys._getframe(1)
    for _ in range(10):
        if frame is None:
            return False
        if frame.f_code is _BULK_METHOD:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _connections(transaction: SessionTransaction) -> list[Connection]:
    """The connections a session transaction has begun so far (its outermost transaction
    holds them all)."""
    while transaction.parent is not None:
        transaction = transaction.parent
    known: dict[Any, tuple[Any, ...]] = getattr(transaction, "_connections", {})
    return list({id(entry[0]): entry[0] for entry in known.values()}.values())


def _keys_of_each(call: _Call, entity: Any) -> list[Key]:
    """The key of each parameter set of an UPDATE / DELETE run once per parameter set: from
    the ORM's bulk UPDATE by primary key, or a WHERE that compares the key columns with bound
    parameters."""
    stmt: Any = call.statement
    table = call.table
    rows = param_rows(call.params)
    if call.orm and stmt.is_update:
        keys = keys_from_params(rows, table, entity, call.verb)
        assert keys is not None
        return keys
    binds = None if stmt.whereclause is None else key_binds(stmt.whereclause, table)
    if binds is None:
        raise UnrecordedWriteError(
            f"{call.verb} on {table.parent_table.name!r} with a list of parameter sets cannot be "
            "recorded unless its WHERE compares every primary key column with a bound "
            "parameter (where(table.c.id == bindparam('id'))); run one statement per parameter "
            "set, or use the ORM's bulk UPDATE by primary key (update(Model) with dictionaries "
            "holding the key)"
        )
    keys = []
    for row in rows:
        key = tuple(row.get(name, default) for name, default in binds)
        if None in key:
            raise UnrecordedWriteError(
                f"{call.verb} on {table.parent_table.name!r}: a parameter set has no value for "
                "the primary key, so the row it changes cannot be recorded"
            )
        keys.append(key)
    return keys


def _restrictable(connection: Connection, table: TableVersioning, count: int) -> bool:
    """Whether to restrict the statement to the keys found: not on SQLite (one writer at a
    time, so no row can appear between the SELECT and the statement), nor past the limit."""
    if connection.dialect.name == "sqlite":
        return False
    return count * len(table.key_columns) <= _RESTRICT_LIMIT


def _check_count(result: Any, expected: int, verb: str, name: str, uow: UnitOfWork) -> None:
    """Refuse a statement that changed rows the SELECT before it did not find (and the
    transaction's commit with it)."""
    rowcount = getattr(result, "rowcount", -1)
    if rowcount is not None and rowcount > expected:
        uow.unrecorded = (
            f"{verb} on {name!r} changed {rowcount} rows but {expected} were found before it "
            "ran (rows were added concurrently), so the history of some cannot be recorded"
        )
        raise UnrecordedWriteError(f"{uow.unrecorded}: roll the transaction back and retry")
