"""Retention: delete old versions, keeping every remaining validity chain consistent.

``prune_sync(engine, Model, before=...)`` deletes the versions that were no longer in force at
``before`` (closed at or before it, and rows deleted by then); ``keep_last=N`` keeps the ``N``
newest versions of each row. The versions left form consistent chains: each row's oldest kept
version is a full copy of the row (versions always are), with no previous version. What was
pruned is recorded in the retention table (``_horizon``) in the same transaction as each
batch, so as-of queries and the change feed for earlier points raise
:class:`HistoryPrunedError` instead of answering wrongly.

Work is done in batches of keys, one transaction per batch, each taking the commit-order lock
first: history written by the application meanwhile waits for a batch at most, and never
interleaves with one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._dml import after_key
from ._horizon import retention_table_of
from ._info import TableVersioning, history_tables, one_transaction_table
from ._order import CommitLocks
from ._queries import PointInHistory, as_transaction_id, model_info
from ._schema import Operation

__all__ = ["prune", "prune_sync"]

#: ``progress(done, table)``: called after each batch with the versions deleted so far.
Progress = Callable[[int, str], None]
#: Version keys deleted per statement (a tuple of bound values each).
_DELETE_CHUNK = 500


def prune_sync(
    engine: Engine,
    model: type[Any],
    *models: type[Any],
    before: PointInHistory | None = None,
    keep_last: int | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> int:
    """Delete old versions of ``model`` (and of each of ``models``); return how many.

    Give exactly one of:

    - ``before``: a transaction id, a transaction, or an aware ``datetime`` (the last
      transaction issued at or before it). The versions no longer in force at that
      transaction go: those closed at or before it, and the versions of rows deleted by then.
      ``select_as_of()`` at ``before`` and later answers as before pruning.
    - ``keep_last``: the number of newest versions kept for each row (at least 1).

    The tables of a joined-table hierarchy and the association tables of the models'
    many-to-many relationships are pruned the same way. Each batch of ``batch_size`` keys is
    one transaction of ``engine`` (committed before the next), taking the commit-order lock;
    ``progress(done, table)`` is called after each. Transaction rows are kept (they are one
    per transaction, and the change feed of later transactions joins them). After pruning,
    an as-of query or a change feed reaching before what was kept raises
    :class:`HistoryPrunedError`.
    """
    pruner = _Pruner([model, *models], before, keep_last, batch_size)
    with engine.connect() as connection:
        return pruner.run(connection, progress)


async def prune(
    engine: AsyncEngine,
    model: type[Any],
    *models: type[Any],
    before: PointInHistory | None = None,
    keep_last: int | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> int:
    """:func:`prune_sync` on an ``AsyncEngine``: one transaction per batch as well."""
    pruner = _Pruner([model, *models], before, keep_last, batch_size)
    async with engine.connect() as connection:
        return await connection.run_sync(pruner.run, progress)


class _Pruner:
    """The state of one pruning run: the tables left, the key cursor, what was deleted."""

    def __init__(
        self,
        classes: Sequence[type[Any]],
        before: PointInHistory | None,
        keep_last: int | None,
        batch_size: int,
    ) -> None:
        if (before is None) == (keep_last is None):
            raise ValueError("prune() takes either before=... or keep_last=..., not both")
        if keep_last is not None and (
            not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1
        ):
            raise ValueError(f"prune(keep_last=...) takes a positive int, got {keep_last!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"prune(batch_size=...) takes a positive int, got {batch_size!r}")
        infos = [model_info(c) for c in classes]
        for info in infos:
            info.parent_mapper.registry.configure()  # many-to-many links are known from here
        self.transactions = one_transaction_table(infos, "prune")
        self.tables = history_tables(infos)
        if before is not None:
            # validated now, resolved to an id in the first transaction
            self.cut: Any = as_transaction_id(before, self.transactions, upper=True)
        else:
            self.cut = None
        self.keep_last = keep_last
        self.batch_size = batch_size
        self.locks = CommitLocks()
        self.index = 0
        self.last: tuple[Any, ...] | None = None
        self.deleted = 0
        self.progressed: str | None = None
        self.done = False

    def run(self, connection: Connection, progress: Progress | None) -> int:
        """Prune batch by batch on ``connection``, committing after each; return how many
        versions went."""
        if self.cut is not None:
            self.resolve(connection)
            connection.commit()
        while not self.done:
            self.step(connection)
            connection.commit()
            if self.progressed and progress is not None:
                progress(self.deleted, self.progressed)
        return self.deleted

    def resolve(self, connection: Connection) -> None:
        """Turn a ``before`` datetime into the id of the last transaction issued by then."""
        if not isinstance(self.cut, int):
            self.cut = connection.execute(sa.select(self.cut)).scalar()
        if self.cut is None:  # no transaction that early: nothing to prune
            self.done = True

    def step(self, connection: Connection) -> None:
        """Prune one batch of keys of the current table (in this transaction)."""
        self.progressed = None
        if self.index >= len(self.tables):
            self.done = True
            return
        table = self.tables[self.index]
        self.locks.take(connection, self.transactions)
        vt = table.version_table
        keys = [vt.c[c] for c in table.key_columns]
        chunk = sa.select(*keys).distinct().order_by(*keys).limit(self.batch_size)
        if self.last is not None:
            chunk = chunk.where(after_key(keys, self.last))
        found = [tuple(r) for r in connection.execute(chunk)]
        if len(found) < self.batch_size:
            self.index, self.last = self.index + 1, None
        else:
            self.last = found[-1]
        if not found:
            return
        doomed = connection.execute(self._doomed(table, found)).all()
        for start in range(0, len(doomed), _DELETE_CHUNK):
            part = doomed[start : start + _DELETE_CHUNK]
            ids = [(*r[: len(keys)], r[len(keys)]) for r in part]
            target = sa.tuple_(*keys, vt.c.transaction_id)
            connection.execute(sa.delete(vt).where(target.in_(ids)))
        if doomed:
            _record(connection, self.transactions, table, doomed, len(keys))
            self.deleted += len(doomed)
        self.progressed = table.parent_table.name

    def _doomed(self, table: TableVersioning, found: list[tuple[Any, ...]]) -> sa.Select[Any]:
        """The versions of the keys ``found`` to delete: key, transaction id, end, operation."""
        vt = table.version_table
        keys = [vt.c[c] for c in table.key_columns]
        first, last = found[0], found[-1]
        # the keys of the chunk, by range: the key index bounds the read
        in_chunk = [~after_key(keys, last)]
        if len(keys) == 1:
            in_chunk.append(keys[0] >= first[0])
        else:
            in_chunk.append(sa.tuple_(*keys) >= sa.tuple_(*[sa.literal(v) for v in first]))
        picked = [*keys, vt.c.transaction_id, vt.c.end_transaction_id, vt.c.operation_type]
        if self.keep_last is None:
            cut = self.cut
            return sa.select(*picked).where(
                *in_chunk,
                sa.or_(
                    vt.c.end_transaction_id <= cut,
                    sa.and_(vt.c.operation_type == Operation.DELETE, vt.c.transaction_id <= cut),
                ),
            )
        newest_first = (
            sa.func.row_number()
            .over(partition_by=keys, order_by=vt.c.transaction_id.desc())
            .label("newer")
        )
        ranked = sa.select(*picked, newest_first).where(*in_chunk).subquery("ranked")
        return sa.select(*[ranked.c[c.key] for c in picked]).where(ranked.c.newer > self.keep_last)


def _record(
    connection: Connection,
    transactions: sa.Table,
    table: TableVersioning,
    doomed: Sequence[Any],
    width: int,
) -> None:
    """Move the table's horizon past the versions just deleted (same transaction)."""
    ends = [r[width + 1] for r in doomed if r[width + 2] != Operation.DELETE and r[width + 1]]
    as_of_from = max(ends, default=0)
    changes_from = max(r[width] for r in doomed) + 1
    rt = retention_table_of(transactions)
    name = table.version_table.fullname
    current = connection.execute(
        sa.select(rt.c.as_of_from, rt.c.changes_from).where(rt.c.version_table == name)
    ).first()
    now = datetime.now(timezone.utc)
    if current is None:
        connection.execute(
            sa.insert(rt).values(
                version_table=name,
                as_of_from=as_of_from,
                changes_from=changes_from,
                pruned_at=now,
            )
        )
    else:
        connection.execute(
            sa.update(rt)
            .where(rt.c.version_table == name)
            .values(
                as_of_from=max(as_of_from, current.as_of_from),
                changes_from=max(changes_from, current.changes_from),
                pruned_at=now,
            )
        )
