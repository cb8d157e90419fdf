"""Commit order: the short lock under which a transaction writes its history.

A transaction writes its history when it commits (the unit of work only notes keys until
then) and takes the *commit-order lock* of its transaction table first. The lock is held
until the transaction ends, so the next history-writing transaction inserts its transaction
row only after this one has committed (or rolled back): transaction ids, the validity chain of
every row and the change feed follow commit order. The lock is held from the history write to
the COMMIT only (a few statements), never while the application's own statements run.

- **PostgreSQL:** a transaction-scoped advisory lock (``pg_advisory_xact_lock``) keyed by the
  transaction table's name. It is taken by a statement of its own, so the history statements
  that follow (new snapshots under READ COMMITTED) see every earlier commit.
- **MariaDB / MySQL:** the row lock of the one row of the ``<transaction table>_lock`` table
  (``INSERT … ON DUPLICATE KEY UPDATE`` takes it whether or not the row exists yet). InnoDB
  releases it at COMMIT or ROLLBACK and sees it in its deadlock detection.
- **SQLite:** nothing to take: a write transaction holds the database's write lock from its
  first write to its commit, so writers commit in the order in which they write.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from ._schema import INFO_KEY, identifier

__all__ = ["LOCK_TABLE_SUFFIX", "CommitLocks", "build_lock_table", "lock_table_of"]

LOCK_TABLE_SUFFIX = "_lock"
#: The first half of every advisory lock key of the library (the second is the table's).
_ADVISORY_CLASS = int.from_bytes(
    hashlib.blake2b(INFO_KEY.encode(), digest_size=4).digest(), "big", signed=True
)


def build_lock_table(transactions: sa.Table) -> sa.Table:
    """The one-row table whose row lock orders commits on MariaDB/MySQL (created everywhere,
    so every database has the same tables; PostgreSQL and SQLite leave it empty)."""
    return sa.Table(
        _lock_table_name(transactions),
        transactions.metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        schema=transactions.schema,
        comment=f"commit-order lock of {transactions.name} (one row, MariaDB/MySQL)",
    )


def lock_table_of(transactions: sa.Table) -> sa.Table:
    """The lock table built for ``transactions`` (found by name in its MetaData: nothing is
    kept in ``Table.info``, which Alembic writes into migrations)."""
    name = _lock_table_name(transactions)
    key = name if transactions.schema is None else f"{transactions.schema}.{name}"
    return transactions.metadata.tables[key]


def _lock_table_name(transactions: sa.Table) -> str:
    return identifier(transactions.name + LOCK_TABLE_SUFFIX)


def _advisory_key(transactions: sa.Table) -> int:
    digest = hashlib.blake2b(transactions.fullname.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_statement(dialect: str, transactions: sa.Table) -> sa.Executable | None:
    if dialect == "postgresql":
        keys = (_ADVISORY_CLASS, _advisory_key(transactions))
        return sa.select(
            sa.func.pg_advisory_xact_lock(*[sa.literal_column(str(k), sa.Integer) for k in keys])
        )
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(lock_table_of(transactions)).values(id=1).on_duplicate_key_update(id=1)
    return None


class CommitLocks:
    """Takes the commit-order lock of transaction tables, with statements built once per
    table and dialect (one per manager, whose recorder holds it)."""

    def __init__(self) -> None:
        self._statements: dict[tuple[sa.Table, str], sa.Executable | None] = {}

    def take(self, connection: Connection, transactions: sa.Table) -> None:
        """Take the commit-order lock of ``transactions`` for the rest of the transaction.

        Taking it again in the same transaction is harmless. Dialects other than PostgreSQL,
        MariaDB/MySQL and SQLite take no lock: there, ids follow the order in which
        transactions write their history, which is commit order only if their commits do not
        race.
        """
        dialect = connection.dialect.name
        key = (transactions, dialect)
        if key not in self._statements:
            self._statements[key] = _lock_statement(dialect, transactions)
        statement = self._statements[key]
        if statement is not None:
            connection.execute(statement)
