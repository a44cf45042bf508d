"""Faults and load (issue 5, items 1-5 and 8): nothing lost, nothing published twice.

One stack of real processes serves the tests that need one: uvicorn (the API), a Celery
worker with its default prefork pool (the job runs in a forked child, the dispatcher in the
parent), a redis-server of our own on a free port (stopping it is the broker outage), a
fresh PostgreSQL database reached through a TCP proxy that the test can cut (the database
outage; the machine's PostgreSQL keeps serving the other tests) and, where mounting is
allowed, an artifact store on a small tmpfs (the full disk). The lease (6 s) and sweep
interval (1 s) are short so that recovery takes seconds; items are text items and the
model a random tiny Llama, so a job is training plus a few forward passes.

The heartbeat reaper and the retention purge are tested in process, where a hang and the
passing of time can be placed exactly; so is the artifact store failing where no tmpfs can
be mounted (its writes go to /dev/full).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import io
import json
import os
import re
import signal
import sys
import tarfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import make_url, select, update

from api.app import create_app
from config.settings import Settings
from registry import jobs
from registry.db import session_scope
from registry.gc import collect_orphans
from registry.migrate import upgrade
from registry.models import (
    FINISHED,
    ForgetRequest,
    Job,
    JobEvent,
    Model,
    Outbox,
    Tenant,
    Version,
    utcnow,
)
from registry.store import LocalStore

from .services import (
    RedisServer,
    TcpProxy,
    api_and_worker,
    drop_pg_database,
    fill_filesystem,
    fresh_pg_database,
    small_tmpfs,
)
from .test_worker import World, get, register, submit, versions

KEY = "faults-bootstrap-key-0123456789"
# One optimizer step per epoch on 8 items; alpha fixed (no calibration passes).
FAST: dict[str, Any] = {"epochs": 1, "batch_size": 8, "grad_accum": 1, "lr": 1e-3,
                        "max_length": 64, "alpha": 1.0, "mask_rule": "retain_safe"}
# Short, so that recovery takes seconds; not shorter: the lease keeper's renewals (every
# LEASE_S / 4) can lag a couple of seconds behind on a busy machine (the GIL).
LEASE_S = 6
RETENTION = "5s"
HASH_SECRET = "faults-hash-secret"  # ALKN_HASH_SECRET of the stack and the retention test
T = TypeVar("T")


def texts(tag: str, n: int) -> list[dict[str, str]]:
    return [{"text": f"{tag} {i}: customer {tag}{i} lives at {i * 7919 % 10007} Elm Street."}
            for i in range(n)]


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0,
             every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(every)


def item_sha(item: dict[str, Any]) -> str:
    """The HMAC of the README's canonical form, written out here independently of the code."""
    return hmac.new(HASH_SECRET.encode("utf-8"),
                    json.dumps(item, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode("utf-8"), hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama (no training: these tests are about the service, not forgetting)."""
    from transformers import LlamaForCausalLM

    from alkn_core.demo_model import build_tokenizer, tiny_llama_config

    out = tmp_path_factory.mktemp("sources") / "tiny"
    tok = build_tokenizer([t["text"] for t in texts("x", 200)], vocab_size=300)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tok), "test", tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    http: httpx.Client
    base_url: str
    db_url: str  # direct, for the test's own checks (the processes go through `proxy`)
    proxy: TcpProxy
    redis: RedisServer
    worker: Any
    artifacts: Path
    on_tmpfs: bool
    worker_log: Path
    model_dir: Path

    def register(self, name: str) -> str:
        r = self.http.post("/v1/models", json={
            "name": name, "source": {"path": str(self.model_dir)},
            "retain_set": texts("retain", 4), "default_params": FAST})
        assert r.status_code == 201, r.text
        with session_scope(self.db_url) as s:
            return s.scalars(select(Model.id).where(Model.name == name)).one()

    def submit(self, name: str, items: list[dict[str, Any]], **params: Any) -> str:
        r = self.http.post(f"/v1/models/{name}/forget-requests",
                           json={"items": items, **({"params": params} if params else {})})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def wait(self, ids: list[str], timeout: float = 120.0) -> list[dict[str, Any]]:
        def finished() -> list[dict[str, Any]] | None:
            rows = [self.http.get(f"/v1/forget-requests/{i}").json() for i in ids]
            return rows if all(r["status"] in FINISHED for r in rows) else None
        return wait_for(f"requests {ids} finished", finished, timeout, every=0.25)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}
                                  ).json()["items"])

    def versions(self, name: str) -> list[dict[str, Any]]:
        items = self.http.get(f"/v1/models/{name}/versions", params={"limit": 500}
                              ).json()["items"]
        return sorted(items, key=lambda v: v["version"])

    def job_in_stage(self, request_id: str, stage: str) -> Job:
        def check() -> Job | None:
            with session_scope(self.db_url) as s:
                job = s.scalar(select(Job).join(ForgetRequest, ForgetRequest.job_id == Job.id)
                               .where(ForgetRequest.id == request_id))
            return job if job is not None and job.progress.get("stage") == stage else None
        return wait_for(f"request {request_id} in stage {stage}", check, 120, every=0.02)

    def store_keys(self, model_id: str) -> set[str]:
        return {p.name for p in (self.artifacts / model_id).iterdir()}

    def storage_keys(self, model_id: str) -> dict[int, str]:
        """Version number -> the key (last part) its row names."""
        with session_scope(self.db_url) as s:
            return {n: Path(k).name for n, k in s.execute(
                select(Version.number, Version.storage_key).where(Version.model_id == model_id))}

    def log_has(self, text: str) -> bool:
        return text in self.worker_log.read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory,
          tiny_model_dir: Path) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("faults")
    redis = RedisServer(home).start()
    direct = make_url(module_pg_url)
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432)).start()
    proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    with small_tmpfs(home / "artifacts") as on_tmpfs:
        env = {"ALKN_DATABASE_URL": proxied, "ALKN_BROKER_URL": redis.url,
               "ALKN_ARTIFACT_ROOT": str(home / "artifacts"), "ALKN_HOME": str(home),
               "ALKN_MODEL_SOURCE_ROOTS": str(tiny_model_dir.parent),
               "ALKN_BOOTSTRAP_API_KEY": KEY, "ALKN_QUEUE": f"faults-{uuid.uuid4().hex[:8]}",
               "ALKN_DISPATCH_INTERVAL": "0.1", "ALKN_LEASE_SECONDS": str(LEASE_S),
               "ALKN_SWEEP_INTERVAL": "1", "ALKN_FORGET_DATA_RETENTION": RETENTION,
               "ALKN_HASH_SECRET": HASH_SECRET,
               "OMP_NUM_THREADS": "1"}
        try:
            with api_and_worker(env, home, ["-c", "1"]) as (base_url, worker):  # prefork
                # The dispatcher starts once the worker is ready (connected to the broker).
                wait_for("worker ready", lambda: "dispatcher started" in (
                    home / "worker.log").read_text(errors="replace"), 120, every=0.2)
                with httpx.Client(base_url=base_url, timeout=30,
                                  headers={"Authorization": f"Bearer {KEY}"}) as http:
                    yield Stack(http, base_url, module_pg_url, proxy, redis, worker,
                                home / "artifacts", on_tmpfs, home / "worker.log",
                                tiny_model_dir)
                proxy.restore()  # a failed test may have left them down: let the worker exit
                if redis.proc is None:
                    redis.start()
        finally:
            proxy.close()
            redis.stop()


def assert_each_once(stack: Stack, name: str, ids: list[str]) -> None:
    """Every request is served by exactly one version (none lost, none twice)."""
    served = Counter(rid for v in stack.versions(name) for rid in v["forget_request_ids"])
    assert {rid: served[rid] for rid in ids} == dict.fromkeys(ids, 1)


def config_tar(model_dir: Path) -> bytes:
    """An upload's body: a tar of the smallest directory registration accepts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(model_dir / "config.json", arcname="config.json")
    return buf.getvalue()


def assert_problem_503(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.request.url, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers.get("retry-after")
    body = r.json()
    assert body["status"] == 503 and "database" in body["detail"]
    assert "psycopg" not in r.text and "127.0.0.1" not in r.text and "Traceback" not in r.text


# --------------------------------------------------------------------------------------------
# 1. A worker killed mid-job
# --------------------------------------------------------------------------------------------


def test_worker_killed_during_training_runs_the_job_again_once(stack: Stack) -> None:
    log_start = len(stack.worker_log.read_text(errors="replace"))
    model_id = stack.register("sigkill")
    rid = stack.submit("sigkill", texts("kill", 6), epochs=60)
    job = stack.job_in_stage(rid, "training")
    owner = get(stack.db_url, Model, model_id).lease_owner  # host:pid:nonce of the task run
    pid = int(owner.rsplit(":", 2)[1])
    with open(f"/proc/{pid}/stat") as f:  # our worker's pool child, nothing else
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == stack.worker.pid
    os.kill(pid, signal.SIGKILL)

    (done,) = stack.wait([rid])
    assert done["status"] == "succeeded" and done["result_version"] == 2, done
    again = stack.http.get(f"/v1/jobs/{job.id}").json()
    assert again["attempts"] == 2 and again["status"] == "succeeded"
    assert [(v["version"], v["job_id"]) for v in stack.versions("sigkill")] == \
        [(1, None), (2, job.id)]
    assert_each_once(stack, "sigkill", [rid])
    # The events say it was retried, and the second attempt started from the beginning.
    stages = [e["stage"] for e in stack.events(job.id)]
    retry = stages.index("retry")
    assert "training" in stages[:retry] and "done" not in stages[:retry]
    assert stages[retry + 1:] == ["loading", "evaluating", "probing", "training", "negating",
                                  "evaluating", "saving", "done"]
    assert "attempt 2 after worker loss" in stack.events(job.id)[retry]["message"]
    # Celery saw its pool child die and redelivered the message (task_reject_on_worker_lost):
    # the same task id received twice. Whichever of that delivery and the sweeper's (once
    # the dead child's lease expired) came second found nothing left to do.
    log = stack.worker_log.read_text(errors="replace")[log_start:]
    assert f"pid:{pid} exited with 'signal 9 (SIGKILL)'" in log, log[-3000:]
    received = Counter(re.findall(r"run_lineage\[([0-9a-f-]+)\] received", log))
    assert 2 in received.values(), received


# --------------------------------------------------------------------------------------------
# 2. The broker down while clients submit
# --------------------------------------------------------------------------------------------


def test_broker_outage_loses_no_submission(stack: Stack) -> None:
    model_id = stack.register("broker")
    stack.redis.stop()
    try:
        t0 = time.monotonic()
        batches = [texts(f"broker{k}", 3) for k in range(4)]
        ids = [stack.submit("broker", items) for items in batches]  # all 202
        assert time.monotonic() - t0 < 10  # the API never waits for the broker
        r = stack.http.get("/readyz")
        assert r.status_code == 503 and "broker" in r.json()["detail"], r.text
        checks = r.json()["checks"]
        assert [checks[k] for k in ("broker", "database", "store")] == ["unavailable", "ok", "ok"]

        def refused() -> list[Outbox] | None:  # the worker's dispatcher tried, and kept them
            with session_scope(stack.db_url) as s:
                rows = list(s.scalars(select(Outbox).where(
                    Outbox.payload["model_id"].as_string() == model_id).order_by(Outbox.id)))
            # A round stops at the first refusal: the oldest row carries the attempts.
            return rows if rows and rows[0].attempts >= 1 and rows[0].last_error else None
        rows = wait_for("outbox rows refused by the broker", refused, 30)
        assert len(rows) == len(ids) and all(o.published_at is None for o in rows)
        assert all(q["status"] == "queued" for q in
                   (stack.http.get(f"/v1/forget-requests/{i}").json() for i in ids))
    finally:
        stack.redis.start()
    done = stack.wait(ids, timeout=180)
    assert all(d["status"] == "succeeded" for d in done), done
    assert_each_once(stack, "broker", ids)
    assert wait_for("ready again", lambda: stack.http.get("/readyz").status_code == 200, 30)

    # Item 8 in the real worker: RETENTION after finishing, the periodic sweep purges the
    # items to hashes; the request is still there, with its count and its hashes.
    def purged() -> dict[str, Any] | None:
        body = stack.http.get(f"/v1/forget-requests/{ids[0]}").json()
        return body if body["items_purged_at"] else None
    body = wait_for("items purged", purged, 60, every=0.5)
    assert body["status"] == "succeeded" and body["item_count"] == 3
    assert body["item_hashes"] == [item_sha(i) for i in batches[0]]
    assert "Elm Street" not in json.dumps(body)
    with session_scope(stack.db_url) as s:
        assert s.get(ForgetRequest, ids[0]).items == []


# --------------------------------------------------------------------------------------------
# 3. The database down
# --------------------------------------------------------------------------------------------


def test_database_outage_is_503_then_recovers_and_the_job_runs_once(stack: Stack) -> None:
    model_id = stack.register("dbdown")
    rid = stack.submit("dbdown", texts("db", 6), epochs=30)
    job = stack.job_in_stage(rid, "training")
    stack.proxy.cut()  # PostgreSQL gone for the API and the worker, mid-job
    try:
        seen: list[int] = []

        def status_is_503() -> bool:  # served from the cache until its feed notices the loss
            r = stack.http.get(f"/v1/forget-requests/{rid}")
            seen.append(r.status_code)
            return r.status_code == 503
        wait_for("status route answers 503", status_is_503, 15, every=0.2)
        assert set(seen) <= {200, 503}
        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        for method, path, body in [
                ("GET", "/v1/models", None), ("GET", "/v1/models/dbdown", None),
                ("GET", "/v1/models/dbdown/versions", None),
                ("GET", "/v1/models/dbdown/versions/1/files/config.json", None),
                ("GET", "/v1/forget-requests", None), ("GET", f"/v1/forget-requests/{rid}", None),
                ("GET", f"/v1/jobs/{job.id}", None), ("GET", f"/v1/jobs/{job.id}/events", None),
                ("POST", "/v1/models/dbdown/forget-requests", {"items": texts("db2", 1)}),
                ("POST", f"/v1/forget-requests/{rid}:cancel", None),
                ("POST", "/v1/models", {"name": "dbdown-new", "source": {
                    "path": str(stack.model_dir)}}),
                ("GET", "/v1/models/dbdown/versions/1", None),
                ("PUT", "/v1/models/dbdown/aliases/prod", {"version": 1}),
                ("DELETE", "/v1/models/dbdown/aliases/prod", None),
                ("POST", "/v1/models/dbdown/versions/1:revoke", None),
                ("GET", "/v1/models/dbdown/versions/1/archive", None),
                ("GET", "/v1/models/dbdown/versions/1/evaluation", None),
                ("GET", "/v1/jobs", None)]:
            assert_problem_503(stack.http.request(method, path, json=body))
        assert_problem_503(stack.http.post(  # the upload: a valid archive, refused whole
            "/v1/models/dbdown/versions:upload", content=config_tar(stack.model_dir),
            headers={"Content-Type": "application/x-tar"}))
        head = stack.http.head("/v1/models/dbdown/versions/1/files/config.json")
        assert head.status_code == 503 and head.headers.get("retry-after"), head.headers
        # The worker finished the work, wrote the files, could not commit the version and
        # gave up after about its lease, leaving the job running for the next attempt.
        wait_for("the worker gave up publishing",
                 lambda: stack.log_has("stayed unreachable"), 90, every=0.2)
    finally:
        stack.proxy.restore()

    statuses: list[int] = []

    def api_back() -> bool:
        statuses.append(stack.http.get("/v1/models/dbdown").status_code)
        return statuses[-1] == 200
    wait_for("the API answers again", api_back, 30, every=0.2)
    assert set(statuses) <= {200, 503}  # 503 until it reconnects by itself, never 500

    (done,) = stack.wait([rid], timeout=120)
    assert done["status"] == "succeeded" and done["result_version"] == 2, done
    assert stack.http.get(f"/v1/jobs/{job.id}").json()["attempts"] == 2
    assert "retry" in [e["stage"] for e in stack.events(job.id)]
    assert_each_once(stack, "dbdown", [rid])
    # No version without its row: the first attempt's files lie under a key no row names
    # (garbage for the GC, never visible); every row's files are there.
    rows = stack.versions("dbdown")
    referenced = set(stack.storage_keys(model_id).values())
    keys = stack.store_keys(model_id)
    orphans = {k for k in keys if k.removesuffix("-state") not in referenced}
    assert len(orphans) == 2  # the model and its state, of the attempt that lost the database
    collect_orphans(stack.db_url, LocalStore(stack.artifacts), older_than=0)
    assert stack.store_keys(model_id) == keys - orphans
    for v in rows:
        r = stack.http.get(f"/v1/models/dbdown/versions/{v['version']}/files/config.json")
        assert r.status_code == 200


# --------------------------------------------------------------------------------------------
# 4. The artifact store full
# --------------------------------------------------------------------------------------------


def test_full_artifact_store_fails_the_job_cleanly(stack: Stack) -> None:
    if not stack.on_tmpfs:
        pytest.skip("mounting a tmpfs is not allowed here: no filesystem that can fill up")
    model_id = stack.register("full")
    keys = stack.store_keys(model_id)
    filler = fill_filesystem(stack.artifacts)
    try:
        with pytest.raises(OSError):  # really full
            (stack.artifacts / ".probe").write_bytes(os.urandom(65536))
        (failed,) = stack.wait([stack.submit("full", texts("full", 6))])
    finally:
        filler.unlink()
        (stack.artifacts / ".probe").unlink(missing_ok=True)
    assert failed["status"] == "failed" and failed["result_version"] is None
    assert failed["error"]["type"] == "artifact_store_error", failed["error"]
    assert "No space left on device" in failed["error"]["message"]
    assert "nothing was published" in failed["error"]["message"]
    assert str(stack.artifacts) not in failed["error"]["message"]
    # Nothing partial: no version row, no new key, no staging left behind.
    assert [v["version"] for v in stack.versions("full")] == [1]
    assert stack.store_keys(model_id) == keys
    assert list((stack.artifacts / ".tmp").iterdir()) == []
    # The lineage is usable: the next request succeeds, numbering goes on without a gap.
    (ok,) = stack.wait([stack.submit("full", texts("full-again", 6))])
    assert ok["status"] == "succeeded" and ok["result_version"] == 2, ok


class FullDiskStore(LocalStore):
    """A LocalStore whose disk is full when a version is saved: in every staging directory,
    config.json (the first file save_pretrained writes, through a plain open()) is a link to
    /dev/full, where each write fails with ENOSPC. A real failure of the write, the kernel's,
    for root too (no permission involved), and no mount needed."""

    def staging_dir(self) -> Path:
        d = super().staging_dir()
        (d / "config.json").symlink_to("/dev/full")
        return d


def test_artifact_store_failure_without_a_mount_fails_the_job_cleanly(
        pg_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The full store again, where no tmpfs can be mounted: in process, on a FullDiskStore
    over the same root as the healthy store."""
    from worker import runner

    assert Path("/dev/full").is_char_device()  # else the link would make a plain file there
    settings = Settings(database_url=pg_url, artifact_root=str(tmp_path / "artifacts"),
                        home=tmp_path, queue="unused")
    store = LocalStore(settings.resolved_artifact_root)
    model_id = register(pg_url, store, _world(tiny_model_dir), default_params=FAST)
    rid = submit(pg_url, model_id, texts("enospc", 6))
    assert runner.run_lineage_once(settings, model_id, "w-full",
                                   store=FullDiskStore(store.root)) == 1

    failed = get(pg_url, ForgetRequest, rid)
    assert failed.status == "failed" and failed.result_version is None
    assert failed.error["type"] == "artifact_store_error", failed.error
    message = failed.error["message"]
    assert "could not write the new version to the artifact store" in message
    assert "No space left on device" in message and "nothing was published" in message
    assert str(store.root) not in message and "Traceback" not in message
    job = get(pg_url, Job, failed.job_id)
    assert job.status == "failed" and job.error == failed.error and job.finished_at
    # Nothing partial: no version row, no new key, no staging left behind, lease released.
    assert [(v.number, v.status) for v in versions(pg_url, model_id)] == [(1, "ready")]
    assert [p.name for p in (store.root / model_id).iterdir()] == ["v1-base"]
    assert list((store.root / ".tmp").iterdir()) == []
    assert get(pg_url, Model, model_id).lease_owner is None
    # The lineage is usable: the next request succeeds, numbering goes on without a gap.
    again = submit(pg_url, model_id, texts("enospc-again", 6))
    assert runner.run_lineage_once(settings, model_id, "w-ok", store=store) == 1
    ok = get(pg_url, ForgetRequest, again)
    assert ok.status == "succeeded" and ok.result_version == 2, (ok.status, ok.error)
    (v2,) = versions(pg_url, model_id)[1:]
    assert v2.status == "ready" and v2.parent_version == 1 and v2.forget_request_ids == [again]


# --------------------------------------------------------------------------------------------
# 8b. Revoking superseded versions removes their bytes
# --------------------------------------------------------------------------------------------


def test_revoke_removes_superseded_versions_bytes(stack: Stack) -> None:
    model_id = stack.register("revoke")
    for k in range(2):  # v2 and v3, each with its ALKN state
        (done,) = stack.wait([stack.submit("revoke", texts(f"rev{k}", 6))])
        assert done["status"] == "succeeded", done
    keys = stack.storage_keys(model_id)
    assert {keys[2] + "-state", keys[3] + "-state"} <= stack.store_keys(model_id)
    for n in (1, 2):  # everything the newest version superseded
        r = stack.http.post(f"/v1/models/revoke/versions/{n}:revoke")
        assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    assert stack.store_keys(model_id) == {keys[3], keys[3] + "-state"}
    for n in (1, 2):
        assert stack.http.get(f"/v1/models/revoke/versions/{n}/archive").status_code == 409
    assert stack.http.get("/v1/models/revoke/versions/3/archive").status_code == 200
    # The lineage goes on from the newest version and its state.
    (done,) = stack.wait([stack.submit("revoke", texts("rev2", 6))])
    assert done["status"] == "succeeded" and done["result_version"] == 4
    assert stack.versions("revoke")[-1]["parent_version"] == 3


# --------------------------------------------------------------------------------------------
# 5. Load
# --------------------------------------------------------------------------------------------


def _load_bench() -> Any:
    path = Path(__file__).resolve().parents[1] / "bench" / "load.py"
    spec = importlib.util.spec_from_file_location("bench_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_500_requests_50_clients_one_lineage(stack: Stack,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench()
    model_id = stack.register("load")
    result = asyncio.run(bench.run_load(stack.base_url, KEY, "load", requests=500,
                                        concurrency=50, timeout=300))
    summary = result.summary()
    with capsys.disabled():  # the numbers belong in the test output
        print("\nload (bench/load.py):", json.dumps(summary))
    assert not result.rejected and len(set(result.ids)) == 500
    assert set(result.statuses.values()) == {"succeeded"}
    assert_each_once(stack, "load", result.ids)
    with session_scope(stack.db_url) as s:
        rows = s.execute(select(Job.status, Job.started_at, Job.finished_at).where(
            Job.model_id == model_id)).all()
    assert {r.status for r in rows} == {"succeeded"} and len(rows) == len(result.jobs)
    # Coalescing: at most MAX_MERGE requests per job, and no more jobs than the timing
    # allows. The lineage runs one job at a time: while submissions arrive (submit_s) at
    # most submit_s / (shortest job) + 1 jobs can start, each maybe small; every job after
    # the last submission takes what is queued, MAX_MERGE at a time. (A fixed "+4" bound
    # failed when jobs were quick: 15 jobs at 1.3 s each over a 13 s submission window.)
    assert max(result.jobs.values()) <= jobs.MAX_MERGE
    shortest = min((r.finished_at - r.started_at).total_seconds() for r in rows)
    bound = -(-500 // jobs.MAX_MERGE) + int(result.submit_s / max(shortest, 1e-3)) + 1
    assert len(result.jobs) <= bound, {**summary, "shortest_job_s": shortest, "bound": bound}


# --------------------------------------------------------------------------------------------
# 1b. The heartbeat reaper (in process: the hang is placed exactly)
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def own_db() -> Iterator[str]:
    """A database of its own: the sweeps act on every model in it."""
    url = fresh_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(url)


def _world(model_dir: Path) -> World:
    return World(model_dir, ["a", "b", "c", "d"], {"a": texts("a", 6), "d": texts("retain", 4)},
                 [])


def test_a_hung_job_is_requeued_after_the_heartbeat_timeout(
        own_db: str, tmp_path: Path, tiny_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import runner
    from worker.dispatcher import Dispatcher

    settings = Settings(database_url=own_db, artifact_root=str(tmp_path / "artifacts"),
                        home=tmp_path, queue="unused", lease_seconds=2,
                        job_heartbeat_timeout=1.0)
    store = LocalStore(settings.resolved_artifact_root)
    model_id = register(own_db, store, _world(tiny_model_dir), default_params=FAST)
    rid = submit(own_db, model_id, texts("hang", 6))

    # Files: the job runs in a forked child of the worker, which sees no event of ours.
    hung, release = tmp_path / "hung", tmp_path / "release"
    real_evaluate = runner.evaluate

    def hang_once(*args: Any, **kwargs: Any) -> Any:
        if not hung.exists():  # the job stops here; the lease keepers run on
            hung.touch()
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", hang_once)
    ran: list[int] = []
    first = threading.Thread(target=lambda: ran.append(runner.run_lineage_once(
        settings, model_id, "w-hung", store=store)))
    first.start()
    try:
        wait_for("the job to hang", hung.exists)
        time.sleep(2.5)  # past the heartbeat timeout and past the lease's own length
        model = get(own_db, Model, model_id)
        assert model.lease_owner == "w-hung" and model.lease_until > utcnow()  # kept renewed
        assert model_id not in jobs.stranded_lineages(own_db)  # so only a heartbeat tells
        job_id = get(own_db, ForgetRequest, rid).job_id

        reaped_at = utcnow()
        Dispatcher(None, settings).sweep()  # the worker's periodic sweep
        model = get(own_db, Model, model_id)
        assert model.lease_owner is None  # taken back
        with session_scope(own_db) as s:
            assert s.scalar(select(Outbox.id).where(  # and the lineage queued again
                Outbox.payload["model_id"].as_string() == model_id,
                Outbox.published_at.is_(None)))
        # Its clock restarted: reaped once per timeout, not at every sweep.
        assert get(own_db, Job, job_id).heartbeat_at >= reaped_at
        assert jobs.reap_silent_jobs(own_db, 30.0) == []
        # The worker is free at once (its lease keeper saw the lease go; the hung job's
        # process was killed), although the hang itself never ended.
        first.join(10)
        assert not first.is_alive() and ran == [1] and not release.exists()
        assert get(own_db, Job, job_id).attempts == 1  # the next worker's attempt is the 2nd

        # The next worker resumes the job: a new attempt, progress back at the start.
        assert jobs.take_lease(own_db, model_id, "w-2", 60)
        spec = jobs.next_job(own_db, model_id)
        assert spec is not None and spec.resumed and spec.job_id == job_id
        assert get(own_db, Job, job_id).progress == jobs.QUEUED_PROGRESS
        assert get(own_db, ForgetRequest, rid).progress == jobs.QUEUED_PROGRESS
        assert runner.run_job(settings, store, spec, "w-2") == "succeeded"
        jobs.release_lease(own_db, model_id, "w-2")
    finally:
        release.touch()
        first.join(120)
    # The hung attempt was stopped without publishing anything.
    assert ran == [1]
    job = get(own_db, Job, job_id)
    assert job.status == "succeeded" and job.attempts == 2 and job.result_version == 2
    assert [v.number for v in versions(own_db, model_id)] == [1, 2]
    with session_scope(own_db) as s:
        stages = list(s.scalars(select(JobEvent.stage).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)))
    assert stages[:3] == ["queued", "loading", "lost"] and stages[3] == "retry"
    assert stages[4:] == ["loading", "evaluating", "probing", "training", "negating",
                          "evaluating", "saving", "done"]
    v2 = versions(own_db, model_id)[1]
    assert sorted(p.name for p in (store.root / model_id).iterdir()) == sorted(
        ["v1-base", Path(v2.storage_key).name, Path(v2.storage_key).name + "-state"])


# --------------------------------------------------------------------------------------------
# 8. Forget data retention (in process: time is set, not waited for)
# --------------------------------------------------------------------------------------------


def test_retention_purges_finished_requests_items_to_hashes(own_db: str,
                                                            tmp_path: Path) -> None:
    from worker.dispatcher import Dispatcher

    assert Settings().forget_data_retention_s == 7 * 86400  # the default: 7 days
    with pytest.raises(ValueError, match="duration"):
        Settings(forget_data_retention="a week")
    settings = Settings(database_url=own_db, home=tmp_path, bootstrap_api_key=KEY,
                        forget_data_retention="1h", hash_secret=HASH_SECRET)
    items = [{"question": "Wo wohnt Zoë?", "answer": "In Köln."}, {"text": "Zoë, 42 ⚑"}]
    now = utcnow()
    with TestClient(create_app(settings)) as client:  # the app makes the key's tenant
        client.headers["Authorization"] = f"Bearer {KEY}"
        with session_scope(own_db) as s:
            tenant = s.scalars(select(Tenant.id).where(Tenant.name == "default")).one()
            model = Model(tenant_id=tenant, name="kept", qa_template="{question} {answer}")
            s.add(model)
            s.flush()
            cases = {  # name: (status, finished this long ago)
                "old_succeeded": ("succeeded", timedelta(hours=2)),
                "old_failed": ("failed", timedelta(hours=2)),
                "recent": ("succeeded", timedelta(minutes=30)),
                "running": ("running", None), "queued": ("queued", None)}
            ids = {}
            for name, (status, ago) in cases.items():
                req = ForgetRequest(tenant_id=tenant, model_id=model.id, status=status,
                                    method="alkn", items=items, item_count=len(items),
                                    finished_at=now - ago if ago else None)
                s.add(req)
                s.flush()
                ids[name] = req.id

        Dispatcher(None, settings).sweep()
        with session_scope(own_db) as s:  # items are loaded from their own table on access
            for name, i in ids.items():
                row = s.get(ForgetRequest, i)
                if name.startswith("old_"):
                    assert row.items == [] and row.items_purged_at is not None
                    assert row.item_hashes == [item_sha(i) for i in items]
                else:
                    assert row.items == items and row.item_hashes is None, name
        body = client.get(f"/v1/forget-requests/{ids['old_succeeded']}").json()
        assert body["item_count"] == 2 and body["status"] == "succeeded"
        assert body["item_hashes"] == [item_sha(i) for i in items] and body["items_purged_at"]
        assert "Zoë" not in json.dumps(body, ensure_ascii=False)
        listed = client.get("/v1/forget-requests").json()["items"]
        assert {r["id"] for r in listed} == set(ids.values())
        assert all(r["item_hashes"] is None for r in listed)  # listings stay small
        # The next sweep finds nothing more; the recent one goes once it is old enough.
        with session_scope(own_db) as s:
            s.execute(update(ForgetRequest).where(ForgetRequest.id == ids["recent"])
                      .values(finished_at=now - timedelta(hours=1, seconds=1)))
        Dispatcher(None, settings).sweep()
        with session_scope(own_db) as s:
            purged = {name for name, i in ids.items()
                      if s.get(ForgetRequest, i).items_purged_at is not None}
        assert purged == {"old_succeeded", "old_failed", "recent"}
