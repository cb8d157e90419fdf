"""Throwaway PostgreSQL and MariaDB servers for the test suite and the benchmarks.

``start_postgres()`` and ``start_mariadb()`` each start a private server on a fresh data
directory and a free port of 127.0.0.1, installing the Debian package first when the binaries
are missing and we run as root.  The returned server's ``url`` is an async SQLAlchemy URL;
``stop()``, leaving its ``with`` block or interpreter exit shuts it down and deletes its files.
``python -m devservers postgres|mariadb`` keeps one running for manual debugging.  Not part of
the installed package: the tests and ``benchmarks/`` import it from the repository root.
"""

from .base import Server
from .mariadb import MariaDBServer, start_mariadb
from .postgres import PostgresServer, start_postgres

__all__ = ["MariaDBServer", "PostgresServer", "Server", "start_mariadb", "start_postgres"]
