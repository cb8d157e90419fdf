"""Async-first history tracking (versioning / audit) for SQLAlchemy 2.x.

The public names are re-exported here once; the modules that define them are private.
Coroutines have the plain name (``version_at``, ``changes_in``, ``stream_changes``,
``Version.revert``); each has a sync twin of the same name with ``_sync``.
"""

from ._baseline import backfill_versions, backfill_versions_sync, baseline, baseline_sync
from ._capture import flush_history, flush_history_sync
from ._context import (
    RequestContext,
    TransactionContext,
    current_context,
    request_context,
    set_actor,
    versioning_context,
    versioning_disabled,
)
from ._exceptions import (
    ConfigurationError,
    HistoryPrunedError,
    NotVersionedError,
    RevertError,
    UnrecordedWriteError,
    VersioningError,
)
from ._feed import Change, select_changes, stream_changes, stream_changes_sync
from ._integrity import (
    IntegrityProblem,
    IntegrityProblemKind,
    check_integrity,
    check_integrity_sync,
)
from ._manager import VersioningManager, make_versioned, remove_versioning
from ._models import Transaction, Version, parent_class, transaction_class, version_class
from ._options import ManagerOptions, ModelOptions
from ._queries import (
    PointInHistory,
    changes_in,
    changes_in_sync,
    diff,
    json_patch,
    select_as_of,
    select_changed,
    select_version_at,
    version_at,
    version_at_sync,
)
from ._retention import prune, prune_sync
from ._schema import AwareDateTime, Operation, OperationType

__all__ = [
    "AwareDateTime",
    "Change",
    "ConfigurationError",
    "HistoryPrunedError",
    "IntegrityProblem",
    "IntegrityProblemKind",
    "ManagerOptions",
    "ModelOptions",
    "NotVersionedError",
    "Operation",
    "OperationType",
    "PointInHistory",
    "RequestContext",
    "RevertError",
    "Transaction",
    "TransactionContext",
    "UnrecordedWriteError",
    "Version",
    "VersioningError",
    "VersioningManager",
    "backfill_versions",
    "backfill_versions_sync",
    "baseline",
    "baseline_sync",
    "changes_in",
    "changes_in_sync",
    "check_integrity",
    "check_integrity_sync",
    "current_context",
    "diff",
    "flush_history",
    "flush_history_sync",
    "json_patch",
    "make_versioned",
    "parent_class",
    "prune",
    "prune_sync",
    "remove_versioning",
    "request_context",
    "select_as_of",
    "select_changed",
    "select_changes",
    "select_version_at",
    "set_actor",
    "stream_changes",
    "stream_changes_sync",
    "transaction_class",
    "version_at",
    "version_at_sync",
    "version_class",
    "versioning_context",
    "versioning_disabled",
]

# Public classes and functions say they live here, so reprs, tracebacks and generated code
# (e.g. Alembic migrations naming ``AwareDateTime``) point at the stable public path.
for _name in __all__:
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith(__name__ + "._"):
        _value.__module__ = __name__
del _name, _value
