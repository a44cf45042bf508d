"""Tenancy: another tenant's model, version, alias, file, request or job answers 404 (never
403: its existence is not revealed) on every route of docs/api.md that takes a name or an id,
and writes nothing; and API keys are stored hashed (no key, nor any long piece of one,
appears anywhere in a dump of the database).

ROUTES is the table of those routes; `test_every_route_is_in_the_table` fails when a route
is added to the app without a row here. Run alone: `.venv/bin/pytest -q tests/test_tenancy.py`.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
import random
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from sqlalchemy.engine import make_url

import api.routes
from registry.db import get_engine, session_scope
from registry.keys import KEY_PREFIX, create_api_key, ensure_bootstrap_key, hash_key
from registry.models import ForgetRequest, Job, JobEvent, Version

from .apikit import BOOT_KEY, QA, ApiWorld
from .test_api import assert_problem


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # a template over the Owned fields below
    owner_status: int  # what the owner gets (the URL is right: only the tenant differs)
    body: str | None = None  # "alias", "forget" or "tar"
    query: dict[str, str] = field(default_factory=dict)


ROUTES = [
    Route("GET", "/v1/models/{name}", 200),
    Route("GET", "/v1/models/{name}/versions", 200),
    Route("POST", "/v1/models/{name}/versions:upload", 201, body="tar"),
    Route("GET", "/v1/models/{name}/versions/{ref}", 200),
    Route("POST", "/v1/models/{name}/versions/{ref}:revoke", 200),
    Route("POST", "/v1/models/{name}/versions/{ref}:evaluate", 202),
    Route("GET", "/v1/models/{name}/versions/{ref}/evaluation", 200),
    Route("GET", "/v1/models/{name}/versions/{ref}/files/{path}", 200),
    Route("HEAD", "/v1/models/{name}/versions/{ref}/files/{path}", 200),
    Route("GET", "/v1/models/{name}/versions/{ref}/archive", 200),
    Route("POST", "/v1/models/{name}/versions/{ref}:archive-link", 200),
    Route("PUT", "/v1/models/{name}/aliases/{alias}", 200, body="alias"),
    Route("DELETE", "/v1/models/{name}/aliases/{alias}", 204),
    Route("POST", "/v1/models/{name}/forget-requests", 202, body="forget"),
    Route("GET", "/v1/forget-requests", 200, query={"model": "{name}"}),
    Route("GET", "/v1/forget-requests/{request_id}", 200),
    Route("POST", "/v1/forget-requests/{request_id}:cancel", 200),
    Route("GET", "/v1/forget-requests/{request_id}/items", 200),
    Route("GET", "/v1/jobs", 200, query={"model": "{name}"}),
    Route("GET", "/v1/jobs/{job_id}", 200),
    Route("GET", "/v1/jobs/{job_id}/events", 200),
]
# Routes that take no key: a signed archive link is its own credential (it names the tenant;
# tests/test_archive_links.py: a changed or foreign link is a 404).
KEYLESS = {("GET", "/v1/archive-links/{token}")}
# Each form of version reference resolves through the tenant's model too.
REFS = ["1", "latest", "prod"]
CASES = [(route, ref) for route in ROUTES
         for ref in (REFS if "{ref}" in route.path else REFS[:1])]


@dataclass
class Owned:
    """One tenant's objects, fresh for each test (the owner's calls change them)."""

    name: str
    ref: str
    path: str
    alias: str
    request_id: str
    job_id: str

    def fill(self, template: str) -> str:
        return template.format(**self.__dict__)

    def anonymised(self, text: str) -> str:
        """`text` with the model name and the ids replaced by the field names."""
        for key in ("name", "request_id", "job_id"):
            text = text.replace(getattr(self, key), f"<{key}>")
        return text


def _ghost(ref: str) -> Owned:
    """Names and ids that exist for nobody."""
    return Owned(f"ghost-{uuid.uuid4().hex[:8]}", ref, "config.json", "prod",
                 str(uuid.uuid4()), str(uuid.uuid4()))


@pytest.fixture(scope="module")
def intruder_key(api_world: ApiWorld) -> str:
    """A key of another tenant, which owns a model of its own (so it is a real tenant with
    data, not an empty one)."""
    with session_scope(api_world.db_url) as s:
        key = create_api_key(s, f"intruder-{uuid.uuid4().hex[:6]}")
    r = api_world.client.post("/v1/models", json={"name": "mine"},
                              headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return key


def _own_objects(world: ApiWorld, ref: str) -> Owned:
    c = world.client
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert c.post("/v1/models", json={"name": name, "source": {"path": str(world.model_dir)},
                                      "retain_set": QA}).status_code == 201
    assert c.put(f"/v1/models/{name}/aliases/prod", json={"version": 1}).status_code == 200
    r = c.post(f"/v1/models/{name}/forget-requests", json={"items": QA, "method": "npo"})
    assert r.status_code == 202, r.text
    with session_scope(world.db_url) as s:  # a finished job (so revoke is allowed) + event
        req = s.get(ForgetRequest, r.json()["id"])
        assert req is not None
        job = Job(tenant_id=req.tenant_id, model_id=req.model_id, status="succeeded",
                  method="npo", base_version=1, forget_request_ids=[req.id])
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, seq=1, stage="done", message="done", data={}))
        version = s.scalars(sa.select(Version).where(Version.model_id == req.model_id)).one()
        version.metrics = {"forget": {"rouge_l": 0.1}}
        job_id = job.id
    return Owned(name, ref, "config.json", "prod", r.json()["id"], job_id)


def _tar(world: ApiWorld) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(world.model_dir, arcname=".")
    return buf.getvalue()


def _call(world: ApiWorld, route: Route, owned: Owned, key: str) -> Any:
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"},
                              "params": {k: owned.fill(v) for k, v in route.query.items()}}
    if route.body == "alias":
        kwargs["json"] = {"version": 1}
    elif route.body == "forget":
        kwargs["json"] = {"items": QA, "method": "npo"}
    elif route.body == "tar":
        kwargs["content"] = _tar(world)
    return world.client.request(route.method, owned.fill(route.path), **kwargs)


@pytest.mark.parametrize(("route", "ref"), CASES,
                         ids=[f"{r.method} {r.path.replace('{ref}', ref)}" for r, ref in CASES])
def test_other_tenants_objects_are_not_found(api_world: ApiWorld, intruder_key: str,
                                             route: Route, ref: str) -> None:
    owned, ghost = _own_objects(api_world, ref), _ghost(ref)
    with api_world.unchanged():
        r = _call(api_world, route, owned, intruder_key)
        nobodys = _call(api_world, route, ghost, intruder_key)
    assert r.status_code == nobodys.status_code == 404
    if route.method != "HEAD":  # (no body)
        assert_problem(r, 404)
        # indistinguishable from an object that does not exist at all: no oracle
        assert owned.anonymised(r.text) == ghost.anonymised(nobodys.text)
    # the same call by the owner reaches the object: only the tenant made it a 404
    assert _call(api_world, route, owned, BOOT_KEY).status_code == route.owner_status


def _all_routes() -> Iterator[APIRoute]:
    """Every route of every router module in api/routes (hidden ones too: HEAD)."""
    for info in pkgutil.iter_modules(api.routes.__path__):
        router = getattr(importlib.import_module(f"api.routes.{info.name}"), "router", None)
        for route in getattr(router, "routes", []):
            if isinstance(route, APIRoute):
                yield route


def test_every_route_is_in_the_table() -> None:
    """Every /v1 route that takes a path parameter or a `model` query parameter: add a new
    one to ROUTES (and, if it needs one, to Owned)."""
    table = {(r.method, r.path) for r in ROUTES}
    found = set()
    for route in _all_routes():
        if not route.path.startswith("/v1/"):
            continue
        takes_id = "{" in route.path or any(
            p.name == "model" for p in route.dependant.query_params)
        if takes_id:
            found |= {(m, route.path.replace("{path:path}", "{path}")) for m in route.methods}
    assert found - KEYLESS == table


def test_lists_show_only_the_tenants_own(api_world: ApiWorld, intruder_key: str) -> None:
    owned = _own_objects(api_world, "1")
    h = {"Authorization": f"Bearer {intruder_key}"}
    c = api_world.client
    assert [m["name"] for m in c.get("/v1/models", headers=h).json()["items"]] == ["mine"]
    assert c.get("/v1/forget-requests", headers=h).json()["items"] == []
    assert c.get("/v1/jobs", headers=h).json()["items"] == []
    assert owned.request_id in [x["id"] for x in c.get("/v1/forget-requests").json()["items"]]


def test_idempotency_keys_are_per_tenant(api_world: ApiWorld, intruder_key: str) -> None:
    """The same Idempotency-Key from another tenant never replays the first tenant's
    answer, nor conflicts with it."""
    owned = _own_objects(api_world, "1")
    c, k = api_world.client, {"Idempotency-Key": uuid.uuid4().hex}
    mine = c.post(f"/v1/models/{owned.name}/forget-requests",
                  json={"items": QA, "method": "npo"}, headers=k)
    assert mine.status_code == 202
    theirs = c.post("/v1/models", json={"name": f"idem-{uuid.uuid4().hex[:6]}"},
                    headers={**k, "Authorization": f"Bearer {intruder_key}"})
    assert theirs.status_code == 201 and mine.json()["id"] not in theirs.text


# --------------------------------------------------------------------------------------------
# Keys are stored hashed
# --------------------------------------------------------------------------------------------


def _dump_sql(db_url: str) -> str:
    """Every row of every table as text (`row::text` covers every column and type)."""
    out = []
    with get_engine(db_url).connect() as conn:
        tables = conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")).scalars().all()
        assert {"api_keys", "tenants", "idempotency_keys"} <= set(tables)
        for table in tables:
            out += conn.execute(sa.text(f'SELECT t::text FROM "{table}" AS t')).scalars().all()
    return "\n".join(out)


def _dump_pg(db_url: str) -> str:
    """pg_dump's own dump (sequences, schema, data), when the client is installed."""
    if shutil.which("pg_dump") is None:
        return ""
    url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(["pg_dump", "--no-owner", url], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def _pieces(key: str) -> set[str]:
    """Every 16-character piece of one of our keys' secret part (its stored label is its
    first 12 characters: 7 of 32 random ones), every 6-character piece of any other key (a
    chosen bootstrap key is stored with no characters of it at all): no partial copy."""
    secret, size = (key[len(KEY_PREFIX):], 16) if key.startswith(KEY_PREFIX) else (key, 6)
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def test_keys_are_stored_hashed(api_world: ApiWorld, intruder_key: str) -> None:
    # A chosen bootstrap key, 12 characters; no hex digits or vowels, so that none of its
    # pieces turns up in a dump full of hashes and uuids by chance.
    short = "my-" + "".join(random.choice("ghjkmnpqrstvwxz") for _ in range(9))
    with session_scope(api_world.db_url) as s:
        extra = create_api_key(s, "default")
        ensure_bootstrap_key(s, short)
    keys = [BOOT_KEY, intruder_key, extra, short]
    for key in keys:  # used: authentication, creation, idempotency records, requests
        h = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
        assert api_world.client.get("/v1/models", headers=h).status_code == 200
        name = f"k-{uuid.uuid4().hex[:8]}"
        assert api_world.client.post("/v1/models", json={"name": name}, headers=h
                                     ).status_code == 201
        assert api_world.client.post(f"/v1/models/{name}/forget-requests", json={
            "items": QA}, headers=h).status_code == 409  # no version yet: a refusal, logged
    dumps = {"sql": _dump_sql(api_world.db_url), "pg_dump": _dump_pg(api_world.db_url)}
    for source, dump in dumps.items():
        if not dump:
            continue
        for key in keys:
            assert hash_key(key) in dump  # the dump does cover the keys' table
            leaked = [p for p in _pieces(key) if p in dump]
            assert not leaked, f"{source}: part of an API key is stored in clear"

