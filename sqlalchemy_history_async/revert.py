"""Revert: make a row look as it did at a given version, inside the caller's transaction.

One synchronous implementation; the async face runs it through ``AsyncSession.run_sync``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_object_session

from .exceptions import RevertError
from .schema import Operation

if TYPE_CHECKING:
    from .models import Version

__all__ = ["revert_async", "revert_to"]


def revert_to(version: Version) -> Any:
    """Set the parent row's tracked columns to ``version``'s values and flush.

    Re-creates the row (same primary key) if it was deleted, and deletes it if ``version``
    records a delete. Columns excluded from versioning keep their current values (their
    defaults, on a re-created row). Never begins or commits a transaction of its own: the
    caller's commit records the change as a new version; a rollback undoes it.

    Returns the parent object (for a delete version: the deleted object, or ``None`` if the
    row did not exist).
    """
    session = sa.orm.object_session(version)
    if session is None:
        raise RevertError(
            f"{type(version).__name__} is not attached to a session; load it with the session "
            "the revert should run in"
        )
    info = version.__history_info__
    key = tuple(getattr(version, a) for a in info.pk_attrs)
    target = session.get(info.parent, key)
    if version.operation_type is Operation.DELETE:
        if target is not None:
            session.delete(target)
            session.flush()
        return target
    if target is None:
        target = info.parent_mapper.class_manager.new_instance()
        for attr in info.pk_attrs:
            setattr(target, attr, getattr(version, attr))
        session.add(target)
    for attr in info.attrs:
        if attr not in info.pk_attrs:
            setattr(target, attr, getattr(version, attr))
    session.flush()
    return target


async def revert_async(version: Version) -> Any:
    """Async face of :func:`revert_to`, for a version loaded through an ``AsyncSession``."""
    async_session = async_object_session(version)
    if async_session is None:
        raise RevertError(
            f"{type(version).__name__} does not belong to an AsyncSession; "
            "use version.revert_sync() with a sync Session"
        )
    return await async_session.run_sync(lambda _session: revert_to(version))
