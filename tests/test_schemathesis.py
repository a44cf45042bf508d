"""Schemathesis against the published /openapi.json: every operation, a bounded number of
derandomised examples each, with a valid key, in process against the real PostgreSQL (a
database of this module's own). A response must never be a 5xx and must match the schema:
status documented, content type documented, body valid against its schema, headers too.

Generated path parameters are mixed with the ids of real objects (a model with a ready
version, an alias, a queued forget request, a job with events), so the routes are exercised
past their 404s. Run alone: `.venv/bin/pytest -q tests/test_schemathesis.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from config.settings import Settings
from registry.db import session_scope
from registry.models import ForgetRequest, Job, JobEvent

from .apikit import BOOT_KEY, QA, ApiWorld

# Bounded so the module stays well under 90 s on 2 cores; derandomised so a failure replays.
# ALKN_SCHEMATHESIS_EXAMPLES=200 for a deeper (slower) run by hand.
MAX_EXAMPLES = int(os.environ.get("ALKN_SCHEMATHESIS_EXAMPLES", "20"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
AUTH = {"Authorization": f"Bearer {BOOT_KEY}"}


def _known_ids(world: ApiWorld) -> dict[str, list[str]]:
    """Real values for each path parameter name, created through the API where it can."""
    c, model = world.client, world.model
    assert c.put(f"/v1/models/{model}/aliases/prod", json={"version": 1}).status_code == 200
    r = c.post(f"/v1/models/{model}/forget-requests", json={"items": QA, "method": "npo"})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    with session_scope(world.db_url) as s:  # no worker here: a job as the worker writes one
        req = s.get(ForgetRequest, request_id)
        assert req is not None
        job = Job(tenant_id=req.tenant_id, model_id=req.model_id, status="running",
                  method="npo", base_version=1, forget_request_ids=[request_id],
                  progress={"stage": "training", "step": 1, "total_steps": 4,
                            "fraction": 0.25})
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, seq=1, stage="loading", message="loading", data={"n": 1}))
        job_id = job.id
    return {"name": [model], "ref": ["1", "latest", "prod"], "alias": ["prod", "staging"],
            "path": ["config.json", "model.safetensors"], "request_id": [request_id],
            "job_id": [job_id]}


# The upload route also documents these two: their bodies are raw bytes, as for
# application/octet-stream.
schemathesis.serializer.alias(["application/x-tar", "application/gzip"],
                              "application/octet-stream")

# Filled by the asgi_session fixture once the objects exist; read while examples are drawn.
KNOWN: dict[str, list[str]] = {}

# Loaded at import (pytest makes one test per operation from it): the document needs no
# database. Requests go to the module's app (api_world) through the ASGI client below.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(home=Path("unused"))).openapi(),
    config=schemathesis.Config.from_dict({
        # Hypothesis' timing health checks would make a loaded CI machine a failure.
        "suppress-health-check": ["too_slow", "data_too_large", "large_base_example"],
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none", "with-security-parameters": False}}))


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]
                            ) -> st.SearchStrategy[dict[str, Any]]:
    # Half generated, half real: both the 404 paths and the paths past them.
    names = [k for k in path_parameters or {} if KNOWN.get(k)]
    if not path_parameters or not names:
        return st.just(path_parameters)
    real = st.fixed_dictionaries({k: st.sampled_from(KNOWN[k]) for k in names})
    return st.one_of(st.just(path_parameters), real.map(lambda d: {**path_parameters, **d}))


@pytest.fixture(scope="module")
def asgi_session(api_world: ApiWorld) -> Iterator[requests.Session]:
    KNOWN.update(_known_ids(api_world))
    # Not entered as a context manager: that would run the app's lifespan again for every
    # operation (the plugin ends it after each test); api_world's client already ran it.
    session = asgi.get_client(api_world.app)
    yield session
    session.close()


@schema.parametrize()
def test_openapi_contract(case: schemathesis.Case, asgi_session: requests.Session) -> None:
    case.call_and_validate(base_url=f"http://{asgi.HOST}", session=asgi_session,
                           headers=AUTH, checks=CHECKS)

