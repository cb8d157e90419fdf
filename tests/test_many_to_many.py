"""Many-to-many: association tables are versioned, and version classes follow their history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from sqlalchemy_history_async import (
    Operation,
    baseline_sync,
    prune,
    select_changes,
    versioning_disabled,
)

from .conftest import Run, StatementLog, versioned_models
from .models import runtime_version_class


@dataclass
class Catalog:
    Base: type[DeclarativeBase]
    Article: type[Any]
    Tag: type[Any]
    Shelf: type[Any]
    article_tag: sa.Table
    shelf_article: sa.Table


def define_catalog() -> Catalog:
    class Base(AsyncAttrs, DeclarativeBase):
        pass

    # no primary key at all
    article_tag = sa.Table(
        "article_tag",
        Base.metadata,
        sa.Column("article_id", sa.ForeignKey("article.id"), nullable=False),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), nullable=False),
    )
    # a surrogate primary key and an extra column with a server default
    shelf_article = sa.Table(
        "shelf_article",
        Base.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("shelf_id", sa.Integer, sa.ForeignKey("shelf.id"), nullable=False),
        sa.Column("article_id", sa.Integer, sa.ForeignKey("article.id"), nullable=False),
        sa.Column("note", sa.String(20), server_default="placed"),
    )

    class Article(Base):
        __tablename__ = "article"
        __versioned__ = {"track_relationships": True}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50))
        tags: Mapped[list[Tag]] = relationship(secondary=article_tag, back_populates="articles")

    class Tag(Base):
        __tablename__ = "tag"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        articles: Mapped[list[Article]] = relationship(secondary=article_tag, back_populates="tags")

    class Shelf(Base):
        __tablename__ = "shelf"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        articles: Mapped[list[Article]] = relationship(secondary="shelf_article")

    return Catalog(Base, Article, Tag, Shelf, article_tag, shelf_article)


models = versioned_models(define_catalog)


def test_association_version_tables(models: Catalog) -> None:
    tables = models.Base.metadata.tables
    link = tables["article_tag_version"]
    assert [c.name for c in link.primary_key] == ["article_id", "tag_id", "transaction_id"]
    shelf = tables["shelf_article_version"]
    assert [c.name for c in shelf.primary_key] == ["shelf_id", "article_id", "transaction_id"]
    assert {"id", "note", "end_transaction_id", "operation_type"} <= set(shelf.c.keys())


async def link_rows(session: AsyncSession, table: str) -> list[tuple[Any, ...]]:
    rows = await session.execute(
        sa.text(
            f"SELECT article_id, tag_id, transaction_id, end_transaction_id, operation_type "
            f"FROM {table} ORDER BY transaction_id, article_id, tag_id"
        )
    )
    return [tuple(r) for r in rows]


async def test_links_are_versioned(models: Catalog, session: AsyncSession) -> None:
    a = models.Article(title="a")
    x, y = models.Tag(name="x"), models.Tag(name="y")
    a.tags = [x, y]
    session.add(a)
    await session.commit()  # tx 1
    a.tags.remove(x)
    await session.commit()  # tx 2
    a.tags.remove(y)
    await session.flush()
    a.tags.append(y)  # removed and re-added in one transaction
    await session.commit()  # tx 3

    assert await link_rows(session, "article_tag_version") == [
        (a.id, x.id, 1, 2, Operation.INSERT),
        (a.id, y.id, 1, 3, Operation.INSERT),
        (a.id, x.id, 2, None, Operation.DELETE),
        (a.id, y.id, 3, None, Operation.UPDATE),
    ]


async def test_added_then_removed_link_leaves_no_trace(
    models: Catalog, session: AsyncSession
) -> None:
    a, t = models.Article(title="a", tags=[]), models.Tag(name="t")
    session.add_all([a, t])
    await session.commit()
    a.tags.append(t)
    await session.flush()
    a.tags.remove(t)
    await session.commit()
    rows = await link_rows(session, "article_tag_version")
    assert rows == []


async def test_statements_per_flush_do_not_grow_with_history(
    models: Catalog, session: AsyncSession, statements: StatementLog
) -> None:
    a, t = models.Article(title="a", tags=[]), models.Tag(name="t")
    session.add_all([a, t])
    await session.commit()
    counts = []
    for _ in range(30):
        a.tags.append(t)
        await session.commit()
        statements.clear()
        a.tags.remove(t)
        await session.commit()
        counts.append(len(statements.statements))
    assert len(set(counts)) == 1, counts
    assert counts[0] <= 8


async def test_deleting_an_owner_closes_its_links(models: Catalog, session: AsyncSession) -> None:
    a = models.Article(title="a", tags=[models.Tag(name="t")])
    session.add(a)
    await session.commit()
    await session.delete(a)
    await session.commit()
    rows = await link_rows(session, "article_tag_version")
    assert [r[4] for r in rows] == [Operation.INSERT, Operation.DELETE]


async def test_association_with_surrogate_key_and_extra_column(
    models: Catalog, session: AsyncSession
) -> None:
    shelf, a = models.Shelf(), models.Article(title="a")
    shelf.articles.append(a)
    session.add(shelf)
    await session.commit()
    rows = (
        await session.execute(
            sa.text("SELECT shelf_id, article_id, note, operation_type FROM shelf_article_version")
        )
    ).all()
    assert [tuple(r) for r in rows] == [(shelf.id, a.id, "placed", Operation.INSERT)]


async def test_temporal_many_to_many(models: Catalog, session: AsyncSession) -> None:
    a = models.Article(title="a")
    x, y = models.Tag(name="x"), models.Tag(name="y")
    a.tags = [x, y]
    session.add(a)
    await session.commit()  # tx 1
    x.name = "x2"
    await session.commit()  # tx 2: tag renamed (the article is not versioned)
    a.tags.remove(x)
    await session.commit()  # tx 3: link removed: track_relationships versions the article

    AV, TV = runtime_version_class(models.Article), runtime_version_class(models.Tag)
    versions = (
        await session.scalars(
            sa.select(AV).order_by(AV.transaction_id).options(selectinload(AV.tags))
        )
    ).all()
    assert [(v.transaction_id, sorted(t.name for t in v.tags)) for v in versions] == [
        (1, ["x", "y"]),
        (3, ["y"]),
    ]
    tag_versions = (await session.scalars(sa.select(TV).order_by(TV.transaction_id, TV.id))).all()
    assert [
        (t.name, t.transaction_id, [v.transaction_id for v in await t.awaitable_attrs.articles])
        for t in tag_versions
    ] == [("x", 1, [1]), ("y", 1, [1]), ("x2", 2, [1])]


async def test_temporal_links_load_lazily_in_sync_code(models: Catalog, run: Run) -> None:
    def behaviour(s: Session) -> None:
        a = models.Article(title="sync", tags=[models.Tag(name="s")])
        s.add(a)
        s.commit()
        a.tags.clear()
        s.commit()
        first, second = s.scalars(a.versions.select()).all()
        assert [t.name for t in first.tags] == ["s"]
        assert second.tags == []

    await run(behaviour)


async def test_revert_restores_links(models: Catalog, session: AsyncSession) -> None:
    a = models.Article(title="a")
    x, y = models.Tag(name="x"), models.Tag(name="y")
    a.tags = [x, y]
    session.add(a)
    await session.commit()
    a.tags = [models.Tag(name="z")]
    await session.delete(y)
    await session.commit()

    first = await session.scalar(a.versions.select().limit(1))
    assert first is not None
    await first.revert(relations=["tags"])
    await session.commit()
    assert sorted(t.name for t in await a.awaitable_attrs.tags) == ["x", "y"]  # y re-created
    assert await session.get(models.Tag, y.id) is not None


async def test_link_changes_are_in_the_change_feed(models: Catalog, run: Run) -> None:
    def behaviour(session: Session) -> None:
        tag = models.Tag(id=1, name="news")
        article = models.Article(id=1, title="a", tags=[tag])
        session.add(article)
        session.commit()
        article.tags.clear()
        session.commit()
        rows = session.execute(select_changes(classes=[models.Article])).all()
        assert [(r.table, r.primary_key, r.operation) for r in rows] == [
            ("article", {"id": 1}, Operation.INSERT),
            ("article_tag", {"article_id": 1, "tag_id": 1}, Operation.INSERT),
            ("article", {"id": 1}, Operation.UPDATE),  # track_relationships: the owner too
            ("article_tag", {"article_id": 1, "tag_id": 1}, Operation.DELETE),
        ]
        # the links of the classes read only: Shelf's are not Article's business here
        tables = {r.table for r in session.execute(select_changes(classes=[models.Shelf]))}
        assert tables <= {"shelf", "shelf_article"}

    await run(behaviour)


async def test_baseline_gives_existing_links_a_version(models: Catalog, run: Run) -> None:
    def behaviour(session: Session) -> None:
        with versioning_disabled():  # written before the models were versioned
            x, y = models.Tag(name="x"), models.Tag(name="y")
            session.add(models.Article(id=1, title="a", tags=[x, y]))
            session.commit()
        made = baseline_sync(session, models.Article, models.Tag)
        session.commit()
        assert made == 5  # the article, its two tags and its two links, in one transaction
        T = runtime_version_class(models.Article).transaction.property.mapper.class_
        (stamp,) = session.scalars(sa.select(T)).all()
        assert stamp.meta == {"baseline": "article, tag"}
        rows = session.execute(
            sa.text(
                "SELECT article_id, tag_id, end_transaction_id, operation_type "
                "FROM article_tag_version ORDER BY tag_id"
            )
        )
        assert [tuple(r) for r in rows] == [
            (1, x.id, None, Operation.INSERT),
            (1, y.id, None, Operation.INSERT),
        ]
        assert baseline_sync(session, models.Article, models.Tag) == 0  # nothing left to do
        # the baselined version shows its links, and removing one closes the link's version
        V = runtime_version_class(models.Article)
        first = session.scalars(sa.select(V)).one()
        assert sorted(t.name for t in first.tags) == ["x", "y"]
        article = session.get(models.Article, 1)
        assert article is not None
        article.tags.remove(x)
        session.commit()
        ops = session.execute(
            sa.text(
                "SELECT tag_id, operation_type, end_transaction_id IS NULL "
                "FROM article_tag_version ORDER BY transaction_id, tag_id"
            )
        )
        assert [tuple(r) for r in ops] == [
            (x.id, Operation.INSERT, False),
            (y.id, Operation.INSERT, True),
            (x.id, Operation.DELETE, True),
        ]

    await run(behaviour)


async def test_prune_prunes_the_links_the_same_way(
    models: Catalog, engine: AsyncEngine, session: AsyncSession
) -> None:
    a = models.Article(title="a")
    x, y = models.Tag(name="x"), models.Tag(name="y")
    a.tags = [x]
    session.add_all([a, y])
    await session.commit()  # tx 1
    a.tags = [y]
    await session.commit()  # tx 2
    a.title = "b"
    await session.commit()  # tx 3
    await session.close()
    assert await prune(engine, models.Article, before=2) == 3  # a@1, x's link added and removed
    assert await link_rows(session, "article_tag_version") == [
        (a.id, y.id, 2, None, Operation.INSERT)
    ]
    V = runtime_version_class(models.Article)
    kept = (
        await session.scalars(sa.select(V).order_by(V.transaction_id).options(selectinload(V.tags)))
    ).all()
    assert [(v.transaction_id, [t.name for t in v.tags]) for v in kept] == [(2, ["y"]), (3, ["y"])]
