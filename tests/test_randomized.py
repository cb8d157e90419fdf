"""Randomized model test of history: a hypothesis state machine against a model of the database.

The machine drives a handful of versioned models through ``AsyncSession`` (two of them, one
expiring on commit and one not) and through a plain sync ``Session`` on the same database, one
transaction at a time: inserts, updates (including re-assigning the current value, loaded or
expired), deletes, primary key changes, "row switches" (an object deleted and a new one with
the same primary key added in one flush), many-to-many links added and removed from either
side, one-to-many children added, moved and orphaned, several flushes per transaction,
savepoints released or rolled back, and transactions rolled back.

It keeps its own model of what the database holds. After every commit it reads the committed
state with a separate connection, checks it against that model, and then checks history
against every snapshot taken so far:

- ``select_as_of(Model, t)`` and the association links in force at ``t`` equal the snapshot
  taken right after transaction ``t`` committed, for every committed ``t``;
- the temporal relationships of every version yield what the snapshot of its transaction holds;
- each key's versions form a valid chain (see :meth:`HistoryMachine.check_chains`), and
  ``changeset`` and ``previous`` of each version match that chain;
- exactly the keys the transaction changed got a version in it (keys deleted and re-created in
  it may get an ``UPDATE`` too), with the right operation and values; a transaction that changed
  nothing leaves no transaction row, and every transaction row has versions.

Between transactions, now and then, the machine prunes history (``prune_sync()``, ``before=``
a committed transaction or ``keep_last=N``, in batches of a few keys or of all of them). It
works out which versions go and how far each version table's history stays complete (its
horizon) from the history it read, and checks that the database agrees. From then on the checks
hold for what was kept: ``select_as_of()`` at or after a table's horizon still equals the
snapshot, and before it raises ``HistoryPrunedError`` (so does ``select_version_at()``); the
change feed (``select_changes()``, ``stream_changes_sync()``) starting before what was kept
raises, and from there on holds exactly the versions kept; a pruned key's first kept version
may be an ``UPDATE`` or a ``DELETE`` and has no ``previous``; a transaction row may be left
without versions once they were all pruned; and temporal relationships are checked for the
versions whose related tables are complete at their transaction.

The whole machine runs inside ``AsyncSession.run_sync()``: its rules are plain functions of sync
``Session`` objects, the sessions an ``AsyncSession`` wraps (over the async driver) or a plain
``Session`` (over the sync driver).

Runs are seeded (``derandomize=True``) and reproducible. ``HISTORY_RANDOMIZED_PROFILE=long``
selects a long run (``nox -s randomized``); the default is a short one for the normal test run.
Shapes that cannot work for reasons outside this library (SQLAlchemy's own limits) are avoided
where they arise, each with a comment. The shape of an open defect is avoided the same way,
narrowly, naming its ``xfail`` reproduction in ``tests/test_randomized_findings.py``, so that
the machine keeps exploring everything else; the defects found so far are fixed, and their
reproductions are regression tests there.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    SessionTransaction,
    mapped_column,
    relationship,
    selectinload,
)

from sqlalchemy_history_async import (
    HistoryPrunedError,
    Operation,
    changes_in_sync,
    parent_class,
    prune_sync,
    select_as_of,
    select_changes,
    select_version_at,
    stream_changes_sync,
)

from .conftest import versioned_models
from .models import runtime_version_class, table_of

# --- profiles --------------------------------------------------------------------------------

PROFILE = os.environ.get("HISTORY_RANDOMIZED_PROFILE", "short")
#: (max_examples, stateful_step_count); hypothesis draws somewhat fewer steps than the maximum
#: for many examples, so the long profile asks for enough to exceed 10,000 steps per database.
PROFILES = {"short": (40, 40), "long": (300, 60)}
#: The long profile must really run this many steps per database.
LONG_MIN_STEPS = 10_000
if PROFILE not in PROFILES:
    raise pytest.UsageError(
        f"HISTORY_RANDOMIZED_PROFILE={PROFILE!r}: use one of {sorted(PROFILES)}"
    )

SETTINGS = settings(
    max_examples=PROFILES[PROFILE][0],
    stateful_step_count=PROFILES[PROFILE][1],
    derandomize=True,  # seeded: every run explores the same examples
    database=None,  # no example database (.hypothesis/) in the working tree
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- models ----------------------------------------------------------------------------------


@dataclass
class Shop:
    Base: type[DeclarativeBase]
    Note: type[Any]
    Slot: type[Any]
    Article: type[Any]
    Tag: type[Any]
    Comment: type[Any]


def define_shop() -> Shop:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    # a many-to-many association table without a primary key
    article_tag = sa.Table(
        "article_tag",
        Base.metadata,
        sa.Column("article_id", sa.ForeignKey("article.id"), nullable=False),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), nullable=False),
    )

    class Note(Base):
        """Integer key, a string column, a nullable column and an excluded column."""

        __tablename__ = "note"
        __versioned__: dict[str, Any] = {"exclude": ["views"]}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        title: Mapped[str] = mapped_column(sa.String(20))
        body: Mapped[str | None] = mapped_column(sa.String(20))
        views: Mapped[int] = mapped_column(default=0)

    class Slot(Base):
        """Composite primary key with a string part."""

        __tablename__ = "slot"
        __versioned__: dict[str, Any] = {}
        code: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
        num: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        value: Mapped[str | None] = mapped_column(sa.String(20))

    class Article(Base):
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        title: Mapped[str] = mapped_column(sa.String(20))
        tags: Mapped[list[Tag]] = relationship(secondary=article_tag, back_populates="articles")
        comments: Mapped[list[Comment]] = relationship(
            back_populates="article", cascade="all, delete-orphan"
        )

    class Tag(Base):
        __tablename__ = "tag"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(20))
        articles: Mapped[list[Article]] = relationship(secondary=article_tag, back_populates="tags")

    class Comment(Base):
        __tablename__ = "article_comment"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        article_id: Mapped[int] = mapped_column(sa.ForeignKey("article.id"))
        text: Mapped[str] = mapped_column(sa.String(20))
        article: Mapped[Article] = relationship(back_populates="comments")

    return Shop(Base, Note, Slot, Article, Tag, Comment)


models = versioned_models(define_shop)

Key = tuple[Any, ...]
Row = dict[str, Any]
#: table name -> primary key -> the row's non-key columns (tracked and excluded)
State = dict[str, dict[Key, Row]]


@dataclass(frozen=True)
class Spec:
    """A versioned table as the machine sees it."""

    table: str
    key: tuple[str, ...]
    tracked: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    model: str | None = None  # class name in Shop; None for the association table

    @property
    def columns(self) -> tuple[str, ...]:
        return self.tracked + self.excluded

    def tracked_of(self, row: Row | None) -> Row | None:
        return None if row is None else {c: row[c] for c in self.tracked}


LINKS = "article_tag"
SPECS = {
    s.table: s
    for s in (
        Spec("note", ("id",), ("title", "body"), ("views",), model="Note"),
        Spec("slot", ("code", "num"), ("value",), model="Slot"),
        Spec("article", ("id",), ("title",), model="Article"),
        Spec("tag", ("id",), ("name",), model="Tag"),
        Spec("article_comment", ("id",), ("article_id", "text"), model="Comment"),
        Spec(LINKS, ("article_id", "tag_id"), ()),
    )
}
MODELS = tuple(name for name, spec in SPECS.items() if spec.model)

#: Small key pools, so that keys are deleted and re-used often.
KEYS: dict[str, list[Key]] = {
    "note": [(i,) for i in range(1, 5)],
    "slot": [(code, num) for code in ("x", "y-1", "z_2") for num in (1, 2)],
    "article": [(i,) for i in range(1, 4)],
    "tag": [(i,) for i in range(1, 4)],
    "article_comment": [(i,) for i in range(1, 5)],
}
#: Values per assignable column; small pools, so that the current value is often drawn again.
VALUES: dict[tuple[str, str], tuple[Any, ...]] = {
    ("note", "title"): ("a", "b", "c"),
    ("note", "body"): (None, "p", "q"),
    ("note", "views"): (0, 1, 2),
    ("slot", "value"): (None, "a", "b"),
    ("article", "title"): ("a", "b"),
    ("tag", "name"): ("a", "b"),
    ("article_comment", "text"): ("a", "b"),
}
ASSIGNABLE = {m: [c for (t, c) in VALUES if t == m] for m in MODELS}


def empty_state() -> State:
    return {name: {} for name in SPECS}


def read_state(conn: sa.Connection, metadata: sa.MetaData) -> State:
    """What the database holds, by table and key."""
    state = empty_state()
    for name, spec in SPECS.items():
        t = metadata.tables[name]
        for row in conn.execute(sa.select(*[t.c[c] for c in spec.key + spec.columns])):
            values = row._mapping
            key = tuple(values[c] for c in spec.key)
            assert key not in state[name], f"{name}: duplicate row {key}"
            state[name][key] = {c: values[c] for c in spec.columns}
    return state


def state_diff(expected: State, actual: State) -> str:
    lines = []
    for name in SPECS:
        for key in sorted(expected[name].keys() | actual[name].keys(), key=repr):
            e, a = expected[name].get(key), actual[name].get(key)
            if e != a:
                lines.append(f"  {name} {key}: expected {e}, found {a}")
    return "\n".join(lines)


# --- the environment of one test run ----------------------------------------------------------


@dataclass
class Stats:
    examples: int = 0
    steps: int = 0
    commits: int = 0
    transactions: int = 0  # transaction rows recorded
    rollbacks: int = 0
    savepoints: int = 0
    row_switches: int = 0
    prunes: int = 0  # prune runs that deleted versions
    pruned: int = 0  # versions they deleted
    #: chains left starting with an UPDATE or a DELETE (counted after each prune)
    cut_chains: int = 0
    refused: int = 0  # reads refused with HistoryPrunedError, as expected
    rules: Counter[str] = field(default_factory=Counter)


@dataclass
class Env:
    """What one test (one database) gives the machine."""

    models: Shop
    engine: AsyncEngine  # async driver; used only inside run_sync (greenlet context)
    sync_engine: sa.Engine  # sync driver, same database
    stats: Stats = field(default_factory=Stats)

    @property
    def metadata(self) -> sa.MetaData:
        return self.models.Base.metadata

    def cls(self, model: str) -> type[Any]:
        cls: type[Any] = getattr(self.models, SPECS[model].model or "")
        return cls

    def clear(self) -> None:
        """Empty every table (cheaper than re-creating the schema for every example)."""
        with self.engine.sync_engine.begin() as conn:
            for table in reversed(self.metadata.sorted_tables):
                conn.execute(table.delete())

    def sessions(self) -> dict[str, Session]:
        """The writing sessions: two AsyncSessions (their sync sessions) and a sync Session.

        Autoflush is off, so that the machine knows exactly what each flush contains; flushes
        happen at ``flush()``, ``begin_nested()``, savepoint release and commit.
        """
        return {
            "async": AsyncSession(self.engine, autoflush=False).sync_session,
            "async-no-expire": AsyncSession(
                self.engine, autoflush=False, expire_on_commit=False
            ).sync_session,
            "sync": Session(self.sync_engine, autoflush=False),
        }

    def reader(self) -> Session:
        """A session for reading history (async driver); close it after use."""
        return AsyncSession(self.engine).sync_session


SESSION_NAMES = ("async", "async-no-expire", "sync")


@dataclass
class Batch:
    """What was done since the last flush (for the avoidances that depend on one flush)."""

    links_added: set[Key] = field(default_factory=set)
    #: keys changed away from: the object keeps its old identity until the flush, so a new
    #: object may not take the old key yet
    rekeyed_from: set[tuple[str, Key]] = field(default_factory=set)


@dataclass
class Tx:
    """The open transaction of the machine, and its model of what the database will hold."""

    name: str
    session: Session
    start: State  # committed state when it began
    view: State  # what the database holds once everything done so far is flushed
    flushed: State  # what the database holds now (as of the last flush)
    objs: dict[tuple[str, Key], Any] = field(default_factory=dict)  # live objects by key
    #: keys that existed when the transaction began and were deleted and re-created in it
    recreated: set[tuple[str, Key]] = field(default_factory=set)
    #: the stored values of deleted rows, as the database held them right before the DELETE
    deleted_values: dict[tuple[str, Key], Row] = field(default_factory=dict)
    batch: Batch = field(default_factory=Batch)
    writes: int = 0  # write rules run in it
    #: write rules run since the last other rule: flushes, savepoints and expiry each follow
    #: at least one write, so that transactions do mostly write
    fresh_writes: int = 0
    savepoints: list[tuple[SessionTransaction, dict[str, Any]]] = field(default_factory=list)

    SAVED = ("view", "flushed", "objs", "recreated", "deleted_values")

    def save(self) -> dict[str, Any]:
        return {k: copy.copy(getattr(self, k)) for k in ("objs", "recreated")} | {
            k: copy.deepcopy(getattr(self, k)) for k in ("view", "flushed", "deleted_values")
        }

    def restore(self, saved: dict[str, Any]) -> None:
        for k in self.SAVED:
            setattr(self, k, saved[k])
        self.batch = Batch()


# --- the machine -----------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., None])
WRITES = {
    "insert",
    "update",
    "delete",
    "replace",
    "rekey",
    "link",
    "unlink",
    "move_comment",
    "orphan_comment",
}


def counted(rule_function: F) -> F:
    """Count how often each rule runs (reported at the end of the test)."""

    @functools.wraps(rule_function)
    def wrapper(self: HistoryMachine, **kwargs: Any) -> None:
        self.env.stats.rules[rule_function.__name__] += 1
        tx = self.tx
        if tx is not None and rule_function.__name__ in WRITES:
            tx.writes += 1
            tx.fresh_writes += 1
        elif tx is not None:
            tx.fresh_writes = 0
        rule_function(self, **kwargs)

    return wrapper  # type: ignore[return-value]


class HistoryMachine(RuleBasedStateMachine):
    """The machine; the test runs a subclass that sets :attr:`ENV`."""

    ENV: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        self.env = env = self.ENV
        env.stats.examples += 1
        env.clear()
        self.S = env.sessions()
        self.committed = empty_state()
        self.snapshots: dict[int, State] = {}  # transaction id -> state right after its commit
        self.history: Any = {name: [] for name in SPECS}  # all version rows, as of the last check
        self.tx: Tx | None = None
        #: the objects each session used in its last transaction (kept referenced)
        self.held: dict[str, dict[tuple[str, Key], Any]] = {n: {} for n in SESSION_NAMES}
        self.serial = 0  # commits so far
        self.seen_serial = dict.fromkeys(SESSION_NAMES, 0)
        #: table name -> (as_of_from, changes_from) the retention table must hold for it: the
        #: first transaction from which as-of answers, and the change feed, are complete
        self.horizon: dict[str, tuple[int, int]] = {}
        self.pruned_keys: dict[str, set[Key]] = {name: set() for name in SPECS}
        self.pruned_transactions: set[int] = set()  # transactions some of whose versions went
        self.pruned_serial = 0  # the commit count at the last prune

    def teardown(self) -> None:
        for session in self.S.values():
            session.close()

    @invariant()
    def count_steps(self) -> None:
        self.env.stats.steps += 1

    # --- transactions ------------------------------------------------------------------------

    @precondition(lambda self: self.tx is None)
    @rule(name=st.sampled_from(SESSION_NAMES))
    @counted
    def begin(self, name: str) -> None:
        """Start a transaction on one of the sessions (the sessions take turns)."""
        session = self.S[name]
        if not session.expire_on_commit and self.seen_serial[name] != self.serial:
            # Another session committed since this one last ran: what it holds in memory is out
            # of date, and writing from stale objects is the application's problem, not
            # history's. Re-read everything (objects are refreshed on access).
            session.expire_all()
        self.seen_serial[name] = self.serial
        state = copy.deepcopy(self.committed)
        self.tx = Tx(name, session, state, copy.deepcopy(state), copy.deepcopy(state))
        # Objects this session used before are used again as they are: after a commit that
        # expired them, their attributes load on access -- or not at all, when assigned.
        for (model, key), obj in self.held[name].items():
            if key in state[model] and sa.inspect(obj).persistent:
                self.tx.objs[model, key] = obj

    @precondition(lambda self: self.tx is not None and self.tx.fresh_writes > 0)
    @rule(expire_all=st.booleans())
    @counted
    def flush(self, expire_all: bool = False) -> None:
        """Flush; then, sometimes, expire everything (objects reload on access)."""
        tx = self._tx()
        self._flush(tx)
        if expire_all:
            tx.session.expire_all()

    @precondition(lambda self: self.tx is not None and self.tx.fresh_writes > 0)
    @rule(data=st.data())
    @counted
    def savepoint(self, data: st.DataObject) -> None:
        """Begin a savepoint (at most two deep), or release or roll back the innermost one."""
        tx = self._tx()
        choices = (["begin"] if len(tx.savepoints) < 2 else []) + (
            ["release", "rollback"] if tx.savepoints else []
        )
        choice = data.draw(st.sampled_from(choices), label="savepoint")
        if choice == "begin":
            savepoint = tx.session.begin_nested()  # flushes first
            self._flushed(tx)
            tx.savepoints.append((savepoint, tx.save()))
            self.env.stats.savepoints += 1
            return
        savepoint, saved = tx.savepoints.pop()
        if choice == "release":
            savepoint.commit()  # flushes first
            self._flushed(tx)
        else:
            savepoint.rollback()
            tx.restore(saved)
        self._drop_stale_references(tx.session)

    @precondition(lambda self: self.tx is not None and self.tx.writes > 0)
    @rule(commit=st.sampled_from([True, True, True, False]))
    @counted
    def end(self, commit: bool) -> None:
        """Commit the transaction (mostly), or roll it back."""
        if commit:
            self.commit()
        else:
            self.rollback()

    def _close(self, tx: Tx) -> None:
        self.tx = None
        held = {}
        for (model, _), obj in tx.objs.items():
            state = sa.inspect(obj)
            if state.persistent:  # by the key it has now (a rollback undoes key changes)
                held[model, state.identity] = obj
        self.held[tx.name] = held

    def commit(self) -> None:
        tx = self._tx()
        tx.session.commit()
        self._flushed(tx)
        self._close(tx)
        self.serial += 1
        self.seen_serial[tx.name] = self.serial
        self.env.stats.commits += 1
        self.check_commit(tx)

    def rollback(self) -> None:
        tx = self._tx()
        tx.session.rollback()
        self._close(tx)
        self.env.stats.rollbacks += 1
        with self.env.sync_engine.connect() as conn:
            state = read_state(conn, self.env.metadata)
        assert state == self.committed, "a rolled-back transaction changed data:\n" + state_diff(
            self.committed, state
        )
        reader = self.env.reader()
        try:
            assert self.read_history(reader) == self.history, "a rollback changed history"
        finally:
            reader.close()

    # --- retention ---------------------------------------------------------------------------

    @precondition(
        lambda self: self.tx is None and bool(self.snapshots) and self.serial > self.pruned_serial
    )
    @rule(data=st.data())
    @counted
    def prune(self, data: st.DataObject) -> None:
        """Prune the history of every model, ``before=`` a committed transaction or
        ``keep_last=N``; at most once between two commits (so that writes outnumber it)."""
        self.pruned_serial = self.serial
        before = keep_last = None
        if data.draw(st.booleans(), label="before"):
            # not the first transaction, mostly: nothing closed by then
            cuts = sorted(self.snapshots)[1:] or sorted(self.snapshots)
            before = data.draw(st.sampled_from(cuts), label="cut")
            options = f"before={before}"
        else:
            keep_last = data.draw(st.integers(1, 3), label="keep last")
            options = f"keep_last={keep_last}"
        batch_size = data.draw(st.one_of(st.just(1000), st.integers(1, 5)), label="batch size")
        call = f"prune_sync({options}, batch_size={batch_size})"
        doomed = self.doomed(before, keep_last)
        progress: list[tuple[int, str]] = []
        deleted = prune_sync(
            self.env.sync_engine,
            *[self.env.cls(m) for m in MODELS],
            before=before,
            keep_last=keep_last,
            batch_size=batch_size,
            progress=lambda done, table: progress.append((done, table)),
        )
        expected_count = sum(len(rows) for rows in doomed.values())
        assert deleted == expected_count, (
            f"{call} deleted {deleted} versions, expected {expected_count}: "
            f"{ {n: rows for n, rows in doomed.items() if rows} }"
        )
        done = [d for d, _ in progress]
        assert done == sorted(done) and done[-1:] in ([], [deleted]), f"progress: {progress}"
        assert {table for _, table in progress} <= set(SPECS), f"progress: {progress}"
        if deleted:
            self.env.stats.prunes += 1
            self.env.stats.pruned += deleted
        expected_history = {}
        for name, rows in doomed.items():
            n = len(SPECS[name].key)
            gone = set(rows)
            expected_history[name] = [r for r in self.history[name] if r not in gone]
            if not rows:
                continue
            self.pruned_keys[name].update(r[:n] for r in rows)
            self.pruned_transactions.update(r[-3] for r in rows)
            ends = [r[-2] for r in rows if r[-1] != Operation.DELETE and r[-2] is not None]
            as_of_from, changes_from = self.horizon.get(name, (0, 0))
            self.horizon[name] = (
                max([as_of_from, *ends]),
                max(changes_from, max(r[-3] for r in rows) + 1),
            )
        reader = self.env.reader()
        try:
            history = self.read_history(reader)
            for name in SPECS:
                assert history[name] == expected_history[name], (
                    f"{call} left in {name}_version:\n  "
                    + "\n  ".join(map(repr, history[name]))
                    + "\nexpected:\n  "
                    + "\n  ".join(map(repr, expected_history[name]))
                )
            rt = self.env.metadata.tables["transaction_retention"]
            recorded = {
                r.version_table: (r.as_of_from, r.changes_from)
                for r in reader.execute(
                    sa.select(rt.c.version_table, rt.c.as_of_from, rt.c.changes_from)
                )
            }
            expected_horizon = {f"{name}_version": h for name, h in self.horizon.items()}
            assert recorded == expected_horizon, (
                f"after {call} the retention table holds {recorded}, expected {expected_horizon}"
            )
            if deleted:  # else history is what the last checks found
                self.check_history(reader)
                self.check_pruned_reads(reader)
                self.env.stats.cut_chains += self.cut_chains()
        finally:
            reader.close()

    def cut_chains(self) -> int:
        """How many chains start with an UPDATE or a DELETE (their older versions pruned)."""
        cut = 0
        for name, spec in SPECS.items():
            first: dict[Key, Any] = {}
            for row in self.history[name]:  # ordered by key, then transaction
                first.setdefault(row[: len(spec.key)], row[-1])
            cut += sum(op != Operation.INSERT for op in first.values())
        return cut

    def doomed(
        self, before: int | None = None, keep_last: int | None = None
    ) -> dict[str, list[tuple[Any, ...]]]:
        """The versions (rows of :attr:`history`) pruning must delete, by table.

        ``before``: those closed at or before it, and DELETEs made at or before it (the other
        versions of a row deleted by then are closed by then). ``keep_last``: all but the
        ``keep_last`` newest versions of each key.
        """
        doomed: dict[str, list[tuple[Any, ...]]] = {}
        for name, spec in SPECS.items():
            rows = self.history[name]
            if keep_last is None:
                assert before is not None
                doomed[name] = [
                    r
                    for r in rows
                    if (r[-2] is not None and r[-2] <= before)
                    or (r[-1] == Operation.DELETE and r[-3] <= before)
                ]
            else:
                chains: dict[Key, list[tuple[Any, ...]]] = {}
                for r in rows:  # ordered by key, then transaction
                    chains.setdefault(r[: len(spec.key)], []).append(r)
                doomed[name] = [r for chain in chains.values() for r in chain[:-keep_last]]
        return doomed

    def as_of_from(self, *names: str) -> int:
        """The first transaction from which as-of answers from ``names`` are complete."""
        return max(self.horizon.get(name, (0, 0))[0] for name in names)

    def changes_from(self, *names: str) -> int:
        """The first transaction from which the change feed of ``names`` is complete."""
        return max(self.horizon.get(name, (0, 0))[1] for name in names)

    # --- writes ------------------------------------------------------------------------------

    @precondition(lambda self: self.tx is not None)
    @rule(data=st.data())
    @counted
    def insert(self, data: st.DataObject) -> None:
        tx = self._tx()
        model = data.draw(st.sampled_from(MODELS), label="model")
        free = [
            k
            for k in KEYS[model]
            if k not in tx.view[model] and (model, k) not in tx.batch.rekeyed_from
        ]
        if not free or (model == "article_comment" and not tx.view["article"]):
            return
        key = data.draw(st.sampled_from(free), label="key")
        self._insert(tx, model, key, data)

    @precondition(lambda self: self.tx is not None and self._models_with_rows())
    @rule(data=st.data())
    @counted
    def update(self, data: st.DataObject) -> None:
        """Assign a column a value from its pool, often the value it has (a no-op)."""
        tx = self._tx()
        model = data.draw(st.sampled_from(self._models_with_rows()), label="model")
        keys = sorted(tx.view[model], key=repr)
        key = data.draw(st.sampled_from(keys), label="key")
        column = data.draw(st.sampled_from(ASSIGNABLE[model]), label="column")
        value = data.draw(st.sampled_from(VALUES[model, column]), label="value")
        self._assign(tx, model, key, column, value)

    @precondition(lambda self: self.tx is not None and self._models_with_rows())
    @rule(data=st.data())
    @counted
    def delete(self, data: st.DataObject) -> None:
        tx = self._tx()
        model = data.draw(st.sampled_from(self._models_with_rows()), label="model")
        keys = self._persistent_keys(tx, model)
        if not keys:
            return
        key = data.draw(st.sampled_from(keys), label="key")
        self._delete(tx, model, key)

    @precondition(lambda self: self.tx is not None and self._models_with_rows())
    @rule(data=st.data())
    @counted
    def replace(self, data: st.DataObject) -> None:
        """Delete an object and add a new one with the same key, in one flush (row switch)."""
        tx = self._tx()
        model = data.draw(st.sampled_from(self._models_with_rows()), label="model")
        keys = self._persistent_keys(tx, model)
        if not keys:
            return
        key = data.draw(st.sampled_from(keys), label="key")
        self._delete(tx, model, key)
        if model == "article_comment" and not tx.view["article"]:
            return
        self._insert(tx, model, key, data)
        self.env.stats.row_switches += 1

    @precondition(
        lambda self: self.tx is not None and (self.tx.view["note"] or self.tx.view["slot"])
    )
    @rule(data=st.data())
    @counted
    def rekey(self, data: st.DataObject) -> None:
        """Change a row's primary key (recorded as a DELETE of the old key and an INSERT)."""
        tx = self._tx()
        model = data.draw(
            st.sampled_from([m for m in ("note", "slot") if tx.view[m]]), label="model"
        )
        keys = self._persistent_keys(tx, model)
        # Not to a key whose row is deleted but not flushed: the unit of work runs UPDATEs
        # before DELETEs, so the row would still be there.
        free = [k for k in KEYS[model] if k not in tx.view[model] and k not in tx.flushed[model]]
        if not keys or not free:
            return
        old = data.draw(st.sampled_from(keys), label="key")
        new = data.draw(st.sampled_from(free), label="new key")
        obj = self._obj(tx, model, old)
        for column, value in zip(SPECS[model].key, new, strict=True):
            setattr(obj, column, value)
        tx.batch.rekeyed_from.add((model, old))
        tx.view[model][new] = tx.view[model].pop(old)
        tx.objs[model, new] = tx.objs.pop((model, old))
        if new in tx.start[model]:
            tx.recreated.add((model, new))

    @precondition(lambda self: self.tx is not None and self.tx.view["article"])
    @rule(data=st.data())
    @counted
    def link(self, data: st.DataObject) -> None:
        tx = self._tx()
        free = [
            (a, t)
            for (a,) in sorted(tx.view["article"])
            for (t,) in sorted(tx.view["tag"])
            if (a, t) not in tx.view[LINKS]
        ]
        if not free:
            return
        a, t = data.draw(st.sampled_from(free), label="link")
        from_article = data.draw(st.booleans(), label="from article")
        article, tag = self._obj(tx, "article", (a,)), self._obj(tx, "tag", (t,))
        if from_article:
            article.tags.append(tag)
        else:
            tag.articles.append(article)
        self._link_added(tx, (a, t))

    @precondition(lambda self: self.tx is not None and self.tx.view[LINKS])
    @rule(data=st.data())
    @counted
    def unlink(self, data: st.DataObject) -> None:
        tx = self._tx()
        links = sorted(tx.view[LINKS])
        if not links:
            return
        a, t = data.draw(st.sampled_from(links), label="link")
        from_article = data.draw(st.booleans(), label="from article")
        article, tag = self._obj(tx, "article", (a,)), self._obj(tx, "tag", (t,))
        if from_article:
            article.tags.remove(tag)
        else:
            tag.articles.remove(article)
        del tx.view[LINKS][a, t]

    @precondition(lambda self: self.tx is not None and self.tx.view["article_comment"])
    @rule(data=st.data())
    @counted
    def move_comment(self, data: st.DataObject) -> None:
        """Give a comment another article (or the one it has)."""
        tx = self._tx()
        # Not a comment added since the last flush: moving it out of its article's collection
        # makes it a pending orphan, which SQLAlchemy expunges (and then refuses to insert).
        comments = self._persistent_keys(tx, "article_comment")
        if not comments:
            return
        key = data.draw(st.sampled_from(comments), label="comment")
        (a,) = data.draw(st.sampled_from(sorted(tx.view["article"])), label="article")
        comment = self._obj(tx, "article_comment", key)
        comment.article = self._obj(tx, "article", (a,))
        tx.view["article_comment"][key]["article_id"] = a

    @precondition(lambda self: self.tx is not None and self.tx.view["article_comment"])
    @rule(data=st.data())
    @counted
    def orphan_comment(self, data: st.DataObject) -> None:
        """Remove a comment from its article's collection: delete-orphan deletes it."""
        tx = self._tx()
        comments = sorted(tx.view["article_comment"])
        if not comments:
            return
        key = data.draw(st.sampled_from(comments), label="comment")
        comment = self._obj(tx, "article_comment", key)
        article = self._obj(tx, "article", (tx.view["article_comment"][key]["article_id"],))
        article.comments.remove(comment)
        self._gone(tx, "article_comment", key)

    @precondition(lambda self: self.tx is not None and self.tx.fresh_writes > 0)
    @rule(data=st.data())
    @counted
    def expire(self, data: st.DataObject) -> None:
        """Flush, then expire an object or some of its attributes (as a refresh would)."""
        tx = self._tx()
        session = tx.session
        self._flush(tx)  # expiring would throw away changes not flushed yet
        persistent = sorted((k for k, o in tx.objs.items() if sa.inspect(o).persistent), key=repr)
        if not persistent:
            return
        model, key = data.draw(st.sampled_from(persistent), label="object")
        obj = tx.objs[model, key]
        mapper = sa.inspect(type(obj))
        names = sorted(
            [c.key for c in mapper.column_attrs if c.key not in SPECS[model].key]
            + [r.key for r in mapper.relationships if not r.viewonly]
        )
        attrs = data.draw(st.lists(st.sampled_from(names), unique=True), label="attributes")
        session.expire(obj, attrs or None)

    # --- write helpers -----------------------------------------------------------------------

    def _models_with_rows(self) -> list[str]:
        return [] if self.tx is None else [m for m in MODELS if self.tx.view[m]]

    def _tx(self) -> Tx:
        assert self.tx is not None
        return self.tx

    def _obj(self, tx: Tx, model: str, key: Key) -> Any:
        """The live object of ``key`` (which exists in the transaction's view)."""
        obj = tx.objs.get((model, key))
        if obj is None:
            obj = tx.session.get(self.env.cls(model), key)
            assert obj is not None, (model, key)
            tx.objs[model, key] = obj
        return obj

    def _persistent_keys(self, tx: Tx, model: str) -> list[Key]:
        """Keys whose object is in the database (not added since the last flush).

        ``Session.delete()`` refuses pending objects; an insert cancelled by a delete is
        explored across flushes.
        """
        keys = []
        for key in sorted(tx.view[model], key=repr):
            obj = tx.objs.get((model, key))
            if obj is None or not sa.inspect(obj).pending:
                keys.append(key)
        return keys

    def _insert(self, tx: Tx, model: str, key: Key, data: st.DataObject) -> None:
        spec = SPECS[model]
        row: Row = {}
        for column in ASSIGNABLE[model]:
            row[column] = data.draw(st.sampled_from(VALUES[model, column]), label=column)
        obj = self.env.cls(model)(**dict(zip(spec.key, key, strict=True)), **row)
        tx.session.add(obj)
        if model == "article_comment":
            (a,) = data.draw(st.sampled_from(sorted(tx.view["article"])), label="article")
            self._obj(tx, "article", (a,)).comments.append(obj)
            row["article_id"] = a
        tx.objs[model, key] = obj
        tx.view[model][key] = row
        if key in tx.start[model]:
            tx.recreated.add((model, key))
        if model in ("article", "tag"):
            others = "tag" if model == "article" else "article"
            linked = data.draw(
                st.lists(st.sampled_from(sorted(tx.view[others])), unique=True)
                if tx.view[others]
                else st.just([]),
                label="linked",
            )
            collection = obj.tags if model == "article" else obj.articles
            for other in linked:
                collection.append(self._obj(tx, others, other))
                pair = (key[0], other[0]) if model == "article" else (other[0], key[0])
                self._link_added(tx, pair)

    def _link_added(self, tx: Tx, pair: Key) -> None:
        tx.view[LINKS][pair] = {}
        tx.batch.links_added.add(pair)
        if pair in tx.start[LINKS]:
            tx.recreated.add((LINKS, pair))

    def _assign(self, tx: Tx, model: str, key: Key, column: str, value: Any) -> None:
        # Made as it comes, whether the attribute is loaded or not (expired, or refreshed after
        # a flush): a no-op must record nothing either way.
        setattr(self._obj(tx, model, key), column, value)
        tx.view[model][key][column] = value

    def _delete(self, tx: Tx, model: str, key: Key) -> None:
        obj = self._obj(tx, model, key)
        if model in ("article", "tag") and any(
            pair[0 if model == "article" else 1] == key[0] for pair in tx.batch.links_added
        ):
            # Avoids test_link_added_to_object_deleted_in_same_flush: SQLAlchemy inserts a
            # link added in the same flush as one of its ends is deleted, after deleting that
            # end's links (a dangling row on SQLite, a foreign key violation elsewhere).
            # Flush the link first; the delete then removes it.
            self._flush(tx)
        if model == "article" and any(sa.inspect(c).pending for c in getattr(obj, "comments", [])):
            # SQLAlchemy does not cascade a delete to pending objects: a comment added to the
            # article since the last flush would be inserted pointing to the deleted article.
            self._flush(tx)
        tx.session.delete(obj)
        self._gone(tx, model, key)

    def _gone(self, tx: Tx, model: str, key: Key) -> None:
        """Remove a row (and what goes with it) from the view."""
        del tx.view[model][key]
        tx.objs.pop((model, key), None)
        if model == "article":
            for pair in [p for p in tx.view[LINKS] if p[0] == key[0]]:
                del tx.view[LINKS][pair]
            for ck, row in list(tx.view["article_comment"].items()):
                if row["article_id"] == key[0]:  # cascade="all, delete-orphan"
                    self._gone(tx, "article_comment", ck)
        elif model == "tag":
            for pair in [p for p in tx.view[LINKS] if p[1] == key[0]]:
                del tx.view[LINKS][pair]

    def _flush(self, tx: Tx) -> None:
        tx.session.flush()
        self._flushed(tx)

    def _flushed(self, tx: Tx) -> None:
        """Bookkeeping after a flush: the database now holds the view."""
        for name in SPECS:
            before, after = tx.flushed[name], tx.view[name]
            for key, row in before.items():
                if key not in after:
                    tx.deleted_values[name, key] = row
        tx.flushed = copy.deepcopy(tx.view)
        tx.batch = Batch()
        self._drop_stale_references(tx.session)

    @staticmethod
    def _drop_stale_references(session: Session) -> None:
        """Expire relationships that still hold objects deleted by a flush (or expunged).

        SQLAlchemy leaves a deleted object in the loaded collections of other objects; using
        such a collection later (e.g. deleting its owner) would address rows already gone.
        Applications expire or refresh them; so does the machine.
        """
        for obj in list(session.identity_map.values()):
            state = sa.inspect(obj)
            stale = []
            for rel in state.mapper.relationships:
                if rel.viewonly or rel.key not in state.dict:
                    continue
                value = state.dict[rel.key]
                targets = list(value) if rel.uselist else [] if value is None else [value]
                if any(not sa.inspect(t).persistent and not sa.inspect(t).pending for t in targets):
                    stale.append(rel.key)
            if stale:
                session.expire(obj, stale)

    # --- checks ------------------------------------------------------------------------------

    def check_commit(self, tx: Tx) -> None:
        with self.env.sync_engine.connect() as conn:
            state = read_state(conn, self.env.metadata)
        assert state == tx.view, "the database does not hold what the machine did:\n" + (
            state_diff(tx.view, state)
        )
        reader = self.env.reader()
        try:
            known = set(self.snapshots)
            transactions = set(reader.scalars(sa.select(self._transaction_table().c.id)).all())
            new = transactions - known
            assert known <= transactions, f"transaction rows vanished: {known - transactions}"
            assert len(new) <= 1, f"one commit recorded several transactions: {sorted(new)}"
            changed = self.changed_keys(tx.start, state)
            if changed:
                assert new, f"a transaction that changed {changed} left no transaction row"
            if new:
                (t,) = new
                assert not known or t > max(known), f"transaction id {t} is not the newest"
                self.snapshots[t] = state
                self.env.stats.transactions += 1
                self.check_transaction(reader, tx, t, changed)
            self.committed = state
            self.check_history(reader)
        finally:
            reader.close()

    def changed_keys(self, before: State, after: State) -> dict[str, set[Key]]:
        """Keys whose tracked values (or existence) differ between two states."""
        changed: dict[str, set[Key]] = {}
        for name, spec in SPECS.items():
            keys = {
                k
                for k in before[name].keys() | after[name].keys()
                if spec.tracked_of(before[name].get(k)) != spec.tracked_of(after[name].get(k))
            }
            if keys:
                changed[name] = keys
        return changed

    def check_transaction(
        self, reader: Session, tx: Tx, t: int, changed: dict[str, set[Key]]
    ) -> None:
        """The versions written by transaction ``t``: exactly what it changed.

        ``changes_in_sync()`` returns the same versions of the models.
        """
        models_written = set()
        for name, spec in SPECS.items():
            vt = self.env.metadata.tables[f"{name}_version"]
            rows = reader.execute(sa.select(vt).where(vt.c.transaction_id == t)).mappings()
            written = {}
            for row in rows:
                key = tuple(row[c] for c in spec.key)
                written[key] = row
                if spec.model:
                    models_written.add((name, key, row["operation_type"]))
            before, after = tx.start[name], tx.view[name]
            for key in changed.get(name, set()):
                assert key in written, f"{name} {key}: changed in transaction {t}, no version"
            for key, row in written.items():
                where = f"{name} {key}, version of transaction {t}"
                if key not in changed.get(name, set()):
                    assert (name, key) in tx.recreated, f"{where}: the row did not change"
                expected_op = (
                    Operation.INSERT
                    if key not in before
                    else Operation.DELETE
                    if key not in after
                    else Operation.UPDATE
                )
                assert row["operation_type"] == expected_op, (
                    f"{where}: operation {row['operation_type']}, expected {expected_op}"
                )
                values = {c: row[c] for c in spec.tracked}
                if expected_op is Operation.DELETE:
                    expected = spec.tracked_of(tx.deleted_values[name, key])
                    assert values == expected, (
                        f"{where}: the DELETE holds {values}, the row held {expected}"
                    )
                else:
                    assert values == spec.tracked_of(after[key]), (
                        f"{where}: holds {values}, expected {spec.tracked_of(after[key])}"
                    )

        found = set()
        for v in changes_in_sync(reader, t, [self.env.cls(m) for m in MODELS]):
            name = table_of(parent_class(type(v))).name
            found.add((name, tuple(getattr(v, c) for c in SPECS[name].key), v.operation_type))
        assert found == models_written, (
            f"changes_in_sync({t}): {sorted(found, key=repr)}, "
            f"expected {sorted(models_written, key=repr)}"
        )

    def read_history(self, reader: Session) -> dict[str, list[tuple[Any, ...]]]:
        history = {}
        for name, spec in SPECS.items():
            vt = self.env.metadata.tables[f"{name}_version"]
            cols = [vt.c[c] for c in spec.key + spec.tracked]
            cols += [vt.c.transaction_id, vt.c.end_transaction_id, vt.c.operation_type]
            rows = reader.execute(sa.select(*cols).order_by(*cols[: len(spec.key)], cols[-3]))
            history[name] = [tuple(r) for r in rows]
        return history

    def check_history(self, reader: Session) -> None:
        self.history = self.read_history(reader)
        self.check_chains()
        self.check_transaction_rows(reader)
        for t in sorted(self.snapshots):
            self.check_as_of(reader, t)
        self.check_changesets(reader)
        self.check_temporal_relationships(reader)

    def check_chains(self) -> None:
        """Each key's versions, ordered by transaction id, form one valid chain.

        - each version but the last ends where the next one begins
          (``end_transaction_id == next.transaction_id``): no gap, no overlap, and since ids
          grow, no inverted interval; the last one is open, so a key has one open version;
        - the first version and the first after a DELETE are INSERTs, the others UPDATEs or
          DELETEs; the last one is a DELETE exactly when the row does not exist now;
        - every version belongs to a committed transaction.

        Pruning removes the oldest versions of a chain: a pruned key's first kept version may
        be an UPDATE or a DELETE too.
        """
        for name, spec in SPECS.items():
            chains: dict[Key, list[tuple[Any, ...]]] = {}
            n = len(spec.key)
            for row in self.history[name]:
                chains.setdefault(row[:n], []).append(row)
            for key, chain in chains.items():
                where = f"{name} {key}"
                previous = None
                for version in chain:
                    tx_id, op = version[-3], version[-1]
                    assert tx_id in self.snapshots, f"{where}: version of unknown tx {tx_id}"
                    if previous is None and key in self.pruned_keys[name]:
                        pass  # the first kept version: whatever followed the pruned ones
                    elif previous is None or previous[-1] == Operation.DELETE:
                        assert op == Operation.INSERT, f"{where} @{tx_id}: {op} starts a life"
                    else:
                        assert op != Operation.INSERT, f"{where} @{tx_id}: INSERT of a live row"
                    if previous is not None:
                        assert previous[-2] == tx_id, (
                            f"{where}: version @{previous[-3]} ends at {previous[-2]}, "
                            f"the next version is @{tx_id}"
                        )
                    previous = version
                assert previous is not None
                assert previous[-2] is None, f"{where}: last version @{previous[-3]} is closed"
                exists = key in self.committed[name]
                assert (previous[-1] != Operation.DELETE) == exists, (
                    f"{where}: last version is {previous[-1]} but the row "
                    f"{'exists' if exists else 'does not exist'}"
                )
            for key in self.committed[name]:
                assert key in chains, f"{name} {key}: an existing row without versions"

    def check_transaction_rows(self, reader: Session) -> None:
        """Transaction rows are exactly the committed transactions that wrote versions.

        Pruning keeps transaction rows: those whose versions were all pruned are left alone.
        """
        used = {row[-3] for rows in self.history.values() for row in rows}
        transactions = set(reader.scalars(sa.select(self._transaction_table().c.id)).all())
        assert transactions == set(self.snapshots), (
            f"transaction rows {sorted(transactions)}, committed {sorted(self.snapshots)}"
        )
        assert used <= transactions, f"versions of no transaction row: {used - transactions}"
        unused = transactions - used - self.pruned_transactions
        assert not unused, f"transactions without versions (none pruned): {sorted(unused)}"

    def check_as_of(self, reader: Session, t: int) -> None:
        """``select_as_of(Model, t)`` and the links at ``t`` equal the snapshot of ``t``.

        Before the horizon of a model's version table (once pruned), it raises instead.
        """
        snapshot = self.snapshots[t]
        for name in MODELS:
            spec = SPECS[name]
            horizon = self.as_of_from(name)
            if t < horizon:
                with pytest.raises(
                    HistoryPrunedError,
                    match=rf"^the history in '{name}_version' before transaction {horizon} was "
                    rf"pruned, so as of transaction {t} cannot be answered completely",
                ):
                    reader.scalars(select_as_of(self.env.cls(name), t)).all()
                self.env.stats.refused += 1
                continue
            found: dict[Key, Row | None] = {}
            for v in reader.scalars(select_as_of(self.env.cls(name), t)):
                key = tuple(getattr(v, c) for c in spec.key)
                assert key not in found, f"select_as_of({name}, {t}): {key} twice"
                found[key] = {c: getattr(v, c) for c in spec.tracked}
            expected = {k: spec.tracked_of(r) for k, r in snapshot[name].items()}
            assert found == expected, f"select_as_of({name}, {t}):\n" + _dict_diff(expected, found)
        if t < self.as_of_from(LINKS):
            return  # links pruned (a plain query: no horizon to check)
        vt = self.env.metadata.tables[f"{LINKS}_version"]
        links = reader.execute(
            sa.select(vt.c.article_id, vt.c.tag_id).where(
                vt.c.transaction_id <= t,
                sa.or_(vt.c.end_transaction_id.is_(None), vt.c.end_transaction_id > t),
                vt.c.operation_type != Operation.DELETE,
            )
        ).all()
        assert sorted(tuple(r) for r in links) == sorted(snapshot[LINKS]), (
            f"links at {t}: {sorted(tuple(r) for r in links)}, expected {sorted(snapshot[LINKS])}"
        )

    def check_changesets(self, reader: Session) -> None:
        """``previous`` and ``changeset`` of every version follow the chain.

        A key's oldest kept version has no ``previous``: its changeset is ``[None, value]``
        for every value, whatever its operation.
        """
        for name in MODELS:
            spec = SPECS[name]
            V = runtime_version_class(self.env.cls(name))
            versions = reader.scalars(
                sa.select(V)
                .order_by(*[getattr(V, c) for c in spec.key], V.transaction_id)
                .options(selectinload(V.previous))
            ).all()
            last: dict[Key, Any] = {}
            for v in versions:
                key = tuple(getattr(v, c) for c in spec.key)
                where = f"{name} {key} @{v.transaction_id}"
                prev = last.get(key)
                assert (v.previous and v.previous.transaction_id) == (
                    prev and prev.transaction_id
                ), f"{where}: previous is {v.previous}"
                expected = {}
                for c in spec.key + spec.tracked:
                    old, new = None if prev is None else getattr(prev, c), getattr(v, c)
                    if old != new:
                        expected[c] = [old, new]
                assert v.changeset == expected, f"{where}: changeset {v.changeset} != {expected}"
                last[key] = v

    def check_temporal_relationships(self, reader: Session) -> None:
        """What versions' relationships yield equals the snapshot of their transaction.

        Checked where the related version tables are complete at the version's transaction
        (at or after their horizons): ``keep_last`` keeps old versions whose related versions
        were pruned.
        """
        m = self.env.models
        AV, TV, CV = (runtime_version_class(c) for c in (m.Article, m.Tag, m.Comment))
        for v in reader.scalars(
            sa.select(AV).options(selectinload(AV.tags), selectinload(AV.comments))
        ):
            snap = self.snapshots[v.transaction_id]
            where = f"article {v.id} @{v.transaction_id}"
            if v.transaction_id >= self.as_of_from(LINKS, "tag"):
                tags = sorted((t.id, t.name) for t in v.tags)
                expected = sorted(
                    (t, snap["tag"][(t,)]["name"]) for (a, t) in snap[LINKS] if a == v.id
                )
                assert tags == expected, f"{where}: tags {tags}, expected {expected}"
            if v.transaction_id >= self.as_of_from("article_comment"):
                comments = sorted((c.id, c.text) for c in v.comments)
                expected = sorted(
                    (k[0], r["text"])
                    for k, r in snap["article_comment"].items()
                    if r["article_id"] == v.id
                )
                assert comments == expected, f"{where}: comments {comments}, expected {expected}"
        for v in reader.scalars(sa.select(TV).options(selectinload(TV.articles))):
            if v.transaction_id < self.as_of_from(LINKS, "article"):
                continue
            snap = self.snapshots[v.transaction_id]
            articles = sorted((a.id, a.title) for a in v.articles)
            expected = sorted(
                (a, snap["article"][(a,)]["title"]) for (a, t) in snap[LINKS] if t == v.id
            )
            assert articles == expected, (
                f"tag {v.id} @{v.transaction_id}: articles {articles}, expected {expected}"
            )
        for v in reader.scalars(sa.select(CV).options(selectinload(CV.article))):
            if v.transaction_id < self.as_of_from("article"):
                continue
            snap = self.snapshots[v.transaction_id]
            row = snap["article"].get((v.article_id,))
            found = None if v.article is None else (v.article.id, v.article.title)
            expected_article = None if row is None else (v.article_id, row["title"])
            assert found == expected_article, (
                f"comment {v.id} @{v.transaction_id}: article {found}, expected {expected_article}"
            )

    def expected_feed(self, names: tuple[str, ...], since: int) -> list[tuple[Any, ...]]:
        """The change feed of tables ``names`` from ``since`` on, from the chains read:
        table, key, operation, transaction and the names changed against the previous
        version (a first kept version has none: its non-NULL values; links: none)."""
        feed = []
        for name in names:
            spec = SPECS[name]
            n = len(spec.key)
            columns = spec.key + spec.tracked
            last: dict[Key, tuple[Any, ...]] = {}
            for row in self.history[name]:
                key, prev = row[:n], last.get(row[:n])
                last[key] = row
                if row[-3] < since:
                    continue
                changed = (
                    []
                    if name == LINKS
                    else [
                        c
                        for i, c in enumerate(columns)
                        if (None if prev is None else prev[i]) != row[i]
                    ]
                )
                pk = dict(zip(spec.key, key, strict=True))
                feed.append((name, pk, row[-1], row[-3], sorted(changed)))
        return sorted(feed, key=repr)

    @staticmethod
    def found_feed(changes: Any) -> list[tuple[Any, ...]]:
        feed = [
            (c.table, c.primary_key, c.operation, c.transaction_id, sorted(c.changed))
            for c in changes
        ]
        ids = [f[3] for f in feed]
        assert ids == sorted(ids), f"the change feed is not in transaction order: {ids}"
        return sorted(feed, key=repr)

    def check_pruned_reads(self, reader: Session) -> None:
        """After pruning: the change feed from before what was kept raises, and from there on
        is complete, for all models (paged) and for each one (the tables it reads);
        ``select_version_at()`` before a model's as-of horizon raises."""
        classes = [self.env.cls(m) for m in MODELS]
        since = self.changes_from(*SPECS)
        after = since - 1 if since else None
        if since:
            message = rf"^the history in '\w+' before transaction {since} was pruned, so "
            with pytest.raises(HistoryPrunedError, match=message + "changes from the start"):
                reader.execute(select_changes(classes=classes))
            with pytest.raises(
                HistoryPrunedError, match=message + f"changes since transaction {since - 1} "
            ):
                list(stream_changes_sync(reader, after=since - 2, classes=classes))
            self.env.stats.refused += 2
        found = self.found_feed(stream_changes_sync(reader, after, batch_size=4, classes=classes))
        expected = self.expected_feed(tuple(SPECS), since)
        assert found == expected, f"stream_changes_sync(after={after}):\n" + _list_diff(
            expected, found
        )
        for model, cls in zip(MODELS, classes, strict=True):
            names = (model, LINKS) if model in ("article", "tag") else (model,)
            since = self.changes_from(*names)
            if since:
                reported = "|".join(n for n in names if self.changes_from(n) == since)
                with pytest.raises(
                    HistoryPrunedError,
                    match=rf"^the history in '({reported})_version' before transaction {since} "
                    rf"was pruned, so changes since transaction {since - 1} cannot",
                ):
                    reader.execute(select_changes(since - 1, classes=[cls]))
                self.env.stats.refused += 1
            found = self.found_feed(reader.execute(select_changes(since or None, classes=[cls])))
            expected = self.expected_feed(names, since)
            assert found == expected, (
                f"select_changes(since={since or None}, [{model}]):\n" + _list_diff(expected, found)
            )
            horizon = self.as_of_from(model)
            earlier = [t for t in self.snapshots if t < horizon]
            if earlier:
                key = KEYS[model][0]
                pk = key if len(key) > 1 else key[0]
                with pytest.raises(HistoryPrunedError, match=f"before transaction {horizon} "):
                    reader.scalars(select_version_at(cls, pk, max(earlier))).all()
                self.env.stats.refused += 1

    def _transaction_table(self) -> sa.Table:
        return self.env.metadata.tables["transaction"]


def _list_diff(expected: list[Any], found: list[Any]) -> str:
    return "\n".join(
        [f"  missing {e}" for e in expected if e not in found]
        + [f"  unexpected {f}" for f in found if f not in expected]
    )


def _dict_diff(expected: dict[Key, Any], found: dict[Key, Any]) -> str:
    return "\n".join(
        f"  {k}: expected {expected.get(k)}, found {found.get(k)}"
        for k in sorted(expected.keys() | found.keys(), key=repr)
        if expected.get(k) != found.get(k)
    )


# --- the test --------------------------------------------------------------------------------


@pytest.fixture
def env(models: Shop, engine: AsyncEngine, sync_engine: sa.Engine) -> Iterator[Env]:
    yield Env(models, engine, sync_engine)


@pytest.fixture
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep what hypothesis stores (its cache of constants) out of the working tree."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    try:
        yield
    finally:
        set_hypothesis_home_dir(None)


@pytest.mark.usefixtures("hypothesis_home")
async def test_history_matches_a_model_of_the_database(
    db: str, env: Env, engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()

    class Machine(HistoryMachine):
        ENV = env

    def run(_: Session) -> None:
        run_state_machine_as_test(Machine, settings=SETTINGS)

    async with AsyncSession(engine) as driver:
        # The sessions the machine uses are driven from inside this greenlet context.
        await driver.run_sync(run)
    elapsed = time.perf_counter() - started
    s = env.stats
    summary = (
        f"\n[randomized {PROFILE} {db}] {s.examples} examples, "
        f"{s.steps - s.examples} steps, {s.commits} commits ({s.transactions} recorded), "
        f"{s.rollbacks} rollbacks, {s.savepoints} savepoints, "
        f"{s.row_switches} row switches, {s.prunes} prunes ({s.pruned} versions pruned, "
        f"{s.cut_chains} chains left starting with an UPDATE or DELETE, {s.refused} reads "
        f"refused) in {elapsed:.1f} s; rules: "
        + ", ".join(f"{name} {n}" for name, n in sorted(s.rules.items()))
    )
    if PROFILE == "long":
        with capsys.disabled():
            print(summary)
    else:
        print(summary)  # shown with -s
    if PROFILE == "long":
        assert s.steps - s.examples >= LONG_MIN_STEPS, "the long profile ran too few steps"
