"""Typed, validated versioning options: one frozen object per manager and per model.

:class:`ManagerOptions` is validated when a manager is created; ``__versioned__`` dictionaries
are read once, when a model is defined, and turned into frozen :class:`ModelOptions`. Nothing
reads string-keyed options in the flush path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import ColumnProperty, Mapper

from ._exceptions import ConfigurationError
from ._schema import TRANSACTION_TABLE_NAME

__all__ = [
    "MODEL_OPTION_KEYS",
    "ManagerOptions",
    "ModelOptions",
    "UserClass",
    "column_properties",
    "model_options",
]

#: A user class given to a manager: a mapped class, its name, or ``None``.
UserClass = type[Any] | str | None


@dataclass(frozen=True)
class ManagerOptions:
    """Options of one versioning manager, validated once when the manager is created.

    ``user_cls`` (a mapped class or its name) makes ``user_id`` of the transaction table a
    foreign key to its primary key; without it, ``user_id`` is a nullable column of
    ``user_id_type`` (default: a ``String(255)`` that stores any id as text).
    ``transaction_table`` names the manager's transaction table, ``transaction_schema`` its
    schema (default: the MetaData's default schema). ``strict`` refuses textual SQL
    (``text()``) run through ``session.execute()`` that writes to a versioned table, which
    would otherwise go unrecorded.
    """

    user_cls: UserClass = None
    user_id_type: sa.types.TypeEngine[Any] | None = None
    transaction_table: str = TRANSACTION_TABLE_NAME
    transaction_schema: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        user_cls, user_id_type = self.user_cls, self.user_id_type
        if user_cls is not None and not isinstance(user_cls, (str, type)):
            raise ConfigurationError(
                f"make_versioned(user_cls=...) takes a mapped class or its name, got {user_cls!r}"
            )
        if user_cls is not None and user_id_type is not None:
            raise ConfigurationError(
                "make_versioned() takes user_cls or user_id_type, not both: with a user class, "
                "transaction.user_id has the type of its primary key"
            )
        if user_id_type is not None and not isinstance(user_id_type, sa.types.TypeEngine):
            raise ConfigurationError(
                "make_versioned(user_id_type=...) takes a SQLAlchemy type instance such as "
                f"sa.Integer(), got {user_id_type!r}"
            )
        if not isinstance(self.strict, bool):
            raise ConfigurationError(
                f"make_versioned(strict=...) takes True or False, got {self.strict!r}"
            )
        for option in ("transaction_table", "transaction_schema"):
            value = getattr(self, option)
            if value is None and option == "transaction_schema":
                continue
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(
                    f"VersioningManager({option}=...) takes a non-empty table or schema name, "
                    f"got {value!r}"
                )


#: The keys accepted in a model's ``__versioned__`` dictionary.
MODEL_OPTION_KEYS = frozenset({"exclude", "track_relationships"})


@dataclass(frozen=True)
class ModelOptions:
    """Per-model options, read from ``__versioned__``.

    ``exclude``: attribute names (or column names) whose columns are not copied into the
    version table; changes to them alone record nothing.
    """

    exclude: frozenset[str] = frozenset()
    #: ``track_relationships``: a change to the model's relationships alone (a child added
    #: to or removed from a collection, a many-to-one target replaced) records a new version
    #: of the model, so its temporal relationships show every state they had. Costs one
    #: version row of the model per such change.
    track_relationships: bool = False


def model_options(mapper: Mapper[Any]) -> ModelOptions:
    """Validate ``mapper.class_.__versioned__`` and return it as :class:`ModelOptions`.

    Raises :class:`ConfigurationError` naming the model and the offending key or column.
    """
    model = mapper.class_.__name__
    raw = mapper.class_.__dict__.get("__versioned__", getattr(mapper.class_, "__versioned__", None))
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{model}.__versioned__ must be a dict of options, got {type(raw).__name__}"
        )
    unknown = sorted(str(k) for k in raw if k not in MODEL_OPTION_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{model}.__versioned__ has unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(MODEL_OPTION_KEYS))}"
        )
    exclude = raw.get("exclude", ())
    if not isinstance(exclude, (list, tuple, set, frozenset)) or not all(
        isinstance(e, str) for e in exclude
    ):
        raise ConfigurationError(
            f"{model}.__versioned__['exclude'] must be a list of attribute names, got {exclude!r}"
        )
    resolved: set[str] = set()
    for name in exclude:
        resolved.add(_resolve_column_attribute(mapper, name))
    track = raw.get("track_relationships", False)
    if not isinstance(track, bool):
        raise ConfigurationError(
            f"{model}.__versioned__['track_relationships'] must be True or False, got {track!r}"
        )
    return ModelOptions(exclude=frozenset(resolved), track_relationships=track)


def column_properties(mapper: Mapper[Any]) -> list[ColumnProperty[Any]]:
    """The mapper's column properties, readable while the mapper is still being constructed."""
    # iterate_properties, unlike Mapper.attrs/column_attrs, never triggers configure.
    return [p for p in mapper.iterate_properties if isinstance(p, ColumnProperty)]


def _resolve_column_attribute(mapper: Mapper[Any], name: str) -> str:
    """Map an excluded name (attribute key or column name) to the attribute key."""
    model = mapper.class_.__name__
    props = column_properties(mapper)
    prop = next((p for p in props if p.key == name), None)
    if prop is None:
        for candidate in props:
            if any(isinstance(c, sa.Column) and c.name == name for c in candidate.columns):
                prop = candidate
                break
    if not isinstance(prop, ColumnProperty):
        raise ConfigurationError(
            f"{model}.__versioned__['exclude'] names {name!r}, which is not a column of {model}"
        )
    if any(c.primary_key for c in prop.columns if isinstance(c, sa.Column)):
        raise ConfigurationError(
            f"{model}.__versioned__['exclude'] names primary key column {name!r}; "
            "primary key columns are always versioned"
        )
    return prop.key
