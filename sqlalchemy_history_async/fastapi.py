"""FastAPI and Starlette: the history context of a whole request, dependency teardown included.

Install with the ``fastapi`` extra (``pip install "sqlalchemy-history-async[fastapi]"``)::

    from fastapi import Depends, FastAPI

    from sqlalchemy_history_async.fastapi import HistoryContextMiddleware, record_actor

    app = FastAPI(dependencies=[Depends(record_actor(current_user))])
    app.add_middleware(HistoryContextMiddleware)

:class:`HistoryContextMiddleware` opens a :func:`~sqlalchemy_history_async.request_context`
around each HTTP and WebSocket request, with the client's address. :func:`record_actor` makes
a dependency that records the authenticated user as the actor of the request's transactions
with :func:`~sqlalchemy_history_async.set_actor`. The actor stays in force until the request
ends, so a session dependency that commits after its ``yield`` (at teardown, after the actor's
dependency has exited) records it too — which a ``versioning_context()`` inside a dependency
cannot do.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency's annotation at run
# time, and it names a local variable.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends
from starlette.types import ASGIApp, Receive, Scope, Send

from ._context import request_context, set_actor

__all__ = ["HistoryContextMiddleware", "record_actor"]


class HistoryContextMiddleware:
    """A pure ASGI middleware: each HTTP / WebSocket request runs in a request context of its
    own (the client's address as ``remote_addr`` unless ``remote_addr=False``)."""

    def __init__(self, app: ASGIApp, *, remote_addr: bool = True) -> None:
        self.app = app
        self.remote_addr = remote_addr

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its own request context."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if self.remote_addr and client else None
        with request_context(remote_addr=address):
            await self.app(scope, receive, send)


def record_actor(
    user: Callable[..., Any], *, attribute: str = "id"
) -> Callable[..., Awaitable[None]]:
    """A dependency recording as actor the ``attribute`` of what the dependency ``user``
    returns (the user itself when it has no such attribute; no actor for ``None``, an
    anonymous request)::

        app = FastAPI(dependencies=[Depends(record_actor(current_user))])

    It needs :class:`HistoryContextMiddleware` on the application and raises
    :class:`~sqlalchemy_history_async.ConfigurationError` without it.
    """

    async def actor(current: Annotated[Any, Depends(user)]) -> None:
        if current is not None:
            set_actor(user_id=getattr(current, attribute, current))

    return actor
