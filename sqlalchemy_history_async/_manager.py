"""The versioning manager: a scope (one declarative base, or every model), its options, and the
listeners that build and record its models.

``make_versioned()`` installs the default manager, which versions every model declaring
``__versioned__`` that no scoped manager claims. ``VersioningManager(...).install(Base)``
versions the models of one declarative base (or registry) only, with options and a
transaction table of its own: two managers in one process never interfere.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapper, Session

from ._build import Builder
from ._bulk import BulkRecorder
from ._capture import Recorder
from ._exceptions import ConfigurationError
from ._info import Catalog, VersionInfo, set_default_catalog
from ._options import ManagerOptions, UserClass
from ._schema import INFO_KEY, TRANSACTION_TABLE_NAME
from ._writes import Writer

__all__ = ["VersioningManager", "default_manager", "make_versioned", "remove_versioning"]

# ``MetaData.info[_CLAIM_KEY]``: the scoped manager that versions the models of that MetaData.
_CLAIM_KEY = INFO_KEY + ".manager"


class VersioningManager:
    """Versions the models of one scope and records their changes.

    ``VersioningManager(...)`` takes the :class:`ManagerOptions` fields; :meth:`install`
    starts versioning a declarative base (or a ``registry``), or — without an argument, as
    :func:`make_versioned` does — every model that declares ``__versioned__`` and is not in
    the scope of another manager. The manager holds configuration only; what a transaction
    records lives in its session's ``info``.
    """

    def __init__(
        self,
        user_cls: UserClass = None,
        *,
        user_id_type: sa.types.TypeEngine[Any] | None = None,
        transaction_table: str = TRANSACTION_TABLE_NAME,
        transaction_schema: str | None = None,
        strict: bool = False,
    ) -> None:
        self.options = ManagerOptions(
            user_cls=user_cls,
            user_id_type=user_id_type,
            transaction_table=transaction_table,
            transaction_schema=transaction_schema,
            strict=strict,
        )
        self.catalog = Catalog()
        self._writer = Writer()
        self._recorder = Recorder(self._writer, self.catalog)
        self._bulk = BulkRecorder(self._recorder, self.catalog, strict=strict)
        self._builder = Builder(self.options, self.catalog, self._listen_model)
        self._registry: sa.orm.registry | None = None
        self._installed = False
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []

    @property
    def versioned_classes(self) -> tuple[type[Any], ...]:
        """The models this manager versions, in the order their version classes were built."""
        return self.catalog.versioned_classes

    @property
    def active(self) -> bool:
        """True while the manager is installed."""
        return self._installed

    @property
    def scope(self) -> sa.orm.registry | None:
        """The registry whose models this manager versions (``None``: every unclaimed model)."""
        return self._registry

    def install(self, base: Any = None) -> VersioningManager:
        """Start versioning ``base``'s models (a declarative base class or a ``registry``).

        Without ``base``, version every model declaring ``__versioned__`` that no other
        manager's scope holds (what :func:`make_versioned` does). Models of the scope that are
        already defined are versioned now. Returns the manager.
        """
        if self._installed:
            raise ConfigurationError(
                "this VersioningManager is installed already; call remove() before installing "
                "it again"
            )
        registry = None if base is None else _registry_of(base)
        if self._registry is not None and registry is not self._registry:
            raise ConfigurationError(
                "a VersioningManager versions one scope; this one was installed on another "
                "declarative base before: create a new VersioningManager for this one"
            )
        if registry is not None:
            self._claim(registry)
        self._registry = registry
        self._installed = True
        self._listen(Mapper, "after_mapper_constructed", self._mapper_constructed)
        self._listen(Mapper, "before_configured", self._builder.before_configured)
        self._listen(Mapper, "after_configured", self._builder.after_configured)
        recorder = self._recorder
        self._listen(Session, "before_flush", recorder.before_flush)
        self._listen(Session, "after_flush", recorder.after_flush)
        self._listen(Session, "before_commit", recorder.before_commit)
        self._listen(Session, "after_transaction_create", recorder.after_transaction_create)
        self._listen(Session, "after_soft_rollback", recorder.after_soft_rollback)
        self._listen(Session, "after_transaction_end", recorder.after_transaction_end)
        bulk = self._bulk
        self._listen(Session, "do_orm_execute", bulk.do_orm_execute)
        self._listen(Session, "after_begin", bulk.after_begin)
        self._listen(Session, "after_transaction_create", bulk.after_transaction_create)
        self._listen(Session, "after_transaction_end", bulk.after_transaction_end)
        self.catalog.infos[:] = [info for info in self.catalog.infos if info.live]
        for info in self.catalog.infos:
            self._listen_model(info)
        if registry is not None:
            for mapper in sorted(registry.mappers, key=_definition_order):
                self._builder.queue(mapper)
        return self

    def remove(self) -> None:
        """Stop versioning: remove every listener; version classes stay mapped and readable.

        Installing the manager again (or a new manager with the same options on the same
        scope) records history again for every model versioned before.
        """
        for target, name, fn in reversed(self._listeners):
            event.remove(target, name, fn)
        self._listeners.clear()
        self._builder.reset()
        self._installed = False

    def adopt(self, previous: VersioningManager) -> None:
        """Take over the models of a removed manager of the same scope and options.

        Their version tables and transaction table already exist; a manager with other options
        cannot take them over, and says so instead of leaving them unrecorded.
        """
        if previous._installed:
            raise ConfigurationError("cannot take over the models of an installed manager")
        live = [info for info in previous.catalog.infos if info.live]
        if not live:
            return
        if not _same_options(previous.options, self.options):
            names = ", ".join(sorted(info.parent.__name__ for info in live))
            raise ConfigurationError(
                f"{names} were versioned by an earlier manager with other options "
                f"({_describe(previous.options)}); their version tables and transaction table "
                f"exist already, so this manager ({_describe(self.options)}) cannot record "
                "them: use the same options, or dispose of their registry first"
            )
        self.catalog.transaction_class = previous.catalog.transaction_class
        self.catalog.infos[:] = live
        self.catalog.associations.update(previous.catalog.associations)
        self._builder.adopt(previous._builder)

    # --- scope --------------------------------------------------------------------------------

    def _in_scope(self, mapper: Mapper[Any]) -> bool:
        if self._registry is not None:
            return mapper.registry is self._registry
        claimed = _claimant(mapper.registry)
        return claimed is None or claimed is self

    def _claim(self, registry: sa.orm.registry) -> None:
        claimed = _claimant(registry)
        if claimed is not None and claimed is not self:
            if claimed.active:
                raise ConfigurationError(
                    "this declarative base is versioned by another VersioningManager already; "
                    "call its remove() first"
                )
            self.adopt(claimed)
        default = _Default.manager
        if default is not None and default is not self and default.active:
            taken = [
                info.parent.__name__
                for info in default.catalog.infos
                if info.live and info.parent_mapper.registry is registry
            ]
            if taken:
                raise ConfigurationError(
                    f"{', '.join(sorted(taken))} are versioned by make_versioned() already; "
                    "install scoped managers before defining their models"
                )
        registry.metadata.info[_CLAIM_KEY] = self

    # --- listeners ----------------------------------------------------------------------------

    def _mapper_constructed(self, mapper: Mapper[Any], cls: type[Any]) -> None:
        if self._in_scope(mapper):
            self._builder.queue(mapper)

    def _listen_model(self, info: VersionInfo) -> None:
        recorder, mapper = self._recorder, info.parent_mapper
        # raw=True: the listeners get the InstanceState, not the object
        self._listen(mapper, "after_insert", partial(recorder.after_insert, info), raw=True)
        self._listen(mapper, "after_update", partial(recorder.after_update, info), raw=True)
        self._listen(mapper, "before_delete", partial(recorder.before_delete, info), raw=True)

    def _listen(self, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
        event.listen(target, name, fn, **kw)
        self._listeners.append((target, name, fn))


def _registry_of(base: Any) -> sa.orm.registry:
    if isinstance(base, sa.orm.registry):
        return base
    registry = getattr(base, "registry", None)
    if isinstance(base, type) and isinstance(registry, sa.orm.registry):
        return registry
    raise ConfigurationError(
        "VersioningManager.install() takes a declarative base class (a DeclarativeBase "
        f"subclass) or a sqlalchemy.orm.registry, got {base!r}"
    )


def _claimant(registry: sa.orm.registry) -> VersioningManager | None:
    claimed: VersioningManager | None = registry.metadata.info.get(_CLAIM_KEY)
    return claimed


def _definition_order(mapper: Mapper[Any]) -> int:
    """Bases before their subclasses (the depth of the mapper in its hierarchy)."""
    return len(list(mapper.iterate_to_root()))


def _same_options(a: ManagerOptions, b: ManagerOptions) -> bool:
    def key(o: ManagerOptions) -> tuple[Any, ...]:
        return (o.user_cls, repr(o.user_id_type), o.transaction_table, o.transaction_schema)

    return key(a) == key(b)


def _describe(options: ManagerOptions) -> str:
    user_cls = options.user_cls
    name = user_cls.__name__ if isinstance(user_cls, type) else repr(user_cls)
    return (
        f"user_cls={name}, user_id_type={options.user_id_type!r}, "
        f"transaction_table={options.transaction_table!r}"
    )


# --- the default manager ------------------------------------------------------------------------


class _Default:
    """The manager installed by :func:`make_versioned` (kept after removal, to be re-enabled)."""

    manager: VersioningManager | None = None


def make_versioned(
    user_cls: UserClass = None,
    *,
    user_id_type: sa.types.TypeEngine[Any] | None = None,
    transaction_table: str = TRANSACTION_TABLE_NAME,
    transaction_schema: str | None = None,
    strict: bool = False,
) -> VersioningManager:
    """Turn versioning on for models that declare ``__versioned__``; call before defining them.

    ``user_cls`` (a mapped class or its name) makes ``transaction.user_id`` a foreign key to its
    primary key. Without it, ``user_id`` is a nullable column of ``user_id_type`` (default: a
    ``String(255)`` that stores any id as text). ``strict=True`` refuses textual SQL that
    writes to a versioned table through ``session.execute()`` (see :class:`ManagerOptions`).
    After :func:`remove_versioning`, calling it again with the same options records history
    again for the models versioned before.
    """
    previous = _Default.manager
    if previous is not None and previous.active:
        raise ConfigurationError(
            "make_versioned() was already called; call remove_versioning() before calling it again"
        )
    manager = VersioningManager(
        user_cls,
        user_id_type=user_id_type,
        transaction_table=transaction_table,
        transaction_schema=transaction_schema,
        strict=strict,
    )
    if previous is not None:
        manager.adopt(previous)
    manager.install()
    _Default.manager = manager
    set_default_catalog(manager.catalog)
    return manager


def remove_versioning() -> None:
    """Remove the listeners installed by :func:`make_versioned` (no-op when none are)."""
    manager = _Default.manager
    if manager is not None and manager.active:
        manager.remove()
        set_default_catalog(None)


def default_manager() -> VersioningManager:
    """The manager installed by :func:`make_versioned` (configuring pending models first)."""
    manager = _Default.manager
    if manager is None or not manager.active:
        raise ConfigurationError("versioning is not enabled: call make_versioned() first")
    sa.orm.configure_mappers()
    return manager
