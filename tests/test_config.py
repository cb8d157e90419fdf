"""Bad configuration and wrong call order: clear errors naming the model and the option at fault.

Version tables and classes are built when a versioned model's ``class`` statement runs, so errors
about a model's own options come from that statement; errors that depend on a user class named by
a string that is not defined yet come from ``configure_mappers()``.

Each test installs its own manager and defines its own models on a fresh declarative base; the
``bases`` fixture removes the manager and disposes every base's registry afterwards, so a
model that failed to build cannot break later tests.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy_history_async import (
    ConfigurationError,
    NotVersionedError,
    Version,
    VersioningError,
    make_versioned,
    parent_class,
    remove_versioning,
    transaction_class,
    version_class,
)

from .conftest import Bases, reset_schema
from .models import define_model, runtime_version_class, table_of


def define_article(base: type[DeclarativeBase], versioned: object = None) -> type[Any]:
    """A small model on ``base``; ``versioned`` is its ``__versioned__`` (``{}`` by default)."""
    return define_model(base, "Article", "article", versioned)


def test_errors_share_one_base_class() -> None:
    assert issubclass(ConfigurationError, VersioningError)
    assert issubclass(NotVersionedError, VersioningError)
    assert not issubclass(ConfigurationError, NotVersionedError)


# --- __versioned__ options --------------------------------------------------------------------


def test_unknown_versioned_key(bases: Bases) -> None:
    make_versioned()
    with pytest.raises(ConfigurationError) as exc:
        define_article(bases(), {"exclude": [], "excludes": ["title"]})
    message = str(exc.value)
    assert "Article" in message
    assert "'excludes'" in message


def test_failed_model_keeps_failing_with_the_same_error(bases: Bases) -> None:
    """A model that failed to build is never left silently unversioned."""
    make_versioned()
    Base = bases()
    with pytest.raises(ConfigurationError) as first:
        define_article(Base, {"bogus": True})
    assert "'bogus'" in str(first.value)
    with pytest.raises(ConfigurationError) as second:
        sa.orm.configure_mappers()
    assert str(second.value) == str(first.value)
    with pytest.raises(ConfigurationError) as third:
        sa.orm.configure_mappers()
    assert str(third.value) == str(first.value)
    assert "article_version" not in Base.metadata.tables


@pytest.mark.parametrize("versioned", [["exclude"], None, True, "exclude"])
def test_versioned_not_a_dict(bases: Bases, versioned: Any) -> None:
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError) as exc:

        class Note(Base):
            __tablename__ = "note"
            __versioned__ = versioned
            id: Mapped[int] = mapped_column(primary_key=True)

    message = str(exc.value)
    assert "Note.__versioned__" in message
    assert "dict" in message
    assert type(versioned).__name__ in message


@pytest.mark.parametrize(
    "exclude",
    ["title", ["title", 1], None, 5, {"title": True}],
    ids=["bare-string", "non-string-item", "none", "int", "dict"],
)
def test_exclude_not_a_list_of_names(bases: Bases, exclude: Any) -> None:
    make_versioned()
    with pytest.raises(ConfigurationError) as exc:
        define_article(bases(), {"exclude": exclude})
    message = str(exc.value)
    assert "Article" in message
    assert "'exclude'" in message
    assert repr(exclude) in message


def test_exclude_names_missing_column(bases: Bases) -> None:
    make_versioned()
    with pytest.raises(ConfigurationError) as exc:
        define_article(bases(), {"exclude": ["title", "no_such_column"]})
    message = str(exc.value)
    assert "Article" in message
    assert "'no_such_column'" in message
    assert "'title'" not in message


def test_exclude_names_relationship_not_column(bases: Bases) -> None:
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "author"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError) as exc:

        class Book(Base):
            __tablename__ = "book"
            __versioned__ = {"exclude": ["author"]}
            id: Mapped[int] = mapped_column(primary_key=True)
            author_id: Mapped[int] = mapped_column(sa.ForeignKey("author.id"))
            author: Mapped[Author] = sa.orm.relationship()

    message = str(exc.value)
    assert "Book" in message
    assert "'author'" in message


def test_exclude_names_primary_key_column(bases: Bases) -> None:
    make_versioned()
    with pytest.raises(ConfigurationError) as exc:
        define_article(bases(), {"exclude": ["id"]})
    message = str(exc.value)
    assert "Article" in message
    assert "primary key" in message
    assert "'id'" in message


@pytest.mark.parametrize("name", ["secret", "secret_"], ids=["column-name", "attribute-name"])
def test_exclude_by_column_or_attribute_name(bases: Bases, name: str) -> None:
    """``exclude`` accepts the column name as well as the attribute name when they differ."""
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    class Account(Base):
        __tablename__ = "account"
        __versioned__ = {"exclude": [name]}
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[str] = mapped_column(sa.String(50))
        secret_: Mapped[str] = mapped_column("secret", sa.String(50))

    sa.orm.configure_mappers()
    V = version_class(Account)
    assert "secret" not in table_of(V).c
    assert set(table_of(V).c.keys()) == {
        "id",
        "owner",
        "transaction_id",
        "end_transaction_id",
        "operation_type",
    }
    assert not hasattr(V, "secret_")
    assert "secret_" not in V.__history_info__.attrs


# --- make_versioned() / remove_versioning() ---------------------------------------------------


def test_user_cls_name_not_found(bases: Bases) -> None:
    make_versioned(user_cls="Nope")
    define_article(bases())  # "Nope" may still be defined later
    with pytest.raises(ConfigurationError) as exc:
        sa.orm.configure_mappers()
    message = str(exc.value)
    assert "user_cls='Nope'" in message
    assert "Article" in message


def test_user_cls_not_mapped(bases: Bases) -> None:
    class Member:
        id = 1

    make_versioned(user_cls=Member)
    with pytest.raises(ConfigurationError) as exc:
        define_article(bases())
    message = str(exc.value)
    assert "user_cls=Member" in message
    assert "not a mapped class" in message


def test_user_cls_of_wrong_kind(bases: Bases) -> None:
    with pytest.raises(ConfigurationError) as exc:
        make_versioned(user_cls=5)  # type: ignore[arg-type]
    message = str(exc.value)
    assert "user_cls" in message
    assert "5" in message


def test_user_cls_with_composite_primary_key(bases: Bases) -> None:
    make_versioned(user_cls="Member")

    @bases.track
    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = "member"
        org: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
        login: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    with pytest.raises(ConfigurationError) as exc:
        define_article(Base)
    message = str(exc.value)
    assert "Member" in message
    assert "single-column primary key" in message
    assert "2" in message


def test_user_cls_and_user_id_type_together(bases: Bases) -> None:
    with pytest.raises(ConfigurationError) as exc:
        make_versioned(user_cls="User", user_id_type=sa.Integer())
    message = str(exc.value)
    assert "user_cls" in message
    assert "user_id_type" in message
    # Nothing was installed: make_versioned() can be called normally.
    make_versioned()


def test_make_versioned_twice(bases: Bases) -> None:
    first = make_versioned()
    with pytest.raises(ConfigurationError) as exc:
        make_versioned()
    message = str(exc.value)
    assert "make_versioned()" in message
    assert "remove_versioning()" in message
    assert first.active  # the first manager is untouched


def test_make_versioned_after_remove_versioning(bases: Bases) -> None:
    first = make_versioned()
    remove_versioning()
    assert not first.active
    second = make_versioned()
    assert second.active
    assert second is not first


def test_remove_versioning_without_manager_is_noop(bases: Bases) -> None:
    remove_versioning()
    remove_versioning()

    manager = make_versioned()
    recorder = manager._recorder
    assert sa.event.contains(Session, "before_flush", recorder.before_flush)
    assert sa.event.contains(Session, "after_flush", recorder.after_flush)
    remove_versioning()
    remove_versioning()
    assert not manager.active
    assert not sa.event.contains(Session, "before_flush", recorder.before_flush)
    assert not sa.event.contains(Session, "after_flush", recorder.after_flush)


# --- version_class() / parent_class() ---------------------------------------------------------


def test_version_class_of_unversioned_model(bases: Bases) -> None:
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    define_article(Base)

    class Plain(Base):
        __tablename__ = "plain"
        id: Mapped[int] = mapped_column(primary_key=True)

    sa.orm.configure_mappers()
    with pytest.raises(NotVersionedError) as exc:
        version_class(Plain)
    message = str(exc.value)
    assert "Plain is not versioned" in message
    assert "__versioned__" in message
    with pytest.raises(NotVersionedError, match="Plain"):
        transaction_class(Plain)


class NotMapped:
    pass


@pytest.mark.parametrize("cls", [object, NotMapped, 42], ids=["object", "plain-class", "int"])
def test_version_class_of_non_mapped(bases: Bases, cls: Any) -> None:
    make_versioned()
    with pytest.raises(NotVersionedError) as exc:
        version_class(cls)
    message = str(exc.value)
    assert repr(cls) in message
    assert "not a mapped class" in message


def test_version_class_of_version_class(bases: Bases) -> None:
    make_versioned()
    Article = define_article(bases())
    V = version_class(Article)
    with pytest.raises(NotVersionedError) as exc:
        version_class(V)
    message = str(exc.value)
    assert "ArticleVersion" in message
    assert "version class" in message


def test_parent_class_of_model(bases: Bases) -> None:
    make_versioned()
    Article = define_article(bases())
    sa.orm.configure_mappers()
    with pytest.raises(NotVersionedError) as exc:
        parent_class(Article)
    message = str(exc.value)
    assert "Article" in message
    assert "not a version class" in message
    with pytest.raises(NotVersionedError, match="NotMapped"):
        parent_class(NotMapped)  # type: ignore[arg-type]  # deliberately not a version class


def test_model_mapped_before_make_versioned(bases: Bases) -> None:
    Article = define_article(bases())
    make_versioned()
    with pytest.raises(NotVersionedError) as exc:
        version_class(Article)
    message = str(exc.value)
    assert "Article is not versioned" in message
    assert "mapped before make_versioned()" in message


def test_version_class_needs_no_configure_call(bases: Bases) -> None:
    """The version class exists once the model is defined; mappers configure on first use."""
    make_versioned()
    Article = define_article(bases())
    assert not sa.inspect(Article).configured

    V = version_class(Article)
    assert issubclass(V, Version)
    assert V.__name__ == "ArticleVersion"
    assert parent_class(V) is Article
    assert transaction_class(V) is transaction_class(Article)
    assert table_of(V).metadata is Article.__table__.metadata

    assert sa.inspect(Article).attrs["versions"].mapper.class_ is V
    assert sa.inspect(Article).configured


# --- version tables exist as soon as the models are defined --------------------------------------


def test_tables_in_metadata_before_configure(bases: Bases) -> None:
    """``metadata.create_all()`` right after the class statements creates the history tables."""
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    Article = define_article(Base)

    class Note(Base):
        __tablename__ = "note"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        article_id: Mapped[int] = mapped_column(sa.ForeignKey("article.id"))

    assert {"article", "article_version", "note", "note_version", "transaction"} <= set(
        Base.metadata.tables
    )
    assert not sa.inspect(Article).configured
    assert not sa.inspect(Note).configured

    engine = sa.create_engine("sqlite://")
    try:
        Base.metadata.create_all(engine)
        insp = sa.inspect(engine)
        assert set(insp.get_table_names()) == {
            "article",
            "article_version",
            "note",
            "note_version",
            "transaction",
            "transaction_lock",
            "transaction_retention",
        }
        assert [c["name"] for c in insp.get_columns("article_version")] == [
            "id",
            "title",
            "transaction_id",
            "end_transaction_id",
            "operation_type",
        ]
        assert [
            (fk["constrained_columns"], fk["referred_table"])
            for fk in insp.get_foreign_keys("note_version")
        ] == [(["transaction_id"], "transaction")]
    finally:
        engine.dispose()
    assert not sa.inspect(Article).configured


def test_user_cls_defined_after_the_versioned_models(bases: Bases) -> None:
    """With ``user_cls`` given by name, building waits until that class is defined."""
    make_versioned(user_cls="User")

    @bases.track
    class Base(DeclarativeBase):
        pass

    Article = define_article(Base)

    class Note(Base):
        __tablename__ = "note"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)

    assert "transaction" not in Base.metadata.tables
    assert "article_version" not in Base.metadata.tables

    class User(Base):
        __tablename__ = "user_account"
        id: Mapped[int] = mapped_column(primary_key=True)

    tables = Base.metadata.tables
    assert {"article_version", "note_version", "transaction"} <= set(tables)
    user_id = tables["transaction"].c.user_id
    assert [fk.target_fullname for fk in user_id.foreign_keys] == ["user_account.id"]
    assert type(user_id.type) is type(User.__table__.c.id.type)
    assert not sa.inspect(Article).configured

    engine = sa.create_engine("sqlite://")
    try:
        Base.metadata.create_all(engine)
        insp = sa.inspect(engine)
        assert {"article_version", "note_version", "transaction", "user_account"} <= set(
            insp.get_table_names()
        )
        assert [
            (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
            for fk in insp.get_foreign_keys("transaction")
        ] == [(["user_id"], "user_account", ["id"])]
    finally:
        engine.dispose()

    sa.orm.configure_mappers()
    assert table_of(version_class(Note)) is tables["note_version"]
    Tx = transaction_class(Article)
    assert Tx is transaction_class(Note)
    assert sa.inspect(Tx).relationships["user"].mapper.class_ is User


def test_user_cls_name_never_defined(bases: Bases) -> None:
    make_versioned(user_cls="User")
    Base = bases()
    define_article(Base)
    assert "article" in Base.metadata.tables
    assert "article_version" not in Base.metadata.tables

    with pytest.raises(ConfigurationError) as exc:
        sa.orm.configure_mappers()
    message = str(exc.value)
    assert "user_cls='User'" in message
    assert "no mapped class of that name" in message
    assert "Article" in message
    with pytest.raises(ConfigurationError) as again:
        sa.orm.configure_mappers()
    assert str(again.value) == message


# --- models that cannot be versioned ----------------------------------------------------------


def test_model_with_column_named_versions(bases: Bases) -> None:
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError) as exc:

        class Release(Base):
            __tablename__ = "release"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            versions: Mapped[str] = mapped_column(sa.String(50))

    message = str(exc.value)
    assert "Release" in message
    assert "'versions'" in message


def test_model_with_python_attribute_named_versions(bases: Bases) -> None:
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError) as exc:

        class Package(Base):
            __tablename__ = "package"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)

            @property
            def versions(self) -> list[str]:
                return []

    message = str(exc.value)
    assert "Package" in message
    assert "'versions'" in message


@pytest.mark.parametrize("kind", ["joined", "single"])
def test_versioned_subclass_of_unversioned_model(bases: Bases, kind: str) -> None:
    make_versioned()

    @bases.track
    class Base(DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = "animal"
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))

    with pytest.raises(ConfigurationError) as exc:
        if kind == "joined":

            class Dog(Animal):
                __tablename__ = "dog"
                __versioned__: dict[str, Any] = {}
                __mapper_args__ = {"polymorphic_identity": "dog"}
                id: Mapped[int] = mapped_column(sa.ForeignKey("animal.id"), primary_key=True)
                breed: Mapped[str | None] = mapped_column(sa.String(20))

        else:

            class Dog(Animal):  # type: ignore[no-redef]
                __versioned__: dict[str, Any] = {}
                __mapper_args__ = {"polymorphic_identity": "dog"}

    message = str(exc.value)
    assert message.startswith("Dog ")
    assert "inherits from Animal, which is not" in message
    assert "__versioned__ on the base class" in message
    assert not [name for name in Base.metadata.tables if name.endswith("_version")]


def test_versioned_models_on_different_metadata(bases: Bases) -> None:
    make_versioned()
    define_article(bases())

    @bases.track
    class Other(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError) as exc:

        class Note(Other):
            __tablename__ = "note"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)

    message = str(exc.value)
    assert "Note" in message
    assert "MetaData" in message


# --- remove_versioning() stops recording --------------------------------------------------------


async def test_nothing_recorded_after_remove_versioning(bases: Bases, async_url: str) -> None:
    make_versioned()
    Base = bases()
    Article = define_article(Base)
    sa.orm.configure_mappers()
    V = runtime_version_class(Article)
    Tx = transaction_class(Article)

    async def counts(session: AsyncSession) -> tuple[int | None, int | None]:
        versions = await session.scalar(sa.select(sa.func.count()).select_from(V))
        transactions = await session.scalar(sa.select(sa.func.count()).select_from(Tx))
        return versions, transactions

    engine = create_async_engine(async_url)
    try:
        await reset_schema(engine, Base.metadata)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            kept = Article(id=1, title="recorded")
            session.add(kept)
            await session.commit()
            assert await counts(session) == (1, 1)

            remove_versioning()
            kept.title = "not recorded"
            session.add(Article(id=2, title="not recorded either"))
            await session.commit()
            await session.delete(kept)
            await session.commit()

            assert await counts(session) == (1, 1)
            remaining = (await session.scalars(sa.select(Article.title))).all()
            assert remaining == ["not recorded either"]
            # Version classes stay mapped: the old history is still readable.
            [v] = (await session.scalars(sa.select(V))).all()
            assert (v.id, v.title, v.end_transaction_id) == (1, "recorded", None)
    finally:
        await engine.dispose()
