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
    "make_versioned",
    "parent_class",
    "remove_versioning",
    "transaction_class",
    "version_class",
    "versioning_context",
]
