"""``sqlalchemy_history_async.testing``: the history assertions on every database and both
faces, and the pytest plugin (marker, fixtures) driven as a user's suite would use it."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from sqlalchemy_history_async import Operation, versioning_context
from sqlalchemy_history_async.testing import (
    Recorded,
    assert_history,
    assert_history_sync,
    select_history,
)

from .conftest import Run
from .models import Models


async def test_assert_history_passes_and_returns_the_versions(
    models: Models, session: AsyncSession
) -> None:
    session.add(models.User(id=7, name="seven"))
    article = models.Article(title="a", body="b")
    session.add(article)
    await session.commit()
    with versioning_context(user_id=7, reason="edit"):
        article.title = "a2"
        await session.commit()
    versions = await assert_history(
        session,
        article,
        operations=["INSERT", Operation.UPDATE],
        changed=[{"id", "title", "body", "status_", "created"}, {"title"}],
        actors=[None, 7],
        meta=[None, {"reason": "edit"}],
    )
    assert [v.title for v in versions] == ["a", "a2"]
    await assert_history(
        session,
        (models.Article, article.id),
        changes=[versions[0].changeset, {"title": ["a", "a2"]}],
    )


async def test_assert_history_reports_the_recorded_history(
    models: Models, session: AsyncSession
) -> None:
    article = models.Article(title="a")
    session.add(article)
    await session.commit()
    with pytest.raises(AssertionError) as failed:
        await assert_history(session, article, operations=["INSERT", "DELETE"], actors=[None])
    message = str(failed.value)
    assert f"the history of Article({article.id}) is not the expected one" in message
    assert "operations: expected ['INSERT', 'DELETE'], recorded ['INSERT']" in message
    assert "actors" not in message  # what matches is not reported
    assert "INSERT" in message.splitlines()[-1]


async def test_bad_targets_and_operations_are_refused(
    models: Models, session: AsyncSession
) -> None:
    with pytest.raises(ValueError, match="no primary key yet"):
        await assert_history(session, models.Article(title="unsaved"))
    with pytest.raises(TypeError, match="a mapped object or"):
        select_history(42)
    article = models.Article(title="a")
    session.add(article)
    await session.commit()
    with pytest.raises(ValueError, match="'CREATE' is not INSERT, UPDATE or DELETE"):
        await assert_history(session, article, operations=["CREATE"])


async def test_assert_history_sync_on_both_faces(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        article = models.Article(title="x")
        session.add(article)
        session.commit()
        key = article.id
        session.delete(article)
        session.commit()
        versions = assert_history_sync(
            session,
            (models.Article, key),
            operations=["INSERT", "DELETE"],
            changed=[{"id", "title", "status_", "created"}, set()],
        )
        assert len(versions) == 2
        assert Recorded(versions[1].transaction_id, Operation.DELETE, {}, None, None).changes == {}

    await run(behaviour)


SUITE = """
    import pytest
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    from sqlalchemy_history_async import VersioningManager
    from sqlalchemy_history_async.testing import assert_history, assert_history_sync


    class Base(DeclarativeBase):
        pass


    class User(Base):
        __tablename__ = "user_account"
        id: Mapped[int] = mapped_column(primary_key=True)


    class Article(Base):
        __tablename__ = "article"
        __versioned__ = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        status: Mapped[str] = mapped_column(default="draft")


    VersioningManager(user_cls=User).install(Base)
    sa.orm.configure_mappers()


    @pytest.fixture
    async def session(tmp_path):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            session.add(User(id=7))
            await session.commit()
            yield session
        await engine.dispose()


    async def test_publishing_is_recorded(session, history_actor):
        article = Article(title="a")
        session.add(article)
        await session.commit()
        history_actor(user_id=7, reason="publish")
        article.status = "published"
        await session.commit()
        await assert_history(
            session,
            article,
            operations=["INSERT", "UPDATE"],
            changed=[{"id", "title", "status"}, {"status"}],
            actors=[None, 7],
            meta=[None, {"reason": "publish"}],
        )


    async def test_wrong_expectation_fails(session):
        article = Article(title="a")
        session.add(article)
        await session.commit()
        await assert_history(session, article, operations=["INSERT", "UPDATE"])


    @pytest.mark.history_disabled
    async def test_marker_turns_recording_off(session):
        session.add(Article(id=5, title="quiet"))
        await session.commit()
        await assert_history(session, (Article, 5), operations=[])


    async def test_fixture_turns_recording_off(session, history_disabled):
        session.add(Article(id=6, title="quiet"))
        await session.commit()
        await assert_history(session, (Article, 6), operations=[])


    async def test_recording_is_on_again(session):
        session.add(Article(id=8, title="loud"))
        await session.commit()
        await assert_history(session, (Article, 8), operations=["INSERT"])


    def test_sync_session(tmp_path):
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(Article(id=1, title="s"))
            session.commit()
            assert_history_sync(session, (Article, 1), operations=["INSERT"], actors=[None])
        engine.dispose()
"""


def test_plugin_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        asyncio_mode = "auto"
        asyncio_default_fixture_loop_scope = "function"
        filterwarnings = ["error"]
        """
    )
    pytester.makepyfile(test_app=textwrap.dedent(SUITE))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1)
    output = result.stdout.str()
    for line in (
        "the history of Article(1) is not the expected one:",
        "operations: expected ['INSERT', 'UPDATE'], recorded ['INSERT']",
        "recorded history (oldest first):",
        "FAILED test_app.py::test_wrong_expectation_fails",
    ):
        assert line in output, output
    result.stdout.re_match_lines([r".*tx 1 +INSERT user_id=None +changes=\{'id': \[None, 1\].*"])


def test_marker_is_declared(pytestconfig: pytest.Config) -> None:
    markers: Any = pytestconfig.getini("markers")
    assert any(str(m).startswith("history_disabled:") for m in markers)
