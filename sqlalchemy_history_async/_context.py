"""Who and why: the actor and free-form context recorded on each transaction row.

Values live in a :class:`contextvars.ContextVar`, so concurrent asyncio tasks (two web requests
served on one event loop) never see each other's values. SQLAlchemy runs the flush of an
``AsyncSession`` in a greenlet that shares the calling task's context, so values set around
``await session.commit()`` reach the flush hook.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._schema import REMOTE_ADDR_LENGTH

__all__ = [
    "TransactionContext",
    "current_context",
    "recording",
    "versioning_context",
    "versioning_disabled",
]


@dataclass(frozen=True)
class TransactionContext:
    """The context recorded on a transaction row: ``user_id``, ``remote_addr`` and ``meta``."""

    user_id: Any = None
    remote_addr: str | None = None
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


_EMPTY = TransactionContext()
_current: contextvars.ContextVar[TransactionContext] = contextvars.ContextVar(
    "sqlalchemy_history_async_context", default=_EMPTY
)


_disabled: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sqlalchemy_history_async_disabled", default=False
)


def recording() -> bool:
    """False inside :func:`versioning_disabled` (for the running task)."""
    return not _disabled.get()


@contextmanager
def versioning_disabled() -> Iterator[None]:
    """Record no history for flushes made inside, in the running task only.

    For data migrations, backfills and test fixtures::

        with versioning_disabled():
            session.add_all(fixtures)
            await session.commit()

    What is written inside leaves no version and no transaction row; other tasks and threads
    keep recording, and recording resumes when the block ends. The check happens when a
    flush writes (or a statement runs through ``session.execute()``), so flush or commit
    inside the block; statements the library would refuse (``UnrecordedWriteError``) run
    unrecorded here. History then does not know those
    writes: a row inserted inside has no ``INSERT`` version (its first recorded change is an
    ``UPDATE`` without a previous version), a row changed inside shows the change folded into
    its next recorded version, and a row deleted inside keeps its last version open, so
    ``select_as_of()`` still shows it.
    """
    token = _disabled.set(True)
    try:
        yield
    finally:
        _disabled.reset(token)


def current_context() -> TransactionContext:
    """Return the context in force for the running task (empty when none was set)."""
    return _current.get()


@contextmanager
def versioning_context(
    user_id: Any = None, remote_addr: str | None = None, **meta: Any
) -> Iterator[TransactionContext]:
    """Record ``user_id``, ``remote_addr`` and ``meta`` on transactions committed inside.

    Contexts nest: an inner context keeps the outer values it does not override, and its
    ``meta`` is merged over the outer ``meta``. The values are captured when a transaction
    first writes history, i.e. at its first flush that changes a versioned row::

        with versioning_context(user_id=current_user.id, remote_addr=request.client.host,
                                reason="bulk fix"):
            await session.commit()
    """
    _validate(remote_addr, meta)
    outer = _current.get()
    merged = TransactionContext(
        user_id=outer.user_id if user_id is None else user_id,
        remote_addr=outer.remote_addr if remote_addr is None else remote_addr,
        meta=MappingProxyType({**outer.meta, **meta}),
    )
    token = _current.set(merged)
    try:
        yield merged
    finally:
        _current.reset(token)


def _validate(remote_addr: Any, meta: dict[str, Any]) -> None:
    """Refuse values the transaction row cannot store, here rather than at commit."""
    if remote_addr is not None:
        if not isinstance(remote_addr, str):
            raise TypeError(
                "versioning_context(remote_addr=...) takes a string, got "
                f"{type(remote_addr).__name__}"
            )
        if len(remote_addr) > REMOTE_ADDR_LENGTH:
            raise ValueError(
                f"versioning_context(remote_addr=...) is {len(remote_addr)} characters long; "
                f"transaction.remote_addr holds at most {REMOTE_ADDR_LENGTH}"
            )
    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"versioning_context({key}=...): meta values are stored as JSON, and "
                f"{value!r} cannot be ({exc}); pass a str, number, bool, None, list or dict"
            ) from None
