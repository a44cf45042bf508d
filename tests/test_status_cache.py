"""The change-notified read cache: status polls and key lookups served from memory must
show every change (by any writer) as soon as its notification arrives, and nothing is
cached while the notifications cannot be trusted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from api.app import create_app
from api.read_cache import ReadCache
from config.settings import Settings
from registry.change_feed import APPLICATION_NAME
from registry.db import session_scope
from registry.keys import create_api_key, hash_key
from registry.models import ApiKey, ForgetRequest, Model

from .services import ROOT

# Longer than any wait below: a test that passes saw the notification, not an expiry.
WAIT_S = 3.0


def test_cache_refuses_a_read_that_raced_with_a_change() -> None:
    cache = ReadCache(max_entries=2)
    assert cache.get("a") is None
    cache.put("a", 1, cache.token())
    assert cache.get("a") is None  # not live: nothing is cached
    cache.set_live(True)
    token = cache.token()
    cache.invalidate("b")  # a change arrived while "a" was being read
    cache.put("a", 1, token)
    assert cache.get("a") is None
    for key in ("a", "b", "c"):
        cache.put(key, key, cache.token())
    assert cache.get("a") is None and cache.get("c") == "c"  # bounded: oldest went
    cache.invalidate("c")
    assert cache.get("c") is None and cache.get("b") == "b"
    cache.set_live(False)
    assert cache.get("b") is None


def test_concurrent_misses_share_one_read() -> None:
    """64 pollers missing at once (an entry expired or was dropped) cost one read, not 64
    queued in the thread pool; an error reaches them all; None is never cached."""
    import asyncio
    import threading
    import time

    cache = ReadCache()
    cache.set_live(True)
    calls: list[str] = []

    def read(value: object) -> object:
        calls.append(threading.current_thread().name)
        time.sleep(0.05)  # the database round trip the others wait for
        if isinstance(value, Exception):
            raise value
        return value

    async def scenario() -> None:
        got = await asyncio.gather(*(cache.load("r:1", lambda: read("body"))
                                     for _ in range(64)))
        assert got == ["body"] * 64 and len(calls) == 1
        assert await cache.load("r:1", lambda: read("other")) == "body"  # cached
        assert len(calls) == 1
        # Another flight (say another tenant) does its own read; `fresh` refuses the hit.
        assert await cache.load("r:1", lambda: read("b"), flight=("r", "t2", "1"),
                                fresh=lambda hit: hit == "b") == "b"
        assert len(calls) == 2
        results = await asyncio.gather(*(cache.load("r:2", lambda: read(KeyError("gone")))
                                         for _ in range(8)), return_exceptions=True)
        assert all(isinstance(r, KeyError) for r in results) and len(calls) == 3
        assert await cache.load("r:3", lambda: read(None)) is None
        assert await cache.load("r:3", lambda: read(None)) is None and len(calls) == 5
        # A caller that gives up does not cancel the read the others are waiting for.
        first = asyncio.ensure_future(cache.load("r:4", lambda: read("four")))
        second = asyncio.ensure_future(cache.load("r:4", lambda: read("four")))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == "four" and len(calls) == 6

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def world(pg_url: str) -> dict[str, str]:
    """A tenant with a key, a model row and one queued request, written directly."""
    with session_scope(pg_url) as s:
        key = create_api_key(s, f"cache-{uuid.uuid4().hex[:6]}")
        tenant_id = s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key)))
        model = Model(tenant_id=tenant_id, name="cached", qa_template="Q: {question}\nA:")
        s.add(model)
        s.flush()
        req = ForgetRequest(tenant_id=tenant_id, model_id=model.id, method="alkn",
                            items=[{"question": "q?", "answer": "a."}], item_count=1,
                            progress={"stage": "queued"})
        s.add(req)
        s.flush()
        return {"key": key, "request": req.id}


@pytest.fixture(scope="module")
def client(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[TestClient]:
    home: Path = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, database_url=pg_url, broker_url=redis_url,
                        artifact_root=str(home / "artifacts"))
    with TestClient(create_app(settings)) as c:
        wait_for(lambda: c.app.state.read_cache.live, "the change feed to listen")
        yield c


def wait_for(cond: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.01)
    raise AssertionError(f"waited {timeout} s for {what}")


def status(client: TestClient, world: dict[str, str]) -> dict[str, Any]:
    r = client.get(f"/v1/forget-requests/{world['request']}",
                   headers={"Authorization": f"Bearer {world['key']}"})
    assert r.status_code == 200, r.text
    return r.json()


def set_progress(pg_url: str, request_id: str, step: int) -> None:
    """What the worker does, from another connection (another process, as far as the
    API can tell)."""
    with session_scope(pg_url) as s:
        s.execute(update(ForgetRequest).where(ForgetRequest.id == request_id).values(
            status="running", progress={"stage": "training", "step": step, "total": 9}))


def test_status_poll_sees_each_change_of_another_writer(client: TestClient, pg_url: str,
                                                        world: dict[str, str]) -> None:
    cache = client.app.state.read_cache
    status(client, world)
    assert cache.get("r:" + world["request"]) is not None  # the next poll is a hit
    for step in (1, 2, 3):
        set_progress(pg_url, world["request"], step)
        wait_for(lambda: status(client, world)["progress"].get("step") == step,  # noqa: B023
                 f"step {step} to show")
    # Another tenant's key never gets the cached document.
    with session_scope(pg_url) as s:
        stranger = create_api_key(s, f"stranger-{uuid.uuid4().hex[:6]}")
    r = client.get(f"/v1/forget-requests/{world['request']}",
                   headers={"Authorization": f"Bearer {stranger}"})
    assert r.status_code == 404


def test_revoked_key_stops_working_at_once(client: TestClient, pg_url: str,
                                           world: dict[str, str]) -> None:
    with session_scope(pg_url) as s:
        key = create_api_key(s, f"revoke-{uuid.uuid4().hex[:6]}")
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=auth).status_code == 200
    assert client.get("/v1/models", headers=auth).status_code == 200  # from the cache
    # As an operator does it: `alkn keys revoke` in another process, by the key's label.
    listed = subprocess.run([sys.executable, "-m", "alkn_cli", "keys", "list"], cwd=ROOT, text=True,
                            env={**os.environ, "ALKN_DATABASE_URL": pg_url},
                            capture_output=True, check=True).stdout
    assert key not in listed and key[:12] in listed
    subprocess.run([sys.executable, "-m", "alkn_cli", "keys", "revoke", key[:12]], cwd=ROOT,
                   env={**os.environ, "ALKN_DATABASE_URL": pg_url}, check=True)
    wait_for(lambda: client.get("/v1/models", headers=auth).status_code == 401,
             "the revoked key to be refused")


def test_nothing_is_cached_while_the_feed_is_down(client: TestClient, pg_url: str,
                                                  world: dict[str, str]) -> None:
    cache = client.app.state.read_cache
    status(client, world)
    with session_scope(pg_url) as s:
        s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = :name AND datname = current_database()"),
                  {"name": APPLICATION_NAME})
    wait_for(lambda: not cache.live, "the cache to notice the feed went away")
    set_progress(pg_url, world["request"], 7)  # its notification reaches no one
    assert status(client, world)["progress"]["step"] == 7  # read from the database
    wait_for(lambda: cache.live, "the feed to reconnect")
    status(client, world)
    set_progress(pg_url, world["request"], 8)
    wait_for(lambda: status(client, world)["progress"].get("step") == 8, "step 8 to show")
