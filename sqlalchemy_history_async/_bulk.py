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

import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session

from ._capture import Recorder, UnitOfWork, pend
from ._context import recording
from ._exceptions import UnrecordedWriteError
from ._info import Catalog, TableVersioning
from ._schema import Operation
from ._writes import Key, Row, for_update

__all__ = ["BulkRecorder"]

#: The table an INSERT, UPDATE, DELETE (or MERGE / REPLACE) statement in SQL text writes to.
_TEXTUAL_WRITE = re.compile(
    r"\b(?:insert\s+(?:ignore\s+)?into|replace\s+into|merge\s+into|update|delete\s+from)"
    r"\s+(?:only\s+)?(?:[`\"\[]?\w+[`\"\]]?\.)?[`\"\[]?(?P<table>\w+)",
    re.IGNORECASE,
)

#: Above this many bound key values the statement is not restricted to the keys found (every
#: driver's parameter limit stays out of reach); the row count check still applies.
_RESTRICT_LIMIT = 30000


class _Target:
    """A versioned table a statement writes to, as this manager knows it."""

    def __init__(self, table: TableVersioning, joined: bool) -> None:
        self.table = table
        #: the table is one of several of a joined-table inheritance hierarchy
        self.joined = joined


class BulkRecorder:
    """The ``do_orm_execute`` listener of one manager: records DML run through a session."""

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

    def do_orm_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        """Record an INSERT, UPDATE or DELETE on a versioned table (``None``: not ours)."""
        if not (state.is_insert or state.is_update or state.is_delete):
            if self._strict and isinstance(state.statement, sa.TextClause) and recording():
                self._refuse_textual_write(state.statement.text)
            return None
        stmt: Any = state.statement
        target = self._target(_plain_table(stmt))
        if target is None or not recording():
            return None
        name = target.table.parent_table.name
        if target.joined:
            raise UnrecordedWriteError(
                f"{_verb(state)} on {name!r} cannot be recorded: the table is part of a "
                "joined-table inheritance hierarchy, whose history spans several tables; "
                "change these rows through the unit of work (session.add / attribute changes)"
            )
        session = state.session
        uow = self._recorder.uow(session)
        if state.is_insert:
            result = self._insert(state, target.table, uow)
        else:
            result = self._update_or_delete(state, target.table, uow)
        self._recorder.keep(session, uow)
        return result

    def _refuse_textual_write(self, sql: str) -> None:
        """``strict``: refuse textual SQL whose INSERT / UPDATE / DELETE names a versioned
        table (a cheap look at the text: it cannot see through functions or dynamic SQL)."""
        lowered = sql.lower()
        names = {t.name.lower() for t in self._refreshed() if t.name.lower() in lowered}
        if not names:
            return
        for match in _TEXTUAL_WRITE.finditer(sql):
            table = match.group("table").lower()
            if table in names:
                raise UnrecordedWriteError(
                    f"textual SQL writes to the versioned table {table!r} "
                    f"({match.group(0).strip()!r} ...), which cannot be recorded; use "
                    "insert() / update() / delete() through session.execute(), or run it inside "
                    "versioning_disabled() if it needs no history (strict=True)"
                )

    # --- UPDATE and DELETE --------------------------------------------------------------------

    def _update_or_delete(
        self, state: ORMExecuteState, table: TableVersioning, uow: UnitOfWork
    ) -> Result[Any]:
        stmt: Any = state.statement
        name = table.parent_table.name
        verb = _verb(state)
        if state.is_update and _sets_key(stmt, table):
            raise UnrecordedWriteError(
                f"{verb} on {name!r} changes the primary key, which cannot be recorded in bulk; "
                "change the key through the unit of work (assign it on the object and flush)"
            )
        if state.is_update and not _sets_tracked(stmt, table):
            return state.invoke_statement()  # only untracked columns change: nothing to record
        params: Any = state.parameters
        many = isinstance(params, Sequence) and not isinstance(params, Mapping)
        session = state.session
        autoflush = state.execution_options.get("autoflush", True) and session.autoflush
        if state.is_orm_statement and autoflush:
            session.flush()  # what the ORM does before the statement, so we see its rows
        entity = _entity(stmt)
        if many:
            if stmt.whereclause is not None or not state.is_orm_statement:
                raise UnrecordedWriteError(
                    f"{verb} on {name!r} with a list of parameter sets and a WHERE clause cannot "
                    "be recorded; run one statement per parameter set, or use the ORM's bulk "
                    "UPDATE by primary key (update(Model) with dictionaries holding the key)"
                )
            keys = _keys_from_params(params, table, entity, verb)
            assert keys is not None
            before = self._lock_keys(session, table, keys)
            result = state.invoke_statement()
        else:
            before = self._lock_rows(session, table, stmt, params)
            restricted = stmt
            if before and _restrictable(session, table, len(before)):
                restricted = stmt.where(_keys_in(table, entity, list(before)))
            result = state.invoke_statement(statement=restricted)
            _check_count(result, len(before), verb, name, uow)
        self._note_changes(session, uow, table, before, result, deleted=state.is_delete)
        return result

    def _lock_rows(
        self, session: Session, table: TableVersioning, stmt: Any, params: Any
    ) -> dict[Key, Row]:
        """The rows an UPDATE / DELETE's WHERE matches, with their tracked values, locked
        where the database can lock rows."""
        pt = table.parent_table
        columns = [pt.c[c] for c in table.attrs.values()]
        connection = session.connection(bind_arguments={"clause": pt})
        select = sa.select(*columns)
        entity = _entity(stmt)
        if entity is not None:
            select = select.select_from(entity)  # the ORM adds single-table criteria
        if stmt.whereclause is not None:
            select = select.where(stmt.whereclause)
        found: dict[Key, Row] = {}
        # On the connection, not session.execute(): the session's own do_orm_execute hooks
        # (criteria added to every query) are for the application's queries.
        rows = connection.execute(for_update(select, connection, pt), params or None)
        for row in rows.mappings():
            values = {c.key: row[c] for c in columns}
            found[tuple(values[c] for c in table.key_columns)] = values
        return found

    def _lock_keys(
        self, session: Session, table: TableVersioning, keys: list[Key]
    ) -> dict[Key, Row]:
        """The rows with ``keys`` that exist, with their tracked values, locked."""
        connection = session.connection(bind_arguments={"clause": table.parent_table})
        return self._recorder.writer.load_rows(connection, table, keys, lock=True)

    def _note_changes(
        self,
        session: Session,
        uow: UnitOfWork,
        table: TableVersioning,
        before: dict[Key, Row],
        result: Any,
        deleted: bool,
    ) -> None:
        if not before:
            return
        pending = uow.pending.setdefault(table, {})
        keys = list(before)
        uow.bulk_touched.setdefault(table, set()).update(keys)
        connection = session.connection(bind_arguments={"clause": table.parent_table})
        if deleted:
            remaining: dict[Key, Row] = {}
            if getattr(result, "rowcount", -1) != len(before):
                # The statement deleted fewer rows than the SELECT found (criteria the ORM or
                # a session hook added to it): only the rows that are gone record a DELETE.
                remaining = self._recorder.writer.load_rows(connection, table, keys)
            for key, row in before.items():
                if key not in remaining:
                    pend(pending, key, Operation.DELETE, row)
            return
        after = self._recorder.writer.load_rows(connection, table, keys)
        for key, old in before.items():
            new = after.get(key)
            if new is None:
                continue  # not there any more (cannot happen: the row is locked)
            if _differs(table, old, new):
                pend(pending, key, Operation.UPDATE, None)

    # --- INSERT -------------------------------------------------------------------------------

    def _insert(
        self, state: ORMExecuteState, table: TableVersioning, uow: UnitOfWork
    ) -> Result[Any]:
        stmt: Any = state.statement
        name = table.parent_table.name
        verb = _verb(state)
        upsert = getattr(stmt, "_post_values_clause", None)
        if upsert is not None:
            return self._upsert(state, table, uow, upsert)
        if getattr(stmt, "select", None) is not None:
            raise UnrecordedWriteError(
                f"INSERT ... FROM SELECT on {name!r} cannot be recorded yet; insert the rows "
                "with a list of parameter sets (session.execute(insert(Model), rows)) or through "
                "the unit of work"
            )
        entity = _entity(stmt)
        rows = _param_rows(state.parameters)
        keys = None
        if rows and not _has_inline_values(stmt) and not _has_returning(stmt):
            keys = _keys_from_params(rows, table, entity, verb, required=False)
        if keys is not None:
            result = state.invoke_statement()
        else:
            result, keys = self._insert_returning_keys(state, table, entity, verb, uow)
        pending = uow.pending.setdefault(table, {})
        for key in keys:
            pend(pending, key, Operation.INSERT, None)
        return result

    def _upsert(
        self, state: ORMExecuteState, table: TableVersioning, uow: UnitOfWork, clause: Any
    ) -> Result[Any]:
        """INSERT ... ON CONFLICT / ON DUPLICATE KEY on the primary key: the rows that existed
        are read (and locked) before, every row after; new rows record an INSERT, changed ones
        an UPDATE, untouched ones nothing."""
        stmt: Any = state.statement
        pt = table.parent_table
        verb = "an upsert (INSERT ... ON CONFLICT / ON DUPLICATE KEY)"
        if not _conflicts_on_key_only(clause, pt):
            raise UnrecordedWriteError(
                f"{verb} on {pt.name!r} cannot be recorded: it may change a row found through "
                "another unique constraint than the primary key, whose key the statement does "
                "not name; make the primary key the conflict target (index_elements=[...]), "
                "or load the rows and change them through the unit of work"
            )
        rows = _param_rows(state.parameters)
        if _has_inline_values(stmt):
            rows = [] if rows else _inline_rows(stmt)
        entity = _entity(stmt)
        keys = _keys_from_params(rows, table, entity, verb, required=False)
        if not rows or keys is None:
            raise UnrecordedWriteError(
                f"{verb} on {pt.name!r} can be recorded only with the primary key in every "
                "parameter set (session.execute(stmt, [{...}, ...])), so the rows it touches "
                "are known"
            )
        session = state.session
        before = self._lock_keys(session, table, keys)
        result = state.invoke_statement()
        connection = session.connection(bind_arguments={"clause": pt})
        after = self._recorder.writer.load_rows(connection, table, keys)
        pending = uow.pending.setdefault(table, {})
        touched = uow.bulk_touched.setdefault(table, set())
        for key, new in after.items():
            old = before.get(key)
            if old is None:
                pend(pending, key, Operation.INSERT, None)
            elif _differs(table, old, new):
                touched.add(key)
                pend(pending, key, Operation.UPDATE, None)
        return result

    def _insert_returning_keys(
        self,
        state: ORMExecuteState,
        table: TableVersioning,
        entity: Any,
        verb: str,
        uow: UnitOfWork,
    ) -> tuple[Result[Any], list[Key]]:
        """Run the INSERT with the key columns added to its RETURNING; keep the caller's rows."""
        stmt: Any = state.statement
        pt = table.parent_table
        dialect = state.session.connection(bind_arguments={"clause": pt}).dialect
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
        if entity is None and not _has_returning(stmt):
            # Core: the keys come back as the result's inserted primary keys, the result stays
            # the one the caller expects (rowcount, inserted_primary_key).
            cursor: Any = state.invoke_statement(statement=stmt.return_defaults(*key_exprs))
            keys = [tuple(row) for row in cursor.inserted_primary_key_rows]
            if any(v is None for key in keys for v in key):
                uow.unrecorded = (
                    f"{verb} on {pt.name!r}: {dialect.name} did not return the keys it "
                    "assigned, so the rows' history cannot be recorded"
                )
                raise UnrecordedWriteError(uow.unrecorded)
            return cursor, keys
        user_columns = len(stmt._returning) if _has_returning(stmt) else 0
        result = state.invoke_statement(statement=stmt.returning(*key_exprs))
        frozen = result.freeze()
        width = len(key_exprs)
        keys = [tuple(row[len(row) - width :]) for row in frozen.data]
        replay: Result[Any] = frozen()
        if user_columns:
            return replay.columns(*range(user_columns)), keys
        return replay, keys


def _differs(table: TableVersioning, old: Row, new: Row) -> bool:
    """Whether a tracked value of the row changed."""
    columns = table.parent_table.c
    return any(not columns[c].type.compare_values(v, new.get(c)) for c, v in old.items())


def _conflicts_on_key_only(clause: Any, table: sa.Table) -> bool:
    """Whether an upsert's conflict handling can only ever meet the row its primary key names:
    its target is the primary key, or (no target: any unique key) the table has no unique
    constraint or index but the primary key. DO NOTHING changes no existing row at all."""
    clauses = list(getattr(clause, "clauses", None) or [clause])
    key = {c.name for c in table.primary_key.columns}
    for each in clauses:
        if type(each).__name__ == "OnConflictDoNothing":
            continue
        target = getattr(each, "inferred_target_elements", None)
        constraint = getattr(each, "constraint_target", None)
        if target:
            names = {getattr(c, "name", c) for c in target}
            if names != key:
                return False
        elif constraint is not None:
            if constraint != table.primary_key.name:
                return False
        elif _other_unique_keys(table):
            return False
    return True


def _other_unique_keys(table: sa.Table) -> bool:
    if any(c.unique for c in table.columns):
        return True
    if any(isinstance(c, sa.UniqueConstraint) for c in table.constraints):
        return True
    return any(index.unique for index in table.indexes)


def _plain_table(stmt: Any) -> Any:
    description = getattr(stmt, "entity_description", None)
    if description is not None and description.get("table") is not None:
        return description["table"]
    return getattr(stmt, "table", None)


def _entity(stmt: Any) -> Any:
    """The mapped class an ORM-enabled statement targets (``None`` for a Core statement)."""
    description = getattr(stmt, "entity_description", None)
    return None if description is None else description.get("entity")


def _verb(state: ORMExecuteState) -> str:
    return "INSERT" if state.is_insert else "UPDATE" if state.is_update else "DELETE"


def _set_columns(stmt: Any) -> list[Any] | None:
    """The columns an UPDATE's SET clause names (``None``: given per parameter set)."""
    values = getattr(stmt, "_values", None) or dict(getattr(stmt, "_ordered_values", None) or ())
    if not values:
        return None
    return list(values)


def _column_key(column: Any) -> str | None:
    if isinstance(column, str):
        return column
    key = getattr(column, "key", None)
    prop = getattr(column, "property", None)
    if prop is not None and getattr(prop, "columns", None):
        return str(prop.columns[0].key)
    return key if isinstance(key, str) else None


def _sets_key(stmt: Any, table: TableVersioning) -> bool:
    columns = _set_columns(stmt)
    if columns is None:
        return False
    names = {_column_key(c) for c in columns}
    attr_of = {c: a for a, c in table.attrs.items()}
    return any(k in names or attr_of[k] in names for k in table.key_columns)


def _sets_tracked(stmt: Any, table: TableVersioning) -> bool:
    columns = _set_columns(stmt)
    if columns is None:
        return True
    names = {_column_key(c) for c in columns}
    tracked = set(table.attrs.values()) | set(table.attrs)
    return bool(names & tracked) or None in names


def _keys_from_params(
    rows: Sequence[Mapping[str, Any]],
    table: TableVersioning,
    entity: Any,
    verb: str,
    required: bool = True,
) -> list[Key] | None:
    """Each parameter set's key (attribute names for ORM statements, column keys for Core
    ones); ``None`` when one is missing and not ``required``."""
    attr_of = {c: a for a, c in table.attrs.items()}
    names = [(attr_of[c], c) if entity is not None else (c, attr_of[c]) for c in table.key_columns]
    keys: list[Key] = []
    for row in rows:
        key = tuple(next((row[n] for n in pair if n in row), None) for pair in names)
        if None in key:
            if not required:
                return None
            column = table.key_columns[key.index(None)]
            raise UnrecordedWriteError(
                f"{verb} on {table.parent_table.name!r}: a parameter set has no value for the "
                f"primary key column {column!r}, so the row it changes cannot be recorded"
            )
        keys.append(key)
    return keys


def _keys_in(table: TableVersioning, entity: Any, keys: list[Key]) -> sa.ColumnElement[bool]:
    """``key IN (...)``: with the model's attributes for an ORM statement (so the ORM can
    evaluate it in Python), the table's columns otherwise."""
    if entity is not None:
        mapper = sa.inspect(entity)
        cols: list[Any] = [
            mapper.get_property_by_column(table.parent_table.c[c]).class_attribute
            for c in table.key_columns
        ]
    else:
        cols = [table.parent_table.c[c] for c in table.key_columns]
    if len(cols) == 1:
        return cols[0].in_([k[0] for k in keys])  # type: ignore[no-any-return]
    return sa.tuple_(*cols).in_(keys)


def _restrictable(session: Session, table: TableVersioning, count: int) -> bool:
    """Whether to restrict the statement to the keys found: not on SQLite (one writer at a
    time, so no row can appear between the SELECT and the statement), nor past the limit."""
    connection = session.connection(bind_arguments={"clause": table.parent_table})
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


def _param_rows(params: Any) -> list[Mapping[str, Any]]:
    """The parameter sets a statement was executed with (none, one, or a list)."""
    if isinstance(params, Mapping):
        return [params]
    return list(params) if isinstance(params, Sequence) else []


def _inline_rows(stmt: Any) -> list[Mapping[str, Any]]:
    """The rows of ``insert().values(...)`` by column key, as far as they are plain values."""
    given = [stmt._values] if stmt._values else list(stmt._multi_values[0])
    rows: list[Mapping[str, Any]] = []
    for values in given:
        row = {}
        for column, value in values.items():
            name = column if isinstance(column, str) else column.key
            if isinstance(value, sa.BindParameter):
                value = value.value
            elif isinstance(value, sa.ClauseElement):
                value = None  # an SQL expression: not known before the statement runs
            row[name] = value
        rows.append(row)
    return rows


def _has_inline_values(stmt: Any) -> bool:
    return bool(getattr(stmt, "_values", None) or getattr(stmt, "_multi_values", None))


def _has_returning(stmt: Any) -> bool:
    return bool(getattr(stmt, "_returning", None))
