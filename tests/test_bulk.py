"""Statements run through ``Session.execute()``: ORM bulk and Core DML recorded like the unit of
work, or refused loudly before they write.

Tests taking ``run`` are written once against a sync ``Session`` and run through
``AsyncSession`` and ``Session`` on every database.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqlalchemy_history_async import (
    Operation,
    UnrecordedWriteError,
    _bulk,
    select_as_of,
    transaction_class,
    versioning_context,
    versioning_disabled,
)

from .conftest import Run, StatementLog, versioned_models
from .models import runtime_version_class, table_of


class Bulk:
    def __init__(self) -> None:
        class Base(DeclarativeBase):
            pass

        class Article(Base):
            __tablename__ = "bulk_article"
            __versioned__: dict[str, Any] = {"exclude": ["views"]}
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(40))
            body: Mapped[str] = mapped_column("body_text", sa.String(40), default="")
            views: Mapped[int] = mapped_column(default=0)
            kind: Mapped[str] = mapped_column(sa.String(10), default="article")
            __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "article"}

        class Review(Article):
            __mapper_args__ = {"polymorphic_identity": "review"}

        class Page(Base):
            __tablename__ = "bulk_page"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            kind: Mapped[str] = mapped_column(sa.String(10))
            __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "page"}

        class Chapter(Page):
            __tablename__ = "bulk_chapter"
            id: Mapped[int] = mapped_column(sa.ForeignKey("bulk_page.id"), primary_key=True)
            heading: Mapped[str] = mapped_column(sa.String(40))
            __mapper_args__ = {"polymorphic_identity": "chapter"}

        class Slug(Base):
            __tablename__ = "bulk_slug"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            slug: Mapped[str] = mapped_column(sa.String(20), unique=True)

        link = sa.Table(
            "bulk_article_tag",
            Base.metadata,
            sa.Column("article_id", sa.ForeignKey("bulk_article.id"), primary_key=True),
            sa.Column("tag_id", sa.ForeignKey("bulk_tag.id"), primary_key=True),
        )

        class Tag(Base):
            __tablename__ = "bulk_tag"
            __versioned__: dict[str, Any] = {}
            id: Mapped[int] = mapped_column(primary_key=True)
            articles: Mapped[list[Article]] = relationship(secondary=link)

        self.Base, self.Article, self.Review, self.Page, self.Chapter = (
            Base,
            Article,
            Review,
            Page,
            Chapter,
        )
        self.Tag, self.link, self.Slug = Tag, link, Slug


models = versioned_models(Bulk)


def history(session: Session, model: type[Any]) -> list[tuple[Any, ...]]:
    """(id, title, body, operation, open?) of every article version, by transaction then id."""
    V = runtime_version_class(model)
    rows = session.execute(
        sa.select(V.id, V.title, V.body, V.operation_type, V.end_transaction_id.is_(None)).order_by(
            V.transaction_id, V.id
        )
    ).all()
    return [tuple(r) for r in rows]


def transactions(session: Session, models: Bulk) -> list[Any]:
    T = transaction_class(models.Article)
    return list(session.scalars(sa.select(T).order_by(T.id)))


def seed(session: Session, models: Bulk) -> None:
    """Three articles, committed (their INSERT versions in one transaction)."""
    session.add_all([models.Article(id=i, title=f"t{i}", body=f"b{i}") for i in (1, 2, 3)])
    session.commit()


def seed_assigned(session: Session, models: Bulk) -> None:
    """:func:`seed` with keys the database assigns (1, 2, 3), so that keys it assigns later
    come after them on every database."""
    session.add_all([models.Article(title=f"t{i}", body=f"b{i}") for i in (1, 2, 3)])
    session.commit()


def after_seed(session: Session, models: Bulk) -> list[tuple[Any, ...]]:
    """The versions written after :func:`seed`'s transaction."""
    first = transactions(session, models)[0].id
    V = runtime_version_class(models.Article)
    rows = session.execute(
        sa.select(V.id, V.title, V.body, V.operation_type, V.end_transaction_id.is_(None))
        .where(V.transaction_id > first)
        .order_by(V.transaction_id, V.id)
    ).all()
    return [tuple(r) for r in rows]


U, D, INS = Operation.UPDATE, Operation.DELETE, Operation.INSERT


@pytest.mark.parametrize("strategy", ["auto", "fetch", "evaluate", False])
async def test_update_where_records_each_changed_row(models: Bulk, run: Run, strategy: Any) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        loaded = session.get(A, 1)
        with versioning_context(user_id="ops", reason="fix"):
            result: Any = session.execute(
                sa.update(A)
                .where(A.title.in_(["t1", "t2"]))
                .values(title=A.title + "!")
                .execution_options(synchronize_session=strategy)
            )
        assert result.rowcount == 2
        session.commit()
        assert after_seed(session, models) == [(1, "t1!", "b1", U, True), (2, "t2!", "b2", U, True)]
        assert [(t.user_id, t.meta) for t in transactions(session, models)][1] == (
            "ops",
            {"reason": "fix"},
        )
        # the INSERT versions of rows 1 and 2 are closed, row 3's is still current
        assert [r[4] for r in history(session, A)[:3]] == [False, False, True]
        tx = transactions(session, models)[-1].id
        assert sorted(a.title for a in session.scalars(select_as_of(A, tx))) == [
            "t1!",
            "t2!",
            "t3",
        ]
        assert loaded is not None

    await run(behaviour)


async def test_update_records_nothing_for_unchanged_rows_or_untracked_columns(
    models: Bulk, run: Run, statements: StatementLog
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        session.execute(sa.update(A).values(views=A.views + 1))  # excluded column only
        session.execute(sa.update(A).where(A.id <= 2).values(title="t1"))  # row 1 keeps "t1"
        session.commit()
        assert after_seed(session, models) == [(2, "t1", "b2", U, True)]
        assert session.scalar(sa.select(sa.func.sum(A.views))) == 3

    await run(behaviour)


async def test_delete_where_records_last_values(models: Bulk, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        session.execute(sa.update(A).where(A.id == 2).values(body="changed"))
        result: Any = session.execute(sa.delete(A).where(A.id >= 2))
        assert result.rowcount == 2
        session.commit()
        assert after_seed(session, models) == [
            (2, "t2", "changed", D, True),
            (3, "t3", "b3", D, True),
        ]
        tx = transactions(session, models)[-1].id
        assert [a.id for a in session.scalars(select_as_of(A, tx))] == [1]

    await run(behaviour)


async def test_update_with_a_subquery_in_the_where_clause(models: Bulk, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        top = sa.select(sa.func.max(A.id)).scalar_subquery()
        session.execute(
            sa.update(A).where(A.id == top).values(title="last"),
            execution_options={"synchronize_session": "fetch"},
        )
        session.commit()
        assert after_seed(session, models) == [(3, "last", "b3", U, True)]

    await run(behaviour)


async def test_single_table_subclass_statements_touch_only_its_rows(models: Bulk, run: Run) -> None:
    A, R = models.Article, models.Review

    def behaviour(session: Session) -> None:
        session.add_all([A(id=1, title="a"), R(id=2, title="r"), R(id=3, title="r")])
        session.commit()
        session.execute(sa.update(R).values(title="x"))
        session.execute(sa.delete(R).where(R.id == 3))
        session.commit()
        assert after_seed(session, models) == [(2, "x", "", U, True), (3, "x", "", D, True)]

    await run(behaviour)


async def test_orm_bulk_insert_with_and_without_keys(models: Bulk, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        session.execute(sa.insert(A), [{"id": 10, "title": "x"}, {"id": 11, "title": "y"}])
        session.execute(sa.insert(A), [{"title": "auto1"}, {"title": "auto2"}])
        session.commit()
        rows = history(session, A)
        assert sorted((r[1], r[3], r[4]) for r in rows) == [
            ("auto1", INS, True),
            ("auto2", INS, True),
            ("x", INS, True),
            ("y", INS, True),
        ]
        assert {r[0] for r in rows} == set(session.scalars(sa.select(A.id)))
        assert len(transactions(session, models)) == 1

    await run(behaviour)


async def test_orm_bulk_insert_returning_gives_the_callers_rows(models: Bulk, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        titles = session.scalars(
            sa.insert(A).returning(A.title), [{"title": "p"}, {"title": "q"}]
        ).all()
        assert sorted(titles) == ["p", "q"]
        made = session.scalars(sa.insert(A).returning(A), [{"title": "r"}]).all()
        assert [a.title for a in made] == ["r"]
        session.commit()
        assert sorted(r[1] for r in history(session, A)) == ["p", "q", "r"]

    await run(behaviour)


async def test_orm_bulk_update_by_primary_key(models: Bulk, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        session.execute(
            sa.update(A), [{"id": 1, "title": "one"}, {"id": 3, "title": "t3"}]
        )  # row 3 unchanged
        session.commit()
        assert after_seed(session, models) == [(1, "one", "b1", U, True)]

    await run(behaviour)


async def test_core_statements_through_the_session(models: Bulk, run: Run) -> None:
    A = models.Article
    t = table_of(A)

    def behaviour(session: Session) -> None:
        result: Any = session.execute(sa.insert(t), [{"title": "c1"}, {"title": "c2"}])
        new_ids = [row[0] for row in result.inserted_primary_key_rows]
        one: Any = session.execute(sa.insert(t).values(title="c3"))
        new_ids.append(one.inserted_primary_key[0])
        session.commit()
        assert sorted(r[0] for r in history(session, A)) == sorted(new_ids)
        session.execute(sa.update(t).where(t.c.title == "c1").values(body_text="core"))
        session.execute(sa.delete(t).where(t.c.title == "c2"))
        session.commit()
        by_id = {r[0]: r for r in history(session, A) if r[4]}
        assert by_id[new_ids[0]][1:4] == ("c1", "core", U)
        assert by_id[new_ids[1]][1:4] == ("c2", "", D)

    await run(behaviour)


async def test_insert_from_select_records_the_new_rows(models: Bulk, run: Run) -> None:
    A = models.Article
    t = table_of(A)

    def behaviour(session: Session) -> None:
        seed_assigned(session, models)
        copy = sa.select(t.c.title + "-copy", t.c.body_text).where(t.c.id <= 2)
        result: Any = session.execute(sa.insert(t).from_select(["title", "body_text"], copy))
        assert result.rowcount == 2
        orm = sa.insert(A).from_select([A.title], sa.select(A.title + "-orm").where(A.id == 3))
        session.execute(orm)
        returned = session.execute(
            sa.insert(t)
            .from_select(["id", "title"], sa.select(t.c.id + 100, t.c.title).where(t.c.id == 1))
            .returning(t.c.title)
        ).all()
        assert [tuple(r) for r in returned] == [("t1",)]
        session.commit()
        assert sorted(r[1:] for r in after_seed(session, models)) == [
            ("t1", "", INS, True),
            ("t1-copy", "b1", INS, True),
            ("t2-copy", "b2", INS, True),
            ("t3-orm", "", INS, True),
        ]
        assert {r[0] for r in history(session, A)} == set(session.scalars(sa.select(A.id)))

    await run(behaviour)


async def test_core_executemany_by_bound_key_records_each_row(models: Bulk, run: Run) -> None:
    t = table_of(models.Article)

    def behaviour(session: Session) -> None:
        seed(session, models)
        by_key = t.c.id == sa.bindparam("b_id")
        session.execute(
            sa.update(t).where(by_key).values(title=sa.bindparam("b_title")),
            [{"b_id": 1, "b_title": "one"}, {"b_id": 2, "b_title": "t2"}],  # row 2 unchanged
        )
        session.execute(sa.delete(t).where(by_key), [{"b_id": 3}, {"b_id": 99}])
        session.commit()
        assert after_seed(session, models) == [(1, "one", "b1", U, True), (3, "t3", "b3", D, True)]

    await run(behaviour)


async def test_legacy_bulk_methods_are_recorded(models: Bulk, run: Run) -> None:
    """``Session.bulk_insert_mappings()`` / ``bulk_save_objects()`` / ``bulk_update_mappings()``
    bypass ``Session.execute()``; their statements are recorded on the session's connection."""
    A = models.Article

    def behaviour(session: Session) -> None:
        seed_assigned(session, models)
        with versioning_context(job="import"):
            session.bulk_insert_mappings(A, [{"id": 10, "title": "keyed"}])
            session.bulk_insert_mappings(A, [{"title": "auto"}, {"title": "auto2"}])
            session.bulk_save_objects([A(id=20, title="object")])
            session.bulk_update_mappings(
                A,
                [{"id": 1, "title": "changed"}, {"id": 2, "title": "t2"}],  # row 2 unchanged
            )
        session.commit()
        rows = sorted(r[1:] for r in after_seed(session, models))
        assert rows == [
            ("auto", "", INS, True),
            ("auto2", "", INS, True),
            ("changed", "b1", U, True),
            ("keyed", "", INS, True),
            ("object", "", INS, True),
        ]
        assert {r[0] for r in history(session, A)} == set(session.scalars(sa.select(A.id)))
        assert transactions(session, models)[-1].meta == {"job": "import"}
        # a flush after the bulk call is recorded by the unit of work, not twice
        session.add(A(id=30, title="flushed"))
        session.get(A, 10).title = "keyed2"  # type: ignore[union-attr]
        session.commit()
        assert sorted(r[1:] for r in after_seed(session, models))[-2:] == [
            ("keyed2", "", U, True),
            ("object", "", INS, True),
        ]
        assert len(after_seed(session, models)) == 7

    await run(behaviour)


async def test_unit_of_work_and_statement_on_one_row_give_one_version(
    models: Bulk, run: Run
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        article = session.get(A, 1)
        assert article is not None
        article.body = "orm"
        session.flush()
        session.execute(
            sa.update(A).where(A.id == 1).values(title="stmt"),
            execution_options={"synchronize_session": False},
        )
        session.add(A(id=4, title="new"))
        session.flush()
        session.execute(sa.update(A).where(A.id == 4).values(title="newer"))
        session.commit()
        assert after_seed(session, models) == [
            (1, "stmt", "orm", U, True),
            (4, "newer", "", INS, True),
        ]

    await run(behaviour)


async def test_orm_delete_after_a_statement_records_the_database_values(
    models: Bulk, run: Run
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        article = session.get(A, 2)
        session.execute(
            sa.update(A).where(A.id == 2).values(title="stmt"),
            execution_options={"synchronize_session": False},
        )
        assert article is not None and article.title == "t2"  # stale in memory
        session.delete(article)
        session.commit()
        assert after_seed(session, models) == [(2, "stmt", "b2", D, True)]

    await run(behaviour)


async def test_rolled_back_savepoint_and_disabled_block_record_nothing(
    models: Bulk, run: Run
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        savepoint = session.begin_nested()
        session.execute(sa.update(A).values(title="gone"))
        savepoint.rollback()
        with versioning_disabled():
            session.execute(sa.update(A).where(A.id == 3).values(title="quiet"))
        session.execute(sa.update(A).where(A.id == 1).values(title="kept"))
        session.commit()
        assert after_seed(session, models) == [(1, "kept", "b1", U, True)]
        assert len(transactions(session, models)) == 2

    await run(behaviour)


def upsert(dialect: str, model: Any, update: bool = True, target: str = "id") -> Any:
    """An INSERT that updates ``title`` (or, ``update=False``, nothing) on a conflict."""
    if dialect == "mariadb":
        from sqlalchemy.dialects.mysql import insert as my_insert

        stmt: Any = my_insert(model)
        changes = {"title": stmt.inserted.title} if update else {"id": stmt.inserted.id}
        return stmt.on_duplicate_key_update(**changes)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(model)
    else:
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        stmt = lite_insert(model)
    if not update:
        return stmt.on_conflict_do_nothing()
    changes = {"title": stmt.excluded.title} if target == "id" else {"id": stmt.excluded.id}
    return stmt.on_conflict_do_update(index_elements=[target], set_=changes)


def refusals(models: Bulk, dialect: str) -> list[tuple[str, Any, Any]]:
    A, C, S = models.Article, models.Chapter, models.Slug
    t = table_of(A)
    if dialect == "mariadb":
        from sqlalchemy.dialects.mysql import insert as my_insert

        on_other_key: Any = my_insert(S).on_duplicate_key_update(slug="x")
    else:
        on_other_key = upsert(dialect, S, target="slug")
    return [
        ("primary key", sa.update(A).where(A.id == 1).values(id=9), None),
        ("another unique constraint", on_other_key, [{"id": 1, "slug": "a"}]),
        ("primary key in every parameter set", upsert(dialect, A), [{"title": "no key"}]),
        ("joined-table inheritance", sa.update(C).values(heading="h"), None),
        (
            "list of parameter sets",
            sa.update(t).where(t.c.title == sa.bindparam("b_old")).values(title="x"),
            [{"b_old": "t1"}, {"b_old": "t2"}],
        ),
        (
            "no value for the primary key",
            sa.delete(t).where(t.c.id == sa.bindparam("b_id")),
            [{"b_id": 1}, {"other": 2}],
        ),
    ]


async def test_statements_that_cannot_be_recorded_are_refused_before_they_write(
    models: Bulk, run: Run, db: str
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        for fragment, stmt, params in refusals(models, db):
            with pytest.raises(UnrecordedWriteError, match=fragment) as raised:
                session.execute(stmt, params)
            message = str(raised.value)
            assert any(
                f"'{name}'" in message for name in ("bulk_article", "bulk_chapter", "bulk_slug")
            )
        session.commit()
        assert [(a.id, a.title) for a in session.scalars(sa.select(A).order_by(A.id))] == [
            (1, "t1"),
            (2, "t2"),
            (3, "t3"),
        ]
        assert after_seed(session, models) == []

    await run(behaviour)


async def test_refused_statements_run_inside_versioning_disabled(models: Bulk, run: Run) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        with versioning_disabled():
            session.execute(sa.update(A).where(A.id == 1).values(id=9))
        session.commit()
        assert session.get(A, 9) is not None
        assert after_seed(session, models) == []

    await run(behaviour)


async def test_history_statements_per_bulk_update(
    models: Bulk, run: Run, statements: StatementLog, face: str
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        session.execute(sa.insert(A), [{"id": i, "title": "x"} for i in range(1, 201)])
        session.commit()
        statements.clear()
        session.execute(sa.update(A).where(A.id > 100).values(title="y"))
        session.commit()
        if face == "async":
            selects = [s for s in statements.statements if s.lstrip().upper().startswith("SELECT")]
            # one SELECT of the rows before the statement, one of their new values after it
            assert len([s for s in selects if "bulk_article" in s and "version" not in s]) == 2
        assert len(after_seed(session, models)) == 100

    await run(behaviour)


async def test_thousands_of_keys_in_one_transaction(
    models: Bulk, run: Run, statements: StatementLog, db: str, face: str
) -> None:
    """More keys than one statement binds one by one: bound in chunks (MariaDB) or as one
    parameter (an array on PostgreSQL, JSON on SQLite); the history is the same."""
    A = models.Article
    V = runtime_version_class(A)
    T = transaction_class(A)
    n = 2500

    def behaviour(session: Session) -> None:
        session.execute(sa.insert(A), [{"id": i, "title": "a"} for i in range(1, n + 1)])
        session.commit()
        session.execute(sa.update(A).where(A.id > 0).values(title="b"))
        session.commit()
        second = session.scalar(sa.select(sa.func.max(T.id)))
        assert second is not None
        session.execute(sa.delete(A).where(A.id <= 1200))
        for article in session.scalars(sa.select(A).where(A.id > 1200).order_by(A.id)).all()[:1100]:
            article.body = "uow"
        statements.clear()
        session.commit()
        if db == "postgresql" and face == "async":
            # one closing UPDATE for the 2,300 keys, one copy of the 1,100 updated rows, one
            # executemany of the deleted rows' last values (not three chunks of 1,000 keys)
            assert len([s for s in statements.statements if "bulk_article_version" in s]) == 3
        current = session.execute(
            sa.select(V.operation_type, sa.func.count())
            .where(V.end_transaction_id.is_(None))
            .group_by(V.operation_type)
        ).all()
        assert dict(current) == {U: 1300, D: 1200}
        assert session.scalar(sa.select(sa.func.count()).select_from(V)) == 2 * n + 1200 + 1100
        as_of = session.scalars(select_as_of(A, second)).all()
        assert len(as_of) == n
        assert {a.title for a in as_of} == {"b"}

    await run(behaviour)


@pytest.mark.parametrize("restricted", [True, False], ids=["restricted", "too-many-keys"])
async def test_row_added_between_the_select_and_the_statement_is_left_alone(
    models: Bulk, db: str, sync_engine: sa.Engine, restricted: bool, monkeypatch: Any
) -> None:
    """READ COMMITTED: another transaction commits a matching row after the library's SELECT
    and before the UPDATE; the UPDATE runs on the rows found, so every changed row has its
    version and the new row is neither changed nor missed. With more keys than a statement
    can be restricted to, the row count shows the row changed without history: the statement
    and the commit are refused."""
    if not restricted:
        monkeypatch.setattr(_bulk, "_RESTRICT_LIMIT", 0)
    if db == "sqlite":
        pytest.skip("SQLite has one writer at a time: no row can appear in between")
    A = models.Article
    engine = sync_engine.execution_options(isolation_level="READ COMMITTED")
    with Session(engine) as setup:
        seed(setup, models)
    other = sync_engine.connect()

    def insert_meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE BULK_ARTICLE SET"):
            with other.begin():
                other.execute(sa.insert(table_of(A)).values(id=4, title="t4", body_text=""))

    sa.event.listen(engine, "before_cursor_execute", insert_meanwhile)
    try:
        with Session(engine) as session:
            stmt = sa.update(A).where(A.title.like("t%")).values(title="x")
            if not restricted:
                with pytest.raises(UnrecordedWriteError, match="changed 4 rows but 3 were found"):
                    session.execute(stmt)
                with pytest.raises(UnrecordedWriteError, match="cannot be committed"):
                    session.commit()
                session.rollback()
                assert session.get(A, 1).title == "t1"  # type: ignore[union-attr]
                return
            result: Any = session.execute(stmt)
            assert result.rowcount == 3
            session.commit()
            assert session.get(A, 4).title == "t4"  # type: ignore[union-attr]
            assert after_seed(session, models) == [
                (1, "x", "b1", U, True),
                (2, "x", "b2", U, True),
                (3, "x", "b3", U, True),
            ]
    finally:
        sa.event.remove(engine, "before_cursor_execute", insert_meanwhile)
        other.close()


async def test_statements_on_an_association_table_record_link_history(
    models: Bulk, run: Run
) -> None:
    link = models.link
    LinkVersion = models.Base.metadata.tables["bulk_article_tag_version"]

    def behaviour(session: Session) -> None:
        seed(session, models)
        session.add_all([models.Tag(id=1), models.Tag(id=2)])
        session.commit()
        session.execute(
            sa.insert(link), [{"article_id": 1, "tag_id": 1}, {"article_id": 2, "tag_id": 1}]
        )
        session.commit()
        session.execute(sa.delete(link).where(link.c.article_id == 2))
        session.commit()
        rows = session.execute(
            sa.select(
                LinkVersion.c.article_id,
                LinkVersion.c.operation_type,
                LinkVersion.c.end_transaction_id.is_(None),
            ).order_by(LinkVersion.c.transaction_id, LinkVersion.c.article_id)
        ).all()
        assert [tuple(r) for r in rows] == [(1, INS, True), (2, INS, False), (2, D, True)]

    await run(behaviour)


async def test_upsert_on_the_primary_key_records_new_and_changed_rows(
    models: Bulk, run: Run, db: str
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        seed(session, models)
        rows = [{"id": 1, "title": "t1"}, {"id": 2, "title": "new2"}, {"id": 7, "title": "t7"}]
        session.execute(upsert(db, A), rows)
        session.execute(
            upsert(db, A, update=False), [{"id": 3, "title": "z"}, {"id": 8, "title": "t8"}]
        )
        session.execute(upsert(db, A).values([{"id": 9, "title": "t9"}, {"id": 1, "title": "one"}]))
        session.commit()
        assert after_seed(session, models) == [
            (1, "one", "b1", U, True),
            (2, "new2", "b2", U, True),
            (7, "t7", "", INS, True),
            (8, "t8", "", INS, True),
            (9, "t9", "", INS, True),
        ]
        assert session.get(A, 3).title == "t3"  # type: ignore[union-attr]

    await run(behaviour)


async def test_criteria_a_session_hook_adds_to_a_delete_are_respected(
    models: Bulk, run: Run
) -> None:
    A = models.Article

    def keep_t2(state: Any) -> None:
        if state.is_delete:
            state.statement = state.statement.options(
                sa.orm.with_loader_criteria(A, A.title != "t2")
            )

    def behaviour(session: Session) -> None:
        seed(session, models)
        sa.event.listen(session, "do_orm_execute", keep_t2)
        result: Any = session.execute(sa.delete(A).where(A.id >= 2))
        assert result.rowcount == 1
        session.commit()
        assert session.get(A, 2) is not None
        assert after_seed(session, models) == [(3, "t3", "b3", D, True)]

    await run(behaviour)
