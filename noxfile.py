"""Nox sessions for sqlalchemy-history-async.

    nox -s tests                         # lint and test against SQLAlchemy 2.1 and 2.0
                                         # (type-check against 2.1)
    nox -s "tests(sqlalchemy='2.0')"     # a single SQLAlchemy line
    nox -s tests -- -k revert -x         # arguments after ``--`` go to pytest
    nox -s lint                          # ruff + mypy only
    nox -s demo                          # run examples/quickstart.py

The test suite starts its own throwaway PostgreSQL and MariaDB servers (see ``devservers/``,
shared with the benchmarks). Set ``HISTORY_TEST_DATABASES`` to choose the backends, e.g.
``HISTORY_TEST_DATABASES=sqlite,postgresql`` to skip MariaDB; the variable reaches pytest
unchanged because sessions inherit the environment.
"""

from __future__ import annotations

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
