"""Configure time: validate a versioned model, build its version tables and class, map them.

A :class:`Builder` belongs to one manager. Models are queued as they are defined
(``after_mapper_constructed``) and built at once, so their version tables are in the MetaData
before anything reads it (``metadata.create_all()``, Alembic autogenerate), configured or not.
Temporal relationships wait until mappers are configured, when the models' relationships are
resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, RelationshipProperty
from sqlalchemy.orm.interfaces import MANYTOONE

from ._exceptions import ConfigurationError, VersioningError
from ._horizon import RETENTION_TABLE_SUFFIX, build_retention_table
from ._info import Catalog, LinkVersioning, TableVersioning, VersionInfo
from ._models import Transaction, map_transaction_class, map_version_class
from ._options import ManagerOptions, column_properties, model_options
from ._order import LOCK_TABLE_SUFFIX, build_lock_table
from ._relationships import add_temporal_relationships
from ._schema import (
    INFO_KEY,
    build_transaction_table,
    build_version_table,
    identifier,
    version_column,
    version_table_name,
)

__all__ = ["Builder", "UserIdString"]


class UserIdString(sa.types.TypeDecorator[str]):
    """Default ``transaction.user_id`` type: any id is stored as its string form."""

    impl = sa.String(255)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else str(value)


class Builder:
    """Builds the version classes of one manager's models into its :class:`Catalog`.

    ``on_built`` is called with each new :class:`VersionInfo` (the manager attaches the
    model's mapper listeners there).
    """

    def __init__(
        self,
        options: ManagerOptions,
        catalog: Catalog,
        on_built: Callable[[VersionInfo], None],
    ) -> None:
        self.options = options
        self.catalog = catalog
        self._on_built = on_built
        self._waiting: list[Mapper[Any]] = []
        self._unrelated: list[VersionInfo] = []  # temporal relationships not added yet
        self._failed = False
        self._building = False

    def reset(self) -> None:
        """Forget models waiting to be built (the manager is being removed)."""
        self._waiting.clear()
        self._failed = False

    def adopt(self, previous: Builder) -> None:
        """Take over the models of a removed manager still waiting for their relationships."""
        self._unrelated.extend(info for info in previous._unrelated if info.live)
        previous._unrelated.clear()

    def queue(self, mapper: Mapper[Any]) -> None:
        """A model was defined: build it now if it is versioned (and everything before it)."""
        if hasattr(mapper.class_, "__versioned__") and INFO_KEY not in mapper.class_manager.info:
            self._waiting.append(mapper)
        if self._failed or self._building:
            return  # configuring raises that error again / we are mapping our own classes
        try:
            self._build_waiting(final=False)
        except VersioningError:
            self._failed = True
            raise

    def before_configured(self) -> None:
        """Mappers are about to configure: every queued model must build now."""
        self._build_waiting(final=True)

    def after_configured(self) -> None:
        """Mappers are configured: add many-to-many links and temporal relationships."""
        infos, self._unrelated = self._unrelated, []
        # Links written through a relationship first: a viewonly relationship only reads an
        # association table that another relationship versions.
        for viewonly in (False, True):
            for info in infos:
                self._link_many_to_many(info, viewonly=viewonly)
        for info in infos:
            info.foreign_key_attrs.update(_foreign_key_attrs(info))
            add_temporal_relationships(info)

    # --- models -------------------------------------------------------------------------------

    def _build_waiting(self, *, final: bool) -> None:
        # A model that fails to build stays first in line, so configuring keeps failing with
        # the same clear error instead of silently leaving the model unversioned.
        self._building = True
        try:
            while self._waiting:
                mapper = self._waiting[0]
                if not isinstance(mapper.local_table, sa.Table):  # before its MetaData is used
                    raise ConfigurationError(
                        f"{mapper.class_.__name__} is not mapped to a Table; it cannot be versioned"
                    )
                if self.catalog.transaction_class is None:
                    user_cls = self._resolve_user_class(mapper, required=final)
                    if user_cls is _NOT_YET:
                        return  # the user class is defined later; wait for it
                    self.catalog.transaction_class = self._build_transaction_class(mapper, user_cls)
                self._build(mapper)
                self._waiting.pop(0)
        finally:
            self._building = False

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
        if mapper.concrete:
            raise ConfigurationError(
                f"{model} uses concrete-table inheritance, which cannot be versioned: declare "
                "__versioned__ on joined-table or single-table hierarchies, or on classes that "
                "do not inherit a mapped class"
            )
        local = mapper.local_table
        assert isinstance(local, sa.Table)  # checked by _build_waiting
        if base is None and hasattr(mapper.class_, "versions"):
            raise ConfigurationError(
                f"{model} already has an attribute 'versions'; versioning adds that relationship"
            )
        transaction_cls = self.catalog.transaction_class
        assert transaction_cls is not None
        if _table_of(transaction_cls).metadata is not local.metadata:
            raise ConfigurationError(
                f"{model} uses a different MetaData than the models versioned before it; "
                "all models of one manager must share one MetaData (use one VersioningManager "
                "per declarative base)"
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
        _check_bookkeeping_names(model, local, local_attrs)

        tables = list(base.tables) if base is not None else []
        if base is not None and local is base.tables[-1].parent_table:
            # single-table subclass: its columns live in the base's table, and in its version
            table = tables[-1]
            for attr, col in local_attrs.items():
                if attr not in table.attrs:
                    table.version_table.append_column(version_column(local.c[col]))
                    table.attrs[attr] = col
                    table.revision += 1
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
            options=options,
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
        self.catalog.infos.append(info)
        self._unrelated.append(info)
        # Association tables named now are in the MetaData before anything creates it.
        for prop in mapper.iterate_properties:
            if (
                isinstance(prop, RelationshipProperty)
                and prop.parent is mapper
                and not prop.viewonly
            ):
                secondary = _declared_secondary(prop)
                if isinstance(secondary, str):
                    secondary = local.metadata.tables.get(secondary)
                if isinstance(secondary, sa.Table):
                    self._association(model, secondary)
        self._on_built(info)

    # --- tables -------------------------------------------------------------------------------

    def _table_versioning(
        self,
        model: str,
        table: sa.Table,
        attrs: dict[str, str],
        pk_attrs: tuple[str, ...],
        *,
        key_override: bool = False,
    ) -> TableVersioning:
        version_name = version_table_name(table)
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
        assert self.catalog.transaction_class is not None
        transactions = _table_of(self.catalog.transaction_class)
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

    def _association(self, model: str, table: sa.Table) -> TableVersioning | None:
        """The versioning of a many-to-many association table (built once per table)."""
        associations = self.catalog.associations
        if table in associations:
            return associations[table]
        transaction_cls = self.catalog.transaction_class
        if transaction_cls is None or table.metadata is not _table_of(transaction_cls).metadata:
            return None
        if any(table is t.parent_table for info in self.catalog.infos for t in info.tables):
            return None  # an association-object model: versioned as that model
        # A link is identified by its foreign keys: association tables often have no
        # primary key, and a surrogate one would not tell a re-added link from a new one.
        key = [c.key for c in table.c if c.foreign_keys]
        if not key:
            return None
        attrs = {c.key: c.key for c in table.c}
        versioning = self._table_versioning(model, table, attrs, tuple(key), key_override=True)
        associations[table] = versioning
        return versioning

    def _link_many_to_many(self, info: VersionInfo, *, viewonly: bool) -> None:
        for rel in info.parent_mapper.relationships:
            if (
                rel.parent is not info.parent_mapper
                or rel.viewonly is not viewonly
                or not isinstance(rel.secondary, sa.Table)
            ):
                continue
            # A viewonly relationship never versions a table: it reads links another writes.
            table = (
                self.catalog.associations.get(rel.secondary)
                if viewonly
                else self._association(info.parent.__name__, rel.secondary)
            )
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

    # --- the transaction class ----------------------------------------------------------------

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
        metadata = mapper.local_table.metadata  # type: ignore[attr-defined]
        name = self.options.transaction_table
        schema = self.options.transaction_schema
        for taken in (
            name,
            identifier(name + LOCK_TABLE_SUFFIX),
            identifier(name + RETENTION_TABLE_SUFFIX),
        ):
            if metadata.tables.get(f"{schema}.{taken}" if schema else taken) is not None:
                raise ConfigurationError(
                    f"{mapper.class_.__name__}: its MetaData already has a table {taken!r}; "
                    "choose another name with VersioningManager(transaction_table=...)"
                )
        table = build_transaction_table(
            metadata,
            user_id_column=user_column,
            user_id_type=self.options.user_id_type or UserIdString(),
            name=name,
            schema=schema,
        )
        build_lock_table(table)
        build_retention_table(table)
        return map_transaction_class(mapper.registry, table, user_cls)

    def _resolve_user_class(self, mapper: Mapper[Any], *, required: bool) -> Any:
        """The user class, ``None`` when there is none, or ``_NOT_YET`` while undefined."""
        user_cls = self.options.user_cls
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

#: Columns every version table adds to the parent's.
_BOOKKEEPING = ("transaction_id", "end_transaction_id", "operation_type")


def _check_bookkeeping_names(model: str, table: sa.Table, attrs: dict[str, str]) -> None:
    """A tracked column may not use a name the version table needs for its bookkeeping."""
    for attr, key in attrs.items():
        column = table.c[key]
        for name in {column.name, column.key, attr} & set(_BOOKKEEPING):
            raise ConfigurationError(
                f"{model}: column {column.name!r} of {table.name!r} (attribute {attr!r}) uses the "
                f"name {name!r}, which its version table needs for its own bookkeeping "
                f"({', '.join(_BOOKKEEPING)}); rename the column or attribute, or exclude it "
                "with __versioned__ = {'exclude': [...]}"
            )


def _foreign_key_attrs(info: VersionInfo) -> dict[str, tuple[str, ...]]:
    """Many-to-one relationships of the model and the tracked attributes the flush sets."""
    out: dict[str, tuple[str, ...]] = {}
    mapper = info.parent_mapper
    for rel in mapper.relationships:
        if rel.direction is not MANYTOONE or rel.viewonly:
            continue
        attrs = []
        for column in rel.local_columns:
            try:
                attr = mapper.get_property_by_column(column).key
            except sa.orm.exc.UnmappedColumnError:
                continue
            if attr in info.attr_set:
                attrs.append(attr)
        if attrs:
            out[rel.key] = tuple(attrs)
    return out


def _table_of(cls: type[Any]) -> sa.Table:
    table: sa.Table = sa.inspect(cls).local_table
    return table


def _declared_secondary(prop: RelationshipProperty[Any]) -> Any:
    """A relationship's ``secondary`` argument as declared (before mappers configure).

    Read where SQLAlchemy 2.0/2.1 keep it; anything unexpected counts as "not known yet", and
    the association table is then versioned when mappers configure.
    """
    argument = getattr(getattr(prop, "_init_args", None), "secondary", None)
    return getattr(argument, "argument", None)
