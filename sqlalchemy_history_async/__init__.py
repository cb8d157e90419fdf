"""Async-first history tracking (versioning / audit) for SQLAlchemy 2.x."""

from .context import versioning_context
from .exceptions import ConfigurationError, NotVersionedError, RevertError, VersioningError
from .manager import (
    VersioningManager,
    make_versioned,
    parent_class,
    remove_versioning,
    transaction_class,
    version_class,
)
from .models import Transaction, Version
from .queries import (
    changes_in,
    changes_in_sync,
    diff,
    json_patch,
    select_as_of,
    select_changed,
    select_changes,
    select_version_at,
    stream_changes,
    version_at,
)
from .schema import Operation

__all__ = [
    "ConfigurationError",
    "NotVersionedError",
    "Operation",
    "RevertError",
    "Transaction",
    "Version",
    "VersioningError",
    "VersioningManager",
    "changes_in",
    "changes_in_sync",
    "diff",
    "json_patch",
    "make_versioned",
    "parent_class",
    "remove_versioning",
    "select_as_of",
    "select_changed",
    "select_changes",
    "select_version_at",
    "stream_changes",
    "transaction_class",
    "version_at",
    "version_class",
    "versioning_context",
]
