"""SQLite savepoints under the sqlite3 module's legacy transaction control.

Python's ``sqlite3`` (and aiosqlite) begin a transaction only before a data-changing statement.
A ``SAVEPOINT`` sent first — ``session.begin_nested()`` as the first thing a transaction does —
therefore runs outside any transaction, and SQLite makes it the outermost transaction:
releasing it commits everything, and the session's later ``rollback()`` undoes nothing, data
and history alike. While versioning is on, the library sends the ``BEGIN`` that SQLAlchemy
assumed had happened when a savepoint begins.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, SessionTransaction

__all__ = ["begin_before_savepoint"]


def begin_before_savepoint(session: Session, transaction: SessionTransaction) -> None:
    """A savepoint begins: make sure a SQLite connection is inside a real transaction.

    Only the session's default bind is looked at, and only when it is SQLite: the savepoint
    itself is sent later, when the nested transaction first uses the connection.
    """
    try:
        bind = session.get_bind()
    except sa.exc.UnboundExecutionError:  # no default bind: nothing to do here
        return
    if bind.dialect.name != "sqlite":
        return
    root = transaction
    while root.parent is not None:
        root = root.parent
    connection = root.connection(None)
    dbapi_connection: Any = connection.connection.dbapi_connection
    if dbapi_connection is None or getattr(dbapi_connection, "isolation_level", None) is None:
        return  # autocommit mode, or the application emits BEGIN itself
    raw = getattr(dbapi_connection, "_connection", dbapi_connection)  # aiosqlite's adapter
    if getattr(raw, "in_transaction", True) is False:
        connection.exec_driver_sql("BEGIN")
