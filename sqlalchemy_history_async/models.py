"""Version and transaction classes: their shared base classes and how they are mapped.

Version classes are built when a versioned model is defined, one per model, and mapped
imperatively on the model's own registry. Everything they expose is either loaded by SQL the
caller can eager-load (``previous``, ``next``, ``transaction`` relationships, the deferred ``index``
column) or computed from loaded state (``changeset``), so code running under ``AsyncSession``
either eager-loads or awaits ``version.awaitable_attrs.<name>`` — no hidden I/O in properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, Mapper, foreign, relationship, remote
from sqlalchemy.sql.elements import ColumnElement

from .schema import Operation

__all__ = [
    "LinkVersioning",
    "TableVersioning",
    "Transaction",
    "Version",
    "VersionInfo",
    "map_transaction_class",
    "map_version_class",
]


@dataclass(eq=False)
class TableVersioning:
    """One table of a versioned model and the version table that records it."""

    parent_table: sa.Table
    version_table: sa.Table
    transaction_table: sa.Table
    #: attribute key → column key in ``parent_table`` (and ``version_table``), key first
    attrs: dict[str, str]
    #: column keys of this table's part of the row key, in the model's primary key order
    key_columns: tuple[str, ...]
    #: compiled-once statements used by the flush hook (see capture.py)
    statements: dict[Any, Any] = field(default_factory=dict)


@dataclass(eq=False)
class LinkVersioning:
    """A many-to-many relationship of a versioned model and its versioned association table."""

    #: the relationship's key on the model
    key: str
    table: TableVersioning
    #: association column key → attribute key on the model (the model's side of a link)
    local_attrs: dict[str, str]
    #: association column key → attribute key on the related class
    remote_attrs: dict[str, str]


@dataclass(eq=False)
class VersionInfo:
    """What the library knows about one versioned model.

    Stored in the ``ClassManager.info`` of both the model and its version class. A model of a
    joined-table hierarchy has one :class:`TableVersioning` per table, base table first; a
    single-table subclass shares its base's.
    """

    parent: type[Any]
    parent_mapper: Mapper[Any]
    transaction_class: type[Transaction]
    #: tracked attribute keys of the model, primary key first
    attrs: tuple[str, ...]
    #: attribute keys of the primary key, in the mapper's primary key order
    pk_attrs: tuple[str, ...]
    tables: tuple[TableVersioning, ...]
    #: the versioned base class's info (``None`` for the base itself)
    base: VersionInfo | None = None
    #: relationships whose changes alone record a version (``track_relationships``)
    tracked_relationships: tuple[str, ...] = ()
    #: many-to-many relationships whose links are versioned (set once mappers configure)
    links: list[LinkVersioning] = field(default_factory=list)
    version_class: type[Version] = field(init=False)
    attr_set: frozenset[str] = field(init=False)
    #: attributes whose change records a version: tracked columns and tracked relationships
    watched: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.attr_set = frozenset(self.attrs)
        self.watched = self.attr_set | frozenset(self.tracked_relationships)

    @property
    def root(self) -> VersionInfo:
        """The info of the topmost versioned class of the hierarchy."""
        return self if self.base is None else self.base.root

    def column(self, attr: str) -> sa.Column[Any]:
        """The version-table column recording ``attr``."""
        for table in reversed(self.tables):
            if attr in table.attrs:
                return table.version_table.c[table.attrs[attr]]
        raise KeyError(attr)


class Transaction(AsyncAttrs):
    """Base of the mapped transaction class: one row per database transaction with history."""

    if TYPE_CHECKING:
        id: Mapped[int]
        issued_at: Mapped[datetime]
        user_id: Mapped[Any]
        remote_addr: Mapped[str | None]
        meta: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.id} issued_at={self.issued_at!s} "
            f"user_id={self.user_id!r}>"
        )


class Version(AsyncAttrs):
    """Base of every version class; ``version_class(Model)`` returns a subclass.

    A version carries the tracked columns of its model (same attribute names), plus
    ``transaction_id``, ``end_transaction_id`` (``None`` while current) and ``operation_type``.
    """

    __history_info__: ClassVar[VersionInfo]

    if TYPE_CHECKING:
        transaction_id: Mapped[int]
        end_transaction_id: Mapped[int | None]
        operation_type: Mapped[Operation]
        transaction: Mapped[Transaction]
        previous: Mapped[Version | None]
        next: Mapped[Version | None]
        index: Mapped[int]

        # Tracked columns of the model are set up at configure time.
        def __getattr__(self, name: str) -> Any: ...

    @hybrid_property
    def is_current(self) -> bool:
        """True for the open version of a row; usable in SQL: ``where(V.is_current)``."""
        return self.end_transaction_id is None

    @is_current.inplace.expression
    @classmethod
    def _is_current_expression(cls) -> ColumnElement[bool]:
        return cls.end_transaction_id.is_(None)

    @property
    def changeset(self) -> dict[str, list[Any]]:
        """``{attr: [old, new]}`` for tracked attributes that differ from the previous version.

        For the first version of a row ``old`` is ``None`` and only non-null values appear.
        Reads ``previous``: eager-load it (``selectinload(V.previous)``) or use
        ``await version.awaitable_attrs.changeset``.
        """
        previous = self.previous
        changes: dict[str, list[Any]] = {}
        for attr in self.__history_info__.attrs:
            new = getattr(self, attr)
            old = None if previous is None else getattr(previous, attr)
            if old != new:
                changes[attr] = [old, new]
        return changes

    async def revert(self, relations: Sequence[str] = ()) -> Any:
        """Make the row look as it did at this version, inside the caller's transaction.

        ``relations`` names relationships to restore as well (links and related rows as they
        were at this version). See :func:`sqlalchemy_history_async.revert.revert_to`. Needs the
        version to belong to an ``AsyncSession``; the change is flushed, never committed.
        """
        from .revert import revert_async

        return await revert_async(self, relations)

    def revert_sync(self, relations: Sequence[str] = ()) -> Any:
        """Like :meth:`revert`, for a version that belongs to a sync ``Session``."""
        from .revert import revert_to

        return revert_to(self, relations)

    def __repr__(self) -> str:
        info = self.__history_info__
        key = ", ".join(f"{a}={getattr(self, a, None)!r}" for a in info.pk_attrs)
        op = self.__dict__.get("operation_type")
        return (
            f"<{type(self).__name__} {key} transaction_id={self.__dict__.get('transaction_id')}"
            f" {op.name if op is not None else '?'}>"
        )


def map_transaction_class(
    registry: sa.orm.registry, table: sa.Table, user_class: type[Any] | None
) -> type[Transaction]:
    """Create and map the transaction class on ``registry``."""
    cls = type("Transaction", (Transaction,), {"__module__": __name__})
    properties: dict[str, Any] = {}
    if user_class is not None:
        properties["user"] = relationship(user_class, viewonly=True, lazy="select")
    registry.map_imperatively(cls, table, properties=properties)
    return cls


def map_version_class(info: VersionInfo, registry: sa.orm.registry) -> type[Version]:
    """Create the version class of ``info.parent`` and map it on ``registry``.

    The version classes mirror the model's hierarchy: a subclass's version class subclasses its
    base's, mapped to its own version table (joined-table) or to the base's (single-table), and
    version queries load polymorphically. The base version class gets ``previous``/``next``
    (validity chain: ``previous.end_transaction_id == self.transaction_id`` for the same key),
    ``transaction`` and the deferred ``index``; the base model gets its write-only
    ``versions`` relationship.
    """
    parent = info.parent
    base_cls: type[Version] = Version if info.base is None else info.base.version_class
    cls = type(
        f"{parent.__name__}Version",
        (base_cls,),
        {"__module__": parent.__module__, "__history_info__": info},
    )
    mapper = info.parent_mapper
    identity = {"polymorphic_identity": mapper.polymorphic_identity}
    if info.base is None:
        if mapper.polymorphic_on is not None:
            identity["polymorphic_on"] = info.column(_discriminator(mapper))
        registry.map_imperatively(
            cls, info.tables[0].version_table, properties=_root_properties(info, cls), **identity
        )
        _add_versions_relationship(info, cls)
    elif info.tables[-1] is info.base.tables[-1]:  # single-table subclass
        known = set(info.base.attrs)
        registry.map_imperatively(
            cls,
            None,
            inherits=base_cls,
            polymorphic_load="inline",
            properties={a: info.column(a) for a in info.attrs if a not in known},
            **identity,
        )
    else:  # joined-table subclass: its own version table, joined on key + transaction
        table, above = info.tables[-1], info.base.tables[-1]
        vt, base_vt = table.version_table, above.version_table
        shared = {
            attr: [vt.c[col], info.base.column(attr)]
            for attr, col in table.attrs.items()
            if attr in info.base.attrs
        }
        shared.update(
            {c: [vt.c[c], base_vt.c[c]] for c in ("transaction_id", "end_transaction_id")},
            operation_type=[vt.c.operation_type, base_vt.c.operation_type],
        )
        own = {a: vt.c[c] for a, c in table.attrs.items() if a not in info.base.attrs}
        registry.map_imperatively(
            cls,
            vt,
            inherits=base_cls,
            inherit_condition=sa.and_(
                *[
                    vt.c[own_col] == base_vt.c[base_col]
                    for own_col, base_col in zip(table.key_columns, above.key_columns, strict=True)
                ],
                vt.c.transaction_id == base_vt.c.transaction_id,
            ),
            polymorphic_load="selectin",
            properties={**shared, **own},
            **identity,
        )
    info.version_class = cls
    return cls


def _discriminator(mapper: Mapper[Any]) -> str:
    column = mapper.polymorphic_on
    for prop in mapper.iterate_properties:
        if isinstance(prop, sa.orm.ColumnProperty) and column in prop.columns:
            return prop.key
    raise KeyError(str(column))


def _root_properties(info: VersionInfo, cls: type[Version]) -> dict[str, Any]:
    table = info.tables[0]
    vt = table.version_table
    key = [vt.c[c] for c in table.key_columns]
    same_key = [remote(c) == foreign(c) for c in key]
    older = vt.alias(f"{vt.name}_older")
    index_expr = (
        sa.select(sa.func.count())
        .select_from(older)
        .where(
            *[older.c[c.key] == c for c in key],
            older.c.transaction_id < vt.c.transaction_id,
        )
        .correlate_except(older)
        .scalar_subquery()
    )
    properties: dict[str, Any] = {
        attr: vt.c[col] for attr, col in table.attrs.items() if attr != col
    }
    properties.update(
        previous=relationship(
            cls,
            primaryjoin=sa.and_(
                *same_key, remote(vt.c.end_transaction_id) == foreign(vt.c.transaction_id)
            ),
            uselist=False,
            viewonly=True,
            lazy="select",
        ),
        next=relationship(
            cls,
            primaryjoin=sa.and_(
                *same_key, remote(vt.c.transaction_id) == foreign(vt.c.end_transaction_id)
            ),
            uselist=False,
            viewonly=True,
            lazy="select",
        ),
        transaction=relationship(info.transaction_class, viewonly=True, lazy="select"),
        index=sa.orm.column_property(index_expr, deferred=True),
    )
    return properties


def _add_versions_relationship(info: VersionInfo, cls: type[Version]) -> None:
    table = info.tables[0]
    vt = table.version_table
    pairs = [table.parent_table.c[c] == foreign(vt.c[c]) for c in table.key_columns]
    info.parent_mapper.add_property(
        "versions",
        relationship(
            cls,
            primaryjoin=sa.and_(*pairs),
            order_by=vt.c.transaction_id,
            lazy="write_only",
            viewonly=True,
        ),
    )
