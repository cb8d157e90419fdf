"""How far back history is complete, once retention pruned it.

Pruning (``_retention``) deletes old versions. What is left answers questions about recent
history exactly as before, and questions about older history wrongly: an as-of query for a
point before the cut would leave out rows whose version was pruned, and a change feed starting
before it would skip transactions. So every pruning batch records, in the same database
transaction, per version table, the first transaction from which as-of answers are complete
(``as_of_from``) and the first from which the change feed is (``changes_from``), in the
retention table of the transaction table (``<transaction>_retention``, created with it, empty
until something is pruned).

Reads that can be wrong after pruning carry a :class:`Horizon` in their execution options
(``select_as_of()``, ``select_version_at()``, ``select_changes()``); run through a session,
they check it first and raise :class:`HistoryPrunedError` rather than answer wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._exceptions import HistoryPrunedError
from ._schema import AwareDateTime, identifier

__all__ = [
    "HORIZON_OPTION",
    "RETENTION_TABLE_SUFFIX",
    "Horizon",
    "build_retention_table",
    "check_horizon",
    "retention_table_of",
]

RETENTION_TABLE_SUFFIX = "_retention"
#: The execution option holding a statement's :class:`Horizon`.
HORIZON_OPTION = "sqlalchemy_history_async_horizon"
_TransactionId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def build_retention_table(transactions: sa.Table) -> sa.Table:
    """The table recording, per version table, from which transaction history is complete."""
    return sa.Table(
        _name(transactions),
        transactions.metadata,
        sa.Column("version_table", sa.String(255), primary_key=True),
        sa.Column("as_of_from", _TransactionId, nullable=False),
        sa.Column("changes_from", _TransactionId, nullable=False),
        sa.Column("pruned_at", AwareDateTime(), nullable=False),
        schema=transactions.schema,
        comment=f"how far back the history recorded in {transactions.name} is complete",
    )


def retention_table_of(transactions: sa.Table) -> sa.Table:
    """The retention table built for ``transactions`` (found by name in its MetaData)."""
    name = _name(transactions)
    key = name if transactions.schema is None else f"{transactions.schema}.{name}"
    return transactions.metadata.tables[key]


def _name(transactions: sa.Table) -> str:
    return identifier(transactions.name + RETENTION_TABLE_SUFFIX)


@dataclass(frozen=True)
class Horizon:
    """What a read asks of history: ``kind`` answers at (or since) ``at`` from ``tables``."""

    retention: sa.Table
    #: version table names the read uses
    tables: tuple[str, ...]
    #: a transaction id, SQL computing one (from a datetime), or ``None``: from the start
    at: Any
    kind: Literal["as_of", "changes"]


def check_horizon(connection: Connection, horizon: Horizon) -> None:
    """Raise :class:`HistoryPrunedError` if ``horizon`` reaches before what was kept."""
    rt = horizon.retention
    bound = rt.c.as_of_from if horizon.kind == "as_of" else rt.c.changes_from
    # a point that resolves to no transaction (a datetime before every kept one) is "before
    # everything": pruned history answers it wrongly too
    at = sa.func.coalesce(horizon.at, 0) if horizon.at is not None else sa.literal(0)
    stmt = (
        sa.select(rt.c.version_table, bound, at)
        .where(rt.c.version_table.in_(horizon.tables), bound > at)
        .order_by(bound.desc())
        .limit(1)
    )
    row = connection.execute(stmt).first()
    if row is None:
        return
    table, complete_from, asked = row
    if horizon.kind == "as_of":
        question = f"as of transaction {asked}" if asked else "as of a point before it"
    else:
        question = f"changes since transaction {asked}" if asked else "changes from the start"
    raise HistoryPrunedError(
        f"the history in {table!r} before transaction {complete_from} was pruned, so "
        f"{question} cannot be answered completely; ask for transaction {complete_from} or "
        "later"
    )
