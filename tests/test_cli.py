"""The ``history`` command, run as a user runs it: a subprocess against a database the test
filled through the library, with the models of ``tests/cli_models.py``."""

from __future__ import annotations

import importlib
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from sqlalchemy_history_async import remove_versioning, versioning_context, versioning_disabled

from .conftest import reset_schema

ROOT = Path(__file__).resolve().parents[1]
#: the console script installed with the package, next to this interpreter
SCRIPT = Path(sys.executable).with_name("history")
#: variables that would change what the command prints or where it reads from
OWN_VARIABLES = {"HISTORY_DATABASE_URL", "HISTORY_MODELS"}
COLOUR_VARIABLES = {"NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM"}

TIMES = {
    1: datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc),
    2: datetime(2024, 5, 2, 9, 0, tzinfo=timezone.utc),
    3: datetime(2024, 5, 3, 9, 30, 15, 250000, tzinfo=timezone.utc),
    4: datetime(2024, 5, 4, 18, 45, tzinfo=timezone.utc),
}


# --- the application's database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    """``tests.cli_models``, imported (``make_versioned()`` and all) for this module only."""
    module = importlib.import_module("tests.cli_models")
    sa.orm.configure_mappers()
    try:
        yield module
    finally:
        remove_versioning()
        module.Base.registry.dispose()
        sys.modules.pop("tests.cli_models", None)


def write_history(session: Session, m: Any) -> None:
    """Transactions 1-4, as an application writes them (``m``: the ``tests.cli_models``
    module, imported by the ``app`` fixture only)."""
    news = m.Tag(id=1, name="news")
    session.add_all(
        [
            m.Article(id=1, title="Hello", tags=[news]),
            m.Article(id=2, title="Draft"),
            m.Translation(article_id=1, lang="fr", title="Bonjour"),
        ]
    )
    with versioning_context(user_id="alice", remote_addr="203.0.113.7", reason="import"):
        session.commit()
    article = session.get_one(m.Article, 1)
    article.title, article.body = "Hello, world", "Text"
    with versioning_context(user_id="bob"):
        session.commit()
    session.delete(session.get_one(m.Article, 2))
    with versioning_context(user_id="alice", reason="cleanup"):
        session.commit()
    article.title = "Hello again"
    session.get_one(m.Translation, (1, "fr")).title = "Salut"
    session.commit()


async def populate(app: Any, url: str) -> None:
    """An empty schema, :func:`write_history`, and fixed times for the transactions."""
    engine = create_async_engine(url)
    try:
        await reset_schema(engine, app.Base.metadata)
        async with AsyncSession(engine, expire_on_commit=False) as session:
            await session.run_sync(write_history, app)
        transactions = app.Base.metadata.tables["transaction"]
        async with engine.begin() as conn:
            for tx, when in TIMES.items():
                await conn.execute(
                    sa.update(transactions).where(transactions.c.id == tx).values(issued_at=when)
                )
    finally:
        await engine.dispose()


@pytest.fixture
async def database(app: Any, async_url: str) -> str:
    """The async URL of a database holding :func:`write_history`'s history."""
    await populate(app, async_url)
    return async_url


def sync_url(async_url: str) -> str:
    """The same database through a sync driver (sqlite3, psycopg, PyMySQL)."""
    url = sa.make_url(async_url)
    backend = url.get_backend_name()
    drivers = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}
    url = url.set(drivername=drivers.get(backend, f"{backend}+pymysql"))
    return url.render_as_string(hide_password=False)


async def execute(url: str, *statements: Any) -> None:
    """Run statements on the database, outside the library (as a broken migration would)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
    finally:
        await engine.dispose()


# --- running the command ----------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code in (0, 1), self.err
        return json.loads(self.out)

    @property
    def message(self) -> str:
        """stderr without Rich's panel borders, on one line."""
        return " ".join(re.sub("[│╭╮╰╯─]", " ", self.err).split())

    def rows(self) -> list[list[str]]:
        """The cells of the table printed on stdout, one list per line: the header, then the
        body."""
        lines = [line for line in self.out.splitlines() if line.startswith(("┃", "│"))]
        return [[cell.strip() for cell in re.split("[┃│]", line)[1:-1]] for line in lines]


def environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in OWN_VARIABLES | COLOUR_VARIABLES and not k.startswith("COLUMNS")
    }
    env.update(COLUMNS="200", PYTHONWARNINGS="error", **extra)
    return env


def history(
    *args: str,
    url: str | None,
    models: str | None = "tests.cli_models",
    script: bool = False,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Result:
    """Run ``history COMMAND --url URL --models MODELS ARGS``: the console script, or
    ``python -m``."""
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "sqlalchemy_history_async.cli"]
    command.append(args[0])  # the command's name, then the options (before any `--`)
    if url is not None:
        command += ["--url", url]
    if models is not None:
        command += ["--models", models]
    command += args[1:]
    done = subprocess.run(
        command,
        cwd=cwd,
        env=environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(done.returncode, done.stdout, done.stderr)


#: ``log --json`` entries by transaction id
ENTRIES: dict[int, dict[str, Any]] = {
    4: {
        "id": 4,
        "issued_at": "2024-05-04T18:45:00+00:00",
        "user_id": None,
        "remote_addr": None,
        "meta": None,
        "versions": {"cli_article": 1, "cli_translation": 1},
    },
    3: {
        "id": 3,
        "issued_at": "2024-05-03T09:30:15.250000+00:00",
        "user_id": "alice",
        "remote_addr": None,
        "meta": {"reason": "cleanup"},
        "versions": {"cli_article": 1},
    },
    2: {
        "id": 2,
        "issued_at": "2024-05-02T09:00:00+00:00",
        "user_id": "bob",
        "remote_addr": None,
        "meta": None,
        "versions": {"cli_article": 1},
    },
    1: {
        "id": 1,
        "issued_at": "2024-05-01T09:00:00+00:00",
        "user_id": "alice",
        "remote_addr": "203.0.113.7",
        "meta": {"reason": "import"},
        "versions": {"cli_article": 2, "cli_article_tag": 1, "cli_tag": 1, "cli_translation": 1},
    },
}


def page(*ids: int, next_before: int | None = None) -> dict[str, Any]:
    return {"transactions": [ENTRIES[i] for i in ids], "next_before": next_before}


def article_version(
    index: int, tx: int, end: int | None, operation: str, values: dict[str, Any]
) -> dict[str, Any]:
    """A version of an article, as ``show --json`` prints it (without its changeset)."""
    entry = ENTRIES[tx]
    return {
        "index": index,
        "transaction_id": tx,
        "end_transaction_id": end,
        "issued_at": entry["issued_at"],
        "user_id": entry["user_id"],
        "remote_addr": entry["remote_addr"],
        "meta": entry["meta"],
        "operation": operation,
        "values": values,
    }


ARTICLE_1 = [
    article_version(0, 1, 2, "INSERT", {"id": 1, "title": "Hello", "body": None}),
    article_version(1, 2, 4, "UPDATE", {"id": 1, "title": "Hello, world", "body": "Text"}),
    article_version(2, 4, None, "UPDATE", {"id": 1, "title": "Hello again", "body": "Text"}),
]
HEAD_1 = {"model": "Article", "table": "cli_article", "key": {"id": 1}}


# --- log ----------------------------------------------------------------------------------------


def test_log_pages_and_filters(database: str) -> None:
    assert history("log", "--json", url=database).json() == page(4, 3, 2, 1)
    assert history("log", "--json", "--limit", "2", url=database).json() == page(
        4, 3, next_before=3
    )
    assert history("log", "--json", "--limit", "2", "--before", "3", url=database).json() == (
        page(2, 1)
    )
    assert history("log", "--json", "--limit", "3", "--page", "2", url=database).json() == (page(1))
    assert history("log", "--json", "--model", "Translation", url=database).json() == page(4, 1)
    assert history("log", "--json", "--model", "Article", "--key", "2", url=database).json() == (
        page(3, 1)
    )
    # a naive datetime is UTC: one second after transaction 1
    assert history(
        "log", "--json", "--user", "alice", "--since", "2024-05-01T09:00:01", url=database
    ).json() == page(3)
    assert history(
        "log", "--json", "--since", "2", "--until", "2024-05-03T09:30:15.25Z", url=database
    ).json() == page(3, 2)


def test_log_table_through_the_console_script_and_a_sync_driver(database: str) -> None:
    url = sync_url(database)
    assert not sa.make_url(url).get_dialect().is_async
    # the URL and the models from the environment
    env = {"HISTORY_DATABASE_URL": url, "HISTORY_MODELS": "tests.cli_models"}
    shown = history("log", url=None, models=None, script=True, env=env)
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == "Transactions (newest first)"
    header, *rows = shown.rows()
    assert header == [
        "Transaction",
        "Issued at",
        "Actor",
        "Remote address",
        "Meta",
        "Versions",
    ]
    assert rows == [
        ["4", "2024-05-04 18:45:00+00:00", "", "", "", "cli_article: 1, cli_translation: 1"],
        ["3", "2024-05-03 09:30:15+00:00", "alice", "", '{"reason": "cleanup"}', "cli_article: 1"],
        ["2", "2024-05-02 09:00:00+00:00", "bob", "", "", "cli_article: 1"],
        [
            "1",
            "2024-05-01 09:00:00+00:00",
            "alice",
            "203.0.113.7",
            '{"reason": "import"}',
            "cli_article: 2, cli_article_tag: 1, cli_tag: 1, cli_translation: 1",
        ],
    ]
    assert "\x1b[" not in shown.out  # no colour when piped
    # the same history through the sync and the async driver
    assert history("log", "--json", url=url, script=True).json() == page(4, 3, 2, 1)
    paged = history("log", "--limit", "3", url=url)
    assert [row[0] for row in paged.rows()[1:]] == ["4", "3", "2"]
    assert paged.out.splitlines()[-1] == "More: --before 2"


# --- show, diff, as-of --------------------------------------------------------------------------


def test_show(database: str) -> None:
    changesets = [
        {"id": [None, 1], "title": [None, "Hello"]},
        {"title": ["Hello", "Hello, world"], "body": [None, "Text"]},
        {"title": ["Hello, world", "Hello again"]},
    ]
    assert history("show", "Article", "1", "--json", url=database).json() == {
        **HEAD_1,
        "versions": [
            {**version, "changeset": changes}
            for version, changes in zip(ARTICLE_1, changesets, strict=True)
        ],
    }
    deleted = history("show", "cli_article", "2", "--json", url=database).json()
    assert [
        (v["operation"], v["end_transaction_id"], v["changeset"]) for v in deleted["versions"]
    ] == [
        ("INSERT", 3, {"id": [None, 2], "title": [None, "Draft"]}),
        ("DELETE", None, {}),
    ]
    assert deleted["versions"][1]["values"] == {"id": 2, "title": "Draft", "body": None}
    # composite keys: comma-separated or JSON
    by_json = history(
        "show", "Translation", '{"article_id": 1, "lang": "fr"}', "--json", url=database
    )
    by_text = history("show", "tests.cli_models.Translation", "1,fr", "--json", url=database)
    assert by_json.json() == by_text.json()
    assert by_json.json()["key"] == {"article_id": 1, "lang": "fr"}
    assert [v["values"]["title"] for v in by_json.json()["versions"]] == ["Bonjour", "Salut"]

    shown = history("show", "Article", "1", url=database)
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == "Article id=1: 3 versions"
    assert shown.rows() == [
        ["Index", "Transaction", "Issued at", "Actor", "Operation", "Changes"],
        ["0", "1", "2024-05-01 09:00:00+00:00", "alice", "INSERT", "id: null → 1"],
        ["", "", "", "", "", 'title: null → "Hello"'],
        ["1", "2", "2024-05-02 09:00:00+00:00", "bob", "UPDATE", 'title: "Hello" → "Hello, world"'],
        ["", "", "", "", "", 'body: null → "Text"'],
        [
            "2",
            "4",
            "2024-05-04 18:45:00+00:00",
            "",
            "UPDATE",
            'title: "Hello, world" → "Hello again"',
        ],
    ]
    missing = history("show", "Article", "99", url=database)
    assert (missing.code, missing.out) == (0, "Article id=99 has no versions.\n")
    assert history("show", "Article", "99", "--json", url=database).json() == {
        **HEAD_1,
        "key": {"id": 99},
        "versions": [],
    }


def test_diff(database: str) -> None:
    first, second, last = ARTICLE_1
    assert history("diff", "Article", "1", "1", "4", "--json", url=database).json() == {
        **HEAD_1,
        "from": first,
        "to": last,
        "changes": {"title": ["Hello", "Hello again"], "body": [None, "Text"]},
    }
    # at transaction 3 the row was as transaction 2 left it
    assert history("diff", "Article", "1", "3", "4", "--json", url=database).json() == {
        **HEAD_1,
        "from": second,
        "to": last,
        "changes": {"title": ["Hello, world", "Hello again"]},
    }
    by_index = history("diff", "Article", "1", "--index", "--json", "--", "0", "-1", url=database)
    assert by_index.json()["changes"] == {"title": ["Hello", "Hello again"], "body": [None, "Text"]}

    shown = history("diff", "Article", "1", "1", "4", url=database)
    assert shown.out.splitlines()[0] == "Article id=1: transaction 1 (INSERT) → 4 (UPDATE)"
    assert shown.rows() == [
        ["Attribute", "From", "To"],
        ["title", '"Hello"', '"Hello again"'],
        ["body", "null", '"Text"'],
    ]
    same = history("diff", "Article", "1", "2", "3", url=database)
    assert same.out == "Article id=1: transaction 2 (UPDATE) → 2 (UPDATE): no differences.\n"

    gone = history("diff", "Article", "2", "1", "3", url=database)
    assert gone.code == 2
    assert "Invalid value for 'TO': Article id=2 did not exist at transaction 3" in gone.message
    far = history("diff", "Article", "1", "--index", "--", "0", "5", url=database)
    assert far.code == 2
    assert "Invalid value for 'TO': Article id=1 has 3 versions: no version 5" in far.message


def test_as_of(database: str) -> None:
    first, second, _ = ARTICLE_1
    assert history("as-of", "Article", "1", "3", "--json", url=database).json() == {
        **HEAD_1,
        "at": 3,
        "exists": True,
        "version": second,
    }
    assert history(
        "as-of", "Article", "1", "2024-05-01T12:00:00+00:00", "--json", url=database
    ).json() == {**HEAD_1, "at": "2024-05-01T12:00:00+00:00", "exists": True, "version": first}
    assert history("as-of", "Article", "2", "3", "--json", url=database).json() == {
        **HEAD_1,
        "key": {"id": 2},
        "at": 3,
        "exists": False,
        "version": None,
    }
    shown = history("as-of", "Article", "1", "2024-05-04T18:45Z", url=database)
    assert shown.out.splitlines()[0] == (
        "Article id=1 at 2024-05-04 18:45:00+00:00 (version of transaction 4, UPDATE)"
    )
    assert shown.rows() == [
        ["Attribute", "Value"],
        ["id", "1"],
        ["title", '"Hello again"'],
        ["body", '"Text"'],
    ]
    before = history("as-of", "Article", "1", "2000-01-01", url=database)
    assert (before.code, before.out) == (
        0,
        "Article id=1 did not exist at 2000-01-01 00:00:00+00:00.\n",
    )


# --- check and baseline -------------------------------------------------------------------------

TABLES = [
    "cli_article_tag_version",
    "cli_article_version",
    "cli_tag_version",
    "cli_translation_version",
]


async def test_check(app: Any, database: str) -> None:
    clean = history("check", url=database)
    assert (clean.code, clean.out) == (0, "No problems found in 4 version tables.\n")
    assert history("check", "--json", url=database).json() == {
        "ok": True,
        "tables": TABLES,
        "problems": [],
    }
    # the open version of article 1 closed by a transaction that does not exist
    vt = app.Base.metadata.tables["cli_article_version"]
    await execute(
        database,
        sa.update(vt).where(vt.c.id == 1, vt.c.transaction_id == 4).values(end_transaction_id=99),
    )
    found = history("check", "--json", url=database)
    assert found.code == 1
    key = {"id": 1}
    assert found.json() == {
        "ok": False,
        "tables": TABLES,
        "problems": [
            {
                "kind": "no_open_version",
                "table": "cli_article_version",
                "key": key,
                "transaction_id": None,
                "column": None,
                "detail": "the row exists, but every version of it is closed",
            },
            {
                "kind": "broken_chain",
                "table": "cli_article_version",
                "key": key,
                "transaction_id": 4,
                "column": None,
                "detail": "the version of transaction 4 ends at transaction 99, which wrote no "
                "version of the row",
            },
            {
                "kind": "missing_transaction",
                "table": "cli_article_version",
                "key": key,
                "transaction_id": 4,
                "column": None,
                "detail": "the version of transaction 4 names transaction 99, which closed it: "
                "no such row in 'transaction'",
            },
        ],
    }
    shown = history("check", url=database)
    assert shown.code == 1
    assert shown.out.splitlines()[0] == "3 problems found"
    assert [row[:3] for row in shown.rows()] == [
        ["Problem", "Table", "Key"],
        ["no_open_version", "cli_article_version", "id=1"],
        ["broken_chain", "cli_article_version", "id=1"],
        ["missing_transaction", "cli_article_version", "id=1"],
    ]
    # other models are fine
    only_tags = history("check", "--model", "Tag", "--json", url=database)
    assert (only_tags.code, only_tags.json()["tables"]) == (0, ["cli_tag_version"])


async def test_baseline(app: Any, database: str) -> None:
    engine = create_async_engine(database)
    try:
        async with AsyncSession(engine) as session:
            with versioning_disabled():  # rows written before versioning
                session.add_all([app.Article(id=i, title=f"old {i}") for i in (5, 6, 7)])
                await session.commit()
    finally:
        await engine.dispose()
    before = history("check", "--json", url=database)
    assert before.code == 1
    assert [(p["kind"], p["key"]) for p in before.json()["problems"]] == [
        ("unversioned_row", {"id": i}) for i in (5, 6, 7)
    ]
    made = history(
        "baseline", "Article", "--batch-size", "2", "--user", "ops", "--reason", "backfill",
        "--json", url=database,
    )  # fmt: skip
    assert made.json() == {"model": "Article", "table": "cli_article", "rows": 3}
    (stamp,) = history("log", "--json", "--limit", "1", url=database).json()["transactions"]
    assert {k: v for k, v in stamp.items() if k != "issued_at"} == {
        "id": 5,
        "user_id": "ops",
        "remote_addr": None,
        "meta": {"reason": "backfill", "baseline": "cli_article"},
        "versions": {"cli_article": 3},
    }
    assert [
        v["operation"]
        for v in history("show", "Article", "6", "--json", url=database).json()["versions"]
    ] == ["INSERT"]
    again = history("baseline", "Article", url=database)
    assert (again.code, again.out) == (0, "Article: 0 rows got a version.\n")
    assert "Article" in again.err  # the progress bar, on stderr
    assert history("check", url=database).code == 0


def test_prune(database: str) -> None:
    # through the sync driver too: the command commits one transaction per batch either way
    for url in (database, sync_url(database)):
        pruned = history("prune", "Article", "--before", "2", "--json", url=url)
        assert pruned.json() == {
            "models": ["Article"],
            "before": 2,
            "keep_last": None,
            "deleted": 1 if url == database else 0,  # article 1's first version; then nothing
        }
    kept = history("show", "Article", "1", "--json", url=database).json()["versions"]
    assert [(v["transaction_id"], v["operation"]) for v in kept] == [(2, "UPDATE"), (4, "UPDATE")]
    refused = history("as-of", "Article", "1", "1", url=database)
    assert refused.code == 2
    assert (
        "Error: the history in 'cli_article_version' before transaction 2 was pruned, so as of "
        "transaction 1 cannot be answered completely; ask for transaction 2 or later"
    ) in refused.message
    at_cut = history("as-of", "Article", "1", "2", "--json", url=database).json()
    assert at_cut["version"]["values"]["title"] == "Hello, world"
    last = history("prune", "Article", "--keep-last", "1", "--batch-size", "1", url=database)
    assert (last.code, last.out) == (0, "Article: 2 versions deleted.\n")
    assert "versions deleted" in last.err  # the progress line, on stderr
    kept = history("show", "Article", "1", "--json", url=database).json()["versions"]
    assert [v["transaction_id"] for v in kept] == [4]
    assert history("check", url=database).code == 0  # the chains left are consistent
    neither = history("prune", "Article", url=database)
    assert neither.code == 2
    assert "give either --before WHEN or --keep-last N" in neither.message


# --- errors -------------------------------------------------------------------------------------


@pytest.fixture
def empty_database(tmp_path: Path) -> str:
    """A SQLite file without the application's tables."""
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "Foo", "1"], "Invalid value for 'MODEL': unknown model 'Foo'; the versioned "
         "models are: Article, Tag, Translation"),
        (["show", "Article", "abc"], "Invalid value for 'KEY': bad key 'abc' for Article "
         "(primary key: id): invalid literal for int() with base 10: 'abc'"),
        (["show", "Translation", "1"], "Invalid value for 'KEY': bad key '1' for Translation "
         "(primary key: article_id, lang)"),
        (["log", "--model", "Nope"], "Invalid value for '--model': unknown model 'Nope'"),
        (["log", "--page", "2", "--before", "3"], "Invalid value for '--before': give --page "
         "or --before, not both"),
        (["log", "--key", "1"], "Invalid value for '--key': --key needs exactly one --model"),
        (["log", "--since", "yesterday"], "Invalid value for '--since': 'yesterday' is neither "
         "a transaction id nor an ISO 8601 datetime"),
        (["as-of", "Article", "1", "soon"], "Invalid value for 'WHEN': 'soon' is neither a "
         "transaction id nor an ISO 8601 datetime"),
        (["log", "--limit", "0"], "Invalid value for '--limit'"),
        (["log", "--models", "nope.models"], "Invalid value for '--models': cannot import "
         "'nope.models': No module named 'nope'"),
    ],
    ids=lambda value: "-".join(value)[:40] if isinstance(value, list) else "",
)  # fmt: skip
def test_usage_errors_name_what_is_wrong(
    empty_database: str, args: list[str], message: str
) -> None:
    failed = history(*args, url=empty_database)
    assert failed.code == 2, failed.err
    assert message in failed.message
    assert failed.out == ""


def test_models_that_are_not_versioned(empty_database: str) -> None:
    failed = history("log", url=empty_database, models="json")
    assert failed.code == 2
    assert "Invalid value for '--models': found no versioned models in json" in failed.message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "Invalid value for '--url': 'nonsense' is not a database URL"),
        ("foo://x", "Invalid value for '--url': unknown database or driver 'foo' in 'foo://x'"),
        ("sqlite:///no/such/file.db", "Invalid value for '--url': no SQLite database file at "
         "'no/such/file.db'"),
        ("postgresql+asyncpg://me:secret@127.0.0.1:1/app", "Invalid value for '--url': cannot "
         "connect to postgresql+asyncpg://me:***@127.0.0.1:1/app"),
        ("postgresql+psycopg://me:secret@127.0.0.1:1/app", "Invalid value for '--url': cannot "
         "connect to postgresql+psycopg://me:***@127.0.0.1:1/app"),
    ],
    ids=["not-a-url", "unknown-driver", "no-file", "refused-async", "refused-sync"],
)  # fmt: skip
def test_bad_urls(url: str, message: str) -> None:
    failed = history("show", "Article", "1", url=url)
    assert failed.code == 2
    assert message in failed.message
    assert "secret" not in failed.err


def test_missing_url() -> None:
    failed = history("log", url=None)
    assert failed.code == 2
    assert "Missing option '--url'" in failed.message
    assert "HISTORY_DATABASE_URL" in failed.message


def test_a_database_without_history_tables(empty_database: str) -> None:
    failed = history("log", url=empty_database)
    assert failed.code == 3
    assert failed.message == (
        "Error: the database failed a statement: (sqlite3.OperationalError) no such table: "
        "transaction"
    )


# --- terminals, imports, scoped managers ----------------------------------------------------------


async def test_colour_on_a_terminal_and_not_when_piped(app: Any, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    await populate(app, url)
    command = [str(SCRIPT), "show", "Article", "1", "--url", url, "--models", "tests.cli_models"]
    env = environment(TERM="xterm-256color")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the terminal closed
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    on_terminal = output.decode()
    assert "\x1b[" in on_terminal
    assert "\x1b[32mINSERT" in on_terminal  # green
    assert "\x1b[33mUPDATE" in on_terminal  # yellow
    piped = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0
    assert "INSERT" in piped.stdout
    assert "\x1b[" not in piped.stdout


def test_importing_the_library_does_not_import_the_cli_dependencies() -> None:
    probe = (
        "import sys, sqlalchemy_history_async; "
        "print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "[]\n"


SCOPED_APP = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy_history_async import VersioningManager


class ShopBase(DeclarativeBase):
    pass


class BlogBase(DeclarativeBase):
    pass


shop_history = VersioningManager().install(ShopBase)
blog_history = VersioningManager(transaction_table="blog_transaction").install(BlogBase)


class Order(ShopBase):
    __tablename__ = "shop_order"
    __versioned__ = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


class Post(BlogBase):
    __tablename__ = "post"
    __versioned__ = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))


def seed(url):
    engine = sa.create_engine(url)
    for base in (ShopBase, BlogBase):
        base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Order(id=1, total=5), Post(id=1, title="Hi")])
        session.commit()
        session.get(Order, 1).total = 7
        session.commit()
    engine.dispose()
"""


def test_models_of_scoped_managers(tmp_path: Path) -> None:
    (tmp_path / "scoped_app.py").write_text(textwrap.dedent(SCOPED_APP))
    url = f"sqlite:///{tmp_path / 'scoped.db'}"
    subprocess.run(
        [sys.executable, "-c", f"import scoped_app; scoped_app.seed({url!r})"],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )

    def run(*args: str) -> Result:
        # the console script imports --models from the current directory, as `python -m` would
        return history(*args, url=url, models="scoped_app", script=True, cwd=tmp_path)

    mixed = run("log", "--json")
    assert mixed.code == 2
    assert (
        "the models are versioned by several managers (transaction tables blog_transaction, "
        "transaction): choose the models of one with --model" in mixed.message
    )
    posts = run("log", "--json", "--model", "Post").json()["transactions"]
    assert [(t["id"], t["versions"]) for t in posts] == [(1, {"post": 1})]
    orders = run("show", "Order", "1", "--json").json()["versions"]
    assert [(v["transaction_id"], v["operation"], v["changeset"]) for v in orders] == [
        (1, "INSERT", {"id": [None, 1], "total": [None, 5]}),
        (2, "UPDATE", {"total": [5, 7]}),
    ]
    assert run("check", "--json").json() == {
        "ok": True,
        "tables": ["post_version", "shop_order_version"],
        "problems": [],
    }
