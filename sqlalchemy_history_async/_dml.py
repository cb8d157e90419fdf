"""What a DML statement says about the rows it writes, read from the statement itself.

The table and mapped class an INSERT / UPDATE / DELETE targets, the columns its SET clause
names, the keys its parameters or its WHERE give, its upsert's conflict target, and whether a
row's tracked values changed. Pure functions over SQLAlchemy constructs: nothing here runs SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BooleanClauseList

from ._exceptions import UnrecordedWriteError
from ._info import TableVersioning
from ._writes import Key, Row

__all__ = [
    "TEXTUAL_WRITE",
    "after_key",
    "compared_columns",
    "conflicts_on_key_only",
    "differs",
    "entity_of",
    "has_inline_values",
    "has_returning",
    "inline_rows",
    "key_binds",
    "keys_from_params",
    "keys_in",
    "param_rows",
    "plain_table",
    "sets_key",
    "sets_tracked",
]

#: The table an INSERT, UPDATE, DELETE (or MERGE / REPLACE) statement in SQL text writes to.
TEXTUAL_WRITE = re.compile(
    r"\b(?:insert\s+(?:ignore\s+)?into|replace\s+into|merge\s+into|update|delete\s+from)"
    r"\s+(?:only\s+)?(?:[`\"\[]?\w+[`\"\]]?\.)?[`\"\[]?(?P<table>\w+)",
    re.IGNORECASE,
)


def key_binds(where: Any, table: TableVersioning) -> list[tuple[str, Any]] | None:
    """For a WHERE that is (or is an AND of conditions including) ``key_column == :param``
    for every key column: each key column's parameter name and default value."""
    conditions = list(where.clauses) if isinstance(where, BooleanClauseList) else [where]
    if isinstance(where, BooleanClauseList) and where.operator is not operators.and_:
        return None
    pt = table.parent_table
    found: dict[str, tuple[str, Any]] = {}
    for cond in conditions:
        if not isinstance(cond, BinaryExpression) or cond.operator is not operators.eq:
            continue
        for column, other in ((cond.left, cond.right), (cond.right, cond.left)):
            if (
                isinstance(other, sa.BindParameter)
                and getattr(column, "table", None) is pt
                and column.key in table.key_columns
            ):
                found[column.key] = (other.key, other.value)
    if len(found) != len(table.key_columns):
        return None
    return [found[c] for c in table.key_columns]


_PLAIN_COMPARE = sa.types.TypeEngine.compare_values


def differs(table: TableVersioning, old: Row, new: Row) -> bool:
    """Whether a value of ``old`` (tracked values by column key) changed in ``new``."""
    columns = table.parent_table.c
    for name, value in old.items():
        now = new.get(name)
        kind = columns[name].type
        if type(kind).compare_values is _PLAIN_COMPARE:
            if value != now:
                return True
        elif not kind.compare_values(value, now):
            return True
    return False


def compared_columns(stmt: Any, table: TableVersioning) -> tuple[str, ...] | None:
    """The tracked columns (by key) an UPDATE can change: the key, the columns its SET clause
    names, and those with an ``onupdate`` / ``server_onupdate``; ``None`` when the SET clause
    is given per parameter set (every tracked column)."""
    columns = _set_columns(stmt)
    if columns is None:
        return None
    named = set(table.key_columns)
    for column in columns:
        name = _column_key(column)
        if name is None:
            return None
        named |= {name, table.attrs.get(name, name)}  # an attribute name, or a column key
    for column in table.parent_table.columns:
        if column.onupdate is not None or column.server_onupdate is not None:
            named.add(column.key)
    return tuple(c for c in table.attrs.values() if c in named)


def conflicts_on_key_only(clause: Any, table: sa.Table) -> bool:
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


def plain_table(stmt: Any) -> Any:
    description = getattr(stmt, "entity_description", None)
    if description is not None and description.get("table") is not None:
        return description["table"]
    return getattr(stmt, "table", None)


def entity_of(stmt: Any) -> Any:
    """The mapped class an ORM-enabled statement targets (``None`` for a Core statement)."""
    description = getattr(stmt, "entity_description", None)
    return None if description is None else description.get("entity")


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


def sets_key(stmt: Any, table: TableVersioning) -> bool:
    columns = _set_columns(stmt)
    if columns is None:
        return False
    names = {_column_key(c) for c in columns}
    attr_of = {c: a for a, c in table.attrs.items()}
    return any(k in names or attr_of[k] in names for k in table.key_columns)


def sets_tracked(stmt: Any, table: TableVersioning) -> bool:
    columns = _set_columns(stmt)
    if columns is None:
        return True
    names = {_column_key(c) for c in columns}
    tracked = set(table.attrs.values()) | set(table.attrs)
    return bool(names & tracked) or None in names


def keys_from_params(
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


def keys_in(table: TableVersioning, entity: Any, keys: list[Key]) -> sa.ColumnElement[bool]:
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


def param_rows(params: Any) -> list[Mapping[str, Any]]:
    """The parameter sets a statement was executed with (none, one, or a list)."""
    if isinstance(params, Mapping):
        return [params]
    return list(params) if isinstance(params, Sequence) else []


def inline_rows(stmt: Any) -> list[Mapping[str, Any]]:
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


def has_inline_values(stmt: Any) -> bool:
    return bool(getattr(stmt, "_values", None) or getattr(stmt, "_multi_values", None))


def has_returning(stmt: Any) -> bool:
    return bool(getattr(stmt, "_returning", None))


def after_key(columns: Sequence[sa.Column[Any]], key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    """``columns`` (a key, in order) compare greater than ``key``: keyset pagination."""
    condition: sa.ColumnElement[bool] = (
        columns[0] > key[0]
        if len(columns) == 1
        else sa.tuple_(*columns) > sa.tuple_(*[sa.literal(v) for v in key])
    )
    return condition
