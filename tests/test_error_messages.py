"""Every example message of ``docs/errors.md``, provoked for real.

The rows are read from the page itself: each table row that shows an example message raised by
the library is matched to exactly one trigger below (by the start of its first example), the
trigger provokes the situation, and the exception raised must have the documented type and a
message that matches the documented example. ``...`` and ``…`` in an example stand for elided
text; several examples in one cell (separated by `` / ``) are provoked one after the other.

A row without a trigger, or a trigger without a row, fails: the page and this test change
together. Triggers use small models of their own, on the fresh bases of the ``bases`` fixture,
which removes every manager afterwards; models whose definition fails stay unversioned and
are disposed of with their base. Configuration, query-argument and context errors need no
database; statements and reverts run on SQLite unless the situation needs another database.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import sqlalchemy_history_async
from sqlalchemy_history_async import (
    ConfigurationError,
    VersioningManager,
    _bulk,
    diff,
    make_versioned,
    parent_class,
    prune_sync,
    remove_versioning,
    select_as_of,
    select_changed,
    select_changes,
    select_version_at,
    set_actor,
    stream_changes,
    stream_changes_sync,
    transaction_class,
    version_class,
    versioning_context,
)

from .conftest import DATABASES, Bases, dialect_named, reset_schema
from .models import define_model, runtime_version_class, table_of

PAGE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"

#: The last table lists errors of SQLAlchemy and the drivers; of its rows, only those whose
#: error the library raises (through its column types) are checked.
FOREIGN_SECTION = "Errors from SQLAlchemy and the drivers"
RAISED_BY_THE_LIBRARY = ("expected a timezone-aware datetime",)


# --- the page -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One table row of the page that documents an error of the library."""

    section: str
    line: int
    exception: str
    messages: tuple[str, ...]
    #: SQLAlchemy's errors add the statement and its parameters on the lines after the first.
    first_line_only: bool = False

    @property
    def where(self) -> str:
        return f"docs/errors.md:{self.line} ({self.section})"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _examples(cell: str) -> tuple[str, ...]:
    """The backticked examples of a cell (alternatives are separated by `` / `` outside them)."""
    return tuple(re.findall(r"`([^`]+)`", cell))


def parse_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    section = ""
    header: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the separator under the header
        assert len(cells) == len(header), f"docs/errors.md:{number}: {len(cells)} cells"
        row = dict(zip(header, cells, strict=True))
        if section == FOREIGN_SECTION:
            if not any(raised in row["Error"] for raised in RAISED_BY_THE_LIBRARY):
                continue
            [error] = _examples(row["Error"])
            name, _, message = error.partition(": ")
            rows.append(Row(section, number, name, (message,), first_line_only=True))
            continue
        assert "Example message" in header, f"docs/errors.md:{number}: no Example message column"
        messages = _examples(row["Example message"])
        assert messages, f"docs/errors.md:{number}: no example message in backticks"
        if "Exception" in row:
            [exception] = _examples(row["Exception"])
        else:
            heading = re.fullmatch(r"`(\w+)`", section)
            assert heading, f"docs/errors.md:{number}: no exception named for {section!r}"
            exception = heading.group(1)
        rows.append(Row(section, number, exception, messages))
    return rows


ROWS = parse_rows(PAGE.read_text(encoding="utf-8"))


def pattern(example: str) -> re.Pattern[str]:
    """``example`` as a pattern of the whole message: ``...`` / ``…`` match any text."""
    return re.compile(".*".join(map(re.escape, re.split(r"\.\.\.|…", example))), re.DOTALL)


def exception_type(name: str) -> type[BaseException]:
    """The class of a documented exception name (``TypeError``, ``RevertError``,
    ``StatementError``, ``sqlalchemy.exc.CompileError``)."""
    if "." in name:
        module, _, attr = name.rpartition(".")
        found: Any = getattr(importlib.import_module(module), attr)
    else:
        found = next(
            getattr(m, name)
            for m in (sqlalchemy_history_async, builtins, sqlalchemy.exc)
            if hasattr(m, name)
        )
    assert isinstance(found, type) and issubclass(found, BaseException), name
    return found


# --- triggers -----------------------------------------------------------------------------------


@dataclass
class Situation:
    """What a trigger works with: fresh bases, and the database it runs on (if any)."""

    bases: Bases
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    database: str | None

    async def engine(self, metadata: sa.MetaData, **options: Any) -> sa.Engine:
        """A sync engine on the database, its schema holding exactly ``metadata``'s tables."""
        assert self.database is not None, "the trigger declares no database"
        url: str = self.request.getfixturevalue("async_url")
        async_engine = create_async_engine(url)
        try:
            await reset_schema(async_engine, metadata)
        finally:
            await async_engine.dispose()
        sync_url = sa.make_url(url)
        backend = sync_url.get_backend_name()
        drivers = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
        engine = sa.create_engine(
            sync_url.set(drivername=drivers.get(backend, f"{backend}+pymysql")), **options
        )
        self.request.addfinalizer(engine.dispose)
        return engine


Provoke = Callable[[Situation], "list[BaseException] | Awaitable[list[BaseException]]"]


@dataclass(frozen=True)
class Trigger:
    provoke: Provoke
    #: The databases it runs on (each one a test); none: it needs no database.
    databases: tuple[str, ...] = ()


#: Start of a row's first example message -> the trigger that provokes the row's messages.
TRIGGERS: dict[str, Trigger] = {}


def trigger(start: str, *, databases: tuple[str, ...] = ()) -> Callable[[Provoke], Provoke]:
    def register(provoke: Provoke) -> Provoke:
        assert start not in TRIGGERS, start
        TRIGGERS[start] = Trigger(provoke, databases)
        return provoke

    return register


def caught(action: Callable[[], object]) -> BaseException:
    """The exception ``action`` raises."""
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError(f"{action} raised nothing")


async def caught_async(action: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await action()
    except Exception as exc:
        return exc
    raise AssertionError(f"{action} raised nothing")


def define_article(base: type[DeclarativeBase], versioned: object = None) -> type[Any]:
    return define_model(base, "Article", "article", versioned)


# ConfigurationError ------------------------------------------------------------------------------


@trigger("set_actor() is called outside a request_context()")
def set_actor_outside_a_request(s: Situation) -> list[BaseException]:
    return [caught(lambda: set_actor(user_id=1))]


@trigger("make_versioned(strict=...)")
def strict_not_a_bool(s: Situation) -> list[BaseException]:
    return [caught(lambda: make_versioned(strict="yes"))]  # type: ignore[arg-type]


@trigger("make_versioned(user_cls=...) takes")
def user_cls_of_wrong_kind(s: Situation) -> list[BaseException]:
    return [caught(lambda: make_versioned(user_cls=42))]  # type: ignore[arg-type]


@trigger("make_versioned() takes user_cls or user_id_type")
def user_cls_and_user_id_type(s: Situation) -> list[BaseException]:
    return [caught(lambda: make_versioned(user_cls="User", user_id_type=sa.Integer()))]


@trigger("make_versioned() was already called")
def make_versioned_twice(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(make_versioned)]


@trigger("make_versioned(user_cls='Nobody')")
def user_cls_name_not_found(s: Situation) -> list[BaseException]:
    make_versioned(user_cls="Nobody")
    define_article(s.bases())  # the user class may still be defined later
    return [caught(sa.orm.configure_mappers)]


@trigger("make_versioned(user_cls='User'): more than one")
def user_cls_name_ambiguous(s: Situation) -> list[BaseException]:
    Base = s.bases()
    users = [
        type(
            "User",
            (Base,),
            {
                "__module__": module,
                "__tablename__": table,
                "id": mapped_column(sa.Integer, primary_key=True),
            },
        )
        for module, table in (("app.accounts", "account_user"), ("app.staff", "staff_user"))
    ]
    make_versioned(user_cls="User")
    raised = caught(lambda: define_article(Base))
    assert len(users) == 2  # kept alive: a registry holds its mappers weakly
    return [raised]


@trigger("make_versioned(user_cls=NotMapped)")
def user_cls_not_mapped(s: Situation) -> list[BaseException]:
    class NotMapped:
        id = 1

    make_versioned(user_cls=NotMapped)
    return [caught(lambda: define_article(s.bases()))]


@trigger("user class Membership must have a single-column primary key")
def user_cls_with_composite_key(s: Situation) -> list[BaseException]:
    make_versioned(user_cls="Membership")

    @s.bases.track
    class Base(DeclarativeBase):
        pass

    class Membership(Base):
        __tablename__ = "membership"
        org: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
        login: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    return [caught(lambda: define_article(Base))]


@trigger("Article.__versioned__ must be a dict")
def versioned_not_a_dict(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_article(s.bases(), ["exclude"]))]


@trigger("Article.__versioned__ has unknown option(s)")
def unknown_option(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_article(s.bases(), {"exlude": ["title"]}))]


@trigger("Article.__versioned__['exclude'] must be a list")
def exclude_a_bare_string(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_article(s.bases(), {"exclude": "title"}))]


@trigger("Article.__versioned__['exclude'] names 'nope'")
def exclude_not_a_column(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_article(s.bases(), {"exclude": ["nope"]}))]


@trigger("Article.__versioned__['exclude'] names primary key column")
def exclude_the_primary_key(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_article(s.bases(), {"exclude": ["id"]}))]


def define_animal(base: type[DeclarativeBase], versioned: object) -> type[Any]:
    """``Animal``, polymorphic on ``kind``; versioned with ``versioned`` unless it is None."""
    namespace: dict[str, Any] = {
        "__tablename__": "animal",
        "__mapper_args__": {"polymorphic_on": "kind", "polymorphic_identity": "animal"},
        "__annotations__": {"id": Mapped[int], "kind": Mapped[str]},
        "id": mapped_column(primary_key=True),
        "kind": mapped_column(sa.String(20)),
    }
    if versioned is not None:
        namespace["__versioned__"] = versioned
    return type("Animal", (base,), namespace)


def define_dog(animal: type[Any], namespace: dict[str, Any]) -> None:
    """``Dog``, a joined-table subclass of ``animal`` (table ``dog``), with ``namespace``."""
    keys = [k for k in namespace if not k.startswith("__")]
    type(
        "Dog",
        (animal,),
        {
            "__tablename__": "dog",
            "__mapper_args__": {"polymorphic_identity": "dog"},
            "__annotations__": dict.fromkeys(keys, Mapped[int]),
            **namespace,
        },
    )


@trigger("Dog is versioned but inherits from Animal")
def versioned_subclass_of_unversioned(s: Situation) -> list[BaseException]:
    make_versioned()
    Animal = define_animal(s.bases(), None)
    key = mapped_column(sa.ForeignKey("animal.id"), primary_key=True)
    return [caught(lambda: define_dog(Animal, {"__versioned__": {}, "id": key}))]


@trigger("Dog: the primary key attribute(s)")
def joined_subclass_without_its_key(s: Situation) -> list[BaseException]:
    make_versioned()
    Animal = define_animal(s.bases(), {})
    key = mapped_column(sa.ForeignKey("animal.id"), primary_key=True)
    return [caught(lambda: define_dog(Animal, {"dog_id": key}))]


@trigger("Animal: its polymorphic discriminator")
def discriminator_excluded(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_animal(s.bases(), {"exclude": ["kind"]}))]


@trigger("Post.__versioned__['track_relationships']")
def track_relationships_not_a_bool(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: define_model(s.bases(), "Post", "post", {"track_relationships": "yes"}))]


@trigger("Ledger: column 'transaction_id'")
def column_named_like_bookkeeping(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()

    def define() -> None:
        type(
            "Ledger",
            (Base,),
            {
                "__tablename__": "ledger",
                "__versioned__": {},
                "__annotations__": {"id": Mapped[int], "value": Mapped[int]},
                "id": mapped_column(primary_key=True),
                "value": mapped_column("transaction_id"),
            },
        )

    return [caught(define)]


@trigger("Manager uses concrete-table inheritance")
def concrete_inheritance(s: Situation) -> list[BaseException]:
    make_versioned()

    @s.bases.track
    class Base(DeclarativeBase):
        pass

    class Employee(Base):
        __tablename__ = "employee"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]

    def define() -> None:
        class Manager(Employee):
            __tablename__ = "manager"
            __mapper_args__ = {"concrete": True}
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str]
            level: Mapped[int]

    return [caught(define)]


def define_summary(base: type[DeclarativeBase]) -> None:
    """``ArticleSummary``, versioned and mapped to a SELECT of the ``article`` table."""
    article = sa.Table(
        "article",
        base.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(50)),
    )
    type(
        "ArticleSummary", (base,), {"__table__": sa.select(article).subquery(), "__versioned__": {}}
    )


@trigger("ArticleSummary is not mapped to a Table")
def mapped_to_a_select(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()
    define_model(Base, "Comment", "comment")  # not the first: see the test below
    return [caught(lambda: define_summary(Base))]


def test_first_model_mapped_to_a_select(bases: Bases) -> None:
    make_versioned()
    with pytest.raises(ConfigurationError, match="ArticleSummary is not mapped to a Table"):
        define_summary(bases())


@trigger("Article already has an attribute 'versions'")
def attribute_named_versions(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()

    def define() -> None:
        type(
            "Article",
            (Base,),
            {
                "__tablename__": "article",
                "__versioned__": {},
                "__annotations__": {"id": Mapped[int], "versions": Mapped[str]},
                "id": mapped_column(primary_key=True),
                "versions": mapped_column(sa.String(50)),
            },
        )

    return [caught(define)]


@trigger("Article: table 'article_version' already exists")
def version_table_taken(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()
    sa.Table("article_version", Base.metadata, sa.Column("id", sa.Integer, primary_key=True))
    return [caught(lambda: define_article(Base))]


@trigger("Comment uses a different MetaData")
def models_on_two_metadatas(s: Situation) -> list[BaseException]:
    make_versioned()
    define_article(s.bases())
    return [caught(lambda: define_model(s.bases(), "Comment", "comment"))]


@trigger("versioning is not enabled")
def change_feed_without_versioning(s: Situation) -> list[BaseException]:
    remove_versioning()
    return [caught(select_changes)]


@trigger("Article declares __versioned__ but has no version class", databases=("sqlite",))
async def model_mapped_before_versioning_is_flushed(s: Situation) -> list[BaseException]:
    Base = s.bases()
    Article = define_article(Base)
    make_versioned()
    engine = await s.engine(Base.metadata)
    with Session(engine) as session:
        session.add(Article(id=1, title="unrecorded"))
        return [caught(session.flush)]


@trigger("Article were versioned by an earlier manager with other options")
def make_versioned_again_with_other_options(s: Situation) -> list[BaseException]:
    make_versioned()
    define_article(s.bases())
    sa.orm.configure_mappers()
    remove_versioning()
    return [caught(lambda: make_versioned(transaction_table="audit"))]


@trigger("VersioningManager(transaction_table=...)")
def bad_manager_options(s: Situation) -> list[BaseException]:
    return [
        caught(lambda: VersioningManager(transaction_table="")),
        caught(lambda: VersioningManager(user_id_type=sa.Integer)),  # type: ignore[arg-type]
    ]


@trigger("Article: its MetaData already has a table 'audit'")
def transaction_table_name_taken(s: Situation) -> list[BaseException]:
    Base = s.bases()
    sa.Table("audit", Base.metadata, sa.Column("id", sa.Integer, primary_key=True))
    s.bases.manager(Base, transaction_table="audit")
    return [caught(lambda: define_article(Base))]


@trigger("VersioningManager.install() takes")
def install_on_something_else(s: Situation) -> list[BaseException]:
    return [caught(lambda: VersioningManager().install(5))]


@trigger("this VersioningManager is installed already")
def install_twice(s: Situation) -> list[BaseException]:
    Base = s.bases()
    manager = s.bases.manager(Base)
    twice = caught(lambda: manager.install(Base))
    manager.remove()
    second_base = caught(lambda: manager.install(s.bases()))
    manager.install(Base)
    taken = caught(lambda: VersioningManager().install(Base))
    return [twice, second_base, taken]


@trigger("Article are versioned by make_versioned() already")
def install_after_make_versioned(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()
    define_article(Base)
    return [caught(lambda: VersioningManager().install(Base))]


# NotVersionedError -------------------------------------------------------------------------------


@trigger("<class 'int'> is not a mapped class")
def version_class_of_a_non_mapped_class(s: Situation) -> list[BaseException]:
    make_versioned()
    return [caught(lambda: version_class(int))]


@trigger("User is not versioned (add __versioned__")
def version_class_of_an_unversioned_model(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()
    define_article(Base)
    User = type(
        "User",
        (Base,),
        {
            "__tablename__": "user_account",
            "__annotations__": {"id": Mapped[int]},
            "id": mapped_column(primary_key=True),
        },
    )
    return [caught(lambda: version_class(User))]


@trigger("Article is not versioned (it declares __versioned__")
def version_class_of_a_model_mapped_too_early(s: Situation) -> list[BaseException]:
    Article = define_article(s.bases())
    make_versioned()
    return [caught(lambda: version_class(Article))]


@trigger("ArticleVersion is a version class")
def version_class_of_a_version_class(s: Situation) -> list[BaseException]:
    make_versioned()
    V = version_class(define_article(s.bases()))
    return [caught(lambda: version_class(V))]


@trigger("<class 'app.models.Article'> is not a version class")
def parent_class_of_a_model(s: Situation) -> list[BaseException]:
    make_versioned()

    Article = type(
        "Article",
        (s.bases(),),
        {
            "__module__": "app.models",  # as in an application
            "__tablename__": "article",
            "__versioned__": {},
            "id": mapped_column(sa.Integer, primary_key=True),
        },
    )
    return [caught(lambda: parent_class(Article))]


# RevertError -------------------------------------------------------------------------------------


async def article_version(s: Situation) -> tuple[sa.Engine, type[Any]]:
    """An engine whose database holds one article with one version, and the model."""
    make_versioned()
    Base = s.bases()
    Article = define_article(Base)
    engine = await s.engine(Base.metadata)
    with Session(engine) as session:
        session.add(Article(id=1, title="first"))
        session.commit()
    return engine, Article


@trigger("ArticleVersion is not attached to a session", databases=("sqlite",))
async def revert_detached(s: Situation) -> list[BaseException]:
    engine, Article = await article_version(s)
    with Session(engine) as session:
        version = session.scalars(sa.select(runtime_version_class(Article))).one()
        session.expunge(version)
        return [caught(version.revert_sync)]


@trigger("ArticleVersion does not belong to an AsyncSession", databases=("sqlite",))
async def revert_async_on_a_sync_session(s: Situation) -> list[BaseException]:
    engine, Article = await article_version(s)
    with Session(engine) as session:
        version = session.scalars(sa.select(runtime_version_class(Article))).one()
        return [await caught_async(version.revert)]


@trigger("Post has no relationship 'tags'", databases=("sqlite",))
async def revert_an_unknown_relationship(s: Situation) -> list[BaseException]:
    make_versioned()

    @s.bases.track
    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "author"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)

    class Tag(Base):
        """Not versioned: neither is the table linking posts to tags."""

        __tablename__ = "tag"
        id: Mapped[int] = mapped_column(primary_key=True)

    post_tag = sa.Table(
        "post_tag",
        Base.metadata,
        sa.Column("post_id", sa.ForeignKey("post.id"), primary_key=True),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), primary_key=True),
    )

    class Post(Base):
        __tablename__ = "post"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int | None] = mapped_column(sa.ForeignKey("author.id"))
        author: Mapped[Author | None] = relationship()
        comments: Mapped[list[Comment]] = relationship()
        # read only: no relationship writes post_tag, so its links have no history
        tags: Mapped[list[Tag]] = relationship(secondary=post_tag, viewonly=True)

    class Comment(Base):
        __tablename__ = "comment"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        post_id: Mapped[int] = mapped_column(sa.ForeignKey("post.id"))

    engine = await s.engine(Base.metadata)
    with Session(engine) as session:
        session.add(Post(id=1, author=Author(id=1)))
        session.commit()
        version = session.scalars(sa.select(version_class(Post))).one()
        return [caught(lambda: version.revert_sync(relations=["tags"]))]


# UnrecordedWriteError ----------------------------------------------------------------------------


class Articles:
    """``Article`` (a unique ``slug``) and the joined-table hierarchy ``Page`` / ``Chapter``."""

    def __init__(self, s: Situation, *, strict: bool = False) -> None:
        make_versioned(strict=strict)

        @s.bases.track
        class Base(DeclarativeBase):
            pass

        class Article(Base):
            __tablename__ = "article"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(50))
            slug: Mapped[str | None] = mapped_column(sa.String(50), unique=True)

        class Page(Base):
            __tablename__ = "page"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            kind: Mapped[str] = mapped_column(sa.String(10))
            __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "page"}

        class Chapter(Page):
            __tablename__ = "chapter"
            id: Mapped[int] = mapped_column(sa.ForeignKey("page.id"), primary_key=True)
            heading: Mapped[str | None] = mapped_column(sa.String(50))
            __mapper_args__ = {"polymorphic_identity": "chapter"}

        sa.orm.configure_mappers()
        # Chapter too: a registry holds its mappers weakly
        self.Base, self.Article, self.Page, self.Chapter = Base, Article, Page, Chapter
        self.table = table_of(Article)


async def seeded(s: Situation, *, strict: bool = False, **options: Any) -> tuple[Articles, Session]:
    """The models, and a session on a database holding three articles (``t1`` to ``t3``)."""
    models = Articles(s, strict=strict)
    engine = await s.engine(models.Base.metadata, **options)
    session = Session(engine)
    s.request.addfinalizer(session.close)
    session.add_all([models.Article(id=i, title=f"t{i}") for i in (1, 2, 3)])
    session.commit()
    return models, session


@trigger("UPDATE on 'article' changes the primary key", databases=("sqlite",))
async def update_of_the_primary_key(s: Situation) -> list[BaseException]:
    m, session = await seeded(s)
    A = m.Article
    return [caught(lambda: session.execute(sa.update(A).where(A.id == 1).values(id=9)))]


def sqlite_upsert(model: type[Any], target: str) -> Any:
    from sqlalchemy.dialects.sqlite import insert

    stmt = insert(model)
    return stmt.on_conflict_do_update(index_elements=[target], set_={"title": stmt.excluded.title})


@trigger(
    "an upsert (INSERT ... ON CONFLICT / ON DUPLICATE KEY) on 'article' cannot be recorded",
    databases=("sqlite",),
)
async def upsert_on_another_unique_key(s: Situation) -> list[BaseException]:
    m, session = await seeded(s)
    stmt = sqlite_upsert(m.Article, "slug")
    return [caught(lambda: session.execute(stmt, [{"id": 1, "title": "x", "slug": "a"}]))]


@trigger(
    "an upsert (INSERT ... ON CONFLICT / ON DUPLICATE KEY) on 'article' can be recorded only",
    databases=("sqlite",),
)
async def upsert_without_the_key(s: Situation) -> list[BaseException]:
    m, session = await seeded(s)
    stmt = sqlite_upsert(m.Article, "id")
    return [caught(lambda: session.execute(stmt, [{"title": "no key"}]))]


class _Refusing:
    """A DBAPI connection that fails any statement: proves the refusal comes before one."""

    def cursor(self) -> Any:
        raise AssertionError("a statement was sent to the database")

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


@trigger("INSERT ... FROM SELECT on 'article' cannot be recorded on mysql")
def insert_from_select_on_mysql(s: Situation) -> list[BaseException]:
    """On MySQL (whose dialect cannot return inserted keys), without a server: the engine is not
    initialized (that would query the server), and the refusal comes before any statement."""
    m = Articles(s)
    engine = sa.create_engine("mysql+pymysql://", creator=_Refusing, _initialize=False)
    assert engine.dialect.name == "mysql"
    assert not engine.dialect.insert_returning
    t = m.table
    stmt = sa.insert(t).from_select(["title"], sa.select(t.c.title))
    try:
        with Session(engine) as session:
            return [caught(lambda: session.execute(stmt))]
    finally:
        engine.dispose()


@trigger("UPDATE on 'page' cannot be recorded", databases=("sqlite",))
async def statement_on_a_joined_hierarchy(s: Situation) -> list[BaseException]:
    m, session = await seeded(s)
    return [caught(lambda: session.execute(sa.update(m.Page).values(kind="page")))]


@trigger("UPDATE on 'article' with a list of parameter sets", databases=("sqlite",))
async def executemany_without_key_binds(s: Situation) -> list[BaseException]:
    m, session = await seeded(s)
    t = m.table
    stmt = sa.update(t).where(t.c.title == sa.bindparam("old")).values(title="x")
    return [caught(lambda: session.execute(stmt, [{"old": "t1"}, {"old": "t2"}]))]


@trigger("INSERT ... RETURNING on 'article' sent on a connection", databases=("sqlite",))
async def insert_returning_on_the_connection(s: Situation) -> list[BaseException]:
    m, session = await seeded(s, strict=True)
    t = m.table
    connection = session.connection()
    stmt = sa.insert(t).values(title="no key").returning(t.c.title)
    return [caught(lambda: connection.execute(stmt))]


@trigger("UPDATE on 'article': a parameter set has no value", databases=("sqlite",))
async def missing_key_in_a_parameter_set(s: Situation) -> list[BaseException]:
    m, session = await seeded(s)
    t = m.table
    core = sa.delete(t).where(t.c.id == sa.bindparam("key"))
    return [
        caught(
            lambda: session.execute(
                sa.update(m.Article), [{"id": 1, "title": "x"}, {"title": "no key"}]
            )
        ),
        caught(lambda: session.execute(core, [{"key": 1}, {"other": 2}])),
    ]


@trigger("textual SQL writes to the versioned table", databases=("sqlite",))
async def textual_write(s: Situation) -> list[BaseException]:
    _, session = await seeded(s, strict=True)
    write = sa.text("UPDATE article SET title = 'x' WHERE id = 1")
    return [caught(lambda: session.execute(write))]


@trigger("UPDATE on 'article' changed 4 rows", databases=("postgresql", "mariadb"))
async def rows_added_concurrently(s: Situation) -> list[BaseException]:
    """Another transaction commits a matching row between the library's SELECT and the UPDATE,
    which is not restricted to the keys found (more of them than the limit, here 0)."""
    s.monkeypatch.setattr(_bulk, "_RESTRICT_LIMIT", 0)
    m, session = await seeded(s, isolation_level="READ COMMITTED")
    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    other = engine.connect()
    s.request.addfinalizer(other.close)

    def insert_meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE ARTICLE SET"):
            with other.begin():
                other.execute(sa.insert(m.table).values(id=4, title="t4"))

    sa.event.listen(engine, "before_cursor_execute", insert_meanwhile)
    try:
        A = m.Article
        raised = caught(
            lambda: session.execute(sa.update(A).where(A.title.like("t%")).values(title="x"))
        )
        refused = caught(session.commit)
        session.rollback()
        return [raised, refused]
    finally:
        sa.event.remove(engine, "before_cursor_execute", insert_meanwhile)


# versioning_context() input ---------------------------------------------------------------------


def entered(**values: Any) -> Callable[[], None]:
    def enter() -> None:
        with versioning_context(**values):
            pass

    return enter


@trigger("versioning_context(when=...): meta values are stored as JSON")
def meta_value_not_json(s: Situation) -> list[BaseException]:
    return [caught(entered(when=object()))]


@trigger("versioning_context(remote_addr=...) is 51 characters long")
def remote_addr_too_long(s: Situation) -> list[BaseException]:
    return [caught(entered(remote_addr="1" * 51))]


@trigger("versioning_context(remote_addr=...) takes a string")
def remote_addr_not_a_string(s: Situation) -> list[BaseException]:
    return [caught(entered(remote_addr=5))]


# HistoryPrunedError ------------------------------------------------------------------------------


async def pruned_before_3(s: Situation) -> tuple[sa.Engine, type[Any]]:
    """An article with versions at transactions 1, 2 and 3, pruned before 3."""
    engine, Article = await article_version(s)
    with Session(engine) as session:
        for title in ("second", "third"):
            session.get_one(Article, 1).title = title
            session.commit()
    assert prune_sync(engine, Article, before=3) == 2
    return engine, Article


@trigger(
    "the history in 'article_version' before transaction 3 was pruned, so as of",
    databases=("sqlite",),
)
async def as_of_before_the_cut(s: Situation) -> list[BaseException]:
    engine, Article = await pruned_before_3(s)
    with Session(engine) as session:
        return [caught(lambda: session.scalars(select_as_of(Article, 2)).all())]


@trigger(
    "the history in 'article_version' before transaction 3 was pruned, so changes",
    databases=("sqlite",),
)
async def feed_before_the_cut(s: Situation) -> list[BaseException]:
    engine, _ = await pruned_before_3(s)
    with Session(engine) as session:
        return [
            caught(lambda: list(stream_changes_sync(session))),
            caught(lambda: session.execute(select_changes(since=2)).all()),
        ]


# Query functions ---------------------------------------------------------------------------------


@dataclass
class Shop:
    Article: type[Any]
    Tagging: type[Any]


def define_shop(s: Situation) -> Shop:
    make_versioned()

    @s.bases.track
    class Base(DeclarativeBase):
        pass

    class Article(Base):
        __tablename__ = "article"
        __versioned__ = {"exclude": ["view_count"]}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50))
        view_count: Mapped[int] = mapped_column(default=0)

    class Tagging(Base):
        __tablename__ = "tagging"
        __versioned__: dict[str, Any] = {}
        article_id: Mapped[int] = mapped_column(primary_key=True)
        tag: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    sa.orm.configure_mappers()
    return Shop(Article, Tagging)


@trigger("pass the model, not its version class")
def version_class_for_a_model(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    return [caught(lambda: select_as_of(version_class(shop.Article), 1))]


@trigger("Tagging primary key is")
def primary_key_of_the_wrong_shape(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    return [
        caught(lambda: select_version_at(shop.Tagging, 1, 1)),
        caught(lambda: select_version_at(shop.Tagging, {"tag": "news"}, 1)),
    ]


@trigger("select_changed() needs at least one attribute name")
def select_changed_without_attributes(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    return [caught(lambda: select_changed(shop.Article))]


@trigger("Article has no versioned attribute(s)")
def select_changed_of_an_excluded_attribute(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    return [caught(lambda: select_changed(shop.Article, "view_count"))]


@trigger("no versioned classes to read changes from")
def change_feed_of_no_classes(s: Situation) -> list[BaseException]:
    define_shop(s)
    return [caught(lambda: select_changes(classes=[]))]


@trigger("the classes are versioned by different managers")
def change_feed_across_managers(s: Situation) -> list[BaseException]:
    first, second = s.bases(), s.bases()
    s.bases.manager(first)
    s.bases.manager(second)
    Article = define_article(first)
    Comment = define_model(second, "Comment", "comment")
    return [caught(lambda: select_changes(classes=[Article, Comment]))]


@trigger("cannot diff a ArticleVersion with a TaggingVersion")
def diff_of_two_models(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    ArticleVersion: Any = version_class(shop.Article)
    TaggingVersion: Any = version_class(shop.Tagging)
    article = ArticleVersion(id=1, title="a", transaction_id=1)
    tagging = TaggingVersion(article_id=1, tag="news", transaction_id=1)
    return [caught(lambda: diff(article, tagging))]


@trigger("cannot diff versions of two different Article rows")
def diff_of_two_rows(s: Situation) -> list[BaseException]:
    V: Any = version_class(define_shop(s).Article)
    return [caught(lambda: diff(V(id=1, transaction_id=1), V(id=2, transaction_id=1)))]


@trigger("datetime datetime.datetime(2020, 1, 1, 0, 0) must be timezone-aware")
def naive_point_in_history(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    return [caught(lambda: select_as_of(shop.Article, datetime(2020, 1, 1)))]


@trigger("expected a transaction id, a Transaction or an aware datetime")
def point_in_history_of_another_type(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    return [caught(lambda: select_as_of(shop.Article, "yesterday"))]  # type: ignore[arg-type]


@trigger("batch_size must be at least 1")
async def stream_in_empty_batches(s: Situation) -> list[BaseException]:
    define_shop(s)

    async def first_batch() -> object:
        session: Any = None  # the batch size is checked before the session is used
        return [change async for change in stream_changes(session, batch_size=0)]

    return [await caught_async(first_batch)]


@trigger("the change feed is not implemented for mssql")
def change_feed_on_mssql(s: Situation) -> list[BaseException]:
    shop = define_shop(s)
    feed = select_changes(classes=[shop.Article])
    return [caught(lambda: feed.compile(dialect=dialect_named("mssql")))]


# Errors from SQLAlchemy and the drivers ----------------------------------------------------------


@trigger("(builtins.ValueError) expected a timezone-aware datetime", databases=("sqlite",))
async def naive_issued_at_written_by_hand(s: Situation) -> list[BaseException]:
    make_versioned()
    Base = s.bases()
    Tx: Any = transaction_class(define_article(Base))
    engine = await s.engine(Base.metadata)
    with Session(engine) as session:
        session.add(Tx(issued_at=datetime(2020, 1, 1)))
        return [caught(session.flush)]


# --- the tests ----------------------------------------------------------------------------------


def triggers_of(row: Row) -> list[str]:
    return [start for start in TRIGGERS if row.messages[0].startswith(start)]


def test_every_row_has_one_trigger_and_every_trigger_one_row() -> None:
    assert ROWS, "no documented error found in docs/errors.md"
    problems = [
        f"{row.where}: {len(found)} triggers {found} for {row.messages[0]!r}"
        for row in ROWS
        if len(found := triggers_of(row)) != 1
    ]
    for start in TRIGGERS:
        matching = [row.where for row in ROWS if row.messages[0].startswith(start)]
        if len(matching) != 1:
            problems.append(f"trigger {start!r} matches {len(matching)} rows {matching}")
    assert not problems, "\n".join(problems)


def _cases(*, on_a_database: bool) -> list[Any]:
    """(row, database) for the rows whose triggers run on a database (or those that need
    none, and those without a single trigger)."""
    cases = []
    for row in ROWS:
        found = triggers_of(row)
        databases = TRIGGERS[found[0]].databases if len(found) == 1 else ()
        name = found[0] if len(found) == 1 else f"line {row.line}"
        if on_a_database:
            cases += [pytest.param(row, db, id=f"{name}-{db}") for db in databases]
        elif not databases:
            cases.append(pytest.param(row, id=name))
    return cases


async def check(row: Row, situation: Situation) -> None:
    """Provoke ``row``'s situation: each documented message must be the real one."""
    found = triggers_of(row)
    assert len(found) == 1, f"{row.where}: no single trigger provokes {row.messages[0]!r}"
    outcome = TRIGGERS[found[0]].provoke(situation)
    raised = await outcome if inspect.isawaitable(outcome) else outcome
    assert len(raised) == len(row.messages), f"{row.where}: {len(raised)} errors provoked"
    expected = exception_type(row.exception)
    for error, example in zip(raised, row.messages, strict=True):
        message = str(error).split("\n", 1)[0] if row.first_line_only else str(error)
        assert type(error) is expected, (
            f"{row.where}: documented {row.exception}, raised {type(error).__name__}: {message}"
        )
        assert pattern(example).fullmatch(message), (
            f"{row.where}: the documented message is not the real one\n"
            f"documented: {example}\nreal:       {message}"
        )


@pytest.mark.parametrize("row", _cases(on_a_database=False))
async def test_documented_message_is_the_real_one(
    row: Row, bases: Bases, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    await check(row, Situation(bases, request, monkeypatch, None))


@pytest.mark.parametrize(("row", "db"), _cases(on_a_database=True), indirect=["db"])
async def test_documented_message_is_the_real_one_on_a_database(
    row: Row, db: str, bases: Bases, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db not in DATABASES:
        selected = os.environ.get("HISTORY_TEST_DATABASES", "")
        pytest.skip(f"needs {db}, which HISTORY_TEST_DATABASES={selected!r} does not select")
    await check(row, Situation(bases, request, monkeypatch, db))
