"""The mypy plugin (``sqlalchemy_history_async.mypy``): version classes typed under ``--strict``.

Small user-style modules are written to a temporary directory and checked with mypy in
process. ``# R: <type>`` on a line expects ``reveal_type`` to show that type there, ``# E:
<message>`` expects that error; any other output line fails the test. Three mypy runs: with
the plugin, again with its cache after a change to the reading module (the models module is
then read back from the cache), and without the plugin. The reading module also runs against
SQLite, so the types the plugin claims are checked against the objects the library builds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mypy.api

MODELS = """\
from __future__ import annotations

from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sqlalchemy_history_async import make_versioned, version_class

make_versioned()


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Owner(Base):  # not versioned
    __tablename__ = "owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Project(Base):
    __tablename__ = "project"
    __versioned__: ClassVar[dict[str, Any]] = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    tasks: Mapped[list[Task]] = relationship(back_populates="project")


class Task(Base):
    __tablename__ = "task"
    __versioned__: ClassVar[dict[str, Any]] = {"exclude": ["views"]}
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    title: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str | None] = mapped_column(sa.Text)
    views: Mapped[int] = mapped_column(default=0)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("project.id"))
    project: Mapped[Project] = relationship(back_populates="tasks")
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("owner.id"))
    owner: Mapped[Owner | None] = relationship()
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "task"}


class Bug(Task):  # joined-table inheritance
    __tablename__ = "bug"
    id: Mapped[int] = mapped_column(sa.ForeignKey("task.id"), primary_key=True)
    severity: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "bug"}


TaskVersion = version_class(Task)
"""

APP = """\
import asyncio

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import selectinload
from typing_extensions import reveal_type

from shop import Base, Bug, Owner, Project, Task, TaskVersion
from sqlalchemy_history_async import Version, parent_class, version_class

ProjectVersion = version_class(Project)


async def read(session: AsyncSession, task: Task) -> None:
    reveal_type(task.versions.select())  # R: Select[shop.TaskVersion@history]
    stmt = sa.select(TaskVersion).where(TaskVersion.title == "x")
    reveal_type(stmt)  # R: Select[shop.TaskVersion@history]
    v = (
        await session.scalars(
            stmt.options(
                selectinload(TaskVersion.project).selectinload(ProjectVersion.tasks),
                selectinload(TaskVersion.owner),
                selectinload(TaskVersion.previous),
            )
        )
    ).one()
    reveal_type(v)  # R: shop.TaskVersion@history
    reveal_type(v.title)  # R: str
    reveal_type(v.body)  # R: str | None
    reveal_type(v.transaction_id)  # R: int
    reveal_type(v.previous)  # R: shop.TaskVersion@history | None
    reveal_type(v.project)  # R: shop.ProjectVersion@history
    reveal_type(v.project.tasks)  # R: list[shop.TaskVersion@history]
    reveal_type(v.owner)  # R: shop.Owner | None
    reveal_type(parent_class(TaskVersion))  # R: type[shop.Task]
    generic: Version[Task] = v
    BugVersion = version_class(Bug)
    reveal_type(BugVersion)  # R: def () -> shop.BugVersion@history
    bug = (await session.scalars(sa.select(BugVersion))).one()
    reveal_type(bug.severity)  # R: int
    reveal_type(bug.title)  # R: str

    # What the library built at run time agrees:
    assert type(v).__name__ == "TaskVersion" and isinstance(generic, Version)
    assert isinstance(v.project, ProjectVersion) and isinstance(v.owner, Owner)
    assert sorted(t.title for t in v.project.tasks) == ["b", "x"]
    assert v.previous is None and issubclass(BugVersion, TaskVersion)
    assert not hasattr(v, "views")  # excluded from versioning
    restored = reveal_type(await v.revert())  # R: shop.Task | None
    assert restored is task


def annotated(v: TaskVersion, project: ProjectVersion) -> str:
    return v.title + project.name


async def typo(session: AsyncSession) -> object:
    v = (await session.scalars(sa.select(TaskVersion))).one()
    return v.titel  # E: "TaskVersion" has no attribute "titel"; maybe "title"?  [attr-defined]


async def main() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine, expire_on_commit=False) as session:
        task = Task(title="x", project=Project(name="p"), owner=Owner(name="o"))
        session.add_all([task, Bug(title="b", severity=2, project=task.project)])
        await session.commit()
        await read(session, task)
    await engine.dispose()
    print("ran")


if __name__ == "__main__":
    asyncio.run(main())
"""

# Appended before the second, incremental run: checked against ``shop`` read from the cache.
APP_MORE = """

async def more(session: AsyncSession) -> None:
    v = (await session.scalars(sa.select(version_class(Task)))).one()
    reveal_type(v.project_id)  # R: int
    reveal_type(version_class(Bug)().severity)  # R: int
    v.severity  # E: "TaskVersion" has no attribute "severity"  [attr-defined]
"""


def _write(directory: Path, *, more: bool = False) -> list[str]:
    (directory / "shop.py").write_text(MODELS)
    (directory / "app.py").write_text(APP + (APP_MORE if more else ""))
    return [str(directory / "shop.py"), str(directory / "app.py")]


def _mypy(
    directory: Path, files: list[str], *, plugin: bool, cache: str, log: list[str] | None = None
) -> list[str]:
    """Run mypy; its output lines, normalized. ``log`` collects mypy's verbose log."""
    config = directory / ("plugin.ini" if plugin else "plain.ini")
    config.write_text("[mypy]\n" + ("plugins = sqlalchemy_history_async.mypy\n" if plugin else ""))
    stdout, stderr, _ = mypy.api.run(
        [
            "--strict",
            "--config-file",
            str(config),
            "--cache-dir",
            str(directory / cache),
            "--no-error-summary",
            "--show-traceback",
            *(["--verbose"] if log is not None else []),
            *files,
        ]
    )
    assert "INTERNAL ERROR" not in stdout + stderr, stdout + stderr
    if log is None:
        assert stderr == ""
    else:
        log.extend(stderr.splitlines())
    # SQLAlchemy 2.0 types a select of one entity as Select[tuple[X]], 2.1 as Select[X].
    return [
        re.sub(r"Select\[tuple\[(.*)\]\]", r"Select[\1]", line)
        .replace(f"{directory}/", "")
        .replace("sqlalchemy.sql.selectable.", "")
        .replace("builtins.", "")  # mypy < 2 spells builtins out
        for line in stdout.splitlines()
    ]


def _expected(source: str) -> list[str]:
    expected = []
    for number, line in enumerate(source.splitlines(), start=1):
        if "  # R: " in line:
            revealed = line.split("  # R: ", 1)[1]
            expected.append(f'app.py:{number}: note: Revealed type is "{revealed}"')
        elif "  # E: " in line:
            expected.append(f"app.py:{number}: error: {line.split('  # E: ', 1)[1]}")
    return expected


def _line_of(source: str, text: str) -> int:
    return next(n for n, line in enumerate(source.splitlines(), start=1) if text in line)


def test_plugin_types_version_classes_also_from_the_cache(tmp_path: Path) -> None:
    files = _write(tmp_path)
    first = _mypy(tmp_path, files, plugin=True, cache="cache")
    assert first == _expected(APP)
    assert len(first) == 16  # 15 reveal_type lines and the typo

    (tmp_path / "app.py").write_text(APP + APP_MORE)  # shop.py stays as it was
    log: list[str] = []
    second = _mypy(tmp_path, files, plugin=True, cache="cache", log=log)
    assert second == _expected(APP + APP_MORE)
    # The models module, its version classes included, came from the cache this time.
    assert any(line.startswith("LOG:  Metadata fresh for shop:") for line in log)


def test_without_the_plugin_version_columns_are_any(tmp_path: Path) -> None:
    source = APP + APP_MORE
    out = _mypy(tmp_path, _write(tmp_path, more=True), plugin=False, cache="plain-cache")
    title = _line_of(source, "reveal_type(v.title)")
    assert f'app.py:{title}: note: Revealed type is "Any"' in out
    version = _line_of(source, "reveal_type(v)  #")
    generic = "sqlalchemy_history_async._models.Version[shop.Task]"
    assert f'app.py:{version}: note: Revealed type is "{generic}"' in out
    # The typos are what the plugin reports: without it, ``Version.__getattr__`` accepts them.
    for typo in ("return v.titel", "v.severity  #"):
        line = _line_of(source, typo)
        assert not [o for o in out if o.startswith(f"app.py:{line}:")], out
    # ...while the model's own attributes the plugin adds are missing.
    versions = _line_of(source, "reveal_type(task.versions.select())")
    assert f'app.py:{versions}: error: "Task" has no attribute "versions"  [attr-defined]' in out


def test_reading_module_runs(tmp_path: Path) -> None:
    _write(tmp_path)
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran"
