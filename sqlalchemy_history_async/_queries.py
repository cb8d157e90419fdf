"""Asking questions of history: select builders and the coroutines that await them.

Every builder returns a plain ``Select`` the caller can extend (``where``, ``order_by``,
``limit``) and run with ``await session.execute(...)`` / ``session.scalars(...)`` on an
``AsyncSession`` or a sync ``Session`` alike. Functions that run a query come in pairs: the
coroutine has the plain name (``version_at``), its sync twin the same name with ``_sync``
(``version_at_sync``); the coroutine awaits the same builder, or runs the sync twin through
``AsyncSession.run_sync``.

A point in history (``at``, ``since``, ``until``) is a transaction id, a
:class:`~sqlalchemy_history_async.Transaction`, or a timezone-aware ``datetime`` (resolved to
the last transaction issued at or before it; transaction ids grow with ``issued_at``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, aliased

from ._exceptions import VersioningError
from ._horizon import HORIZON_OPTION, Horizon, retention_table_of
from ._info import VersionInfo, default_catalog, version_info
from ._models import ParentT, Transaction, Version
from ._schema import valid_at

__all__ = [
    "PointInHistory",
    "as_transaction_id",
    "changes_in",
    "changes_in_sync",
    "diff",
    "json_patch",
    "model_info",
    "model_infos",
    "pk_values",
    "select_as_of",
    "select_changed",
    "select_version_at",
    "version_at",
    "version_at_sync",
]

#: A point in history: a transaction id, a :class:`Transaction`, or an aware ``datetime``.
PointInHistory = int | datetime | Transaction


# --- points in history ------------------------------------------------------------------------


def as_transaction_id(
    at: PointInHistory, transactions: sa.Table, *, upper: bool
) -> int | sa.ScalarSelect[Any]:
    """A transaction id, or SQL finding the last (``upper``) / first transaction around ``at``."""
    if isinstance(at, Transaction):
        return at.id
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError(f"datetime {at!r} must be timezone-aware (e.g. UTC)")
        if upper:
            return (
                sa.select(sa.func.max(transactions.c.id))
                .where(transactions.c.issued_at <= at)
                .scalar_subquery()
            )
        return (
            sa.select(sa.func.min(transactions.c.id))
            .where(transactions.c.issued_at >= at)
            .scalar_subquery()
        )
    if isinstance(at, int) and not isinstance(at, bool):
        return at
    raise TypeError(
        f"expected a transaction id, a Transaction or an aware datetime, got {type(at).__name__}"
    )


# --- one model --------------------------------------------------------------------------------


def select_as_of(model: type[ParentT], at: PointInHistory) -> sa.Select[Version[ParentT]]:
    """Versions of ``model``'s rows as they were at ``at``; rows deleted by then are excluded.

    Run through a session, it raises :class:`HistoryPrunedError` for a point before the
    history that retention kept (:func:`prune_sync`).
    """
    info = model_info(model)
    V: type[Version[ParentT]] = info.version_class
    transactions = info.tables[0].transaction_table
    tx = as_transaction_id(at, transactions, upper=True)
    horizon = Horizon(
        retention_table_of(transactions),
        tuple(t.version_table.fullname for t in info.tables),
        tx,
        "as_of",
    )
    return sa.select(V).where(valid_at(V, tx)).execution_options(**{HORIZON_OPTION: horizon})


def select_version_at(
    model: type[ParentT], pk: Any, at: PointInHistory
) -> sa.Select[Version[ParentT]]:
    """The version of one row at ``at`` (no row if it did not exist then).

    ``pk`` is the primary key value, a tuple for composite keys, or a dict by attribute name.
    """
    info = model_info(model)
    V = info.version_class
    return select_as_of(model, at).where(
        *[getattr(V, attr) == value for attr, value in pk_values(info, pk).items()]
    )


async def version_at(
    session: AsyncSession, model: type[ParentT], pk: Any, at: PointInHistory
) -> Version[ParentT] | None:
    """Await the version of one row at ``at``, or ``None``: see :func:`select_version_at`."""
    return await session.scalar(select_version_at(model, pk, at))


def version_at_sync(
    session: Session, model: type[ParentT], pk: Any, at: PointInHistory
) -> Version[ParentT] | None:
    """:func:`version_at` on a sync ``Session``."""
    return session.scalar(select_version_at(model, pk, at))


def select_changed(model: type[ParentT], *attrs: str) -> sa.Select[Version[ParentT]]:
    """Versions of ``model`` in which any of ``attrs`` differs from the previous version.

    A row's first version counts as a change of every attribute that is not NULL, as in
    ``Version.changeset``. Computed in SQL against the previous version (joined through the
    indexed ``end_transaction_id``); see docs/querying.md for why no per-column flags are stored.
    """
    info = model_info(model)
    if not attrs:
        raise VersioningError("select_changed() needs at least one attribute name")
    unknown = [a for a in attrs if a not in info.attr_set]
    if unknown:
        raise VersioningError(
            f"{model.__name__} has no versioned attribute(s) {', '.join(map(repr, unknown))}"
        )
    V: Any = info.version_class
    previous: Any = aliased(V, name="previous_version")
    same_row = [getattr(previous, a) == getattr(V, a) for a in info.pk_attrs]
    changed = [getattr(V, a).is_distinct_from(getattr(previous, a)) for a in attrs]
    return (
        sa.select(V)
        .outerjoin(previous, sa.and_(*same_row, previous.end_transaction_id == V.transaction_id))
        .where(sa.or_(*changed))
    )


def diff(older: Version[Any], newer: Version[Any]) -> dict[str, tuple[Any, Any]]:
    """``{attr: (old, new)}`` for tracked attributes that differ between two versions of a row."""
    info = older.__history_info__
    if newer.__history_info__ is not info:
        raise VersioningError(f"cannot diff a {type(older).__name__} with a {type(newer).__name__}")
    if any(getattr(older, a) != getattr(newer, a) for a in info.pk_attrs):
        raise VersioningError(f"cannot diff versions of two different {info.parent.__name__} rows")
    out: dict[str, tuple[Any, Any]] = {}
    for attr in info.attrs:
        old, new = getattr(older, attr), getattr(newer, attr)
        if old != new:
            out[attr] = (old, new)
    return out


def json_patch(older: Version[Any], newer: Version[Any]) -> list[dict[str, Any]]:
    """:func:`diff` as an RFC 6902 JSON Patch turning ``older``'s row into ``newer``'s.

    Every tracked attribute exists in both documents (NULL is ``None``), so each change is a
    ``replace``. Values are the Python values of the columns; serialize them as you need.
    """
    return [
        {"op": "replace", "path": "/" + attr.replace("~", "~0").replace("/", "~1"), "value": new}
        for attr, (_, new) in diff(older, newer).items()
    ]


# --- across models ----------------------------------------------------------------------------


def changes_in_sync(
    session: Session,
    transaction: int | Transaction,
    classes: Iterable[type[Any]] | None = None,
) -> list[Version[Any]]:
    """Every version written by ``transaction``, ordered by table then primary key.

    One query per version table. ``classes`` defaults to every model versioned by
    ``make_versioned()``; with a scoped manager, pass ``manager.versioned_classes``.
    """
    tx_id = transaction.id if isinstance(transaction, Transaction) else transaction
    out: list[Version[Any]] = []
    # Version queries load polymorphically, so each hierarchy is read through its base class.
    for info in dict.fromkeys(info.root for info in model_infos(classes)):
        V = info.version_class
        pk = [getattr(V, a) for a in info.pk_attrs]
        out.extend(session.scalars(sa.select(V).where(V.transaction_id == tx_id).order_by(*pk)))
    return out


async def changes_in(
    session: AsyncSession,
    transaction: int | Transaction,
    classes: Iterable[type[Any]] | None = None,
) -> list[Version[Any]]:
    """Every version written by ``transaction``: :func:`changes_in_sync`, awaited."""
    return await session.run_sync(changes_in_sync, transaction, classes)


# --- helpers ----------------------------------------------------------------------------------


def model_info(model: type[Any]) -> VersionInfo:
    """The info of a versioned model; a version class passed instead is an error."""
    info = version_info(model)
    if isinstance(model, type) and issubclass(model, Version):
        raise VersioningError(f"pass the model, not its version class {model.__name__}")
    return info


def model_infos(classes: Iterable[type[Any]] | None) -> Sequence[VersionInfo]:
    """The infos of ``classes`` (default: the models of ``make_versioned()``), by table name."""
    if classes is None:
        sa.orm.configure_mappers()
        classes = default_catalog().versioned_classes
    infos = sorted((model_info(c) for c in classes), key=lambda i: i.tables[0].parent_table.name)
    if not infos:
        raise VersioningError("no versioned classes to read changes from")
    if len({id(i.tables[0].transaction_table) for i in infos}) > 1:
        raise VersioningError(
            "the classes are versioned by different managers (different transaction tables); "
            "read the history of one manager at a time"
        )
    return infos


def pk_values(info: VersionInfo, pk: Any) -> dict[str, Any]:
    """A primary key given as a value, a tuple or a dict, by attribute name."""
    if isinstance(pk, dict):
        if set(pk) != set(info.pk_attrs):
            raise VersioningError(
                f"{info.parent.__name__} primary key is {info.pk_attrs}, got keys {sorted(pk)}"
            )
        values = pk
    else:
        as_tuple = pk if isinstance(pk, tuple) else (pk,)
        if len(as_tuple) != len(info.pk_attrs):
            raise VersioningError(
                f"{info.parent.__name__} primary key is {info.pk_attrs}, got {pk!r}"
            )
        values = dict(zip(info.pk_attrs, as_tuple, strict=True))
    return {attr: _as_column_value(info.column(attr), v) for attr, v in values.items()}


def _as_column_value(column: sa.Column[Any], value: Any) -> Any:
    """Accept a key value in its JSON form (as the change feed gives it): "1f0c…" for a UUID."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if value is None or isinstance(value, python_type):
        return value
    if python_type is uuid.UUID:
        return uuid.UUID(str(value))
    if python_type in (int, str, Decimal):
        return python_type(value)
    return value
