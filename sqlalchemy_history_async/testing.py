"""Test helpers, and the pytest plugin of the library (loaded by pytest through its entry
point; nothing happens unless a test uses what it offers).

Assertions on a row's history::

    from sqlalchemy_history_async.testing import assert_history

    async def test_publishing_is_recorded(session):
        ...
        await assert_history(
            session,
            article,  # an object, or (Article, primary key)
            operations=["INSERT", "UPDATE"],
            changed=[{"id", "title"}, {"status"}],
            actors=[None, 7],
        )

``assert_history_sync()`` takes a ``Session``. Each expectation is optional; a mismatch fails
with the whole recorded history in the message.

Recording on and off, per test:

- ``@pytest.mark.history_disabled``, or the ``history_disabled`` fixture: the test (and the
  function-scoped fixtures it uses) records no history, as inside ``versioning_disabled()``;
- the ``history_actor`` fixture: a function that sets the actor for the rest of the test
  (``history_actor(user_id=7)``), through a request context open for the test's length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, selectinload

from ._context import request_context, set_actor, versioning_disabled
from ._models import Version, version_class
from ._queries import model_info, pk_values
from ._schema import Operation

__all__ = [
    "Recorded",
    "assert_history",
    "assert_history_sync",
    "check_history",
    "select_history",
]

#: What :func:`assert_history` takes as the row: an object, or (model, primary key).
Target = Any


@dataclass(frozen=True)
class Recorded:
    """One version of a row, as the assertions compare it."""

    transaction_id: int
    operation: Operation
    changes: dict[str, list[Any]]
    user_id: Any
    meta: dict[str, Any] | None


def select_history(target: Target) -> sa.Select[Any]:
    """The versions of ``target`` (an object, or ``(Model, primary key)``) oldest first, with
    what the assertions read (previous version, transaction) loaded."""
    model, key = _model_and_key(target)
    info = model_info(model)
    V: Any = version_class(model)
    values = pk_values(info, key)
    return (
        sa.select(V)
        .where(*[getattr(V, attr) == value for attr, value in values.items()])
        .order_by(V.transaction_id)
        .options(selectinload(V.previous), selectinload(V.transaction))
    )


async def assert_history(
    session: AsyncSession,
    target: Target,
    *,
    operations: Sequence[str | Operation] | None = None,
    changes: Sequence[dict[str, Any]] | None = None,
    changed: Sequence[set[str]] | None = None,
    actors: Sequence[Any] | None = None,
    meta: Sequence[dict[str, Any] | None] | None = None,
) -> list[Version[Any]]:
    """Assert what the history of ``target`` holds, oldest version first; return its versions.

    ``operations``: ``"INSERT"`` / ``"UPDATE"`` / ``"DELETE"`` (or :class:`Operation`) per
    version; ``changes``: each version's changeset (``{attr: [old, new]}``); ``changed``: the
    names of the attributes each version changed; ``actors``: each transaction's ``user_id``
    (stored as text unless the manager has a ``user_cls`` or ``user_id_type``, so an expected
    ``7`` matches a recorded ``'7'``); ``meta``: each transaction's ``meta``. Only what is
    given is compared.
    """
    versions = list((await session.scalars(select_history(target))).all())
    check_history(target, versions, operations, changes, changed, actors, meta)
    return versions


def assert_history_sync(
    session: Session,
    target: Target,
    *,
    operations: Sequence[str | Operation] | None = None,
    changes: Sequence[dict[str, Any]] | None = None,
    changed: Sequence[set[str]] | None = None,
    actors: Sequence[Any] | None = None,
    meta: Sequence[dict[str, Any] | None] | None = None,
) -> list[Version[Any]]:
    """:func:`assert_history` on a sync ``Session``."""
    versions = list(session.scalars(select_history(target)).all())
    check_history(target, versions, operations, changes, changed, actors, meta)
    return versions


def _as_stored(expected: Sequence[Any] | None, recorded: list[Any]) -> list[Any] | None:
    """``expected`` actors as a text ``user_id`` column stores them: 7 as ``'7'``."""
    if expected is None:
        return None
    expected = list(expected)
    return [
        str(want)
        if isinstance(got, str) and want is not None and not isinstance(want, str)
        else want
        for want, got in zip(expected, recorded, strict=False)
    ] + expected[len(recorded) :]


def check_history(
    target: Target,
    versions: Sequence[Version[Any]],
    operations: Sequence[str | Operation] | None = None,
    changes: Sequence[dict[str, Any]] | None = None,
    changed: Sequence[set[str]] | None = None,
    actors: Sequence[Any] | None = None,
    meta: Sequence[dict[str, Any] | None] | None = None,
) -> None:
    """Compare loaded ``versions`` (previous and transaction loaded) with the expectations;
    raise :class:`AssertionError` describing the recorded history when one differs."""
    recorded = [_recorded(v) for v in versions]
    expected: list[tuple[str, Sequence[Any] | None, list[Any]]] = [
        (
            "operations",
            None if operations is None else [_operation(o).name for o in operations],
            [r.operation.name for r in recorded],
        ),
        ("changes", changes, [r.changes for r in recorded]),
        (
            "changed",
            None if changed is None else [set(c) for c in changed],
            [set(r.changes) for r in recorded],
        ),
        (
            "actors",
            _as_stored(actors, [r.user_id for r in recorded]),
            [r.user_id for r in recorded],
        ),
        ("meta", meta, [r.meta for r in recorded]),
    ]
    problems = [
        f"  {name}: expected {list(want)!r}, recorded {got!r}"
        for name, want, got in expected
        if want is not None and list(want) != got
    ]
    if problems:
        raise AssertionError(
            f"the history of {_describe(target)} is not the expected one:\n"
            + "\n".join(problems)
            + "\nrecorded history (oldest first):\n"
            + _table(recorded)
        )


# --- pytest plugin ------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Declare the plugin's marker."""
    config.addinivalue_line(
        "markers",
        "history_disabled: record no history during the test (sqlalchemy-history-async)",
    )


@pytest.fixture
def history_disabled() -> Iterator[None]:
    """Record no history for the rest of the test (as inside ``versioning_disabled()``)."""
    with versioning_disabled():
        yield


@pytest.fixture(autouse=True)
def _history_disabled_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """``@pytest.mark.history_disabled``: the test records no history."""
    if request.node.get_closest_marker("history_disabled") is None:
        yield
        return
    with versioning_disabled():
        yield


@pytest.fixture
def history_actor() -> Iterator[Callable[..., None]]:
    """A function setting the actor (``user_id``, ``remote_addr``, ``**meta``) recorded by
    the transactions the test commits from then on."""
    with request_context():
        yield set_actor


# --- helpers ------------------------------------------------------------------------------


def _model_and_key(target: Target) -> tuple[type[Any], Any]:
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], type):
        return target[0], target[1]
    state = sa.inspect(target, raiseerr=False)
    if state is None or not hasattr(state, "identity"):
        raise TypeError(
            f"assert_history() takes a mapped object or (Model, primary key), got {target!r}"
        )
    if state.identity is None:
        raise ValueError(
            f"{target!r} has no primary key yet (flush or commit it first): no history to read"
        )
    identity = state.identity
    return type(target), identity[0] if len(identity) == 1 else identity


def _recorded(version: Version[Any]) -> Recorded:
    tx = version.transaction
    return Recorded(
        transaction_id=version.transaction_id,
        operation=version.operation_type,
        changes=version.changeset,
        user_id=tx.user_id,
        meta=tx.meta,
    )


def _operation(value: str | Operation) -> Operation:
    if isinstance(value, Operation):
        return value
    try:
        return Operation[value.upper()]
    except KeyError:
        raise ValueError(
            f"assert_history(operations=...): {value!r} is not INSERT, UPDATE or DELETE"
        ) from None


def _describe(target: Target) -> str:
    model, key = _model_and_key(target)
    return f"{model.__name__}({key!r})"


def _table(recorded: Sequence[Recorded]) -> str:
    if not recorded:
        return "  (no versions)"
    return "\n".join(
        f"  tx {r.transaction_id:<5} {r.operation.name:<6} user_id={r.user_id!r:<8} "
        f"changes={r.changes!r}" + ("" if r.meta is None else f" meta={r.meta!r}")
        for r in recorded
    )
