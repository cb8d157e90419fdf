"""Pure table builders and column types: a parent ``Table`` → its version ``Table``; the
transaction ``Table``; the "version valid at transaction t" condition.

Nothing here knows about sessions or mappers beyond the columns it is handed.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = [
    "INFO_KEY",
    "REMOTE_ADDR_LENGTH",
    "TRANSACTION_TABLE_NAME",
    "VERSION_TABLE_SUFFIX",
    "AwareDateTime",
    "Operation",
    "OperationType",
    "build_transaction_table",
    "build_version_table",
    "copy_late_types",
    "identifier",
    "valid_at",
    "version_column",
    "version_table_name",
]

TRANSACTION_TABLE_NAME = "transaction"
#: The longest identifier every tested database accepts (PostgreSQL's limit).
IDENTIFIER_LIMIT = 63
#: Length of ``transaction.remote_addr`` (an IPv6 address with a zone index fits).
REMOTE_ADDR_LENGTH = 50
VERSION_TABLE_SUFFIX = "_version"
#: The key under which the library keeps its facts in ``ClassManager.info`` and
#: ``Session.info``.
INFO_KEY = "sqlalchemy_history_async"


class Operation(enum.IntEnum):
    """What a version records, stored in ``operation_type``."""

    INSERT = 0
    UPDATE = 1
    DELETE = 2


class OperationType(TypeDecorator[Operation]):
    """``SmallInteger`` that returns :class:`Operation` members."""

    impl = sa.SmallInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Operation | None:
        return None if value is None else Operation(value)


class AwareDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    Backends without a time zone type (SQLite, MySQL/MariaDB) store naive UTC; values come
    back aware (UTC) everywhere. Naive input is rejected rather than guessed at. MySQL/MariaDB
    get ``DATETIME(6)``: a plain ``DATETIME`` drops the microseconds, and points in time
    within the same second as a transaction would then fall on the wrong side of it.
    """

    impl = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        utc = value.astimezone(timezone.utc)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# BIGINT primary keys do not autoincrement on SQLite; INTEGER (the rowid alias) does.
_TransactionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def build_transaction_table(
    metadata: sa.MetaData,
    *,
    user_id_column: sa.Column[Any] | None,
    user_id_type: sa.types.TypeEngine[Any],
    name: str = TRANSACTION_TABLE_NAME,
    schema: str | None = None,
) -> sa.Table:
    """Build the transaction table (``transaction`` unless ``name`` says otherwise).

    ``user_id`` references ``user_id_column`` when one is given; otherwise it is a plain
    nullable column of ``user_id_type``.
    """
    if user_id_column is not None:
        user_id = sa.Column(
            "user_id",
            user_id_column.type,
            sa.ForeignKey(user_id_column),
            nullable=True,
            index=True,
        )
    else:
        user_id = sa.Column("user_id", user_id_type, nullable=True, index=True)
    return sa.Table(
        name,
        metadata,
        sa.Column("id", _TransactionId, primary_key=True, autoincrement=True),
        sa.Column("issued_at", AwareDateTime(), nullable=False, index=True),
        user_id,
        sa.Column("remote_addr", sa.String(REMOTE_ADDR_LENGTH), nullable=True),
        sa.Column(
            "meta", sa.JSON(none_as_null=True).with_variant(_jsonb(), "postgresql"), nullable=True
        ),
        schema=schema,
    )


def _jsonb() -> sa.types.TypeEngine[Any]:
    from sqlalchemy.dialects.postgresql import JSONB

    return JSONB(none_as_null=True)


def build_version_table(
    parent: sa.Table,
    columns: Iterable[sa.Column[Any]],
    transaction_table: sa.Table,
    key: Iterable[str] | None = None,
) -> sa.Table:
    """Build ``<parent>_version`` from the tracked ``columns`` of ``parent``.

    Copies keep name, key and type but drop everything that would make history rows collide
    or depend on live data: unique constraints, foreign keys, defaults, autoincrement, identity
    and computed clauses. Non-key columns become nullable so later schema changes to the parent
    never invalidate old history. The primary key is the parent's (or the columns named by
    ``key``, for association tables whose rows are identified by their foreign keys) plus
    ``transaction_id``.
    """
    key_set = None if key is None else set(key)
    copies = [
        version_column(col, key=None if key_set is None else col.key in key_set) for col in columns
    ]
    tx_id = transaction_table.c.id
    name = version_table_name(parent)
    table = sa.Table(
        name,
        parent.metadata,
        *copies,
        sa.Column(
            "transaction_id",
            tx_id.type,
            # MariaDB names a foreign key <table>_ibfk_<n> and fails when that is too long.
            sa.ForeignKey(
                tx_id,
                name=identifier(f"{name}_transaction_id_fkey") if len(name) > 50 else None,
            ),
            primary_key=True,
            autoincrement=False,
            index=True,
        ),
        sa.Column("end_transaction_id", tx_id.type, nullable=True),
        sa.Column("operation_type", OperationType(), nullable=False),
        schema=parent.schema,
    )
    if any(isinstance(c.type, sa.types.NullType) for c in copies):
        # A foreign key column declared without a type gets its type once its target table
        # is known, possibly after this copy was made: take it over before the DDL runs.
        sa.event.listen(table, "before_create", _copy_late_types(parent))
    # At most one open version per row, enforced by the database; the same partial index
    # serves "current version of a row" lookups and the UPDATE that closes previous versions.
    # Backends without partial indexes rely on the primary key for those lookups.
    open_only = table.c.end_transaction_id.is_(None)
    sa.Index(
        _index_name(name, "current"),
        *[table.c[c.key] for c in copies if c.primary_key],
        unique=True,
        postgresql_where=open_only,
        sqlite_where=open_only,
        mssql_where=open_only,
    ).ddl_if(dialect=cast(Any, _PARTIAL_INDEX_DIALECTS))
    return table


_PARTIAL_INDEX_DIALECTS = ("postgresql", "sqlite", "mssql")


def version_table_name(parent: sa.Table) -> str:
    """The name of ``parent``'s version table (without schema).

    ``<table>_version``, shortened with a stable hash when that would exceed the identifier
    limit of PostgreSQL (63 characters; MariaDB allows 64).
    """
    return identifier(parent.name + VERSION_TABLE_SUFFIX)


def identifier(name: str, limit: int = IDENTIFIER_LIMIT) -> str:
    """``name``, or its first characters plus a stable hash when it is longer than ``limit``."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


def valid_at(columns: Any, tx: Any, *, deleted: bool = False) -> sa.ColumnElement[bool]:
    """Versions in force at transaction ``tx``: ``transaction_id <= tx < end_transaction_id``.

    ``columns`` is a version table's ``.c``, an alias's ``.c`` or a version class (anything
    with ``transaction_id`` and ``end_transaction_id`` attributes). Versions that record a
    delete are left out unless ``deleted`` is true: at ``tx`` the row did not exist.
    """
    condition = sa.and_(
        columns.transaction_id <= tx,
        sa.or_(columns.end_transaction_id.is_(None), columns.end_transaction_id > tx),
    )
    if deleted:
        return condition
    return sa.and_(condition, columns.operation_type != Operation.DELETE)


def _copy_late_types(parent: sa.Table) -> Any:
    def copy(version_table: sa.Table, *args: Any, **kw: Any) -> None:
        copy_late_types(parent, version_table)

    return copy


def copy_late_types(parent: sa.Table, version_table: sa.Table) -> None:
    """Give version columns still typed ``NullType`` the type their parent column has now."""
    for column in version_table.c:
        if isinstance(column.type, sa.types.NullType) and column.key in parent.c:
            column.type = _copy_type(parent.c[column.key].type)


def version_column(col: sa.Column[Any], key: bool | None = None) -> sa.Column[Any]:
    """The version-table copy of a parent column: same name, key and type, nothing else.

    ``key`` overrides whether the copy is part of the row key (default: as in the parent).
    """
    in_key = col.primary_key if key is None else key
    return sa.Column(
        col.name,
        _copy_type(col.type),
        key=col.key,
        primary_key=in_key,
        nullable=not in_key,
        autoincrement=False,
        comment=col.comment,
    )


def _index_name(table: str, suffix: str) -> str:
    """``ix_<table>_<suffix>``, shortened with a stable hash to fit every backend's limit."""
    return identifier(f"ix_{table}_{suffix}")


def _copy_type(type_: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    # Schema-bound types (Enum, Boolean) attach to one table; give the copy its own instance.
    if isinstance(type_, sa.types.SchemaType):
        copied: sa.types.TypeEngine[Any] = cast(Any, type_).copy()
        return copied
    return type_
