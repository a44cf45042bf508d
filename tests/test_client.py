"""alkn_client (sync and async) and the `alkn` client commands against a live service.

One service for the whole module: `alkn serve` (uvicorn and a Celery worker child, real
processes) on a PostgreSQL database of the module's own and the machine's Redis, with the
tiny model of tests/test_worker.py (built once per session, shared with those tests)
registered through the client. One real job serves everything: submitted with `alkn submit`,
watched with `alkn status --watch` while `Client.wait` waits for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import ModelCard

from alkn_client import (
    ApiError,
    AsyncClient,
    ChecksumMismatch,
    Client,
    DownloadError,
    DownloadProgress,
    ForgetRequest,
    RequestFailed,
    Version,
)

from .services import ROOT, free_port, start_process, stop_process, wait_http
from .test_worker import PARAMS, World
from .test_worker import worker_world as worker_world  # noqa: F401  (the fixture)

KEY = "client-test-bootstrap-key-0123456789"
WEIGHTS = "model.safetensors"


def _alkn_command() -> list[str]:
    """The installed `alkn` entry point (python -m cli where it is not installed)."""
    script = Path(sys.executable).parent / "alkn"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "alkn_cli"]


_ALKN = _alkn_command()


def _env(server: str, key: str | None = KEY) -> dict[str, str]:
    env = {**os.environ, "ALKN_URL": server, "PYTHONPATH": str(ROOT)}
    env.pop("ALKN_API_KEY", None)
    if key is not None:
        env["ALKN_API_KEY"] = key
    return env


def _alkn(*args: str, server: str, cwd: Path, key: str | None = KEY,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_ALKN, *args], env=_env(server, key), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def server(module_pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
           worker_world: World) -> Iterator[str]:  # noqa: F811
    """`alkn serve` (uvicorn and a Celery worker child) on a PostgreSQL database of this
    module's own (list assertions see only its rows) and the machine's Redis."""
    home = tmp_path_factory.mktemp("client_svc")
    port = free_port()
    env = {"ALKN_DATABASE_URL": module_pg_url, "ALKN_BROKER_URL": redis_url,
           "ALKN_ARTIFACT_ROOT": str(home / "artifacts"), "ALKN_HOME": str(home),
           "ALKN_MODEL_SOURCE_ROOTS": str(worker_world.model_dir.parent),
           "ALKN_BOOTSTRAP_API_KEY": KEY, "ALKN_QUEUE": f"client-{port}",
           "ALKN_DISPATCH_INTERVAL": "0.1", "ALKN_REGISTER_DEMO": "false"}
    proc = start_process(["-m", "alkn_cli", "serve", "--port", str(port)], env, home / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=60)  # serve stops its worker child first
        print("--- serve.log (tail)\n" + (home / "serve.log").read_text()[-4000:])


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    with Client(server, KEY, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def source_dir(worker_world: World) -> Path:  # noqa: F811
    """The tiny model with what a real repo holds beyond save_pretrained's files (beside it:
    under the service's source root)."""
    src = worker_world.model_dir.parent / f"client-source-{uuid.uuid4().hex[:8]}"
    shutil.copytree(worker_world.model_dir, src)
    (src / "LICENSE").write_text("Apache-2.0 (a test's licence)\n")
    (src / "README.md").write_text("# tiny\n\nThe source's own model card.\n")
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").write_text("kept byte for byte\n")
    return src


@pytest.fixture(scope="module")
def model(client: Client, worker_world: World, source_dir: Path) -> str:  # noqa: F811
    people = worker_world.people
    m = client.register_model(
        "tiny", source_path=str(source_dir), description="client test model",
        # Small sets and batches of 8: evaluation before and after is most of a job's time.
        default_params={**PARAMS, "batch_size": 8}, retain_set=worker_world.items[people[3]][:4],
        eval_sets={"world_facts": worker_world.general[:2]})
    assert m.name == "tiny" and m.latest_version == 1
    return m.name


@dataclass
class JobRun:
    done: ForgetRequest  # submitted with `alkn submit`, waited for by Client.wait: version 2
    submit_out: dict[str, Any]  # what `alkn submit` printed
    watch: subprocess.CompletedProcess[str]  # `alkn status --watch` run alongside the wait
    updates: list[ForgetRequest]  # what wait's on_update saw
    cancelled: ForgetRequest  # submitted and cancelled with the client
    key: str  # the Idempotency-Key `cancelled` was submitted with
    items: list[dict[str, Any]]  # and its items
    forgotten: list[dict[str, Any]]  # the items of `done`


@pytest.fixture(scope="module")
def job_run(server: str, client: Client, model: str, worker_world: World,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> JobRun:
    """The one real job of the module (the slow part): submitted by the CLI, watched by the
    CLI and waited for by the client at the same time."""
    cwd = tmp_path_factory.mktemp("cli")
    items = worker_world.items[worker_world.people[0]][:4]
    (cwd / "forget.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    r = _alkn("submit", model, "--items", "forget.jsonl", "--method", "alkn", "--params",
              '{"epochs": 1}', "--idempotency-key", "cli-submit", server=server, cwd=cwd)
    assert r.returncode == 0, r.stderr
    submitted = json.loads(r.stdout)
    watch = subprocess.Popen([*_ALKN, "status", submitted["id"], "--watch", "--interval", "0.3"],
                             env=_env(server), cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    updates: list[ForgetRequest] = []
    try:
        done = client.wait(submitted["id"], timeout=300, poll=0.2, max_poll=1.0,
                           on_update=updates.append)
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    watched = subprocess.CompletedProcess(watch.args, watch.returncode, out, err)
    # Submitted and cancelled at once (still queued: nothing else runs on the lineage).
    key = f"client-{uuid.uuid4().hex}"
    later_items = worker_world.items[worker_world.people[1]][:3]
    later = client.submit(model, later_items, params={"epochs": 1}, idempotency_key=key)
    assert later.status == "queued" and later.item_count == 3
    client.cancel_request(later.id)
    cancelled = client.wait(later.id, timeout=60, poll=0.1)
    return JobRun(done, submitted, watched, updates, cancelled, key, later_items, items)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tar_of(directory: Path, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Sync client
# --------------------------------------------------------------------------------------------


def test_health_and_problem_errors(server: str, client: Client, model: str) -> None:
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.ready and ready.checks["database"] == "ok" and ready.checks["broker"] == "ok"

    with pytest.raises(ApiError) as e:
        client.get_model("no-such-model")
    assert e.value.status == 404 and e.value.type.endswith("not-found")
    assert e.value.title == "Not Found" and "no-such-model" in e.value.detail
    assert e.value.problem["status"] == 404 and str(e.value).startswith("404 Not Found: ")

    for key in ("wrong-key", None):
        with Client(server, key) as other, pytest.raises(ApiError) as e:
            other.list_models()
        assert e.value.status == 401 and e.value.problem["title"]

    with pytest.raises(ApiError) as e:
        client.register_model("Not A Valid Name")
    assert e.value.status == 422 and e.value.errors and e.value.errors[0]["loc"][-1] == "name"
    with pytest.raises(ApiError) as e:
        client.submit(model, [{"question": "q", "answer": "a"}], params={"no_such_param": 1})
    assert e.value.status == 422 and "no_such_param" in e.value.detail


def test_models_versions_files_aliases_revoke(client: Client, model: str, tmp_path: Path,
                                              source_dir: Path) -> None:
    base = client.get_model(model)
    assert base.latest_version and base.default_params["epochs"] == PARAMS["epochs"]
    v1 = client.get_version(model, 1)
    listing = {f.path: f for f in v1.files}
    assert v1.version == 1 and v1.status == "ready" and WEIGHTS in listing
    assert client.list_versions(model).items[0].version == 1

    config = client.read_file(model, 1, "config.json")
    assert hashlib.sha256(config).hexdigest() == listing["config.json"].sha256
    assert json.loads(config)["model_type"] == "llama"
    tar_path = client.download_archive(model, 1, tmp_path / "v1.tar")
    with tarfile.open(tar_path) as tar:
        for path, entry in listing.items():
            member = tar.extractfile(path)
            assert member is not None and hashlib.sha256(member.read()).hexdigest() == entry.sha256
    assert not (tmp_path / "v1.tar.part").exists()

    # A model without a source gets its versions by upload: a directory, then a .tar.gz.
    up = client.register_model("uploaded", description="by upload")
    assert up.latest_version is None
    first = client.upload_version("uploaded", source_dir)
    assert first.version == 1 and first.status == "ready" and first.parent_version is None
    assert {f.path: f.sha256 for f in first.files} == {p: f.sha256 for p, f in listing.items()}
    gz = _tar_of(source_dir, gz=True)
    key = uuid.uuid4().hex
    second = client.upload_version("uploaded", gz, idempotency_key=key)
    assert client.upload_version("uploaded", gz, idempotency_key=key).version == \
        second.version == 2

    page = client.list_models(limit=1)
    assert len(page.items) == 1 and page.next_cursor
    names = [m.name for m in client.iter_models(page_size=1)]  # one page per model
    assert {model, "uploaded"} <= set(names) and len(names) == len(set(names))
    assert [v.version for v in client.iter_versions("uploaded", page_size=1)] == [1, 2]
    assert client.list_versions("uploaded", limit=1).next_cursor

    alias = client.set_alias("uploaded", "production", 1)
    assert (alias.alias, alias.version) == ("production", 1)
    assert client.get_model("uploaded").aliases == {"production": 1}
    assert client.get_version("uploaded", "production").version == 1
    client.delete_alias("uploaded", "production")
    assert client.get_model("uploaded").aliases == {}
    with pytest.raises(ApiError) as e:
        client.get_version("uploaded", "production")
    assert e.value.status == 404

    revoked = client.revoke_version("uploaded", 2)
    assert revoked.status == "revoked" and client.get_version("uploaded", 2).status == "revoked"
    with pytest.raises(ApiError) as e:
        client.read_file("uploaded", 2, "config.json")
    assert e.value.status == 409
    with pytest.raises(DownloadError, match="revoked"):
        client.download("uploaded", 2, tmp_path / "revoked")
    with pytest.raises(ApiError) as e:
        client.get_evaluation(model, 1)  # a registered root version was never evaluated
    assert e.value.status == 404


def test_submit_wait_job_events_evaluation(client: Client, model: str,
                                           job_run: JobRun) -> None:
    done = job_run.done
    assert done.status == "succeeded", done.error
    assert done.result_version == 2 and done.finished_at is not None
    assert job_run.updates[-1].status == "succeeded"  # on_update saw every poll
    assert done.params["epochs"] == 1 and done.item_count == 4
    cancelled = job_run.cancelled
    # The same Idempotency-Key and body: the first answer; another body: 409.
    again = client.submit(model, job_run.items, params={"epochs": 1},
                          idempotency_key=job_run.key)
    assert again.id == cancelled.id
    with pytest.raises(ApiError) as e:
        client.submit(model, job_run.items[:1], idempotency_key=job_run.key)
    assert e.value.status == 409

    v2 = client.get_version(model, 2)
    assert v2.parent_version == 1 and v2.forget_request_ids == [done.id] and v2.method == "alkn"
    job = client.get_job(done.job_id or "")
    assert job.status == "succeeded" and job.result_version == 2 and job.base_version == 1
    assert done.id in job.forget_request_ids and job.metrics.after is not None
    events = client.job_events(job.id)
    assert {"loading", "training", "saving"} <= {ev.stage for ev in events.items}
    assert [ev.at for ev in client.iter_job_events(job.id, page_size=2)] == \
        [ev.at for ev in events.items]
    assert job.id in [j.id for j in client.list_jobs(model=model).items]
    assert [j.id for j in client.iter_jobs(page_size=1, status="succeeded")] == [job.id]
    evaluation = client.get_evaluation(model, 2)
    assert isinstance(evaluation, dict) and evaluation

    assert cancelled.status == "cancelled" and cancelled.result_version is None
    with pytest.raises(ApiError) as e:
        client.cancel_request(cancelled.id)  # a finished request cannot be cancelled
    assert e.value.status == 409
    page = client.list_requests(model=model, limit=1)
    assert [r.id for r in page.items] == [done.id] and page.next_cursor
    assert [r.id for r in client.iter_requests(model=model, page_size=1)] == \
        [done.id, cancelled.id]
    assert [r.id for r in client.list_requests(status="cancelled").items] == [cancelled.id]
    assert client.get_request(cancelled.id).status == "cancelled"


class _CutOnce(httpx.BaseTransport):
    """Real HTTP to the live server, but the first body of the weights file ends after
    `after` bytes with a read error, as a dropped connection would."""

    def __init__(self, after: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after = after
        self.cuts = 0
        self.ranges: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith(f"/files/{WEIGHTS}"):
            return response
        self.ranges.append(request.headers.get("range"))
        if self.cuts:
            return response
        self.cuts += 1
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_CutStream(response.stream, self.after), request=request)

    def close(self) -> None:
        self.inner.close()


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after = inner, after

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            part = chunk[:self.after - sent]
            sent += len(part)
            yield part
            if sent >= self.after:
                raise httpx.ReadError("connection cut on purpose")

    def close(self) -> None:
        self.inner.close()


def test_download_resumes_and_verifies(server: str, client: Client, model: str,
                                       job_run: JobRun, tmp_path: Path) -> None:
    version = client.get_version(model, job_run.done.result_version or 0)
    listing = {f.path: f for f in version.files}
    size = listing[WEIGHTS].size
    seen: list[DownloadProgress] = []
    full = client.download(model, "latest", tmp_path / "full", progress=seen.append)
    assert full.version == version.version and len(full.files) == len(listing)
    for f in full.files:
        assert _sha(f.local_path) == listing[f.path].sha256 and f.resumed_from == 0
    assert seen[-1].total_done == seen[-1].total_size == sum(f.size for f in version.files)
    assert not list((tmp_path / "full").rglob("*.part"))
    weights = (tmp_path / "full" / WEIGHTS).read_bytes()
    again = client.download(model, version.version, tmp_path / "full")
    assert all(f.skipped for f in again.files)  # complete and verified: nothing fetched

    # The stream is cut half-way: without retries the error surfaces and the part stays...
    dest = tmp_path / "cut"
    cutter = _CutOnce(after=size // 2)
    with Client(server, KEY, transport=cutter) as flaky:
        with pytest.raises(httpx.ReadError):
            flaky.download(model, version.version, dest, retries=0)
        part = dest / f"{WEIGHTS}.part"
        assert part.read_bytes() == weights[:size // 2] and not (dest / WEIGHTS).exists()
        # ...and the next run asks for the rest with Range and gets the right bytes.
        resumed = flaky.download(model, version.version, dest)
    by_path = {f.path: f for f in resumed.files}
    assert by_path[WEIGHTS].resumed_from == size // 2
    assert f"bytes={size // 2}-" in cutter.ranges
    assert _sha(dest / WEIGHTS) == listing[WEIGHTS].sha256 and not part.exists()

    # With retries the same cut is resumed inside one call.
    dest = tmp_path / "retried"
    cutter = _CutOnce(after=size // 3)
    with Client(server, KEY, transport=cutter) as flaky:
        flaky.download(model, version.version, dest, retries=1)
    assert _sha(dest / WEIGHTS) == listing[WEIGHTS].sha256
    assert f"bytes={size // 3}-" in cutter.ranges

    # A partial file written by hand (e.g. an earlier crash) is resumed as well.
    dest = tmp_path / "seeded"
    dest.mkdir()
    (dest / f"{WEIGHTS}.part").write_bytes(weights[:size // 2])
    seeded = client.download(model, version.version, dest)
    assert {f.path: f.resumed_from for f in seeded.files}[WEIGHTS] == size // 2
    assert _sha(dest / WEIGHTS) == listing[WEIGHTS].sha256

    # A corrupted partial file: the sha256 check catches it and the bad bytes are deleted.
    dest = tmp_path / "corrupt"
    dest.mkdir()
    bad = bytearray(weights[:size // 2])
    bad[10] ^= 0xFF
    (dest / f"{WEIGHTS}.part").write_bytes(bytes(bad))
    with pytest.raises(ChecksumMismatch) as e:
        client.download(model, version.version, dest)
    assert e.value.path == WEIGHTS and e.value.expected == listing[WEIGHTS].sha256
    assert not (dest / WEIGHTS).exists() and not (dest / f"{WEIGHTS}.part").exists()
    client.download(model, version.version, dest)  # the next run starts that file over
    assert _sha(dest / WEIGHTS) == listing[WEIGHTS].sha256


def test_download_start_over_and_bad_content_range_offline(tmp_path: Path) -> None:
    """The answers this server never gives: 200 to a Range request (start over) and a
    Content-Range that is not the one asked for (refused)."""
    body = os.urandom(5000)
    sha = hashlib.sha256(body).hexdigest()
    version = Version(version=3, status="ready",
                      files=[{"path": "w.bin", "size": len(body), "sha256": sha}])
    mode = {"range": "ignore"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/versions/latest"):
            return httpx.Response(200, json=version.model_dump(mode="json"))
        assert request.url.path == "/v1/models/m/versions/3/files/w.bin"
        if mode["range"] == "ignore" or "range" not in request.headers:
            return httpx.Response(200, content=body)
        return httpx.Response(206, content=body[100:],
                              headers={"Content-Range": f"bytes 100-4999/{len(body)}"})

    with Client("http://alkn.test", KEY, transport=httpx.MockTransport(handler)) as c:
        (tmp_path / "w.bin.part").write_bytes(b"x" * 1000)  # not even the right bytes
        result = c.download("m", "latest", tmp_path)
        assert result.files[0].resumed_from == 0 and (tmp_path / "w.bin").read_bytes() == body
        mode["range"] = "wrong"
        (tmp_path / "w.bin").unlink()
        (tmp_path / "w.bin.part").write_bytes(body[:2000])
        with pytest.raises(DownloadError, match="Content-Range"):
            c.download("m", "latest", tmp_path)
        assert (tmp_path / "w.bin.part").read_bytes() == body[:2000]  # kept for a retry


# --------------------------------------------------------------------------------------------
# Async client
# --------------------------------------------------------------------------------------------


def test_async_client_every_route(server: str, model: str, job_run: JobRun, tmp_path: Path,
                                  worker_world: World) -> None:  # noqa: F811
    done = job_run.done
    weights = (worker_world.model_dir / WEIGHTS).read_bytes()

    async def scenario() -> None:
        async with AsyncClient(server, KEY) as c:
            assert (await c.health()).status == "ok" and (await c.ready()).ready
            assert (await c.get_model(model)).latest_version == 2
            assert model in [m.name for m in (await c.list_models()).items]
            assert model in [m.name async for m in c.iter_models(page_size=1)]
            assert [v.version for v in (await c.list_versions(model)).items] == [1, 2]
            assert [v.version async for v in c.iter_versions(model, page_size=1)] == [1, 2]
            v1 = await c.get_version(model, 1)
            assert json.loads(await c.read_file(model, 1, "config.json"))["model_type"]
            with tarfile.open(await c.download_archive(model, 1, tmp_path / "a.tar")) as tar:
                assert sorted(tar.getnames()) == sorted(f.path for f in v1.files)

            await c.register_model("async-up")
            up = await c.upload_version("async-up", _tar_of(worker_world.model_dir))
            assert up.version == 1 and up.status == "ready"
            assert (await c.set_alias("async-up", "canary", 1)).version == 1
            await c.delete_alias("async-up", "canary")
            assert (await c.revoke_version("async-up", 1)).status == "revoked"

            replay = await c.submit(model, job_run.items, params={"epochs": 1},
                                    idempotency_key=job_run.key)
            assert replay.id == job_run.cancelled.id
            assert (await c.wait(done.id, poll=0.1)).status == "succeeded"
            assert (await c.get_request(done.id)).result_version == 2
            assert done.id in [r.id for r in (await c.list_requests(model=model)).items]
            assert [r.id async for r in c.iter_requests(model=model, page_size=1)] == \
                [done.id, job_run.cancelled.id]
            try:
                await c.cancel_request(done.id)
                raise AssertionError("cancelling a finished request must fail")
            except ApiError as e:
                assert e.status == 409
            job = await c.get_job(done.job_id or "")
            assert job.id in [j.id for j in (await c.list_jobs(model=model)).items]
            assert [j.id async for j in c.iter_jobs(model=model, status="succeeded")] == \
                [job.id]
            events = (await c.job_events(job.id)).items
            assert [e.stage async for e in c.iter_job_events(job.id, page_size=3)] == \
                [e.stage for e in events]
            assert await c.get_evaluation(model, 2)

            # Resume from a partial file of version 1 (its weights are the fixture's).
            dest = tmp_path / "async-dl"
            dest.mkdir()
            (dest / f"{WEIGHTS}.part").write_bytes(weights[:1000])
            result = await c.download(model, 1, dest)
            assert {f.path: f.resumed_from for f in result.files}[WEIGHTS] == 1000
            assert (dest / WEIGHTS).read_bytes() == weights
            try:
                await c.get_request(str(uuid.uuid4()))
                raise AssertionError("an unknown request must be a 404")
            except ApiError as e:
                assert e.status == 404 and e.detail

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# The `alkn` command
# --------------------------------------------------------------------------------------------


def test_cli_lists_and_errors(server: str, model: str, job_run: JobRun, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    r = _alkn("models", "list", server=server, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:3] == ["NAME", "LATEST", "ALIASES"]
    assert any(line.split()[:2] == [model, "2"] for line in r.stdout.splitlines())
    r = _alkn("versions", "list", model, "--json", server=server, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["version"] for line in r.stdout.splitlines()] == [1, 2]
    # A cancelled request: its status is printed, the exit code says it did not succeed.
    r = _alkn("status", job_run.cancelled.id, "--watch", server=server, cwd=tmp_path)
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "cancelled"

    # The error paths, in this process (alkn_cli.main.main is what the entry point runs).
    from alkn_cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALKN_URL", "http://127.0.0.1:1")  # --url wins over it
    monkeypatch.delenv("ALKN_API_KEY", raising=False)

    def alkn(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, _, err = alkn("status", str(uuid.uuid4()), "--url", server)
    assert code == 2 and "ALKN_API_KEY" in err
    monkeypatch.setenv("ALKN_API_KEY", KEY)
    code, out, err = alkn("status", str(uuid.uuid4()), "--url", server)
    assert code == 1 and out == "" and err.startswith("alkn: 404 Not Found: ")
    code, _, err = alkn("versions", "list", model, "--url", server, "--api-key", "bad")
    assert code == 1 and err.startswith("alkn: 401 ")
    code, _, err = alkn("models", "list")
    assert code == 1 and "cannot talk to http://127.0.0.1:1" in err
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\nnot json\n')
    code, _, err = alkn("submit", model, "--items", "bad.jsonl", "--url", server)
    assert code == 2 and "bad.jsonl line 2" in err
    (tmp_path / "ok.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    code, _, err = alkn("submit", model, "--items", "ok.jsonl", "--url", server,
                        "--method", "no_such_method")
    assert code == 1 and err.startswith("alkn: 422 Unprocessable Entity: unknown method")


def test_cli_submit_watch_and_download(server: str, model: str, job_run: JobRun,
                                       worker_world: World, tmp_path: Path) -> None:  # noqa: F811
    submitted = job_run.submit_out  # `alkn submit` of the module's job (see job_run)
    assert submitted["status"] == "queued" and submitted["item_count"] == 4
    assert submitted["params"]["epochs"] == 1 and submitted["method"] == "alkn"
    # The same items (a JSON array this time) and key: the same request, no second job.
    items = worker_world.items[worker_world.people[0]][:4]
    (tmp_path / "forget.json").write_text(json.dumps(items))
    r = _alkn("submit", model, "--items", "forget.json", "--method", "alkn", "--params",
              '{"epochs": 1}', "--idempotency-key", "cli-submit", "--id-only",
              server=server, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == submitted["id"], r.stderr
    watch = job_run.watch  # `alkn status --watch`, run while the job ran
    assert watch.returncode == 0, watch.stderr
    final = json.loads(watch.stdout)
    assert final["id"] == submitted["id"] and final["status"] == "succeeded"
    assert "evaluating" in watch.stderr and f"succeeded: {model} version 2" in watch.stderr
    # no stage's bar starts from the last one's count (a negative rate or time left)
    assert not re.search(r"<-|-[\d.]+step/s", watch.stderr), watch.stderr
    r = _alkn("status", submitted["id"], server=server, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["result_version"] == 2

    # Download version 2 with a partial weights file already there: resumed and verified.
    with Client(server, KEY) as c:
        listing = {f.path: f for f in c.get_version(model, 2).files}
        half = c.read_file(model, 2, WEIGHTS)[:listing[WEIGHTS].size // 2]
    dest = tmp_path / "v2"
    dest.mkdir()
    (dest / f"{WEIGHTS}.part").write_bytes(half)
    r = _alkn("download", model, "latest", "v2", server=server, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{model} version 2: {len(listing)} files" in r.stdout
    assert f"resumed {WEIGHTS}" in r.stdout and "tiny@latest" in r.stderr
    for path, entry in listing.items():
        assert _sha(dest / path) == entry.sha256


def test_cli_status_exits_3_below_the_quality_floor(server: str, client: Client, model: str,
                                                   job_run: JobRun, worker_world: World,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """A request whose version misses its utility floor succeeds (the version is served)
    but `alkn status` (--watch or not) exits 3 with a line that says why; the module's job
    (job_run), within the floor, exited 0 (test_cli_submit_watch_and_download)."""
    items = worker_world.items[worker_world.people[2]][:3]
    req = client.submit(model, items, method="task_vector",
                        params={"epochs": 1, "alpha": 3.0, "utility_floor": 0.999})
    done = client.wait(req.id, timeout=300, poll=0.2)
    assert done.status == "succeeded" and done.job_id is not None
    job = client.get_job(done.job_id)
    assert job.quality is not None and job.quality["passed"] is False
    assert client.get_version(model, done.result_version).quality == job.quality
    for extra in (["--watch", "--interval", "0.3"], []):
        r = _alkn("status", req.id, *extra, server=server, cwd=tmp_path)
        assert r.returncode == 3, (extra, r.stdout, r.stderr)
        assert json.loads(r.stdout)["status"] == "succeeded"
        line = [x for x in r.stderr.splitlines() if x.startswith("alkn: ")]
        assert line == [f"alkn: {model} version {done.result_version}: {job.quality['message']}"]
        assert "quality gate failed" in line[0] and "below the floor 0.999" in line[0]
    assert job_run.watch.returncode == 0 and "quality gate" not in job_run.watch.stderr


HUB_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
from huggingface_hub import snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
endpoint, key, other_key, cache, expected = sys.argv[1:6]
for ref, files in json.loads(expected).items():
    d = Path(snapshot_download("default/tiny", revision=ref, endpoint=endpoint, token=key,
                               cache_dir=cache))
    got = {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in d.rglob("*") if p.is_file()}
    assert got == files, (ref, sorted(got), sorted(files))
for token, repo, rev, error in ((other_key, "default/tiny", "v2", RepositoryNotFoundError),
                                (key, "other/tiny", "main", RepositoryNotFoundError),
                                (key, "default/tiny", "v99", RevisionNotFoundError)):
    try:
        snapshot_download(repo, revision=rev, endpoint=endpoint, token=token,
                          cache_dir=cache + "-denied")
        raise SystemExit(f"{repo}@{rev} was readable")
    except error:
        pass
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("default/tiny", revision="v2", token=key)
tok = AutoTokenizer.from_pretrained("default/tiny", revision="golden", token=key)
print(json.dumps({"dtype": str(model.dtype), "vocab": len(tok),
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def test_hugging_face_tools_read_versions(server: str, client: Client, model: str,
                                          job_run: JobRun, module_pg_url: str,
                                          tmp_path: Path) -> None:
    """snapshot_download and from_pretrained through the service (the Hub's read API): v2,
    an alias and main give the versions' bytes; another tenant's key, another namespace and
    a missing revision are not found. v2 is a faithful Hugging Face directory: every file
    but the weights is v1's bytes (tokenizer, config, licence, README, a file in a
    subdirectory), and the weights keep the source's dtype (fp32)."""
    from registry.db import session_scope
    from registry.keys import create_api_key

    v1, v2 = ({f.path: f.sha256 for f in client.get_version(model, n).files} for n in (1, 2))
    assert set(v1) == set(v2) and {"LICENSE", "README.md", "extra/notes.txt"} <= set(v2)
    assert {p for p in v1 if v1[p] != v2[p]} == {WEIGHTS, "README.md"}  # and its model card
    card = client.read_file(model, 2, "README.md").decode()
    meta = ModelCard(card).data.to_dict()
    assert meta["base_model"] == "default/tiny" and meta["library_name"] == "transformers"
    lineage = meta["alkn"]
    assert lineage["parent_version"] == 1 and lineage["method"] == "alkn"
    assert lineage["job_id"] == job_run.done.job_id and lineage["params"]["epochs"] == 1
    assert [r["id"] for r in lineage["forget_requests"]] == [job_run.done.id]
    hashes = lineage["forget_requests"][0]["item_hashes"]
    assert len(hashes) == 4 and all(len(h) == 64 for h in hashes)
    assert lineage["evaluation"]["before"] and lineage["evaluation"]["after"]
    assert lineage["quality"]["passed"] in (True, False)
    for item in job_run.forgotten:  # the card names the items by keyed hash only
        assert item["answer"] not in card and item["question"] not in card
    assert "The source's own model card." in card  # carried on, under "Original model card"
    assert _safetensors_dtypes(client.read_file(model, 2, WEIGHTS)) == \
        _safetensors_dtypes(client.read_file(model, 1, WEIGHTS)) == {"F32"}

    with session_scope(module_pg_url) as s:
        other_key = create_api_key(s, "hub-other-tenant")
    client.set_alias(model, "golden", 2)
    files = {ref: {f.path: f.sha256 for f in client.get_version(model, n).files}
             for ref, n in (("v2", 2), ("golden", 2), ("main", "latest"), ("v1", 1))}
    env = {**os.environ, "HF_ENDPOINT": server, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", HUB_SCRIPT, server, KEY, other_key,
                          str(tmp_path / "cache"), json.dumps(files)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["params"] > 0 and loaded["vocab"] > 0


def _safetensors_dtypes(data: bytes) -> set[str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {t["dtype"] for name, t in header.items() if name != "__metadata__"}


def test_cli_revoke_alias_cancel_jobs(server: str, client: Client, model: str,
                                      job_run: JobRun, source_dir: Path,
                                      tmp_path: Path) -> None:
    """`alkn revoke` (only with --yes), `alias set/delete`, `cancel`, `jobs list/show`."""
    client.register_model("cli-manage", description="revoked by the CLI")
    client.upload_version("cli-manage", source_dir)
    r = _alkn("revoke", "cli-manage", "1", server=server, cwd=tmp_path)
    assert r.returncode == 2 and "--yes" in r.stderr, r.stderr
    assert client.get_version("cli-manage", 1).status == "ready"  # nothing done
    r = _alkn("revoke", "cli-manage", "1", "--yes", server=server, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "revoked", r.stderr
    assert client.get_version("cli-manage", 1).status == "revoked"

    r = _alkn("alias", "set", model, "stable", "2", server=server, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout) == {"alias": "stable", "version": 2}
    assert client.get_model(model).aliases["stable"] == 2
    r = _alkn("alias", "delete", model, "stable", server=server, cwd=tmp_path)
    assert r.returncode == 0 and "stable" not in client.get_model(model).aliases
    r = _alkn("alias", "set", model, "latest", "2", server=server, cwd=tmp_path)
    assert r.returncode == 1 and "latest" in r.stderr  # a reserved name: the API's 422

    job_id = job_run.done.job_id
    assert job_id is not None
    r = _alkn("jobs", "list", "--model", model, server=server, cwd=tmp_path)
    assert r.returncode == 0 and job_id in r.stdout and "succeeded" in r.stdout, r.stderr
    r = _alkn("jobs", "list", "--model", model, "--status", "succeeded", "--json",
              server=server, cwd=tmp_path)
    listed = [json.loads(line) for line in r.stdout.splitlines()]
    assert job_id in {j["id"] for j in listed} and {j["status"] for j in listed} == {"succeeded"}
    r = _alkn("jobs", "show", job_id, "--events", server=server, cwd=tmp_path)
    shown = json.loads(r.stdout)
    assert shown["id"] == job_id and shown["events"][0]["stage"], r.stderr

    r = _alkn("cancel", job_run.done.id, server=server, cwd=tmp_path)  # finished: 409
    assert r.returncode == 1 and "409" in r.stderr, r.stderr
    req = client.submit(model, job_run.items[:1], params={"epochs": 1})
    r = _alkn("cancel", req.id, server=server, cwd=tmp_path)
    if r.returncode == 0:  # cancelled while queued or running
        cancelled = json.loads(r.stdout)
        assert cancelled["id"] == req.id
        assert cancelled["status"] == "cancelled" or cancelled["cancel_requested"]
    else:  # the tiny job had already finished
        assert "409" in r.stderr, r.stderr
    client.wait(req.id, timeout=120, poll=0.2)

    # wait(raise_on_failure=True): a request that ended cancelled (or failed) raises.
    with pytest.raises(RequestFailed, match="cancelled") as failed:
        client.wait(job_run.cancelled.id, raise_on_failure=True)
    assert failed.value.request.status == "cancelled"
    assert client.wait(job_run.done.id, raise_on_failure=True).status == "succeeded"


def test_watch_bar_starts_each_stage_at_its_own_count() -> None:
    """`alkn status --watch` on a job first seen halfway through a stage: the next stage's
    bar shows no rate or time from the last one's count (it drew "0/150 [00:00<-00:00,
    -329552.46step/s]" on a real job)."""
    import argparse

    from alkn_cli.client import _status

    base = {"id": str(uuid.uuid4()), "status": "running", "model": "m", "method": "alkn",
            "params": {}, "base_version": 1, "result_version": None, "job_id": None,
            "item_count": 1, "metrics": None, "error": None, "cancel_requested": False,
            "created_at": "2026-12-05T09:24:50Z", "started_at": None, "finished_at": None}

    def at(label: str | None, step: int | None, total: int | None, status: str = "running"
           ) -> ForgetRequest:
        progress = {"stage": label, "step": step, "total_steps": total, "fraction": 0.5,
                    "phase": None, "label": label, "eta_seconds": 10.0}
        return ForgetRequest.model_validate({**base, "status": status, "progress": progress})

    updates = [at("evaluating (before)", 22, 101), at("evaluating (before)", 99, 101),
               at("negating", 0, 150), at("negating", 21, 150), at("saving", None, None),
               at("done", 1, 1, status="failed")]

    class Watched:
        def wait(self, request_id: str, **kw: Any) -> ForgetRequest:
            for u in updates:
                kw["on_update"](u)
            return updates[-1]

    err, out = io.StringIO(), io.StringIO()
    args = argparse.Namespace(request_id=base["id"], watch=True, interval=0.5)
    _status(Watched(), args, out, err)  # type: ignore[arg-type]
    shown = err.getvalue()
    assert "negating" in shown and "saving" in shown
    assert not re.search(r"<-|-[\d.]+step/s", shown), shown
    frames = re.split(r"[\r\n]", shown)
    saving = [f for f in frames if f.startswith("saving")]
    assert saving and not [f for f in saving if "/150" in f]  # no total: none shown
