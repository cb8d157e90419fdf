"""Nox sessions for sqlalchemy-history-async.

    nox -s tests                         # lint and test against SQLAlchemy 2.1 and 2.0
                                         # (type-check against 2.1)
    nox -s "tests(sqlalchemy='2.0')"     # a single SQLAlchemy line
    nox -s tests -- -k revert -x         # arguments after ``--`` go to pytest
    nox -s lint                          # ruff + mypy only
    nox -s demo                          # run examples/quickstart.py
    nox -s docs                          # build the documentation site into build/site
                                         # (mkdocs, strict: a warning fails it)
    nox -s package                       # build sdist and wheel, twine check --strict,
                                         # check what the distributions contain

The test suite starts its own throwaway PostgreSQL and MariaDB servers (see ``devservers/``,
shared with the benchmarks). Set ``HISTORY_TEST_DATABASES`` to choose the backends, e.g.
``HISTORY_TEST_DATABASES=sqlite,postgresql`` to skip MariaDB; the variable reaches pytest
unchanged because sessions inherit the environment.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
import tempfile
import zipfile

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

SQLALCHEMY_LINES = {"2.1": ">=2.1,<2.2", "2.0": ">=2.0,<2.1"}


#: The SQLAlchemy line whose typing the code is checked against.
TYPED_LINE = "2.1"


def _lint(session: nox.Session, *, typecheck: bool = True) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    if typecheck:
        session.run("mypy")


@nox.session
@nox.parametrize("sqlalchemy", list(SQLALCHEMY_LINES))
def tests(session: nox.Session, sqlalchemy: str) -> None:
    """Lint and run the test suite against one SQLAlchemy release line (type-check on 2.1)."""
    session.install("-e", ".[test,lint]")
    session.install(f"sqlalchemy[asyncio]{SQLALCHEMY_LINES[sqlalchemy]}")
    session.run("python", "-c", "import sqlalchemy; print('SQLAlchemy', sqlalchemy.__version__)")
    # mypy runs against SQLAlchemy 2.1 only. The two lines type ``Select`` incompatibly: 2.0
    # spells a statement ``Select[tuple[X]]``, 2.1 ``Select[X]`` (a TypeVarTuple), and no
    # annotation satisfies both. The code follows 2.1; the 2.0 session runs the tests, which
    # check the same code at run time.
    _lint(session, typecheck=sqlalchemy == TYPED_LINE)
    session.run("pytest", *(session.posargs or ["-q", "-ra"]))


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint and formatting) and mypy (against SQLAlchemy 2.1) only."""
    session.install("-e", ".[test,lint]")
    session.install(f"sqlalchemy[asyncio]{SQLALCHEMY_LINES[TYPED_LINE]}")
    _lint(session)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the quickstart example on SQLite."""
    session.install("-e", ".[aiosqlite]")
    session.run("python", "examples/quickstart.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side benchmark against SQLAlchemy-History and SQLAlchemy-Continuum.

    Arguments after ``--`` go to ``benchmarks/run.py``: ``nox -s bench -- --quick`` for a smoke
    run, ``--db``, ``--workloads``, ``--modes``, ``--repeats N``, ``--report`` to rewrite
    docs/benchmarks.md and docs/benchmarks.png (see ``--help``). Each competitor gets its own
    virtualenv next to this session's, reused while its pins are unchanged.
    """
    import os.path

    session.install("-e", ".[aiosqlite,asyncpg]", "matplotlib")
    envs_dir = os.path.join(os.path.dirname(session.virtualenv.location), "bench-envs")
    session.run("python", "benchmarks/run.py", "--envs-dir", envs_dir, *session.posargs)


@nox.session
def randomized(session: nox.Session) -> None:
    """The randomized model test of history with its long profile (not run by default).

    Runs only ``tests/test_randomized.py`` with ``HISTORY_RANDOMIZED_PROFILE=long``: the
    hypothesis state machine for at least 10,000 seeded, reproducible steps per database
    (``HISTORY_TEST_DATABASES`` selects the databases, as for ``tests``). Arguments after
    ``--`` go to pytest.
    """
    session.install("-e", ".[test]")
    session.install(f"sqlalchemy[asyncio]{SQLALCHEMY_LINES['2.1']}")
    session.run(
        "pytest",
        "tests/test_randomized.py",
        *(session.posargs or ["-q", "-ra"]),
        env={"HISTORY_RANDOMIZED_PROFILE": "long"},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs.yml) into build/site, in strict mode.

    A warning fails the build: a broken link between pages or to a heading, a page missing
    from the navigation, a docstring the API reference cannot render. Arguments after ``--``
    go to ``mkdocs build`` (e.g. ``--site-dir DIR``); ``mkdocs serve`` from this session's
    virtualenv previews the site.
    """
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


#: Paths (relative to the sdist's top directory) that must stay in the repository: benchmark
#: runners and results, CI and development tooling, build and cache output.
SDIST_FORBIDDEN = re.compile(
    r"^(benchmarks/|\.ci/|\.github/|\.nox/|\.venv/|build/|dist/|site/|noxfile\.py$)"
    r"|(^|/)(__pycache__|\.mypy_cache|\.ruff_cache|\.pytest_cache)/"
    r"|\.(py[cod]|db)$"
)
#: Files the sdist must hold (its tests run from it: tests/ needs devservers/ and examples/).
SDIST_REQUIRED = (
    "PKG-INFO",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "sqlalchemy_history_async/__init__.py",
    "sqlalchemy_history_async/py.typed",
    "tests/conftest.py",
    "devservers/__init__.py",
    "examples/quickstart.py",
    "docs/index.md",
)
#: Markdown links and images whose target is a relative path: broken on the package index.
RELATIVE_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel, ``twine check --strict`` them, and check their contents.

    Fails listing what is wrong: development-only files in the sdist (benchmarks and their
    results, CI and nox files, caches), files it lacks, a wheel without ``py.typed`` or with
    files outside the package, relative links in the README (the package index's project
    page). Builds into a temporary directory, leaving ``dist/`` alone.
    """
    session.install("build", "twine")
    with open("README.md", encoding="utf-8") as readme:
        relative = RELATIVE_LINK.findall(readme.read())
    if relative:
        session.error(
            "README.md has relative links, broken on the package index; use absolute URLs:\n  "
            + "\n  ".join(relative)
        )
    with tempfile.TemporaryDirectory(prefix="sqlalchemy-history-async-dist-") as outdir:
        session.run("python", "-m", "build", "--outdir", outdir)
        (sdist,) = glob.glob(os.path.join(outdir, "*.tar.gz"))
        (wheel,) = glob.glob(os.path.join(outdir, "*.whl"))
        session.run("twine", "check", "--strict", sdist, wheel)

        with tarfile.open(sdist) as archive:
            # Every member sits under the "<name>-<version>/" top directory.
            files = [m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()]
        offenders = sorted(n for n in files if SDIST_FORBIDDEN.search(n))
        if offenders:
            session.error(
                f"{os.path.basename(sdist)} holds development-only files "
                "(see [tool.hatch.build.targets.sdist] in pyproject.toml):\n  "
                + "\n  ".join(offenders)
            )
        missing = [n for n in SDIST_REQUIRED if n not in files]
        if missing:
            session.error(f"{os.path.basename(sdist)} lacks:\n  " + "\n  ".join(missing))

        with zipfile.ZipFile(wheel) as archive:
            wheel_files = archive.namelist()
        if "sqlalchemy_history_async/py.typed" not in wheel_files:
            session.error(f"{os.path.basename(wheel)} lacks sqlalchemy_history_async/py.typed")
        stray = sorted(
            n
            for n in wheel_files
            if not n.startswith(("sqlalchemy_history_async/", "sqlalchemy_history_async-"))
        )
        if stray:
            session.error(
                f"{os.path.basename(wheel)} holds files outside the package:\n  "
                + "\n  ".join(stray)
            )
        session.log(
            f"{os.path.basename(sdist)}: {len(files)} files; "
            f"{os.path.basename(wheel)}: {len(wheel_files)} files"
        )
