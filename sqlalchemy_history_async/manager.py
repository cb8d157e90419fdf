"""The versioning manager: which classes are versioned, and the listeners that make it so.

``make_versioned()`` installs the default manager; ``remove_versioning()`` uninstalls it.
Version classes are built in ``before_configured``, so they are configured together with the
models (``sqlalchemy.orm.configure_mappers()``, or lazily on first use).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapper, RelationshipProperty, Session

from . import capture
from .exceptions import ConfigurationError, NotVersionedError, VersioningError
from .models import (
    LinkVersioning,
    TableVersioning,
    Transaction,
    Version,
    VersionInfo,
    map_transaction_class,
    map_version_class,
)
from .options import column_properties, model_options
from .relationships import add_temporal_relationships
from .schema import INFO_KEY, build_transaction_table, build_version_table, version_column

__all__ = [
    "VersioningManager",
    "default_manager",
    "make_versioned",
    "parent_class",
    "remove_versioning",
    "transaction_class",
    "version_class",
    "version_info",
]

UserClass = type[Any] | str | None


class _UserIdString(sa.types.TypeDecorator[str]):
    """Default ``transaction.user_id`` type: any id is stored as its string form."""

    impl = sa.String(255)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else str(value)


class VersioningManager:
    """Builds version classes for models that declare ``__versioned__`` and records changes.

    Holds configuration only; what a transaction records lives in its session's ``info``.
    """

    def __init__(
        self, user_cls: UserClass = None, *, user_id_type: sa.types.TypeEngine[Any] | None = None
    ) -> None:
        if user_cls is not None and not isinstance(user_cls, (str, type)):
            raise ConfigurationError(
                f"make_versioned(user_cls=...) takes a mapped class or its name, got {user_cls!r}"
            )
        if user_cls is not None and user_id_type is not None:
            raise ConfigurationError(
                "make_versioned() takes user_cls or user_id_type, not both: with a user class, "
                "transaction.user_id has the type of its primary key"
            )
        self.user_cls = user_cls
        self.user_id_type = user_id_type
        self._waiting: list[Mapper[Any]] = []
        self._failed = False
        self._building = False
        self._infos: list[VersionInfo] = []
        self._unrelated: list[VersionInfo] = []  # temporal relationships not added yet
        self._associations: dict[sa.Table, TableVersioning] = {}
        self._transaction_class: type[Transaction] | None = None
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []

    @property
    def versioned_classes(self) -> tuple[type[Any], ...]:
        """The models this manager versions, in the order their version classes were built."""
        return tuple(info.parent for info in self._infos)

    @property
    def active(self) -> bool:
        """True while the manager's listeners are installed."""
        return bool(self._listeners)

    def install(self) -> None:
        """Install the configure-time and flush-time listeners."""
        self._listen(Mapper, "after_mapper_constructed", self._mapper_constructed)
        self._listen(Mapper, "before_configured", self._before_configured)
        self._listen(Mapper, "after_configured", self._after_configured)
        self._listen(Session, "before_flush", capture.before_flush)
        self._listen(Session, "after_flush", capture.after_flush)
        self._listen(Session, "after_transaction_create", capture.after_transaction_create)
        self._listen(Session, "after_soft_rollback", capture.after_soft_rollback)
        self._listen(Session, "after_transaction_end", capture.after_transaction_end)

    def remove(self) -> None:
        """Remove every listener this manager installed; version classes stay mapped."""
        for target, name, fn in reversed(self._listeners):
            event.remove(target, name, fn)
        self._listeners.clear()
        self._waiting.clear()
        self._failed = False

    def _listen(self, target: Any, name: str, fn: Callable[..., Any]) -> None:
        event.listen(target, name, fn)
        self._listeners.append((target, name, fn))

    # --- configure time -----------------------------------------------------------------------

    def _mapper_constructed(self, mapper: Mapper[Any], cls: type[Any]) -> None:
        # Build as soon as a model is defined, so its version table is in the MetaData before
        # anything reads it (metadata.create_all(), Alembic autogenerate), configured or not.
        if hasattr(cls, "__versioned__"):
            self._waiting.append(mapper)
        if self._failed or self._building:
            return  # configuring raises that error again / we are mapping our own classes
        try:
            self._build_waiting(final=False)
        except VersioningError:
            self._failed = True
            raise

    def _before_configured(self) -> None:
        self._build_waiting(final=True)

    def _after_configured(self) -> None:
        # The models' relationships are resolved only now.
        while self._unrelated:
            info = self._unrelated.pop(0)
            self._link_many_to_many(info)
            add_temporal_relationships(info)

    def _association(self, model: str, table: sa.Table) -> TableVersioning | None:
        """The versioning of a many-to-many association table (built once per table)."""
        if table in self._associations:
            return self._associations[table]
        if self._transaction_class is None or table.metadata is not (
            self._transaction_class.__table__.metadata  # type: ignore[attr-defined]
        ):
            return None
        # A link is identified by its foreign keys: association tables often have no
        # primary key, and a surrogate one would not tell a re-added link from a new one.
        key = [c.key for c in table.c if c.foreign_keys]
        if not key:
            return None
        attrs = {c.key: c.key for c in table.c}
        versioning = self._table_versioning(model, table, attrs, tuple(key), key_override=True)
        self._associations[table] = versioning
        return versioning

    def _link_many_to_many(self, info: VersionInfo) -> None:
        for rel in info.parent_mapper.relationships:
            if rel.parent is not info.parent_mapper or not isinstance(rel.secondary, sa.Table):
                continue
            table = self._association(info.parent.__name__, rel.secondary)
            if table is None:
                continue
            local = {
                str(assoc.key): info.parent_mapper.get_property_by_column(col).key
                for col, assoc in rel.synchronize_pairs
            }
            remote = {
                str(assoc.key): rel.mapper.get_property_by_column(col).key
                for col, assoc in rel.secondary_synchronize_pairs or ()
            }
            if set(local) | set(remote) == set(table.key_columns):
                info.links.append(LinkVersioning(rel.key, table, local, remote))

    def _build_waiting(self, *, final: bool) -> None:
        # A model that fails to build stays first in line, so configuring keeps failing with
        # the same clear error instead of silently leaving the model unversioned.
        self._building = True
        try:
            self._build_each(final=final)
        finally:
            self._building = False

    def _build_each(self, *, final: bool) -> None:
        while self._waiting:
            mapper = self._waiting[0]
            if self._transaction_class is None:
                user_cls = self._resolve_user_class(mapper, required=final)
                if user_cls is _NOT_YET:
                    return  # the user class is defined later; wait for it
                self._transaction_class = self._build_transaction_class(mapper, user_cls)
            self._build(mapper)
            self._waiting.pop(0)

    def _build(self, mapper: Mapper[Any]) -> None:
        model = mapper.class_.__name__
        base: VersionInfo | None = None
        if mapper.inherits is not None:
            base = mapper.inherits.class_manager.info.get(INFO_KEY)
            if base is None:
                raise ConfigurationError(
                    f"{model} is versioned but inherits from {mapper.inherits.class_.__name__}, "
                    "which is not; declare __versioned__ on the base class of the hierarchy"
                )
        options = model_options(mapper)
        local = mapper.local_table
        if not isinstance(local, sa.Table):
            raise ConfigurationError(f"{model} is not mapped to a Table; it cannot be versioned")
        if base is None and hasattr(mapper.class_, "versions"):
            raise ConfigurationError(
                f"{model} already has an attribute 'versions'; versioning adds that relationship"
            )
        transaction_cls = self._transaction_class
        assert transaction_cls is not None
        if transaction_cls.__table__.metadata is not local.metadata:  # type: ignore[attr-defined]
            raise ConfigurationError(
                f"{model} uses a different MetaData than the models versioned before it; "
                "all versioned models must share one MetaData"
            )
        pk_attrs = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        # attribute key -> column key, per table, for the tracked columns of this model
        by_table: dict[sa.Table, dict[str, str]] = {}
        for prop in column_properties(mapper):
            if prop.key in options.exclude:
                continue
            for column in prop.columns:
                if isinstance(column, sa.Column) and isinstance(column.table, sa.Table):
                    by_table.setdefault(column.table, {}).setdefault(prop.key, column.key)
        local_attrs = by_table.get(local, {})

        tables = list(base.tables) if base is not None else []
        if base is not None and local is base.tables[-1].parent_table:
            # single-table subclass: its columns live in the base's table, and in its version
            table = tables[-1]
            for attr, col in local_attrs.items():
                if attr not in table.attrs:
                    table.version_table.append_column(version_column(local.c[col]))
                    table.attrs[attr] = col
            table.statements.clear()
        else:
            missing = [a for a in pk_attrs if a not in local_attrs]
            if missing:
                raise ConfigurationError(
                    f"{model}: the primary key attribute(s) {', '.join(missing)} are not "
                    f"columns of its table {local.name!r}; it cannot be versioned"
                )
            tables.append(self._table_versioning(model, local, local_attrs, pk_attrs))
        attrs = (*pk_attrs, *[a for t in tables for a in by_table.get(t.parent_table, {})])
        info = VersionInfo(
            parent=mapper.class_,
            parent_mapper=mapper,
            transaction_class=transaction_cls,
            attrs=tuple(dict.fromkeys(attrs)),
            pk_attrs=pk_attrs,
            tables=tuple(tables),
            base=base,
            tracked_relationships=tuple(
                p.key for p in mapper.iterate_properties if isinstance(p, RelationshipProperty)
            )
            if options.track_relationships
            else (),
        )
        discriminator = mapper.polymorphic_on
        if (
            base is None
            and discriminator is not None
            and not (
                isinstance(discriminator, sa.Column)
                and discriminator.table is local
                and discriminator.key in tables[0].attrs.values()
            )
        ):
            raise ConfigurationError(
                f"{model}: its polymorphic discriminator must be a versioned column of "
                f"{local.name!r} (not excluded, not an expression)"
            )
        version_cls = map_version_class(info, mapper.registry)
        mapper.class_manager.info[INFO_KEY] = info
        sa.inspect(version_cls).class_manager.info[INFO_KEY] = info
        self._infos.append(info)
        self._unrelated.append(info)
        # Association tables named now are in the MetaData before anything creates it.
        for prop in mapper.iterate_properties:
            if isinstance(prop, RelationshipProperty) and prop.parent is mapper:
                secondary = _declared_secondary(prop)
                if isinstance(secondary, str):
                    secondary = local.metadata.tables.get(secondary)
                if isinstance(secondary, sa.Table):
                    self._association(model, secondary)
        self._listen(mapper, "after_insert", partial(_after_insert, info))
        self._listen(mapper, "after_update", partial(_after_update, info))
        self._listen(mapper, "before_delete", partial(_before_delete, info))

    def _table_versioning(
        self,
        model: str,
        table: sa.Table,
        attrs: dict[str, str],
        pk_attrs: tuple[str, ...],
        *,
        key_override: bool = False,
    ) -> TableVersioning:
        version_name = table.name + "_version"
        if (
            table.metadata.tables.get(
                f"{table.schema}.{version_name}" if table.schema else version_name
            )
            is not None
        ):
            raise ConfigurationError(
                f"{model}: table {version_name!r} already exists in its MetaData; "
                "was the model versioned twice?"
            )
        ordered = {**{a: attrs[a] for a in pk_attrs}, **attrs}
        transactions: sa.Table = self._transaction_class.__table__  # type: ignore[union-attr]
        key_columns = tuple(ordered[a] for a in pk_attrs)
        version_table = build_version_table(
            table,
            [table.c[c] for c in ordered.values()],
            transactions,
            key=key_columns if key_override else None,
        )
        return TableVersioning(
            parent_table=table,
            version_table=version_table,
            transaction_table=transactions,
            attrs=ordered,
            key_columns=key_columns,
        )

    def _build_transaction_class(
        self, mapper: Mapper[Any], user_cls: type[Any] | None
    ) -> type[Transaction]:
        user_column: sa.Column[Any] | None = None
        if user_cls is not None:
            user_mapper = sa.inspect(user_cls)
            if len(user_mapper.primary_key) != 1:
                raise ConfigurationError(
                    f"user class {user_cls.__name__} must have a single-column primary key to "
                    f"be referenced by transaction.user_id; it has {len(user_mapper.primary_key)}"
                )
            user_column = user_mapper.primary_key[0]
        table = build_transaction_table(
            mapper.local_table.metadata,  # type: ignore[attr-defined]
            user_id_column=user_column,
            user_id_type=self.user_id_type or _UserIdString(),
        )
        return map_transaction_class(mapper.registry, table, user_cls)

    def _resolve_user_class(self, mapper: Mapper[Any], *, required: bool) -> Any:
        """The user class, ``None`` when there is none, or ``_NOT_YET`` while undefined."""
        user_cls = self.user_cls
        if user_cls is None:
            return None
        if isinstance(user_cls, str):
            found = [m.class_ for m in mapper.registry.mappers if m.class_.__name__ == user_cls]
            if len(found) == 1:
                return found[0]
            if not found and not required:
                return _NOT_YET
            raise ConfigurationError(
                f"make_versioned(user_cls={user_cls!r}): "
                + ("no mapped class" if not found else "more than one mapped class")
                + f" of that name in the registry of {mapper.class_.__name__}"
            )
        if sa.inspect(user_cls, raiseerr=False) is None:
            raise ConfigurationError(
                f"make_versioned(user_cls={user_cls.__name__}): not a mapped class with a "
                f"primary key (needed by {mapper.class_.__name__})"
            )
        return user_cls


_NOT_YET = object()


def _declared_secondary(prop: RelationshipProperty[Any]) -> Any:
    """A relationship's ``secondary`` argument as declared (before mappers configure).

    Read where SQLAlchemy 2.0/2.1 keep it; anything unexpected counts as "not known yet", and
    the association table is then versioned when mappers configure.
    """
    argument = getattr(getattr(prop, "_init_args", None), "secondary", None)
    return getattr(argument, "argument", None)


def _after_insert(info: VersionInfo, mapper: Mapper[Any], connection: Any, target: Any) -> None:
    capture.record_insert(info, sa.inspect(target))


def _after_update(info: VersionInfo, mapper: Mapper[Any], connection: Any, target: Any) -> None:
    capture.record_update(info, sa.inspect(target), connection)


def _before_delete(info: VersionInfo, mapper: Mapper[Any], connection: Any, target: Any) -> None:
    capture.record_delete(info, sa.inspect(target), connection)


# --- the default manager and the public functions ------------------------------------------

_default_manager: VersioningManager | None = None


def make_versioned(
    user_cls: UserClass = None, *, user_id_type: sa.types.TypeEngine[Any] | None = None
) -> VersioningManager:
    """Turn versioning on for models that declare ``__versioned__``; call before defining them.

    ``user_cls`` (a mapped class or its name) makes ``transaction.user_id`` a foreign key to its
    primary key. Without it, ``user_id`` is a nullable column of ``user_id_type`` (default: a
    ``String(255)`` that stores any id as text).
    """
    global _default_manager
    if _default_manager is not None and _default_manager.active:
        raise ConfigurationError(
            "make_versioned() was already called; call remove_versioning() before calling it again"
        )
    manager = VersioningManager(user_cls, user_id_type=user_id_type)
    manager.install()
    _default_manager = manager
    return manager


def remove_versioning() -> None:
    """Remove the listeners installed by :func:`make_versioned` (no-op when none are)."""
    global _default_manager
    if _default_manager is not None:
        _default_manager.remove()
        _default_manager = None


def default_manager() -> VersioningManager:
    """The manager installed by :func:`make_versioned` (configuring pending models first)."""
    if _default_manager is None:
        raise ConfigurationError("versioning is not enabled: call make_versioned() first")
    sa.orm.configure_mappers()
    return _default_manager


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
            " (it declares __versioned__ but was mapped before make_versioned() was called)"
            if hasattr(cls, "__versioned__")
            else " (add __versioned__ = {} to the class)"
        )
        raise NotVersionedError(f"{cls.__name__} is not versioned{hint}")
    return info


def version_class(model: type[Any]) -> type[Version]:
    """Return the version class of a versioned model (configuring mappers if needed)."""
    info = version_info(model)
    if issubclass(model, Version):
        raise NotVersionedError(f"{model.__name__} is a version class, not a versioned model")
    return info.version_class


def parent_class(version_cls: type[Any]) -> type[Any]:
    """Return the model a version class records."""
    if not (isinstance(version_cls, type) and issubclass(version_cls, Version)):
        raise NotVersionedError(f"{version_cls!r} is not a version class")
    return version_info(version_cls).parent


def transaction_class(cls: type[Any]) -> type[Transaction]:
    """Return the transaction class used by a versioned model (or by its version class)."""
    return version_info(cls).transaction_class
