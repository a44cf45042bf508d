"""Observability in-process: the API's /metrics (request counts and latency by route
template, database gauges), X-Request-ID, the log formatters and the worker's job hooks.

The same things on live processes (the multiprocess worker endpoint, JSON log lines of
uvicorn and Celery) are checked by tests/test_dashboard.py after its real job.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import QueueCollector
from config.settings import Settings
from observability.logs import JOB_ID, REQUEST_ID, JsonFormatter, TextFormatter
from registry.db import session_scope
from registry.migrate import upgrade
from registry.models import ForgetRequest, Job, Outbox, utcnow
from worker import metrics as worker_metrics

from .services import add_model_row

KEY = "alkn_metrics_bootstrap_key_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
STATUS_ROUTE = "/v1/forget-requests/{request_id}"


@pytest.fixture(scope="module")
def app_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """The API on a SQLite file of its own (the gauges count every row in it)."""
    home = tmp_path_factory.mktemp("metrics_home")
    settings = Settings(home=home, bootstrap_api_key=KEY, broker_url=None, database_url=None,
                        artifact_root=None)
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        yield client, settings.resolved_database_url


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def test_requests_counted_by_route_template_and_status(app_db: tuple[TestClient, str]) -> None:
    client, _ = app_db
    before = client.get("/metrics").text
    ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(3)]
    for rid in ids:
        assert client.get(f"/v1/forget-requests/{rid}", headers=AUTH).status_code == 404
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/no/such/path").status_code == 404
    text = client.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return (value(text, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    assert grew("alkn_http_requests_total", method="GET", route=STATUS_ROUTE, status="404") == 3
    assert grew("alkn_http_request_duration_seconds_count", method="GET", route=STATUS_ROUTE,
                status="404") == 3
    assert grew("alkn_http_request_duration_seconds_bucket", method="GET", route=STATUS_ROUTE,
                status="404", le="+Inf") == 3
    assert grew("alkn_http_requests_total", method="GET", route="/v1/models",
                status="200") == 1
    assert grew("alkn_http_requests_total", method="GET", route="/v1/models",
                status="401") == 1
    assert grew("alkn_http_requests_total", method="GET", route="<unmatched>",
                status="404") == 1
    # Templates only: no request id (nor any raw path) becomes a label value.
    assert not any(rid in text for rid in ids) and "/no/such/path" not in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_request_id_is_echoed_or_made(app_db: tuple[TestClient, str]) -> None:
    client, _ = app_db
    r = client.get("/healthz", headers={"X-Request-ID": "trace-42.abc"})
    assert r.headers["x-request-id"] == "trace-42.abc"
    made = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(made) == 5 and all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", m) for m in made)
    # Not plain or too long: replaced, never echoed into headers and logs.
    for bad in ("a b", "x" * 200, "é".encode("latin-1")):
        got = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", got)
    # Error answers carry it too (the problem documents of the error middlewares).
    assert client.get("/v1/models").headers["x-request-id"]


def test_queue_gauges_read_from_the_database(app_db: tuple[TestClient, str]) -> None:
    client, url = app_db
    with session_scope(url) as s:
        model = add_model_row(s, "gauges", "g")
        for status in ("queued", "queued", "succeeded"):
            s.add(Job(tenant_id=model.tenant_id, model_id=model.id, method="alkn",
                      base_version=1, status=status))
        s.add(ForgetRequest(tenant_id=model.tenant_id, model_id=model.id, method="alkn",
                            item_count=1, status="queued"))
        s.add(Outbox(task="t", created_at=utcnow() - timedelta(seconds=90)))
        s.add(Outbox(task="t", created_at=utcnow() - timedelta(hours=5), published_at=utcnow()))
    text = client.get("/metrics").text
    assert value(text, "alkn_database_up") == 1
    assert value(text, "alkn_jobs", status="queued") == 2
    assert value(text, "alkn_jobs", status="succeeded") == 1
    assert value(text, "alkn_jobs", status="failed") == 0  # every status, zeros included
    assert value(text, "alkn_queue_depth", kind="forget_requests") == 1
    assert value(text, "alkn_queue_depth", kind="jobs") == 2
    assert value(text, "alkn_outbox_unpublished") == 1
    lag = value(text, "alkn_outbox_lag_seconds")
    assert lag is not None and 90 <= lag < 600  # the published, older row does not count


def test_scrape_answers_when_the_database_does_not(tmp_path: Path) -> None:
    families = list(QueueCollector(f"sqlite:///{tmp_path}/missing/dir/x.db").collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("alkn_database_up", 0)]


def _record(msg: str, *args: object, name: str = "api",
            exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_log_lines_carry_request_and_job_ids() -> None:
    fmt = JsonFormatter()
    rid, jid = REQUEST_ID.set("req-1"), JOB_ID.set("job-1")
    try:
        line = fmt.format(_record('odd "input"\nsecond line %s', "x", exc=True))
        access = json.loads(fmt.format(_record('%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET",
                                               "/v1/models", "1.1", 200,
                                               name="uvicorn.access")))
    finally:
        REQUEST_ID.reset(rid)
        JOB_ID.reset(jid)
    assert "\n" not in line  # one record, one line, whatever the message holds
    out = json.loads(line)
    assert out["message"] == 'odd "input"\nsecond line x'
    assert (out["request_id"], out["job_id"], out["level"], out["logger"]) == \
        ("req-1", "job-1", "WARNING", "api")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["ts"])
    assert "ValueError: boom" in out["exc"]
    assert access["http"] == {"client": "1.2.3.4:5", "method": "GET", "path": "/v1/models",
                              "http_version": "1.1", "status": 200}
    plain = json.loads(fmt.format(_record("no ids")))
    assert "request_id" not in plain and "job_id" not in plain

    token = REQUEST_ID.set("req-2")
    try:
        text = TextFormatter().format(_record("hello"))
    finally:
        REQUEST_ID.reset(token)
    assert text.endswith("WARNING api [request_id=req-2] hello")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_worker_hooks_count_jobs_and_stage_times() -> None:
    seen: list[str | None] = []

    def run(status: str) -> str:
        seen.append(JOB_ID.get())
        worker_metrics.observe_stages({"loading": 0.2, "training": 3.0, "total": 3.5})
        return status

    def boom() -> str:
        raise RuntimeError("crash")

    before = {s: _sample("alkn_worker_jobs_total", status=s) for s in ("succeeded", "failed")}
    training = _sample("alkn_job_stage_duration_seconds_count", stage="training")
    assert worker_metrics.track_job("job-a", run, "succeeded") == "succeeded"
    with pytest.raises(RuntimeError):
        worker_metrics.track_job("job-b", boom)
    assert seen == ["job-a"] and JOB_ID.get() is None  # set for the job only
    assert _sample("alkn_worker_jobs_total", status="succeeded") == before["succeeded"] + 1
    assert _sample("alkn_worker_jobs_total", status="failed") == before["failed"] + 1
    assert _sample("alkn_job_stage_duration_seconds_count", stage="training") == training + 1
    assert _sample("alkn_job_stage_duration_seconds_count", stage="total") == 0
    assert _sample("alkn_job_duration_seconds_count", status="succeeded") >= 1
    assert _sample("alkn_worker_jobs_running") == 0


MULTIPROCESS_SCRIPT = """
import os, sys, httpx
from worker import metrics
path = metrics.enable_multiprocess()  # before prometheus_client is imported, as worker.app does
assert path and os.environ["PROMETHEUS_MULTIPROC_DIR"] == path
child = os.fork()
if child == 0:  # a prefork pool child runs the job
    metrics.track_job("job-c", lambda: metrics.observe_stages({"training": 2.0}) or "succeeded")
    os._exit(0)
os.waitpid(child, 0)
metrics.child_exited(child)
server = metrics.serve(int(sys.argv[1]), addr="127.0.0.1")
print(httpx.get(f"http://127.0.0.1:{sys.argv[1]}/metrics").text)
server.shutdown()
metrics.remove_dir(path)
print("removed" if not os.path.exists(path) else "left")
"""


def test_worker_endpoint_sums_the_pool_children(tmp_path: Path) -> None:
    """The worker's /metrics (served by the parent) shows a job a forked child ran."""
    import os
    import subprocess

    from .services import ROOT, free_port

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT, str(free_port())],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text, _, removed = out.stdout.rstrip().rpartition("\n")
    assert value(text, "alkn_worker_jobs_total", status="succeeded") == 1
    assert value(text, "alkn_job_stage_duration_seconds_count", stage="training") == 1
    assert value(text, "alkn_worker_jobs_running") == 0  # the dead child's gauge is gone
    assert removed == "removed"
