"""Table and column shapes through insert → update → delete → revert, on every database.

Key kinds (composite, UUID, natural string, ``Identity()``), columns whose name differs from the
attribute, server defaults and column types: each version must hold exactly the values written
(or, for server defaults, generated), and ``changeset`` must report them as Python values.
PostgreSQL-only features (named schemas, ``ARRAY``, ``JSONB``) are in :class:`TestPostgreSQL`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from sqlalchemy_history_async import (
    Operation,
    changes_in,
    select_changes,
    stream_changes,
    version_at,
)

from .conftest import Run, versioned, versioned_models
from .models import RuntimeVersion, runtime_version_class, table_of
from .shape_models import (
    Color,
    PostgresModels,
    ShapeModels,
    define_postgres_models,
    define_shape_models,
)

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE

Row = dict[str, Any]


# Every test class gets a fresh versioning manager and model set: the PostgreSQL-only models
# need their own metadata (with the ``archive`` schema), and only one manager can be active.
models = versioned_models(define_shape_models, scope="class")


# --- helpers ----------------------------------------------------------------------------------


def pk_attrs(model: type[Any]) -> tuple[str, ...]:
    mapper = sa.inspect(model)
    return tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)


def column_attrs(model: type[Any]) -> set[str]:
    """The model's column attributes; none of these models excludes any from versioning."""
    return {a.key for a in sa.inspect(model).column_attrs}


def identity(obj: Any) -> tuple[Any, ...]:
    key = sa.inspect(obj).identity
    assert key is not None
    return tuple(key)


def values(obj: Any, attrs: Row | set[str]) -> Row:
    return {a: getattr(obj, a) for a in attrs}


def as_stored(db: str, row: Row) -> Row:
    """``row`` as the database gives it back.

    ``DateTime(timezone=True)`` keeps the offset on PostgreSQL only; elsewhere the column has no
    time zone and an aware value comes back naive (the tests write UTC values there).
    """
    return {
        a: v.replace(tzinfo=None)
        if isinstance(v, dt.datetime) and v.tzinfo is not None and db != "postgresql"
        else v
        for a, v in row.items()
    }


def changes(old: Row, new: Row) -> dict[str, list[Any]]:
    """The changeset expected between two rows (``old={}`` for a first version)."""
    return {a: [old.get(a), v] for a, v in new.items() if old.get(a) != v}


def versions_stmt(model: type[Any], key: tuple[Any, ...]) -> sa.Select[RuntimeVersion]:
    V = runtime_version_class(model)
    return (
        sa.select(V)
        .where(*[getattr(V, a) == v for a, v in zip(pk_attrs(model), key, strict=True)])
        .order_by(V.transaction_id)
        .execution_options(populate_existing=True)
    )


async def versions_of(
    session: AsyncSession, model: type[Any], key: tuple[Any, ...]
) -> list[RuntimeVersion]:
    return list((await session.scalars(versions_stmt(model, key))).all())


def assert_chain(versions: list[RuntimeVersion]) -> None:
    """Each version is closed by the next one's transaction; the last one is current."""
    assert len({v.transaction_id for v in versions}) == len(versions)
    assert [v.end_transaction_id for v in versions] == [
        *[v.transaction_id for v in versions[1:]],
        None,
    ]


def expected_rows(
    db: str, model: type[Any], key: tuple[Any, ...], first: Row, second: Row
) -> tuple[Row, Row]:
    """The full rows after the insert (``first``) and after the update (``second``)."""
    first_row = as_stored(db, {**dict(zip(pk_attrs(model), key, strict=True)), **first})
    assert set(first_row) == column_attrs(model), "give a value for every column"
    return first_row, {**first_row, **as_stored(db, second)}


def round_trip(
    session: Session, db: str, model: type[Any], first: Row, second: Row
) -> list[RuntimeVersion]:
    """Insert ``first``, update to ``second``, delete, revert to the insert, then to the update.

    Asserts every version's values, operation, validity chain, index and changeset; returns
    the five versions.
    """
    obj = model(**first)
    session.add(obj)
    session.commit()
    key = identity(obj)
    first_row, second_row = expected_rows(db, model, key, first, second)
    for attr, value in second.items():
        setattr(obj, attr, value)
    session.commit()
    session.delete(obj)
    session.commit()

    inserted, updated, deleted = session.scalars(versions_stmt(model, key)).all()
    assert [(v.operation_type, values(v, first_row)) for v in (inserted, updated, deleted)] == [
        (INSERT, first_row),
        (UPDATE, second_row),
        (DELETE, second_row),
    ]

    restored = inserted.revert_sync()  # re-creates the deleted row
    session.commit()
    session.refresh(restored)
    assert values(restored, first_row) == first_row
    restored = updated.revert_sync()  # updates the existing row
    session.commit()
    session.refresh(restored)
    assert values(restored, second_row) == second_row

    versions = list(session.scalars(versions_stmt(model, key)).all())
    assert [(v.operation_type, values(v, first_row)) for v in versions] == [
        (INSERT, first_row),
        (UPDATE, second_row),
        (DELETE, second_row),
        (INSERT, first_row),
        (UPDATE, second_row),
    ]
    assert_chain(versions)
    assert [v.index for v in versions] == [0, 1, 2, 3, 4]
    assert [v.changeset for v in versions] == [
        changes({}, first_row),
        changes(first_row, second_row),
        {},
        changes(second_row, first_row),
        changes(first_row, second_row),
    ]
    return versions


def utc_or_offset(db: str) -> dt.tzinfo:
    """A non-UTC offset where the column keeps it (PostgreSQL), UTC elsewhere."""
    if db == "postgresql":
        return dt.timezone(dt.timedelta(hours=5, minutes=30))
    return dt.timezone.utc


# --- shapes: the values written for row ``n`` (inserted, then the attributes updated) ---------


def placement_rows(db: str, n: int) -> tuple[Row, Row]:
    # rows 0 and 1 share the integer part of the key, rows 0 and 2 the string part
    key = {"shelf": 1 + n // 2, "slot": "ab"[n % 2]}
    return (
        {**key, "item": f"item {n}", "quantity": n + 1},
        {"item": f"item {n}, moved", "quantity": 10 * (n + 1)},
    )


def document_rows(db: str, n: int) -> tuple[Row, Row]:
    return {"title": f"Document {n}", "body": "long text " * 50}, {"title": "Renamed", "body": None}


def country_rows(db: str, n: int) -> tuple[Row, Row]:
    code = ["DE", "FR", "NL"][n]
    return (
        {"code": code, "name": f"Country {code}", "population": 8_000_000_000 + n},
        {"name": f"Republic {code}", "population": None},
    )


def ticket_rows(db: str, n: int) -> tuple[Row, Row]:
    return (
        {"subject": f"Ticket {n}", "open": True},
        {"subject": f"Ticket {n} (done)", "open": False},
    )


def account_rows(db: str, n: int) -> tuple[Row, Row]:
    return (
        {"region_": "eu", "number": 1000 + n, "holder_name": f"Holder {n}", "balance_cents": 2**40},
        {"holder_name": f"New holder {n}", "balance_cents": -125},
    )


def specimen_rows(db: str, n: int) -> tuple[Row, Row]:
    tz = utc_or_offset(db)
    return (
        {
            "data": {
                "name": f"s{n}",
                "tags": ["a", "b"],
                "nested": {"x": 1.5, "ok": True, "no": None},
            },
            "color": Color.RED,
            "amount": Decimal("12345.67"),
            "measured_at": dt.datetime(2024, 2, 29, 23, 59, 58, tzinfo=tz),
            "payload": bytes(range(256)),
            "active": True,
            "token": uuid.UUID(int=n + 1),
        },
        {
            "data": [1, "two", {"three": [3]}, None],
            "color": Color.BLUE,
            "amount": Decimal("-0.05"),
            "measured_at": dt.datetime(1999, 12, 31, 0, 0, 1, tzinfo=tz),
            "payload": b"\x00\xff",
            "active": False,
            "token": uuid.uuid4(),
        },
    )


@dataclass(frozen=True)
class Shape:
    model: str
    rows: Callable[[str, int], tuple[Row, Row]]


SHAPES = {
    "composite_key": Shape("Placement", placement_rows),
    "uuid_key": Shape("Document", document_rows),
    "string_key": Shape("Country", country_rows),
    "identity_key": Shape("Ticket", ticket_rows),
    "renamed_columns": Shape("Account", account_rows),
    "column_types": Shape("Specimen", specimen_rows),
}


def shape_model(models: ShapeModels, shape: str) -> type[Any]:
    model: type[Any] = getattr(models, SHAPES[shape].model)
    return model


# --- every shape, every database --------------------------------------------------------------


class TestShapes:
    @pytest.mark.parametrize("shape", list(SHAPES))
    async def test_round_trip(self, models: ShapeModels, run: Run, db: str, shape: str) -> None:
        first, second = SHAPES[shape].rows(db, 0)
        await run(
            lambda session: round_trip(session, db, shape_model(models, shape), first, second)
        )

    @pytest.mark.parametrize("shape", list(SHAPES))
    async def test_several_rows_per_flush(
        self, models: ShapeModels, session: AsyncSession, db: str, shape: str
    ) -> None:
        """Keys are matched row by row when one statement handles several of them."""
        model = shape_model(models, shape)
        written = [SHAPES[shape].rows(db, n) for n in range(3)]
        objs = [model(**first) for first, _ in written]
        session.add_all(objs)
        await session.commit()
        keys = [identity(o) for o in objs]
        rows = [expected_rows(db, model, k, *w) for k, w in zip(keys, written, strict=True)]
        for obj, (_, second) in zip(objs[:2], written[:2], strict=True):
            for attr, value in second.items():
                setattr(obj, attr, value)
        await session.commit()
        session.expire(objs[1])  # its last values are read back from the database
        await session.delete(objs[1])
        await session.delete(objs[2])
        await session.commit()

        expected = [
            [(INSERT, rows[0][0]), (UPDATE, rows[0][1])],
            [(INSERT, rows[1][0]), (UPDATE, rows[1][1]), (DELETE, rows[1][1])],
            [(INSERT, rows[2][0]), (DELETE, rows[2][0])],
        ]
        for key, want in zip(keys, expected, strict=True):
            versions = await versions_of(session, model, key)
            assert [(v.operation_type, values(v, want[0][1])) for v in versions] == want
            assert_chain(versions)
        V = runtime_version_class(model)
        assert await session.scalar(sa.select(sa.func.count()).select_from(V)) == 7

    @pytest.mark.parametrize("shape", list(SHAPES))
    async def test_versions_found_by_key(
        self, models: ShapeModels, session: AsyncSession, db: str, shape: str
    ) -> None:
        """``versions``, ``version_at`` and ``changes_in`` find a row's versions by its key."""
        model = shape_model(models, shape)
        first, second = SHAPES[shape].rows(db, 0)
        other, _ = SHAPES[shape].rows(db, 1)
        obj = model(**first)
        session.add_all([obj, model(**other)])
        await session.commit()
        for attr, value in second.items():
            setattr(obj, attr, value)
        await session.commit()
        key = identity(obj)
        first_row, second_row = expected_rows(db, model, key, first, second)

        inserted, updated = (await session.scalars(obj.versions.select())).all()
        assert (values(inserted, first_row), values(updated, second_row)) == (
            first_row,
            second_row,
        )
        by_tuple = await version_at(session, model, key, inserted.transaction_id)
        by_dict = await version_at(
            session, model, dict(zip(pk_attrs(model), key, strict=True)), updated.transaction_id
        )
        assert (by_tuple, by_dict) == (inserted, updated)
        assert await changes_in(session, updated.transaction_id) == [updated]

    @pytest.mark.parametrize("shape", list(SHAPES))
    async def test_change_feed_keys_find_the_versions(
        self, models: ShapeModels, session: AsyncSession, db: str, shape: str
    ) -> None:
        """The feed's ``primary_key`` dict is accepted by ``version_at`` (a dict by attribute)."""
        model = shape_model(models, shape)
        first, second = SHAPES[shape].rows(db, 0)
        obj = model(**first)
        session.add(obj)
        await session.commit()
        for attr, value in second.items():
            setattr(obj, attr, value)
        await session.commit()
        key = identity(obj)

        rows = (await session.execute(select_changes(classes=[model]))).all()
        assert [(row.table, row.operation) for row in rows] == [
            (model.__table__.name, INSERT),
            (model.__table__.name, UPDATE),
        ]
        for row in rows:
            assert set(row.primary_key) == set(pk_attrs(model))
            found = await version_at(session, model, row.primary_key, row.transaction_id)
            assert found is not None
            assert identity(found) == (*key, row.transaction_id)


KEY_CHANGES: dict[str, Row] = {
    "composite_key": {"slot": "z"},
    "string_key": {"code": "DD"},
    "renamed_columns": {"number": 9999},
}


class TestPrimaryKeyChange:
    """A changed key: a DELETE of the old key (with its last values), an INSERT of the new."""

    @pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "not_loaded"])
    @pytest.mark.parametrize("shape", list(KEY_CHANGES))
    async def test_key_change(
        self, models: ShapeModels, session: AsyncSession, db: str, shape: str, loaded: bool
    ) -> None:
        model = shape_model(models, shape)
        first, _ = SHAPES[shape].rows(db, 0)
        obj = model(**first)
        session.add(obj)
        await session.commit()
        old_key = identity(obj)
        old_row, _ = expected_rows(db, model, old_key, first, {})
        if not loaded:  # only the key columns are loaded, as after a load_only() query
            session.expunge_all()
            key_attrs = [getattr(model, a) for a in pk_attrs(model)]
            obj = await session.scalar(
                sa.select(model)
                .options(sa.orm.load_only(*key_attrs))
                .filter_by(**dict(zip(pk_attrs(model), old_key, strict=True)))
            )
        for attr, value in KEY_CHANGES[shape].items():
            setattr(obj, attr, value)
        await session.commit()
        new_key = identity(obj)
        new_row = {**old_row, **KEY_CHANGES[shape]}

        inserted, deleted = await versions_of(session, model, old_key)
        assert [(v.operation_type, values(v, old_row)) for v in (inserted, deleted)] == [
            (INSERT, old_row),
            (DELETE, old_row),
        ]
        [created] = await versions_of(session, model, new_key)
        assert (created.operation_type, values(created, new_row)) == (INSERT, new_row)
        assert (created.end_transaction_id, deleted.end_transaction_id) == (None, None)
        assert created.transaction_id == deleted.transaction_id == inserted.end_transaction_id
        assert await created.awaitable_attrs.changeset == changes({}, new_row)


# --- server defaults ----------------------------------------------------------------------------


GENERATED = {"status": "pending", "priority": 5, "urgent": False}


class TestServerDefaults:
    async def test_versions_hold_generated_values(self, models: ShapeModels, run: Run) -> None:
        def behaviour(session: Session) -> None:
            Order = models.PurchaseOrder
            order = Order(label="first")
            session.add(order)
            session.commit()
            key = identity(order)
            stored = values(session.get(Order, key, populate_existing=True), column_attrs(Order))
            assert {a: stored[a] for a in GENERATED} == GENERATED
            assert stored["created_at"] is not None

            order.label = "second"
            session.commit()
            session.expire(order)  # the DELETE version reads every value back from the database
            session.delete(order)
            session.commit()

            inserted, updated, deleted = session.scalars(versions_stmt(Order, key)).all()
            assert values(inserted, stored) == stored
            assert values(updated, stored) == {**stored, "label": "second"}
            assert values(deleted, stored) == {**stored, "label": "second"}
            assert inserted.changeset == changes({}, stored)
            assert updated.changeset == {"label": ["first", "second"]}

            restored = inserted.revert_sync()
            session.commit()
            session.refresh(restored)
            assert values(restored, stored) == stored  # the recorded values, not new defaults
            *_, reinserted = session.scalars(versions_stmt(Order, key)).all()
            assert (reinserted.operation_type, values(reinserted, stored)) == (INSERT, stored)

        await run(behaviour)

    async def test_explicit_values_override_server_defaults(
        self, models: ShapeModels, session: AsyncSession, db: str
    ) -> None:
        given = as_stored(
            db,
            {
                "label": "explicit",
                "status": "shipped",
                "priority": 1,
                "urgent": True,
                "created_at": dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=utc_or_offset(db)),
            },
        )
        order = models.PurchaseOrder(**given)
        session.add(order)
        await session.commit()
        [inserted] = await versions_of(session, models.PurchaseOrder, identity(order))
        assert values(inserted, given) == given


class TestRenamedColumns:
    async def test_version_table_uses_the_database_names(
        self, models: ShapeModels, engine: AsyncEngine
    ) -> None:
        def columns(conn: sa.Connection) -> tuple[list[str], list[str]]:
            inspector = sa.inspect(conn)
            names = [c["name"] for c in inspector.get_columns("account_version")]
            pk = inspector.get_pk_constraint("account_version")["constrained_columns"]
            return names, pk

        async with engine.connect() as conn:
            names, pk = await conn.run_sync(columns)
        added = ["transaction_id", "end_transaction_id", "operation_type"]
        assert names == ["region", "acct_no", "holder", "balance", *added]
        assert sorted(pk) == sorted(["region", "acct_no", "transaction_id"])
        V = runtime_version_class(models.Account)
        assert {
            a: getattr(V, a).property.columns[0].name for a in column_attrs(models.Account)
        } == {
            "region_": "region",
            "number": "acct_no",
            "holder_name": "holder",
            "balance_cents": "balance",
        }


# --- PostgreSQL only --------------------------------------------------------------------------


class TestPostgreSQL:
    """Named schemas, ``ARRAY`` and ``JSONB``: features of PostgreSQL alone."""

    @pytest.fixture(scope="class")
    @classmethod
    def models(cls) -> Iterator[PostgresModels]:
        with versioned(define_postgres_models) as models:
            yield models

    @pytest.fixture(autouse=True)
    async def archive_schema(self, db: str, request: pytest.FixtureRequest) -> AsyncIterator[None]:
        """A fresh ``archive`` schema, made before the ``engine`` fixture creates the tables."""
        if db != "postgresql":
            pytest.skip(f"named schemas, ARRAY and JSONB are PostgreSQL features, not {db}'s")
        engine = create_async_engine(request.getfixturevalue("async_url"))

        async def recreate(create: bool) -> None:
            async with engine.begin() as conn:
                await conn.execute(sa.text("DROP SCHEMA IF EXISTS archive CASCADE"))
                if create:
                    await conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS archive"))

        try:
            await recreate(create=True)
            yield
            await recreate(create=False)
        finally:
            await engine.dispose()

    async def test_array_and_jsonb_round_trip(
        self, models: PostgresModels, run: Run, db: str
    ) -> None:
        def behaviour(session: Session) -> None:
            round_trip(
                session,
                db,
                models.Measurement,
                {
                    "readings": [3, 1, 4, 1, 5],
                    "labels": ["a", "b c", "ü"],
                    "doc": {"a": {"b": [1, 2, {"c": None}]}, "n": 1.25, "t": True},
                },
                {"readings": [], "labels": None, "doc": [{"x": 1}, "y"]},
            )
            round_trip(
                session,
                db,
                models.Measurement,
                {"readings": [7], "labels": [], "doc": {"k": [1, 2]}},
                {"readings": [7, 8, 9], "labels": ["z"], "doc": {"k": [1, 2], "l": {}}},
            )

        await run(behaviour)

    async def test_version_table_in_the_parent_schema(
        self, models: PostgresModels, engine: AsyncEngine
    ) -> None:
        vt = table_of(runtime_version_class(models.ArchivedNote))
        assert (vt.schema, vt.name) == ("archive", "note_version")
        assert table_of(runtime_version_class(models.Note)).schema is None

        def tables(conn: sa.Connection) -> tuple[set[str], set[str]]:
            inspector = sa.inspect(conn)
            return set(inspector.get_table_names("archive")), set(inspector.get_table_names())

        async with engine.connect() as conn:
            archive, public = await conn.run_sync(tables)
        assert archive == {"note", "note_version"}
        assert {"note", "note_version", "transaction"} <= public

    async def test_named_schema_round_trip(
        self, models: PostgresModels, session: AsyncSession, db: str
    ) -> None:
        session.add(models.Note(id=1, body="same key, default schema"))
        await session.commit()
        versions = await session.run_sync(
            round_trip,
            db,
            models.ArchivedNote,
            {"id": 1, "body": "archived", "tags": ["x"]},
            {"body": "archived, edited", "tags": ["x", "y"]},
        )
        # the default-schema table of the same name is untouched
        [note_version] = await versions_of(session, models.Note, (1,))
        assert (note_version.operation_type, note_version.body) == (
            INSERT,
            "same key, default schema",
        )
        assert await changes_in(session, versions[0].transaction_id) == [versions[0]]

    async def test_change_feed_tells_same_named_tables_apart(
        self, models: PostgresModels, session: AsyncSession
    ) -> None:
        """Rows of ``note`` and ``archive.note`` with the same key in one transaction."""
        session.add_all([models.Note(id=1, body="a"), models.ArchivedNote(id=1, body="b")])
        await session.commit()

        classes = [models.Note, models.ArchivedNote]
        feed = (await session.execute(select_changes(classes=classes))).all()
        assert len(feed) == 2
        # stream_changes() yields the rows of select_changes(), whatever the page size
        for batch_size in (1, 2):
            streamed = stream_changes(session, batch_size=batch_size, classes=classes)
            assert [tuple(row) async for row in streamed] == [tuple(row) for row in feed]
        assert len({row.table for row in feed}) == 2
