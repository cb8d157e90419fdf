"""Version and transaction classes: their shared base classes and how they are mapped.

Version classes are built at configure time, one per versioned model, and mapped imperatively
on the model's own registry. Everything they expose is either loaded by SQL the caller can
eager-load (``previous``, ``next``, ``transaction`` relationships, the deferred ``index``
column) or computed from loaded state (``changeset``), so code running under ``AsyncSession``
either eager-loads or awaits ``version.awaitable_attrs.<name>`` — no hidden I/O in properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, Mapper, foreign, relationship, remote
from sqlalchemy.sql.elements import ColumnElement

from .schema import Operation

__all__ = ["Transaction", "Version", "VersionInfo", "map_transaction_class", "map_version_class"]


@dataclass(eq=False)
class VersionInfo:
    """What the library knows about one versioned model.

    Stored in the ``ClassManager.info`` of both the model and its version class.
    """

    parent: type[Any]
    parent_mapper: Mapper[Any]
    parent_table: sa.Table
    version_table: sa.Table
    transaction_class: type[Transaction]
    #: attribute key → column key, for every tracked (copied) column, primary key first
    attrs: dict[str, str]
    #: attribute keys of the primary key, in the mapper's primary key order
    pk_attrs: tuple[str, ...]
    version_class: type[Version] = field(init=False)
    #: compiled-once statements used by the flush hook (see capture.py)
    statements: dict[str, Any] = field(default_factory=dict)


class Transaction(AsyncAttrs):
    """Base of the mapped transaction class: one row per database transaction with history."""

    __history_info__: ClassVar[dict[str, Any]]

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
        return cls.__table__.c.end_transaction_id.is_(None)  # type: ignore[attr-defined,no-any-return]

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

    async def revert(self) -> Any:
        """Make the row look as it did at this version, inside the caller's transaction.

        See :func:`sqlalchemy_history_async.revert.revert_to`. Needs the version to belong
        to an ``AsyncSession``; the change is flushed, never committed.
        """
        from .revert import revert_async

        return await revert_async(self)

    def revert_sync(self) -> Any:
        """Like :meth:`revert`, for a version that belongs to a sync ``Session``."""
        from .revert import revert_to

        return revert_to(self)

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

    Adds ``previous``/``next`` (validity chain: ``previous.end_transaction_id ==
    self.transaction_id`` for the same key), ``transaction``, the deferred ``index`` column and
    the parent's write-only ``versions`` relationship.
    """
    parent = info.parent
    vt = info.version_table
    name = f"{parent.__name__}Version"
    cls = type(name, (Version,), {"__module__": parent.__module__, "__history_info__": info})
    pk_cols = [vt.c[info.attrs[a]] for a in info.pk_attrs]

    same_key = [remote(c) == foreign(c) for c in pk_cols]
    older = vt.alias(f"{vt.name}_older")
    index_expr = (
        sa.select(sa.func.count())
        .select_from(older)
        .where(
            *[older.c[c.key] == c for c in pk_cols],
            older.c.transaction_id < vt.c.transaction_id,
        )
        .correlate_except(older)
        .scalar_subquery()
    )
    properties: dict[str, Any] = {
        attr: vt.c[col] for attr, col in info.attrs.items() if attr != col
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
    registry.map_imperatively(cls, vt, properties=properties)
    info.version_class = cls

    parent_pk = [info.parent_table.c[info.attrs[a]] for a in info.pk_attrs]
    info.parent_mapper.add_property(
        "versions",
        relationship(
            cls,
            primaryjoin=sa.and_(
                *[p == foreign(v) for p, v in zip(parent_pk, pk_cols, strict=True)]
            ),
            order_by=vt.c.transaction_id,
            lazy="write_only",
            viewonly=True,
        ),
    )
    return cls
