"""What the library knows about each versioned model, table and association table.

Built once at configure time by ``_build`` and read everywhere else. A model's
:class:`VersionInfo` lives in the ``ClassManager.info`` of the model and of its version class;
a manager's :class:`Catalog` holds every model it versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from ._exceptions import ConfigurationError, NotVersionedError
from ._options import ModelOptions
from ._schema import INFO_KEY

if TYPE_CHECKING:
    from ._models import Transaction, Version

__all__ = [
    "Catalog",
    "LinkVersioning",
    "TableVersioning",
    "VersionInfo",
    "default_catalog",
    "history_tables",
    "one_transaction_table",
    "set_default_catalog",
    "version_info",
]


@dataclass(eq=False)
class TableVersioning:
    """One table of a versioned model (or an association table) and its version table."""

    parent_table: sa.Table
    version_table: sa.Table
    transaction_table: sa.Table
    #: attribute key → column key in ``parent_table`` (and ``version_table``), key first
    attrs: dict[str, str]
    #: column keys of this table's part of the row key, in the model's primary key order
    key_columns: tuple[str, ...]
    #: grows when columns are added later (a single-table subclass defined after its base),
    #: so statements built for an older set of columns are rebuilt
    revision: int = 0


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
    #: the model's ``__versioned__`` options
    options: ModelOptions = field(default_factory=ModelOptions)
    #: relationships whose changes alone record a version (``track_relationships``)
    tracked_relationships: tuple[str, ...] = ()
    #: many-to-many relationships whose links are versioned (set once mappers configure)
    links: list[LinkVersioning] = field(default_factory=list)
    version_class: type[Version[Any]] = field(init=False)
    attr_set: frozenset[str] = field(init=False)
    #: many-to-one relationship key → the tracked attributes of its foreign key columns
    foreign_key_attrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
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

    @property
    def live(self) -> bool:
        """False once the model's registry was disposed (its mapper is gone)."""
        return self.parent_mapper in self.parent_mapper.registry.mappers


def one_transaction_table(infos: list[VersionInfo], caller: str) -> sa.Table:
    """The transaction table all of ``infos`` record in; ``ValueError`` naming ``caller``
    when they belong to different managers."""
    first = infos[0]
    for info in infos[1:]:
        if info.tables[0].transaction_table is not first.tables[0].transaction_table:
            raise ValueError(
                f"{caller}(): {info.parent.__name__} and {first.parent.__name__} record their "
                f"history in different transaction tables (different managers); {caller} them "
                "separately"
            )
    return first.tables[0].transaction_table


def history_tables(infos: list[VersionInfo]) -> list[TableVersioning]:
    """The tables of ``infos``' models, then the association tables of their many-to-many
    relationships, each once."""
    tables: list[TableVersioning] = []
    for table in [t for info in infos for t in info.tables] + [
        link.table for info in infos for link in info.links
    ]:
        if table not in tables:
            tables.append(table)
    return tables


@dataclass(eq=False)
class Catalog:
    """Every model one versioning manager versions, and the transaction class they share."""

    transaction_class: type[Transaction] | None = None
    infos: list[VersionInfo] = field(default_factory=list)
    #: association tables of many-to-many relationships, versioned once each
    associations: dict[sa.Table, TableVersioning] = field(default_factory=dict)

    @property
    def versioned_classes(self) -> tuple[type[Any], ...]:
        """The versioned models, in the order their version classes were built."""
        return tuple(info.parent for info in self.infos if info.live)


class _Default:
    """Where the catalog of the manager installed by ``make_versioned()`` is found."""

    catalog: Catalog | None = None


def default_catalog() -> Catalog:
    """The catalog of the manager installed by ``make_versioned()``."""
    if _Default.catalog is None:
        raise ConfigurationError(
            "versioning is not enabled: call make_versioned() first, or pass the classes to "
            "read (classes=manager.versioned_classes for a scoped manager)"
        )
    return _Default.catalog


def set_default_catalog(catalog: Catalog | None) -> None:
    """Record (or forget) the catalog of the default manager."""
    _Default.catalog = catalog


def version_info(cls: Any) -> VersionInfo:
    """The :class:`VersionInfo` of a versioned model or version class (configuring if needed)."""
    mapper = sa.inspect(cls, raiseerr=False) if isinstance(cls, type) else None
    if not isinstance(mapper, Mapper):
        raise NotVersionedError(f"{cls!r} is not a mapped class")
    info: VersionInfo | None = mapper.class_manager.info.get(INFO_KEY)
    if info is None and hasattr(cls, "__versioned__"):
        sa.orm.configure_mappers()
        info = mapper.class_manager.info.get(INFO_KEY)
    if info is None:
        hint = (
            " (it declares __versioned__ but was mapped before make_versioned() was called, "
            "or its base has no VersioningManager installed)"
            if hasattr(cls, "__versioned__")
            else " (add __versioned__ = {} to the class)"
        )
        raise NotVersionedError(f"{cls.__name__} is not versioned{hint}")
    return info
