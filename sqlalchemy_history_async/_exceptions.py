"""Exceptions raised by sqlalchemy_history_async.

Every error specific to the library derives from one base class::

    VersioningError
     ├── ConfigurationError      bad options, bad user class, wrong call order at configure time
     ├── NotVersionedError       a class that is not versioned (or not a version class) was given
     ├── RevertError             a version cannot be reverted in the given situation
     ├── UnrecordedWriteError    a statement on a versioned table whose history cannot be
     │                           recorded (refused before it runs)
     └── HistoryPrunedError      a question about history older than retention kept

Arguments of the wrong type or value given to the query builders raise the built-in
``TypeError`` / ``ValueError``, as Python functions do.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "HistoryPrunedError",
    "NotVersionedError",
    "RevertError",
    "UnrecordedWriteError",
    "VersioningError",
]


class VersioningError(Exception):
    """Base class of every exception raised by sqlalchemy_history_async."""


class ConfigurationError(VersioningError):
    """Versioning is configured wrongly: the message names the model and the option at fault."""


class NotVersionedError(VersioningError):
    """A class given to the API is not a versioned model (or not a version class)."""


class RevertError(VersioningError):
    """A version cannot be reverted, e.g. because it is not attached to a session."""


class UnrecordedWriteError(VersioningError):
    """A statement on a versioned table whose history the library cannot record.

    Raised before the statement runs wherever that can be known, so nothing is written
    without history; when only the statement's result shows it (rows added concurrently), the
    transaction's commit is refused as well. The message names the table and the way to make
    the change recordable.
    """


class HistoryPrunedError(VersioningError):
    """A question about history older than what retention kept (:func:`prune_sync`).

    Raised instead of an answer that would leave out the pruned versions: an as-of query for
    a point before the oldest complete one, or a change feed starting before it. The message
    names the table and the first transaction from which the answer is complete.
    """
