"""An Alembic round trip as an application runs it: autogenerate → upgrade → add a column to a
versioned model → autogenerate → upgrade → downgrade, with ``render_item`` from
``sqlalchemy_history_async.alembic``. Each command runs in a process of its own, as from a
shell; on every database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import alembic as alembic_package
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from .conftest import reset_schema

REPO = Path(__file__).resolve().parents[1]

MODELS = """
    import os
    from typing import Any

    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    from sqlalchemy_history_async import VersioningManager


    class Base(DeclarativeBase):
        pass


    class User(Base):
        __tablename__ = "user_account"
        id: Mapped[int] = mapped_column(primary_key=True)


    class Article(Base):
        __tablename__ = "article"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(100))
        if os.environ.get("WITH_PRIORITY"):
            priority: Mapped[int] = mapped_column(server_default="3")


    VersioningManager(user_cls=User).install(Base)
    sa.orm.configure_mappers()
"""

ENV = """
    import sqlalchemy as sa
    from alembic import context

    import models
    from sqlalchemy_history_async.alembic import render_item

    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=models.Base.metadata,
            render_item=render_item,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
"""


@pytest.fixture
async def database(async_url: str) -> AsyncIterator[sa.Engine]:
    """A sync engine on an empty database (Alembic's commands are sync)."""
    engine = create_async_engine(async_url)
    await reset_schema(engine, sa.MetaData())
    await engine.dispose()
    url = sa.make_url(async_url)
    drivers = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    sync = sa.create_engine(
        url.set(drivername=drivers.get(url.get_backend_name(), "mysql+pymysql"))
    )
    try:
        yield sync
    finally:
        sync.dispose()


@pytest.fixture
def project(tmp_path: Path, database: sa.Engine) -> Iterator[Path]:
    """An application directory with models, alembic.ini and a migrations folder."""
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS))
    migrations = tmp_path / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(textwrap.dedent(ENV))
    template = Path(alembic_package.__file__ or "").parent / "templates/generic/script.py.mako"
    (migrations / "script.py.mako").write_text(template.read_text())
    url = database.url.render_as_string(hide_password=False).replace("%", "%%")
    (tmp_path / "alembic.ini").write_text(
        f"[alembic]\nscript_location = {migrations}\nsqlalchemy.url = {url}\n"
    )
    yield tmp_path


def alembic(project: Path, *args: str, priority: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(REPO)])}
    env.pop("WITH_PRIORITY", None)
    if priority:
        env["WITH_PRIORITY"] = "1"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "alembic", "-c", str(project / "alembic.ini"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def columns(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def test_round_trip_with_a_new_column(project: Path, database: sa.Engine) -> None:
    alembic(project, "revision", "--autogenerate", "-m", "initial")
    [initial] = (project / "migrations" / "versions").glob("*_initial.py")
    source = initial.read_text()
    assert "import sqlalchemy_history_async" in source
    assert "sqlalchemy_history_async.AwareDateTime()" in source
    assert "sqlalchemy_history_async.OperationType()" in source
    assert "_build" not in source and "UserIdString" not in source
    alembic(project, "upgrade", "head")
    tables = set(sa.inspect(database).get_table_names())
    assert {
        "article",
        "article_version",
        "transaction",
        "transaction_lock",
        "transaction_retention",
    } <= tables
    alembic(project, "check")  # the database matches the models: nothing left to generate

    # Rows written before versioning (here by a connection no session owns) get their
    # baseline version from a hand-written migration.
    with database.begin() as connection:
        connection.execute(sa.text("INSERT INTO article (id, title) VALUES (1, 'old'), (2, 'x')"))
    alembic(project, "revision", "-m", "baseline")
    [adopt] = (project / "migrations" / "versions").glob("*_baseline.py")
    body = "    import models\n    from sqlalchemy_history_async import baseline_sync\n\n"
    body += "    baseline_sync(op.get_bind(), models.Article, batch_size=1)\n"
    text = adopt.read_text()
    upgrade = text.index("def upgrade()")
    at = text.index("    pass\n", upgrade)
    adopt.write_text(text[:at] + body + text[at + len("    pass\n") :])
    alembic(project, "upgrade", "head")
    with database.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, title, operation_type FROM article_version ORDER BY id")
        )
        assert [tuple(r) for r in rows] == [(1, "old", 0), (2, "x", 0)]

    alembic(project, "revision", "--autogenerate", "-m", "priority", priority=True)
    [added] = (project / "migrations" / "versions").glob("*_priority.py")
    text = added.read_text()
    assert "priority" in text
    # the versions written before the column existed get what the rows got: its default
    end = text.index("    # ### end Alembic commands ###\n", text.index("def upgrade()"))
    body = "    import models\n    from sqlalchemy_history_async import backfill_versions_sync\n\n"
    body += '    backfill_versions_sync(op.get_bind(), models.Article, "priority")\n'
    added.write_text(text[:end] + body + text[end:])
    alembic(project, "upgrade", "head", priority=True)
    assert "priority" in columns(database, "article")
    assert "priority" in columns(database, "article_version")
    with database.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, priority FROM article_version ORDER BY id"))
        assert [tuple(r) for r in rows] == [(1, 3), (2, 3)]
    alembic(project, "check", priority=True)

    alembic(project, "downgrade", "-1", priority=True)
    assert "priority" not in columns(database, "article")
    assert "priority" not in columns(database, "article_version")
    if database.dialect.name in ("mysql", "mariadb"):
        # Alembic's generated downgrade drops a table's indexes before the table; InnoDB keeps
        # the index a foreign key needs. docs/migrations.md: delete those drop_index() lines
        # (dropping the table drops its indexes).
        kept = [line for line in source.splitlines() if "op.drop_index(" not in line]
        initial.write_text("\n".join(kept) + "\n")
    alembic(project, "downgrade", "base")
    assert set(sa.inspect(database).get_table_names()) <= {"alembic_version"}
