"""Temporal relationships: a version's relationships as they were at its transaction.

For each relationship of a versioned model, its version class gets a view-only relationship of
the same name. When the target is versioned too, it yields the target's *versions* in force at
the version's transaction (``transaction_id <= tx < end_transaction_id``, deletes excluded);
otherwise the current target rows. They are real relationships: ``selectinload()`` loads them
for a page of versions in one query per relationship, and ``await v.awaitable_attrs.<name>``
works under ``AsyncSession``.

They are added after mappers are configured, when the models' relationships are resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, RelationshipProperty, foreign, relationship, remote
from sqlalchemy.orm.interfaces import MANYTOONE, ONETOMANY

from .models import Version, VersionInfo
from .schema import INFO_KEY, Operation

__all__ = ["add_temporal_relationships"]


def add_temporal_relationships(info: VersionInfo) -> None:
    """Give ``info``'s version class a temporal twin of each of the model's relationships."""
    version_mapper: Mapper[Any] = sa.inspect(info.version_class)
    for rel in info.parent_mapper.relationships:
        if (
            rel.parent is not info.parent_mapper  # inherited: the base version class has it
            or rel.key in version_mapper.attrs
            or issubclass(rel.mapper.class_, Version)  # the model's own ``versions``
        ):
            continue
        prop = _temporal_twin(info, rel)
        if prop is not None:
            version_mapper.add_property(rel.key, prop)


def _temporal_twin(info: VersionInfo, rel: RelationshipProperty[Any]) -> Any:
    if rel.secondary is not None or rel.direction not in (MANYTOONE, ONETOMANY):
        return None  # many-to-many: not yet
    target: VersionInfo | None = rel.mapper.class_manager.info.get(INFO_KEY)
    pairs = rel.local_remote_pairs or ()
    local_cols = _version_columns(info, rel.parent, [lc for lc, _ in pairs])
    if local_cols is None:
        return None  # a join column is not versioned (excluded)
    remote_parent_cols = [rc for _, rc in pairs]
    remote_cols: Sequence[sa.ColumnElement[Any]]
    if target is None:
        remote_cols = remote_parent_cols
        target_cls: Any = rel.mapper.class_
    else:
        found = _version_columns(target, rel.mapper, remote_parent_cols)
        if found is None:
            return None
        remote_cols = found
        target_cls = target.version_class
    foreign_on_local = rel.direction is MANYTOONE
    criteria = [
        (foreign(lc) == remote(rc)) if foreign_on_local else (lc == foreign(remote(rc)))
        for lc, rc in zip(local_cols, remote_cols, strict=True)
    ]
    if target is not None:
        tx = info.tables[0].version_table.c.transaction_id
        target_vt = target.tables[0].version_table
        criteria += [
            remote(target_vt.c.transaction_id) <= tx,
            sa.or_(
                remote(target_vt.c.end_transaction_id).is_(None),
                remote(target_vt.c.end_transaction_id) > tx,
            ),
            remote(target_vt.c.operation_type) != Operation.DELETE,
        ]
    return relationship(
        target_cls,
        primaryjoin=sa.and_(*criteria),
        uselist=rel.uselist,
        viewonly=True,
        lazy="select",
    )


def _version_columns(
    info: VersionInfo, mapper: Mapper[Any], columns: Sequence[Any]
) -> list[sa.Column[Any]] | None:
    out = []
    for column in columns:
        try:
            attr = mapper.get_property_by_column(column).key
            out.append(info.column(attr))
        except (KeyError, sa.orm.exc.UnmappedColumnError):
            return None
    return out
