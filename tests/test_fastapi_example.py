"""The FastAPI example service (``examples/fastapi_app.py``) driven over HTTP with ``httpx``,
on every database: actors recorded although the session commits at dependency teardown,
history, revert, the activity feed, concurrent actors, failed requests leaving nothing."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import async_sessionmaker

from sqlalchemy_history_async import ConfigurationError, current_context
from sqlalchemy_history_async.fastapi import HistoryContextMiddleware, record_actor

from .conftest import reset_schema

ADDRESS = "203.0.113.7"
ALICE, BOB = {"X-User": "1"}, {"X-User": "2"}


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """The example module; its scoped manager is removed after this module's tests."""
    module = importlib.import_module("examples.fastapi_app")
    if not module.history.active:
        module.history.install(module.Base)
    try:
        yield module
    finally:
        module.history.remove()


@pytest.fixture
async def client(example: ModuleType, async_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = example.create_app(async_url)
    engine = app.state.engine
    await reset_schema(engine, example.Base.metadata)
    async with async_sessionmaker(engine)() as session:
        session.add_all([example.User(id=1, name="alice"), example.User(id=2, name="bob")])
        await session.commit()
    transport = httpx.ASGITransport(app=app, client=(ADDRESS, 4711))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client
    finally:
        await engine.dispose()


async def history(client: httpx.AsyncClient, article: int) -> list[dict[str, Any]]:
    response = await client.get(f"/articles/{article}/history")
    assert response.status_code == 200, response.text
    versions: list[dict[str, Any]] = response.json()
    return versions


async def create(client: httpx.AsyncClient, title: str, headers: dict[str, str]) -> int:
    response = await client.post("/articles", json={"title": title}, headers=headers)
    assert response.status_code == 201, response.text
    article: int = response.json()["id"]
    return article


async def test_each_change_records_its_actor_and_address(client: httpx.AsyncClient) -> None:
    article = await create(client, "Hello", ALICE)
    response = await client.patch(f"/articles/{article}", json={"body": "Draft."}, headers=BOB)
    assert response.status_code == 200, response.text
    assert (await client.delete(f"/articles/{article}", headers=ALICE)).status_code == 204
    versions = await history(client, article)
    assert [(v["operation"], v["user"], v["remote_addr"]) for v in versions] == [
        ("INSERT", "alice", ADDRESS),
        ("UPDATE", "bob", ADDRESS),
        ("DELETE", "alice", ADDRESS),
    ]
    assert versions[1]["changes"] == {"body": ["", "Draft."]}


async def test_anonymous_requests_record_no_actor(client: httpx.AsyncClient) -> None:
    article = await create(client, "Anonymous", {})
    assert [(v["user"], v["remote_addr"]) for v in await history(client, article)] == [
        (None, ADDRESS)
    ]


async def test_revert_is_recorded_as_the_reverting_user(client: httpx.AsyncClient) -> None:
    article = await create(client, "First", ALICE)
    await client.patch(f"/articles/{article}", json={"title": "Second"}, headers=ALICE)
    first = (await history(client, article))[0]["transaction_id"]
    response = await client.post(f"/articles/{article}/revert/{first}", headers=BOB)
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "First"
    versions = await history(client, article)
    assert [(v["title"], v["user"]) for v in versions] == [
        ("First", "alice"),
        ("Second", "alice"),
        ("First", "bob"),
    ]
    missing = await client.post(f"/articles/{article}/revert/999999", headers=BOB)
    assert missing.status_code == 404


async def test_activity_feed_filters_by_user(client: httpx.AsyncClient) -> None:
    one = await create(client, "One", ALICE)
    two = await create(client, "Two", BOB)
    await client.patch(f"/articles/{one}", json={"title": "One!"}, headers=BOB)
    feed = (await client.get("/activity")).json()
    assert [(c["primary_key"], c["operation"], c["user_id"]) for c in feed] == [
        ({"id": one}, "INSERT", 1),
        ({"id": two}, "INSERT", 2),
        ({"id": one}, "UPDATE", 2),
    ]
    assert [c["changed"] for c in feed][-1] == ["title"]
    assert {c["remote_addr"] for c in feed} == {ADDRESS}
    bobs = (await client.get("/activity", params={"user": 2})).json()
    assert [(c["primary_key"], c["operation"]) for c in bobs] == [
        ({"id": two}, "INSERT"),
        ({"id": one}, "UPDATE"),
    ]


async def test_concurrent_requests_keep_their_own_actor(client: httpx.AsyncClient) -> None:
    articles = [await create(client, f"a{i}", ALICE) for i in range(12)]

    async def edit(i: int, article: int) -> None:
        headers = ALICE if i % 2 else BOB
        response = await client.patch(
            f"/articles/{article}", json={"body": f"by {headers['X-User']}"}, headers=headers
        )
        assert response.status_code == 200, response.text

    await asyncio.gather(*(edit(i, article) for i, article in enumerate(articles)))
    for i, article in enumerate(articles):
        last = (await history(client, article))[-1]
        assert (last["operation"], last["user"]) == ("UPDATE", "alice" if i % 2 else "bob")


async def test_failed_request_leaves_nothing(client: httpx.AsyncClient) -> None:
    article = await create(client, "Kept", ALICE)
    before = await history(client, article)
    response = await client.patch(f"/articles/{article}", json={"title": ""}, headers=BOB)
    assert response.status_code == 422
    assert await history(client, article) == before
    unknown = await client.post("/articles", json={"title": "x"}, headers={"X-User": "99"})
    assert unknown.status_code == 401
    assert (await client.get("/activity")).json()[-1]["primary_key"] == {"id": article}


def small_app(middleware: bool) -> FastAPI:
    async def current_user() -> Any:
        return 7

    app = FastAPI(dependencies=[Depends(record_actor(current_user))])
    if middleware:
        app.add_middleware(HistoryContextMiddleware)

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {"user_id": current_context().user_id}

    return app


async def test_record_actor_without_the_middleware_fails_loudly() -> None:
    bare = httpx.ASGITransport(app=small_app(middleware=False))
    async with httpx.AsyncClient(transport=bare, base_url="http://service") as client:
        with pytest.raises(ConfigurationError, match="HistoryContextMiddleware"):
            await client.get("/")
    wrapped = httpx.ASGITransport(app=small_app(middleware=True))
    async with httpx.AsyncClient(transport=wrapped, base_url="http://service") as client:
        assert (await client.get("/")).json() == {"user_id": 7}


async def test_the_middleware_leaves_other_scopes_alone() -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], current_context().remote_addr))

    nothing: Any = None  # receive / send: the inner application uses neither
    client = ("198.51.100.4", 1)
    await HistoryContextMiddleware(inner)({"type": "lifespan"}, nothing, nothing)
    await HistoryContextMiddleware(inner)({"type": "http", "client": client}, nothing, nothing)
    without = HistoryContextMiddleware(inner, remote_addr=False)
    await without({"type": "http", "client": client}, nothing, nothing)
    assert seen == [("lifespan", None), ("http", "198.51.100.4"), ("http", None)]
