"""The modes under comparison: the same ``Article`` model, versioned by one library or none.

Each mode runs in its own process (history libraries install process-global listeners), so
``build(name)`` may turn versioning on for the whole process. Everything a workload needs to
know about a mode — its version table, how to read a row's history, how to look a version up —
is on the returned :class:`Mode`.

This module runs under every mode's interpreter: only the standard library, SQLAlchemy and the
mode's own library may be imported, and only inside the function that builds that mode.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: mode name → (library distribution, strategy); ``None`` library: no versioning.
MODES: dict[str, tuple[str | None, str | None]] = {
    "plain": (None, None),
    "ours": ("sqlalchemy-history-async", "validity"),
    "history-validity": ("sqlalchemy-history", "validity"),
    "history-subquery": ("sqlalchemy-history", "subquery"),
    "continuum-validity": ("sqlalchemy-continuum", "validity"),
    "continuum-subquery": ("sqlalchemy-continuum", "subquery"),
}


@dataclass
class Mode:
    """One mode, built: the models and what the workloads need to drive and check them."""

    name: str
    library: str | None
    library_version: str | None
    strategy: str | None
    Base: type[DeclarativeBase]
    Article: type[Any]
    #: the mapped version class (``None`` for plain)
    Version: type[Any] | None = None
    #: naive (competitors) or aware (ours) ``issued_at`` values for direct transaction inserts
    aware_timestamps: bool = False
    notes: list[str] = field(default_factory=list)
    #: plain only: a hand-rolled history model with the same columns, for the lookup workload
    HandRolled: type[Any] | None = None

    @property
    def versioned(self) -> bool:
        return self.library is not None

    @property
    def version_table(self) -> sa.Table:
        return self.Base.metadata.tables["article_version"]

    @property
    def transaction_table(self) -> sa.Table | None:
        return self.Base.metadata.tables.get("transaction")

    def timestamp(self) -> datetime:
        now = datetime.now(timezone.utc)
        return now if self.aware_timestamps else now.replace(tzinfo=None)

    # Filled by build(): how this mode answers the read workload (see workloads.w3).
    current_version_select: Callable[[int], sa.Select[Any]] = field(init=False)
    version_as_of_select: Callable[[int, int], sa.Select[Any]] = field(init=False)


def _define_models(versioned: bool) -> tuple[type[DeclarativeBase], type[Any]]:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Article(Base):
        __tablename__ = "article"
        if versioned:
            __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(200))
        body: Mapped[str | None] = mapped_column(sa.Text)
        counter: Mapped[int] = mapped_column(default=0)

    return Base, Article


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build(name: str) -> Mode:
    """Turn on ``name``'s versioning for this process and define the models."""
    if name not in MODES:
        raise SystemExit(f"unknown mode {name!r}; known: {', '.join(MODES)}")
    library, strategy = MODES[name]
    if library is None:
        mode = _build_plain()
    elif library == "sqlalchemy-history-async":
        mode = _build_ours()
    elif library == "sqlalchemy-history":
        mode = _build_competitor(name, "sqlalchemy_history", strategy, support_async=True)
    else:
        mode = _build_competitor(name, "sqlalchemy_continuum", strategy, support_async=False)
    mode.library_version = _dist_version(library) if library else None
    return mode


def _build_plain() -> Mode:
    Base, Article = _define_models(versioned=False)

    # What an application without a history library would hand-roll for the lookup workload:
    # the same columns and keys as a validity-strategy version table.
    class ArticleHistory(Base):
        __tablename__ = "article_version"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        transaction_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, index=True)
        end_transaction_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
        operation_type: Mapped[int] = mapped_column(sa.SmallInteger)
        title: Mapped[str | None] = mapped_column(sa.String(200))
        body: Mapped[str | None] = mapped_column(sa.Text)
        counter: Mapped[int | None]

    sa.orm.configure_mappers()
    mode = Mode("plain", None, None, None, Base, Article, HandRolled=ArticleHistory)
    _validity_lookups(mode, ArticleHistory)
    return mode


def _build_ours() -> Mode:
    from sqlalchemy_history_async import make_versioned, select_version_at, version_class

    make_versioned()
    Base, Article = _define_models(versioned=True)
    V = version_class(Article)
    mode = Mode("ours", "sqlalchemy-history-async", None, "validity", Base, Article, V)
    mode.aware_timestamps = True
    mode.current_version_select = lambda pk: sa.select(V).where(V.id == pk, V.is_current)
    mode.version_as_of_select = lambda pk, tx: select_version_at(Article, pk, tx)
    return mode


def _build_competitor(name: str, module: str, strategy: str | None, *, support_async: bool) -> Mode:
    lib = importlib.import_module(module)
    options: dict[str, Any] = {"strategy": strategy}
    if support_async:
        # SQLAlchemy-History's documented setting for AsyncSession users.
        options["support_async"] = True
    lib.make_versioned(user_cls=None, options=options)
    Base, Article = _define_models(versioned=True)
    sa.orm.configure_mappers()
    V = lib.version_class(Article)
    library = MODES[name][0]
    mode = Mode(name, library, None, strategy, Base, Article, V)
    if strategy == "validity":
        _validity_lookups(mode, V)
    else:
        _subquery_lookups(mode, V)
    return mode


def _validity_lookups(mode: Mode, V: type[Any]) -> None:
    """Current / as-of lookups on a table with ``end_transaction_id`` (the validity strategy)."""
    mode.current_version_select = lambda pk: sa.select(V).where(
        V.id == pk, V.end_transaction_id.is_(None)
    )
    mode.version_as_of_select = lambda pk, tx: sa.select(V).where(
        V.id == pk,
        V.transaction_id <= tx,
        sa.or_(V.end_transaction_id.is_(None), V.end_transaction_id > tx),
        V.operation_type != 2,
    )


def _subquery_lookups(mode: Mode, V: type[Any]) -> None:
    """The same lookups without ``end_transaction_id``: the newest version at or before."""
    mode.current_version_select = lambda pk: (
        sa.select(V).where(V.id == pk).order_by(V.transaction_id.desc()).limit(1)
    )
    mode.version_as_of_select = lambda pk, tx: (
        sa.select(V)
        .where(V.id == pk, V.transaction_id <= tx)
        .order_by(V.transaction_id.desc())
        .limit(1)
    )
