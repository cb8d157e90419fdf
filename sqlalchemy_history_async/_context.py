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

from ._exceptions import ConfigurationError
from ._schema import REMOTE_ADDR_LENGTH

__all__ = [
    "RequestContext",
    "TransactionContext",
    "current_context",
    "recording",
    "request_context",
    "set_actor",
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


class RequestContext:
    """The context of one request (or job): set by :func:`request_context`, filled in by
    :func:`set_actor` while the request runs, read by every transaction it commits."""

    __slots__ = ("context",)

    def __init__(self, context: TransactionContext) -> None:
        #: the values recorded so far
        self.context = context

    def update(self, user_id: Any = None, remote_addr: str | None = None, **meta: Any) -> None:
        """Record ``user_id``, ``remote_addr`` and ``meta`` from now on (``None``: keep)."""
        _validate(remote_addr, meta)
        self.context = _merged(self.context, user_id, remote_addr, meta)


_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "sqlalchemy_history_async_request", default=None
)


@contextmanager
def request_context(
    user_id: Any = None, remote_addr: str | None = None, **meta: Any
) -> Iterator[RequestContext]:
    """Open the context of a request (or job) that :func:`set_actor` fills in later.

    Unlike :func:`versioning_context`, values set with :func:`set_actor` inside stay in force
    until this block ends, whatever was entered and left in between: a web framework's
    dependency that sets the actor and exits before the session's dependency commits (at its
    teardown) still has its actor recorded. ``HistoryContextMiddleware``
    (``sqlalchemy_history_async.fastapi``) opens one per HTTP request. Values of an enclosing
    or enclosed :func:`versioning_context` take precedence over these.
    """
    _validate(remote_addr, meta)
    holder = RequestContext(_merged(_EMPTY, user_id, remote_addr, meta))
    token = _request.set(holder)
    try:
        yield holder
    finally:
        _request.reset(token)


def set_actor(user_id: Any = None, remote_addr: str | None = None, **meta: Any) -> None:
    """Record ``user_id`` (and ``remote_addr``, ``meta``) for the rest of the running
    :func:`request_context`: every transaction that first writes history after this call
    records them.

    Raises :class:`~sqlalchemy_history_async.ConfigurationError` outside a
    :func:`request_context` (nothing would be recorded otherwise: an actor never silently goes
    missing).
    """
    holder = _request.get()
    if holder is None:
        raise ConfigurationError(
            "set_actor() is called outside a request_context(): the actor would not be "
            "recorded; add HistoryContextMiddleware to the application (FastAPI / Starlette), "
            "open request_context() around the request, or use versioning_context()"
        )
    holder.update(user_id, remote_addr, **meta)


def current_context() -> TransactionContext:
    """Return the context in force for the running task (empty when none was set): the
    innermost :func:`versioning_context` over the :func:`request_context`, if any."""
    ctx = _current.get()
    holder = _request.get()
    if holder is None:
        return ctx
    if ctx is _EMPTY:
        return holder.context
    return _merged(holder.context, ctx.user_id, ctx.remote_addr, ctx.meta)


def _merged(
    outer: TransactionContext, user_id: Any, remote_addr: str | None, meta: Mapping[str, Any]
) -> TransactionContext:
    """``outer`` with the values given (``None``: not given) and ``meta`` merged over its."""
    return TransactionContext(
        user_id=outer.user_id if user_id is None else user_id,
        remote_addr=outer.remote_addr if remote_addr is None else remote_addr,
        meta=MappingProxyType({**outer.meta, **meta}),
    )


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
    merged = _merged(_current.get(), user_id, remote_addr, meta)
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
