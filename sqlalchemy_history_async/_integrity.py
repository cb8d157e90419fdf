"""Integrity checks of recorded history: what a database's version tables say against what
the library guarantees about them.

:func:`check_integrity_sync` runs a handful of set-based queries per version table (each
returns only the rows at fault, never the table) and reflects the live schema once:

- the version tables, their columns and the transaction table exist as the models say;
- every live row has exactly one open version (``end_transaction_id`` NULL, not a DELETE),
  and a deleted row has none;
- each key's versions form one validity chain: ``transaction_id < end_transaction_id``, and a
  version's ``end_transaction_id`` is the ``transaction_id`` of the key's next version;
- every ``transaction_id`` and ``end_transaction_id`` names a row of the transaction table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ._info import TableVersioning, VersionInfo, default_catalog
from ._queries import model_info
from ._schema import Operation

__all__ = [
    "IntegrityProblem",
    "IntegrityProblemKind",
    "check_integrity",
    "check_integrity_sync",
    "checked_tables",
]


class IntegrityProblemKind(str, enum.Enum):
    """What is wrong, in an :class:`IntegrityProblem`; the value is its name in JSON."""

    #: a version table, the transaction table or a model's own table is not in the database
    MISSING_TABLE = "missing_table"
    #: a column of the version table in the models is missing from the database's table
    MISSING_COLUMN = "missing_column"
    #: the database's version table has a column the models do not have
    EXTRA_COLUMN = "extra_column"
    #: a live row has no version at all (written before versioning, or while it was off)
    UNVERSIONED_ROW = "unversioned_row"
    #: a live row has versions, but none is open, or the open one records a DELETE
    NO_OPEN_VERSION = "no_open_version"
    #: a key has more than one open version
    SEVERAL_OPEN_VERSIONS = "several_open_versions"
    #: a row that no longer exists still has an open version that is not a DELETE
    OPEN_VERSION_OF_DELETED_ROW = "open_version_of_deleted_row"
    #: a version's ``end_transaction_id`` is not after its ``transaction_id``
    INVERTED_INTERVAL = "inverted_interval"
    #: a version is still in force when the key's next version starts (its end is NULL or
    #: after the next version's transaction)
    OVERLAPPING_INTERVALS = "overlapping_intervals"
    #: a version ends before the key's next version starts, or ends with no next version
    BROKEN_CHAIN = "broken_chain"
    #: a version's ``transaction_id`` or ``end_transaction_id`` has no transaction row
    MISSING_TRANSACTION = "missing_transaction"


_KIND_ORDER = {kind: n for n, kind in enumerate(IntegrityProblemKind)}


@dataclass(frozen=True, kw_only=True)
class IntegrityProblem:
    """One thing wrong with recorded history, as :func:`check_integrity_sync` reports it."""

    kind: IntegrityProblemKind
    #: the table at fault: a version table for everything but a missing transaction table or
    #: model table (schema-qualified when it has a schema)
    table: str
    #: the row's primary key by attribute name (``None`` for problems of a whole table)
    key: dict[str, Any] | None = None
    #: the transaction of the version at fault, when one is
    transaction_id: int | None = None
    #: the column at fault (missing or extra columns)
    column: str | None = None
    #: what is wrong, in words
    detail: str


def check_integrity_sync(
    bind: Connection | Session,
    models: Iterable[type[Any]] | None = None,
    *,
    limit: int | None = None,
) -> list[IntegrityProblem]:
    """Check the recorded history of ``models``; return the problems found (``[]``: none).

    ``models`` defaults to every model versioned by ``make_versioned()``; the version tables
    of their many-to-many links are checked too. Reads only, in ``bind``'s transaction (a
    ``Connection`` or a ``Session``): the live schema is reflected once, then each version
    table is checked with a few set-based queries that return only the rows at fault (at
    most ``limit`` of each kind per table when ``limit`` is given). Problems come ordered by
    table, then kind (in the order of :class:`IntegrityProblemKind`, which says what is
    checked), then key.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"check_integrity(limit=...) takes a positive int, got {limit!r}")
    tables = checked_tables(_infos(models))
    if not tables:
        return []
    connection = (
        bind.connection(bind_arguments={"clause": tables[0].parent_table})
        if isinstance(bind, Session)
        else bind
    )
    checker = _Checker(connection, limit)
    problems: list[IntegrityProblem] = []
    for transactions in dict.fromkeys(t.transaction_table for t in tables):
        problems += checker.missing_table(transactions, "the transaction table")
    for table in sorted(tables, key=lambda t: t.version_table.fullname):
        problems += checker.table(table)
    return problems


async def check_integrity(
    bind: AsyncConnection | AsyncSession,
    models: Iterable[type[Any]] | None = None,
    *,
    limit: int | None = None,
) -> list[IntegrityProblem]:
    """:func:`check_integrity_sync` on an ``AsyncConnection`` or ``AsyncSession``."""
    chosen = None if models is None else list(models)

    def run(sync: Connection | Session) -> list[IntegrityProblem]:
        return check_integrity_sync(sync, chosen, limit=limit)

    return await bind.run_sync(run)


def checked_tables(infos: Iterable[VersionInfo]) -> list[TableVersioning]:
    """The version tables of ``infos`` and of their many-to-many links, each once."""
    tables: dict[TableVersioning, None] = {}
    for info in infos:
        tables.update(dict.fromkeys(info.tables))
        tables.update(dict.fromkeys(link.table for link in info.links))
    return list(tables)


def _infos(models: Iterable[type[Any]] | None) -> list[VersionInfo]:
    if models is None:
        sa.orm.configure_mappers()
        models = default_catalog().versioned_classes
    return [model_info(model) for model in models]


class _Checker:
    """The checks of one connection: the live schema, reflected once, and the queries."""

    def __init__(self, connection: Connection, limit: int | None) -> None:
        self.connection = connection
        self.inspector = sa.inspect(connection)
        self.limit = limit
        self._columns: dict[tuple[str | None, str], list[str] | None] = {}

    def columns(self, table: sa.Table) -> list[str] | None:
        """The names of ``table``'s columns in the database, ``None`` if it does not exist."""
        where = (table.schema, table.name)
        if where not in self._columns:
            found = None
            if self.inspector.has_table(table.name, schema=table.schema):
                found = [c["name"] for c in self.inspector.get_columns(table.name, table.schema)]
            self._columns[where] = found
        return self._columns[where]

    def missing_table(self, table: sa.Table, what: str) -> list[IntegrityProblem]:
        if self.columns(table) is not None:
            return []
        return [
            IntegrityProblem(
                kind=IntegrityProblemKind.MISSING_TABLE,
                table=table.fullname,
                detail=f"{what} {table.fullname!r} is not in the database",
            )
        ]

    def table(self, table: TableVersioning) -> list[IntegrityProblem]:
        """Every problem of one version table, schema first; data only if the schema allows."""
        vt, pt = table.version_table, table.parent_table
        problems = self.missing_table(vt, "the version table")
        problems += self.missing_table(pt, "the versioned table")
        if problems:
            return problems
        problems += self.column_differences(table)
        have = set(self.columns(vt) or ())
        needed = {vt.c[c].name for c in table.key_columns}
        needed |= {"transaction_id", "end_transaction_id", "operation_type"}
        if not needed <= have or not set(pt.c[c].name for c in table.key_columns) <= set(
            self.columns(pt) or ()
        ):
            return problems  # the data queries could not run; the columns say why
        rows = _Rows(table, self.limit)
        problems += rows.open_versions(self.connection)
        problems += rows.several_open(self.connection)
        problems += rows.open_of_deleted(self.connection)
        problems += rows.inverted(self.connection)
        problems += rows.chain(self.connection)
        if self.columns(table.transaction_table) is not None:
            problems += rows.missing_transactions(self.connection)
        # by kind (each query returns its rows in key order; the sort is stable)
        problems.sort(key=lambda p: _KIND_ORDER[p.kind])
        return problems

    def column_differences(self, table: TableVersioning) -> list[IntegrityProblem]:
        vt = table.version_table
        live = self.columns(vt) or []
        expected = [c.name for c in vt.c]
        problems = [
            IntegrityProblem(
                kind=IntegrityProblemKind.MISSING_COLUMN,
                table=vt.fullname,
                column=name,
                detail=f"column {name!r} of the models is not in the database's {vt.fullname!r}",
            )
            for name in expected
            if name not in live
        ]
        problems += [
            IntegrityProblem(
                kind=IntegrityProblemKind.EXTRA_COLUMN,
                table=vt.fullname,
                column=name,
                detail=f"column {name!r} of the database's {vt.fullname!r} is not in the models",
            )
            for name in live
            if name not in expected
        ]
        return problems


class _Rows:
    """The data queries of one version table; each returns the rows at fault only."""

    def __init__(self, table: TableVersioning, limit: int | None) -> None:
        self.table = table
        self.limit = limit
        self.vt = table.version_table
        self.pt = table.parent_table
        attr_of = {col: attr for attr, col in table.attrs.items()}
        self.key_attrs = [attr_of[c] for c in table.key_columns]
        self.v_keys = [self.vt.c[c] for c in table.key_columns]
        self.p_keys = [self.pt.c[c] for c in table.key_columns]

    def _same_key(self, a: Sequence[sa.ColumnElement[Any]], b: Sequence[Any]) -> list[Any]:
        return [x == y for x, y in zip(a, b, strict=True)]

    def _run(self, connection: Connection, stmt: sa.Select[Any]) -> list[tuple[Any, ...]]:
        if self.limit is not None:
            stmt = stmt.limit(self.limit)
        return [tuple(row) for row in connection.execute(stmt)]

    def _problem(
        self,
        kind: IntegrityProblemKind,
        row: tuple[Any, ...],
        detail: str,
        transaction_id: Any = None,
    ) -> IntegrityProblem:
        key = dict(zip(self.key_attrs, row[: len(self.key_attrs)], strict=True))
        return IntegrityProblem(
            kind=kind,
            table=self.vt.fullname,
            key=key,
            transaction_id=None if transaction_id is None else int(transaction_id),
            detail=detail,
        )

    def open_versions(self, connection: Connection) -> list[IntegrityProblem]:
        """Live rows without an open version that is not a DELETE."""
        vt = self.vt
        same = self._same_key(self.v_keys, self.p_keys)
        good = sa.exists().where(
            *same, vt.c.end_transaction_id.is_(None), vt.c.operation_type != Operation.DELETE
        )
        versioned = sa.exists().where(*same)
        open_delete = (
            sa.select(sa.func.max(vt.c.transaction_id))
            .where(
                *same, vt.c.end_transaction_id.is_(None), vt.c.operation_type == Operation.DELETE
            )
            .scalar_subquery()
        )
        stmt = (
            sa.select(*self.p_keys, versioned.label("versioned"), open_delete.label("deleted_by"))
            .where(~good)
            .order_by(*self.p_keys)
        )
        problems = []
        for row in self._run(connection, stmt):
            versioned_, deleted_by = row[-2], row[-1]
            if not versioned_:
                problems.append(
                    self._problem(
                        IntegrityProblemKind.UNVERSIONED_ROW,
                        row,
                        "the row has no version (written before versioning or while it was "
                        "off; `baseline` gives it one)",
                    )
                )
            elif deleted_by is not None:
                problems.append(
                    self._problem(
                        IntegrityProblemKind.NO_OPEN_VERSION,
                        row,
                        f"the row exists, but its open version (transaction {deleted_by}) "
                        "records a DELETE",
                        deleted_by,
                    )
                )
            else:
                problems.append(
                    self._problem(
                        IntegrityProblemKind.NO_OPEN_VERSION,
                        row,
                        "the row exists, but every version of it is closed",
                    )
                )
        return problems

    def several_open(self, connection: Connection) -> list[IntegrityProblem]:
        """Keys with more than one open version."""
        vt = self.vt
        count = sa.func.count()
        stmt = (
            sa.select(*self.v_keys, count, sa.func.min(vt.c.transaction_id))
            .where(vt.c.end_transaction_id.is_(None))
            .group_by(*self.v_keys)
            .having(count > 1)
            .order_by(*self.v_keys)
        )
        return [
            self._problem(
                IntegrityProblemKind.SEVERAL_OPEN_VERSIONS,
                row,
                f"{row[-2]} versions are open (end_transaction_id NULL), the first written by "
                f"transaction {row[-1]}",
                row[-1],
            )
            for row in self._run(connection, stmt)
        ]

    def open_of_deleted(self, connection: Connection) -> list[IntegrityProblem]:
        """Open versions (not DELETE) of keys the live table does not have."""
        vt = self.vt
        live = sa.exists().where(*self._same_key(self.p_keys, self.v_keys))
        stmt = (
            sa.select(*self.v_keys, vt.c.transaction_id, vt.c.operation_type)
            .where(
                vt.c.end_transaction_id.is_(None),
                vt.c.operation_type != Operation.DELETE,
                ~live,
            )
            .order_by(*self.v_keys, vt.c.transaction_id)
        )
        return [
            self._problem(
                IntegrityProblemKind.OPEN_VERSION_OF_DELETED_ROW,
                row,
                f"the row does not exist, but its {Operation(row[-1]).name} version of "
                f"transaction {row[-2]} is open",
                row[-2],
            )
            for row in self._run(connection, stmt)
        ]

    def inverted(self, connection: Connection) -> list[IntegrityProblem]:
        """Versions that end at or before the transaction that wrote them."""
        vt = self.vt
        stmt = (
            sa.select(*self.v_keys, vt.c.transaction_id, vt.c.end_transaction_id)
            .where(vt.c.end_transaction_id <= vt.c.transaction_id)
            .order_by(*self.v_keys, vt.c.transaction_id)
        )
        return [
            self._problem(
                IntegrityProblemKind.INVERTED_INTERVAL,
                row,
                f"the version of transaction {row[-2]} ends at transaction {row[-1]}, not after it",
                row[-2],
            )
            for row in self._run(connection, stmt)
        ]

    def chain(self, connection: Connection) -> list[IntegrityProblem]:
        """Versions whose end is not the start of the key's next version (one window query)."""
        vt = self.vt
        following = (
            sa.func.lead(vt.c.transaction_id)
            .over(partition_by=self.v_keys, order_by=vt.c.transaction_id)
            .label("next_id")
        )
        versions = sa.select(
            *self.v_keys, vt.c.transaction_id, vt.c.end_transaction_id, following
        ).subquery("chained")
        tx, end, nxt = (
            versions.c.transaction_id,
            versions.c.end_transaction_id,
            versions.c.next_id,
        )
        keys = [versions.c[c.key] for c in self.v_keys]
        stmt = (
            sa.select(*keys, tx, end, nxt)
            .where(
                sa.or_(
                    sa.and_(nxt.is_not(None), sa.or_(end.is_(None), end > nxt)),
                    # an inverted interval is reported as such, not as a broken chain too
                    sa.and_(end > tx, sa.or_(nxt.is_(None), end < nxt)),
                )
            )
            .order_by(*keys, tx)
        )
        problems = []
        for row in self._run(connection, stmt):
            tx_id, end_id, next_id = row[-3], row[-2], row[-1]
            if next_id is not None and (end_id is None or end_id > next_id):
                ends = "is still open" if end_id is None else f"ends at transaction {end_id}"
                kind = IntegrityProblemKind.OVERLAPPING_INTERVALS
                detail = (
                    f"the version of transaction {tx_id} {ends}, after the next version "
                    f"(transaction {next_id}) began"
                )
            elif next_id is None:
                kind = IntegrityProblemKind.BROKEN_CHAIN
                detail = (
                    f"the version of transaction {tx_id} ends at transaction {end_id}, "
                    "which wrote no version of the row"
                )
            else:
                kind = IntegrityProblemKind.BROKEN_CHAIN
                detail = (
                    f"the version of transaction {tx_id} ends at transaction {end_id}, "
                    f"before the next version (transaction {next_id}) began"
                )
            problems.append(self._problem(kind, row, detail, tx_id))
        return problems

    def missing_transactions(self, connection: Connection) -> list[IntegrityProblem]:
        """Versions whose ``transaction_id`` or ``end_transaction_id`` has no transaction row."""
        vt, t = self.vt, self.table.transaction_table
        wrote = sa.exists().where(t.c.id == vt.c.transaction_id)
        closed = sa.exists().where(t.c.id == vt.c.end_transaction_id)
        stmt = (
            sa.select(
                *self.v_keys,
                vt.c.transaction_id,
                vt.c.end_transaction_id,
                wrote.label("wrote"),
                closed.label("closed"),
            )
            .where(sa.or_(~wrote, sa.and_(vt.c.end_transaction_id.is_not(None), ~closed)))
            .order_by(*self.v_keys, vt.c.transaction_id)
        )
        problems = []
        for row in self._run(connection, stmt):
            tx_id, end_id, wrote_, closed_ = row[-4], row[-3], row[-2], row[-1]
            missing = [] if wrote_ else [f"transaction {tx_id}, which wrote it"]
            if end_id is not None and not closed_:
                missing.append(f"transaction {end_id}, which closed it")
            detail = f"the version of transaction {tx_id} names " + " and ".join(missing)
            problems.append(
                self._problem(
                    IntegrityProblemKind.MISSING_TRANSACTION,
                    row,
                    detail + ": no such row in " + repr(t.fullname),
                    tx_id,
                )
            )
        return problems
