"""Revert: make a row look as it did at a given version, inside the caller's transaction.

One synchronous implementation working on a version object and its :class:`VersionInfo`;
``Version.revert()`` runs it through ``AsyncSession.run_sync``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ._exceptions import RevertError
from ._info import VersionInfo
from ._schema import Operation

__all__ = ["revert_sync"]


def _info_of(obj: Any) -> VersionInfo | None:
    """The info of a version object, ``None`` for any other object."""
    info: VersionInfo | None = getattr(type(obj), "__history_info__", None)
    return info


def revert_sync(version: Any, relations: Sequence[str] = ()) -> Any:
    """Set the parent row's tracked columns to ``version``'s values and flush.

    Re-creates the row (same primary key) if it was deleted, and deletes it if ``version``
    records a delete. Columns excluded from versioning keep their current values (their
    defaults, on a re-created row). Never begins or commits a transaction of its own: the
    caller's commit records the change as a new version; a rollback undoes it.

    ``relations`` names relationships of the model to restore as they were at ``version``:
    the related rows it had then (read through the version's temporal relationship of the same
    name) become its related rows again — links re-created or removed, and related rows that
    were deleted since re-created from their versions. Related rows that still exist keep
    their current values.

    Returns the parent object (for a delete version: the deleted object, or ``None`` if the
    row did not exist).
    """
    session = sa.orm.object_session(version)
    if session is None:
        raise RevertError(
            f"{type(version).__name__} is not attached to a session; load it with the session "
            "the revert should run in"
        )
    info = _info_of(version)
    assert info is not None
    relationships = info.parent_mapper.relationships
    for name in relations:
        if name not in relationships or not hasattr(type(version), name):
            raise RevertError(
                f"{info.parent.__name__} has no relationship {name!r} whose history is kept; "
                f"revertible relationships: {sorted(_revertible(info, type(version)))}"
            )
    target = _restore_row(session, version)
    if target is None or version.operation_type is Operation.DELETE:
        return target
    for name in relations:
        then = getattr(version, name)  # the temporal relationship: related state at the version
        if relationships[name].uselist:
            setattr(target, name, [_existing_or_restored(session, r) for r in then])
        else:
            setattr(target, name, None if then is None else _existing_or_restored(session, then))
    if relations:
        session.flush()
    return target


def _restore_row(session: Session, version: Any) -> Any:
    info = _info_of(version)
    assert info is not None
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


def _existing_or_restored(session: Session, related: Any) -> Any:
    """The live object of a related version (re-created if deleted); live objects as they are."""
    info = _info_of(related)
    if info is None:
        return related  # the target class is not versioned: a current row
    existing = session.get(info.parent, tuple(getattr(related, a) for a in info.pk_attrs))
    return existing if existing is not None else _restore_row(session, related)


def _revertible(info: VersionInfo, version_cls: type[Any]) -> list[str]:
    return [r.key for r in info.parent_mapper.relationships if hasattr(version_cls, r.key)]
