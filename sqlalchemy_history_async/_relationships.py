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

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, RelationshipProperty, foreign, relationship, remote
from sqlalchemy.orm.interfaces import MANYTOONE, ONETOMANY
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BooleanClauseList

from ._info import LinkVersioning, VersionInfo
from ._models import Version
from ._schema import INFO_KEY, identifier, valid_at

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
    target: VersionInfo | None = rel.mapper.class_manager.info.get(INFO_KEY)
    if rel.secondary is not None:
        link = next((link for link in info.links if link.key == rel.key), None)
        return None if link is None else _many_to_many_twin(info, link, rel, target)
    if rel.direction not in (MANYTOONE, ONETOMANY):
        return None
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
    extra = _extra_criteria(
        rel.primaryjoin,
        [(lc, rc) for lc, rc in pairs],
        lambda col: (
            _remote_version_column(target, rel, col)
            if col._annotations.get("remote")
            else _local_version_column(info, rel, col)
        ),
    )
    if extra is None:
        return None  # a condition names a column that is not versioned
    criteria += extra
    if target is not None:
        tx = info.tables[0].version_table.c.transaction_id
        criteria.append(valid_at(_Remote(target.tables[0].version_table), tx))
    return relationship(
        target_cls,
        primaryjoin=sa.and_(*criteria),
        uselist=rel.uselist,
        viewonly=True,
        lazy="select",
    )


class _Remote:
    """A version table's bookkeeping columns annotated ``remote()`` for a relationship join."""

    def __init__(self, table: sa.Table) -> None:
        self.transaction_id = remote(table.c.transaction_id)
        self.end_transaction_id = remote(table.c.end_transaction_id)
        self.operation_type = remote(table.c.operation_type)


def _many_to_many_twin(
    info: VersionInfo,
    link: LinkVersioning,
    rel: RelationshipProperty[Any],
    target: VersionInfo | None,
) -> Any:
    """Links in force at the version's transaction, joined to the targets in force then.

    The secondary is "links at each version of this model": association versions paired with
    the owning version's transaction id, so both joins are plain equalities on it and the
    relationship lazy-loads and selectin-loads like any other.
    """
    owner_cols = [info.column(a) for a in link.local_attrs.values()]
    owner_table = owner_cols[0].table
    if any(c.table is not owner_table for c in owner_cols):
        return None
    assoc = link.table.version_table
    owner = owner_table.alias(identifier(f"{owner_table.name}_owner"))
    links_at = (
        sa.select(
            *[assoc.c[c] for c in link.table.attrs.values()],
            owner.c.transaction_id.label("at_transaction_id"),
        )
        .join(
            owner,
            sa.and_(
                *[
                    owner.c[info.column(a).key] == assoc.c[col]
                    for col, a in link.local_attrs.items()
                ],
                valid_at(assoc.c, owner.c.transaction_id),
            ),
        )
        .subquery(identifier(f"{assoc.name}_at"))
    )
    at = links_at.c.at_transaction_id
    secondary = rel.secondary

    def on_links(col: sa.Column[Any]) -> Any:
        return links_at.c[col.key] if col.table is secondary else None

    extra_primary = _extra_criteria(
        rel.primaryjoin,
        rel.synchronize_pairs,
        lambda col: (
            on_links(col) if col.table is secondary else _local_version_column(info, rel, col)
        ),
    )
    extra_secondary = _extra_criteria(
        rel.secondaryjoin,
        rel.secondary_synchronize_pairs or [],
        lambda col: on_links(col) if col.table is secondary else _target_column(target, rel, col),
    )
    if extra_primary is None or extra_secondary is None:
        return None  # a condition names a column that is not versioned
    primaryjoin = sa.and_(
        *[info.column(a) == links_at.c[col] for col, a in link.local_attrs.items()],
        owner_table.c.transaction_id == at,
        *extra_primary,
    )
    if target is None:
        target_cls: Any = rel.mapper.class_
        secondaryjoin = sa.and_(
            *[
                rel.mapper.get_property(a).columns[0] == links_at.c[col]
                for col, a in link.remote_attrs.items()
            ],
            *extra_secondary,
        )
    else:
        target_cls = target.version_class
        secondaryjoin = sa.and_(
            *[target.column(a) == links_at.c[col] for col, a in link.remote_attrs.items()],
            valid_at(target.tables[0].version_table.c, at),
            *extra_secondary,
        )
    return relationship(
        target_cls,
        secondary=links_at,
        primaryjoin=primaryjoin,
        secondaryjoin=secondaryjoin,
        uselist=rel.uselist,
        viewonly=True,
        lazy="select",
    )


def _conjuncts(join: Any) -> list[Any]:
    if isinstance(join, BooleanClauseList) and join.operator is operators.and_:
        return list(join.clauses)
    return [join]


def _column_key(col: Any) -> tuple[Any, str] | None:
    return (col.table, col.key) if isinstance(col, sa.Column) else None


def _extra_criteria(
    join: Any,
    pairs: Sequence[tuple[Any, Any]],
    adapt: Callable[[sa.Column[Any]], Any],
) -> list[Any] | None:
    """The conditions of a relationship's join beyond its column pairs, on version columns.

    ``adapt`` maps a column of the model's join to the column the temporal twin compares
    instead (``None``: not versioned, so the twin cannot be built).
    """
    if join is None:
        return []
    paired = {frozenset({(a.table, a.key), (b.table, b.key)}) for a, b in pairs}
    out: list[Any] = []
    missing = False

    def replace(element: Any, **kw: Any) -> Any:
        nonlocal missing
        if not isinstance(element, sa.Column):
            return None
        adapted = adapt(element)
        if adapted is None:
            missing = True
        return adapted

    for clause in _conjuncts(join):
        if (
            isinstance(clause, BinaryExpression)
            and clause.operator is operators.eq
            and frozenset({_column_key(clause.left), _column_key(clause.right)}) in paired
        ):
            continue
        options: dict[str, Any] = {}
        adapted = visitors.replacement_traverse(clause, options, replace)
        if missing:
            return None
        out.append(adapted)
    return out


def _local_version_column(info: VersionInfo, rel: RelationshipProperty[Any], col: Any) -> Any:
    try:
        return info.column(rel.parent.get_property_by_column(col._deannotate()).key)
    except (KeyError, sa.orm.exc.UnmappedColumnError):
        return None


def _target_column(target: VersionInfo | None, rel: RelationshipProperty[Any], col: Any) -> Any:
    if target is None:
        return col._deannotate()
    try:
        return target.column(rel.mapper.get_property_by_column(col._deannotate()).key)
    except (KeyError, sa.orm.exc.UnmappedColumnError):
        return None


def _remote_version_column(
    target: VersionInfo | None, rel: RelationshipProperty[Any], col: Any
) -> Any:
    found = _target_column(target, rel, col)
    return None if found is None else remote(found)


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
