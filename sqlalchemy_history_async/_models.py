"""Version and transaction classes: their shared base classes and how they are mapped.

Version classes are built when a versioned model is defined, one per model, and mapped
imperatively on the model's own registry. Everything they expose is either loaded by SQL the
caller can eager-load (``previous``, ``next``, ``transaction`` relationships, the deferred ``index``
column) or computed from loaded state (``changeset``), so code running under ``AsyncSession``
either eager-loads or awaits ``version.awaitable_attrs.<name>`` — no hidden I/O in properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, async_object_session
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, Mapper, foreign, relationship, remote
from sqlalchemy.sql.elements import ColumnElement

from ._exceptions import NotVersionedError, RevertError
from ._info import VersionInfo, version_info
from ._revert import revert_sync
from ._schema import Operation, identifier

__all__ = [
    "ParentT",
    "Transaction",
    "Version",
    "map_transaction_class",
    "map_version_class",
    "parent_class",
    "transaction_class",
    "version_class",
]

#: The versioned model a version class records.
ParentT = TypeVar("ParentT")


class Transaction(AsyncAttrs):
    """Base of the mapped transaction class: one row per database transaction with history."""

    if TYPE_CHECKING:
        id: Mapped[int]
        issued_at: Mapped[datetime]
        user_id: Mapped[Any]
        remote_addr: Mapped[str | None]
        meta: Mapped[dict[str, Any] | None]
        #: the user class's object (only with ``user_cls``; ``None`` when no user was set)
        user: Mapped[Any]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.id} issued_at={self.issued_at!s} "
            f"user_id={self.user_id!r}>"
        )


class Version(AsyncAttrs, Generic[ParentT]):
    """Base of every version class; ``version_class(Model)`` returns a ``Version[Model]``.

    A version carries the tracked columns of its model (same attribute names), plus
    ``transaction_id``, ``end_transaction_id`` (``None`` while current) and ``operation_type``.
    Under mypy with the ``sqlalchemy_history_async.mypy`` plugin, the model's columns are
    typed on its version class; without it they are ``Any``.
    """

    __history_info__: ClassVar[VersionInfo]

    if TYPE_CHECKING:
        transaction_id: Mapped[int]
        end_transaction_id: Mapped[int | None]
        operation_type: Mapped[Operation]
        transaction: Mapped[Transaction]
        previous: Mapped[Version[ParentT] | None]
        next: Mapped[Version[ParentT] | None]
        index: Mapped[int]

        # Tracked columns of the model are set up at configure time (typed by the plugin).
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

    async def revert(self, relations: Sequence[str] = ()) -> ParentT | None:
        """Make the row look as it did at this version, inside the caller's transaction.

        Sets the row's tracked columns to this version's values and flushes: re-creates the row
        (same primary key) if it was deleted, and deletes it if this version records a delete.
        Columns excluded from versioning keep their current values. Never commits: the
        caller's commit records the change as a new version; a rollback undoes it.

        ``relations`` names relationships to restore as well: the related rows the model had
        at this version (its temporal relationship of the same name) become its related rows
        again — links re-created or removed, deleted related rows re-created from their
        versions; related rows that still exist keep their current values.

        Returns the model object; for a delete version, the deleted object, or ``None`` when
        the row did not exist. Needs the version to belong to an ``AsyncSession``; use
        :meth:`revert_sync` with a sync ``Session``.
        """
        async_session = async_object_session(self)
        if async_session is None:
            raise RevertError(
                f"{type(self).__name__} does not belong to an AsyncSession; "
                "use version.revert_sync() with a sync Session"
            )
        return await async_session.run_sync(lambda _: self.revert_sync(relations))

    def revert_sync(self, relations: Sequence[str] = ()) -> ParentT | None:
        """:meth:`revert` for a version that belongs to a sync ``Session``."""
        target: ParentT | None = revert_sync(self, relations)
        return target

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


def map_version_class(info: VersionInfo, registry: sa.orm.registry) -> type[Version[Any]]:
    """Create the version class of ``info.parent`` and map it on ``registry``.

    The version classes mirror the model's hierarchy: a subclass's version class subclasses its
    base's, mapped to its own version table (joined-table) or to the base's (single-table), and
    version queries load polymorphically. The base version class gets ``previous``/``next``
    (validity chain: ``previous.end_transaction_id == self.transaction_id`` for the same key),
    ``transaction`` and the deferred ``index``; the base model gets its write-only
    ``versions`` relationship.
    """
    parent = info.parent
    base_cls: type[Version[Any]] = Version if info.base is None else info.base.version_class
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
        # As on the model's own single-table subclass: the table it is stored in.
        cls.__table__ = info.tables[-1].version_table  # type: ignore[attr-defined]
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


def _root_properties(info: VersionInfo, cls: type[Version[Any]]) -> dict[str, Any]:
    table = info.tables[0]
    vt = table.version_table
    key = [vt.c[c] for c in table.key_columns]
    same_key = [remote(c) == foreign(c) for c in key]
    older = vt.alias(identifier(f"{vt.name}_older"))
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


def _add_versions_relationship(info: VersionInfo, cls: type[Version[Any]]) -> None:
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


# --- lookups ----------------------------------------------------------------------------------


def version_class(model: type[ParentT]) -> type[Version[ParentT]]:
    """Return the version class of a versioned model (configuring mappers if needed)."""
    info = version_info(model)
    if issubclass(model, Version):
        raise NotVersionedError(f"{model.__name__} is a version class, not a versioned model")
    return info.version_class


def parent_class(version_cls: type[Version[ParentT]]) -> type[ParentT]:
    """Return the model a version class records."""
    if not (isinstance(version_cls, type) and issubclass(version_cls, Version)):
        raise NotVersionedError(f"{version_cls!r} is not a version class")
    parent: type[ParentT] = version_info(version_cls).parent
    return parent


def transaction_class(cls: type[Any]) -> type[Transaction]:
    """Return the transaction class used by a versioned model (or by its version class)."""
    return version_info(cls).transaction_class
