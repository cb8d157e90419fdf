"""The generated schema: version tables and the transaction table, in Python and in the database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sqlalchemy_history_async import (
    AwareDateTime,
    Operation,
    Transaction,
    Version,
    parent_class,
    transaction_class,
    version_class,
    versioning_context,
)
from sqlalchemy_history_async._schema import build_transaction_table, build_version_table

from .conftest import Run, dialect_named
from .models import Models, runtime_version_class, table_of

VERSIONED = ["Article", "Comment", "Tagging"]
ADDED_COLUMNS = ["transaction_id", "end_transaction_id", "operation_type"]
EXCLUDED = {"Article": {"view_count"}, "Comment": set(), "Tagging": set()}
PARENT_KEY = {"Article": ("id",), "Comment": ("id",), "Tagging": ("article_id", "tag")}
# Databases with partial indexes, where the "one open version per row" index is created.
PARTIAL_INDEX_DIALECTS = ("postgresql", "sqlite", "mssql")


def model(models: Models, name: str) -> type[Any]:
    cls: type[Any] = getattr(models, name)
    return cls


def version_table(models: Models, name: str) -> sa.Table:
    return table_of(version_class(model(models, name)))


def tx_table(models: Models) -> sa.Table:
    return table_of(transaction_class(models.Article))


def assert_current_index(vt: sa.Table, key: tuple[str, ...]) -> sa.Index:
    """Check ``vt``'s only unique index: the partial one over open versions of ``key``."""
    [ix] = [ix for ix in vt.indexes if ix.unique]
    assert ix.name == f"ix_{vt.name}_current"
    assert tuple(c.name for c in ix.columns) == key
    for name in PARTIAL_INDEX_DIALECTS:
        where = ix.dialect_options[name]["where"]
        assert where is not None, name
        assert str(where) == f"{vt.name}.end_transaction_id IS NULL", name
    for name in PARTIAL_INDEX_DIALECTS:
        ddl = str(sa.schema.CreateIndex(ix).compile(dialect=dialect_named(name)))
        assert ddl.startswith("CREATE UNIQUE INDEX"), ddl
        assert ddl.endswith("WHERE end_transaction_id IS NULL"), ddl
    return ix


# --- version tables, as built -----------------------------------------------------------------


@pytest.mark.parametrize("name", VERSIONED)
def test_version_table_name(models: Models, name: str) -> None:
    parent = model(models, name).__table__
    vt = version_table(models, name)
    assert vt.name == f"{parent.name}_version"
    assert vt.metadata is parent.metadata
    assert vt.schema == parent.schema


@pytest.mark.parametrize("name", VERSIONED)
def test_version_columns_copy_tracked_parent_columns(models: Models, name: str) -> None:
    parent = model(models, name).__table__
    vt = version_table(models, name)
    tracked = [c for c in parent.c if c.name not in EXCLUDED[name]]

    assert [c.name for c in vt.c] == [c.name for c in tracked] + ADDED_COLUMNS
    for pc in tracked:
        vc = vt.c[pc.key]
        assert vc.name == pc.name
        assert type(vc.type) is type(pc.type)
        assert repr(vc.type) == repr(pc.type)


def test_excluded_column_absent(models: Models) -> None:
    vt = version_table(models, "Article")
    assert "view_count" in models.Article.__table__.c
    assert "view_count" not in vt.c
    assert not hasattr(version_class(models.Article), "view_count")


def test_column_named_differently_from_attribute(models: Models) -> None:
    V = runtime_version_class(models.Article)
    vt = table_of(V)
    assert "status" in vt.c
    assert V.status_.property.columns[0] is vt.c.status


@pytest.mark.parametrize(
    ("name", "pk"),
    [
        ("Article", ["id", "transaction_id"]),
        ("Comment", ["id", "transaction_id"]),
        ("Tagging", ["article_id", "tag", "transaction_id"]),
    ],
)
def test_version_primary_key_is_parent_key_plus_transaction_id(
    models: Models, name: str, pk: list[str]
) -> None:
    parent_pk = [c.name for c in model(models, name).__table__.primary_key]
    vt = version_table(models, name)
    assert [c.name for c in vt.primary_key] == pk
    assert pk == [*parent_pk, "transaction_id"]


@pytest.mark.parametrize("name", VERSIONED)
def test_only_foreign_key_is_transaction_id(models: Models, name: str) -> None:
    vt = version_table(models, name)
    assert [(fk.parent.name, fk.target_fullname) for fk in vt.foreign_keys] == [
        ("transaction_id", "transaction.id")
    ]


def test_parent_foreign_keys_are_not_copied(models: Models) -> None:
    assert models.Comment.__table__.c.article_id.foreign_keys  # the parent has one
    assert not version_table(models, "Comment").c.article_id.foreign_keys


@pytest.mark.parametrize("name", VERSIONED)
def test_no_unique_defaults_or_autoincrement(models: Models, name: str) -> None:
    vt = version_table(models, name)
    assert not [c for c in vt.constraints if isinstance(c, sa.UniqueConstraint)]
    # The only unique index: at most one open version (end_transaction_id NULL) per row.
    assert_current_index(vt, PARENT_KEY[name])
    assert vt.autoincrement_column is None
    for c in vt.c:
        assert not c.unique, c.name
        assert c.default is None, c.name
        assert c.server_default is None, c.name
        assert c.onupdate is None, c.name
        assert c.server_onupdate is None, c.name
        assert c.identity is None, c.name
        assert c.computed is None, c.name
        if c.name not in ("end_transaction_id", "operation_type"):
            assert c.autoincrement is False, c.name


def test_parent_defaults_are_not_copied(models: Models) -> None:
    parent = models.Article.__table__
    assert parent.c.status.default is not None
    assert parent.c.created.server_default is not None
    vt = version_table(models, "Article")
    assert vt.c.status.default is None
    assert vt.c.created.server_default is None


@pytest.mark.parametrize("name", VERSIONED)
def test_nullability(models: Models, name: str) -> None:
    vt = version_table(models, name)
    assert {c.name for c in vt.c if not c.nullable} == {
        *(c.name for c in vt.primary_key),
        "operation_type",
    }


@pytest.mark.parametrize("name", VERSIONED)
def test_indexes(models: Models, name: str) -> None:
    vt = version_table(models, name)
    indexes = {tuple(c.name for c in ix.columns): ix.unique for ix in vt.indexes}
    # end_transaction_id has no index of its own: the partial index covers open versions.
    assert indexes == {("transaction_id",): False, PARENT_KEY[name]: True}


def create_ddl(metadata: sa.MetaData, url: str) -> list[str]:
    """The DDL ``metadata.create_all()`` emits for the dialect of ``url``."""
    statements: list[str] = []

    def execute(sql: Any, *args: Any, **kw: Any) -> None:
        statements.append(str(sql.compile(dialect=engine.dialect)).strip())

    engine = sa.create_mock_engine(url, execute)
    metadata.create_all(engine, checkfirst=False)
    return statements


@pytest.mark.parametrize(
    ("url", "partial"),
    [("sqlite://", True), ("postgresql+psycopg://", True), ("mysql+pymysql://", False)],
    ids=["sqlite", "postgresql", "mysql"],
)
def test_current_index_ddl_only_where_partial_indexes_exist(
    models: Models, url: str, partial: bool
) -> None:
    """Without partial indexes, a unique index on the key would forbid any history at all."""
    ddl = create_ddl(models.Base.metadata, url)
    unique = [s for s in ddl if s.startswith("CREATE UNIQUE INDEX")]
    if partial:
        assert sorted(unique) == [
            "CREATE UNIQUE INDEX ix_article_version_current ON article_version (id) "
            "WHERE end_transaction_id IS NULL",
            "CREATE UNIQUE INDEX ix_comment_version_current ON comment_version (id) "
            "WHERE end_transaction_id IS NULL",
            "CREATE UNIQUE INDEX ix_tagging_version_current ON tagging_version (article_id, tag) "
            "WHERE end_transaction_id IS NULL",
        ]
    else:
        assert unique == []
    for table in ("article_version", "comment_version", "tagging_version"):
        assert f"CREATE INDEX ix_{table}_transaction_id ON {table} (transaction_id)" in ddl


def test_build_version_table_strips_constraints_and_defaults() -> None:
    """The builder on a parent with every kind of column decoration."""
    metadata = sa.MetaData()
    sa.Table("owner", metadata, sa.Column("id", sa.Integer, primary_key=True))
    parent = sa.Table(
        "thing",
        metadata,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("code", sa.String(10), unique=True, nullable=False),
        sa.Column("owner_id", sa.ForeignKey("owner.id"), nullable=False, index=True),
        sa.Column("qty", sa.Integer, default=1, server_default="1", onupdate=2),
        sa.Column("double_qty", sa.Integer, sa.Computed("qty * 2")),
        sa.Column("kind", sa.Enum("a", "b", name="thing_kind")),
        sa.Column("note", sa.Text, comment="free text"),
        sa.UniqueConstraint("owner_id", "qty"),
        sa.CheckConstraint("qty > 0"),
    )
    tx = build_transaction_table(metadata, user_id_column=None, user_id_type=sa.String(20))
    vt = build_version_table(parent, list(parent.c), tx)

    assert vt.name == "thing_version"
    assert [c.name for c in vt.primary_key] == ["id", "transaction_id"]
    assert [fk.target_fullname for fk in vt.foreign_keys] == ["transaction.id"]
    assert not [
        c
        for c in vt.constraints
        if isinstance(c, (sa.UniqueConstraint, sa.CheckConstraint))
        and not isinstance(c, sa.PrimaryKeyConstraint)
    ]
    assert {tuple(c.name for c in ix.columns): ix.unique for ix in vt.indexes} == {
        ("transaction_id",): False,
        ("id",): True,
    }
    assert_current_index(vt, ("id",))
    assert vt.autoincrement_column is None
    for c in vt.c:
        assert (c.default, c.server_default, c.onupdate) == (None, None, None), c.name
        assert (c.identity, c.computed, c.unique) == (None, None, None), c.name
        assert c.nullable is (c.name not in ("id", "transaction_id", "operation_type")), c.name
    assert vt.c.note.comment == "free text"
    # Schema-bound types get their own instance.
    assert isinstance(vt.c.kind.type, sa.Enum)
    assert vt.c.kind.type is not parent.c.kind.type
    assert vt.c.kind.type.enums == ["a", "b"]


# --- operation_type ---------------------------------------------------------------------------


def test_operation_enum() -> None:
    assert issubclass(Operation, int)
    assert [(m.name, int(m)) for m in Operation] == [("INSERT", 0), ("UPDATE", 1), ("DELETE", 2)]


async def test_operation_type_returns_operation_members(models: Models, run: Run) -> None:
    def behaviour(session: Session) -> None:
        article = models.Article(title="a")
        session.add(article)
        session.commit()
        article.title = "b"
        session.commit()
        session.delete(article)
        session.commit()

        V = version_class(models.Article)
        ops = session.scalars(sa.select(V.operation_type).order_by(V.transaction_id)).all()
        assert ops == [Operation.INSERT, Operation.UPDATE, Operation.DELETE]
        assert all(type(op) is Operation for op in ops)
        raw = session.scalars(
            sa.text("SELECT operation_type FROM article_version ORDER BY transaction_id")
        ).all()
        assert raw == [0, 1, 2]
        assert all(type(v) is int for v in raw)

    await run(behaviour)


# --- one open version per row, enforced by the database -----------------------------------------


async def add_transaction(session: AsyncSession, models: Models) -> int:
    t = tx_table(models)
    tx_id = await session.scalar(
        sa.insert(t).values(issued_at=datetime.now(timezone.utc)).returning(t.c.id)
    )
    assert isinstance(tx_id, int)
    return tx_id


@pytest.mark.parametrize("name", ["Article", "Tagging"])
async def test_database_allows_one_open_version_per_row(
    models: Models, session: AsyncSession, name: str
) -> None:
    dialect = session.get_bind().dialect.name
    if dialect not in PARTIAL_INDEX_DIALECTS:
        pytest.skip(f"{dialect} has no partial indexes; the rule is not enforced there")
    row = {"title": "a"} if name == "Article" else {"article_id": 1, "tag": "t"}
    session.add(model(models, name)(**row))
    await session.commit()

    vt = version_table(models, name)
    open_version = dict(
        (await session.execute(sa.select(vt).where(vt.c.end_transaction_id.is_(None))))
        .mappings()
        .one()
    )
    tx_id = await add_transaction(session, models)
    await session.commit()

    second_open = {**open_version, "transaction_id": tx_id, "operation_type": Operation.UPDATE}
    with pytest.raises(sa.exc.IntegrityError):
        await session.execute(sa.insert(vt).values(second_open))
    await session.rollback()

    # A closed version of the same row is fine: history holds any number of those.
    closed = {**second_open, "end_transaction_id": tx_id + 1}
    await session.execute(sa.insert(vt).values(closed))
    await session.commit()

    key = [vt.c[k] == open_version[k] for k in PARENT_KEY[name]]
    ends = (
        await session.scalars(
            sa.select(vt.c.end_transaction_id).where(*key).order_by(vt.c.transaction_id)
        )
    ).all()
    assert ends == [None, tx_id + 1]


# --- the transaction table --------------------------------------------------------------------


def test_transaction_table_columns(models: Models) -> None:
    t = tx_table(models)
    assert t.name == "transaction"
    assert [c.name for c in t.primary_key] == ["id"]
    assert isinstance(t.c.id.type, sa.BigInteger)
    assert t.c.id.type.compile(dialect=dialect_named("postgresql")) == "BIGINT"
    # INTEGER PRIMARY KEY is SQLite's rowid alias: the only type that autoincrements there.
    assert t.c.id.type.compile(dialect=dialect_named("sqlite")) == "INTEGER"
    assert t.autoincrement_column is t.c.id
    assert not t.c.issued_at.nullable
    assert isinstance(t.c.issued_at.type, AwareDateTime)
    assert t.c.user_id.nullable
    assert t.c.remote_addr.nullable
    assert t.c.meta.nullable
    version_tx = version_table(models, "Article").c.transaction_id
    assert version_tx.type.compile(dialect=dialect_named("postgresql")) == "BIGINT"
    assert version_tx.type.compile(dialect=dialect_named("sqlite")) == "INTEGER"


def test_transaction_user_id_references_user(models: Models) -> None:
    t = tx_table(models)
    assert [fk.target_fullname for fk in t.c.user_id.foreign_keys] == ["user_account.id"]
    assert type(t.c.user_id.type) is type(models.User.__table__.c.id.type)
    Tx = transaction_class(models.Article)
    assert sa.inspect(Tx).relationships["user"].mapper.class_ is models.User


async def commit_change(session: AsyncSession, models: Models, title: str) -> None:
    session.add(models.Article(title=title))
    await session.commit()


async def transactions(session: AsyncSession, models: Models) -> list[Any]:
    Tx = transaction_class(models.Article)
    return list((await session.scalars(sa.select(Tx).order_by(Tx.id))).all())


async def test_transaction_ids_autoincrement(models: Models, session: AsyncSession) -> None:
    await commit_change(session, models, "one")
    await commit_change(session, models, "two")
    assert [t.id for t in await transactions(session, models)] == [1, 2]
    V = runtime_version_class(models.Article)
    assert (await session.scalars(sa.select(V.transaction_id).order_by(V.id))).all() == [1, 2]


async def test_issued_at_is_aware_utc_and_now(models: Models, session: AsyncSession) -> None:
    before = datetime.now(timezone.utc)
    await commit_change(session, models, "one")
    after = datetime.now(timezone.utc)

    [tx] = await transactions(session, models)
    issued_at = tx.issued_at
    assert issued_at.tzinfo is not None
    assert issued_at.utcoffset() == timedelta(0)
    assert before <= issued_at <= after


def test_issued_at_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AwareDateTime().process_bind_param(datetime(2024, 1, 1), dialect_named("sqlite"))


def test_issued_at_keeps_microseconds_on_mysql_and_mariadb() -> None:
    # A plain DATETIME would drop them there.
    for dialect in (dialect_named("mysql"), dialect_named("mariadb")):
        assert AwareDateTime().compile(dialect=dialect) == "DATETIME(6)"
    assert (
        AwareDateTime().compile(dialect=dialect_named("postgresql")) == "TIMESTAMP WITH TIME ZONE"
    )


async def test_user_id_and_remote_addr_round_trip(models: Models, session: AsyncSession) -> None:
    session.add(models.User(id=5, name="eve"))
    await session.commit()
    with versioning_context(user_id=5, remote_addr="2001:db8::1"):
        await commit_change(session, models, "one")

    [tx] = await transactions(session, models)
    assert (tx.user_id, tx.remote_addr) == (5, "2001:db8::1")
    user = await tx.awaitable_attrs.user
    assert user is not None
    assert user.name == "eve"


async def test_meta_round_trips_and_is_sql_null_when_absent(
    models: Models, session: AsyncSession
) -> None:
    request = {"path": "/articles", "tags": ["a", "b"], "nested": {"n": 1, "ok": True, "x": None}}
    with versioning_context(request=request, reason="import"):
        await commit_change(session, models, "with meta")
    await commit_change(session, models, "without meta")

    with_meta, without_meta = await transactions(session, models)
    assert with_meta.meta == {"request": request, "reason": "import"}
    assert without_meta.meta is None

    t = tx_table(models)
    null_ids = (await session.scalars(sa.select(t.c.id).where(t.c.meta.is_(None)))).all()
    assert null_ids == [without_meta.id]
    not_null_ids = (await session.scalars(sa.select(t.c.id).where(t.c.meta.is_not(None)))).all()
    assert not_null_ids == [with_meta.id]


# --- class lookups ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", VERSIONED)
def test_class_lookups_round_trip(models: Models, name: str) -> None:
    cls = model(models, name)
    V = version_class(cls)
    Tx = transaction_class(cls)
    assert issubclass(V, Version)
    assert V.__name__ == f"{name}Version"
    assert parent_class(V) is cls
    assert version_class(parent_class(V)) is V
    assert issubclass(Tx, Transaction)
    assert transaction_class(V) is Tx
    assert Tx is transaction_class(models.Article)  # one transaction class for all models
    assert sa.inspect(cls).relationships["versions"].mapper.class_ is V


# --- the schema really created in the database ------------------------------------------------


def reflect(conn: sa.Connection) -> dict[str, Any]:
    insp = sa.inspect(conn)
    out: dict[str, Any] = {"tables": set(insp.get_table_names())}
    for table in ("article_version", "comment_version", "tagging_version", "transaction"):
        out[table] = {
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "indexes": {
                tuple(ix["column_names"]): bool(ix["unique"]) for ix in insp.get_indexes(table)
            },
            "index_where": {
                ix["name"]: str(where)
                for ix in insp.get_indexes(table)
                for option, where in ix.get("dialect_options", {}).items()
                if option.endswith("_where")
            },
            "fks": [
                (
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                )
                for fk in insp.get_foreign_keys(table)
            ],
            "uniques": insp.get_unique_constraints(table),
            "columns": {c["name"]: c for c in insp.get_columns(table)},
        }
    return out


async def test_schema_in_database(models: Models, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        db = await conn.run_sync(reflect)

    assert {"article_version", "comment_version", "tagging_version", "transaction"} <= db["tables"]
    expected_pk = {
        "article_version": ["id", "transaction_id"],
        "comment_version": ["id", "transaction_id"],
        "tagging_version": ["article_id", "tag", "transaction_id"],
    }
    partial = engine.dialect.name in PARTIAL_INDEX_DIALECTS
    for table, pk in expected_pk.items():
        t = db[table]
        assert t["pk"] == pk, table
        assert t["indexes"].get(("transaction_id",)) is False, table
        assert ("end_transaction_id",) not in t["indexes"], table
        key = tuple(pk[:-1])
        if partial:
            # One open version per row: unique over the parent key, open versions only.
            assert t["indexes"].get(key) is True, table
            where = t["index_where"][f"ix_{table}_current"]
            assert "end_transaction_id IS NULL" in where.replace('"', ""), (table, where)
        else:
            assert key not in t["indexes"], table
        assert [k for k, unique in t["indexes"].items() if unique] == ([key] if partial else [])
        assert t["fks"] == [(("transaction_id",), "transaction", ("id",))], table
        assert t["uniques"] == [], table
        assert "view_count" not in t["columns"]
        for name, column in t["columns"].items():
            assert column["default"] is None, (table, name)
            assert column["nullable"] is (name not in [*pk, "operation_type"]), (table, name)

    tx = db["transaction"]
    assert tx["pk"] == ["id"]
    assert tx["fks"] == [(("user_id",), "user_account", ("id",))]
    assert set(tx["columns"]) == {"id", "issued_at", "user_id", "remote_addr", "meta"}
    if engine.dialect.name == "postgresql":
        assert isinstance(tx["columns"]["id"]["type"], sa.BigInteger)
        assert tx["columns"]["issued_at"]["type"].timezone is True
        assert isinstance(tx["columns"]["meta"]["type"], postgresql.JSONB)
