"""Bounded answers and bounded input (issue 12): a version's file count, version lists
without `files`, problem documents that never echo input, keys and nesting inside items and
params, the size of a request's head, the 500s that were (a non-UTF-8 tar name, deep JSON,
a Range number of thousands of digits), downloads cut when their version is revoked, and
job event ids numbered per job.

Refusals are checked as in test_hostile.py: a 4xx problem document and nothing written.
The head limit and the revoked downloads need a real server (uvicorn as the Dockerfile runs
it: tests/services.HTTP_PROTOCOL). Run alone: `.venv/bin/pytest -q tests/test_bounds.py`.
"""

from __future__ import annotations

import io
import json
import re
import socket
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from config.settings import Settings
from registry import versions as model_versions
from registry.db import session_scope
from registry.jobs import add_event
from registry.models import ForgetRequest, Job, Model
from registry.store import open_store

from .apikit import BOOT_KEY, QA, ApiWorld
from .services import HTTP_PROTOCOL, free_port, start_process, stop_process, wait_http
from .test_api import assert_problem
from .test_hostile import _archive, _member, post_json

FILE_LIMIT = 20


@pytest.fixture(scope="module")
def limited(api_world: ApiWorld) -> Iterator[TestClient]:
    """The world's API with ALKN_MAX_VERSION_FILES=20 and the default (32 MiB) body limit,
    so that the input bounds, not the body limit, refuse what is sent."""
    default_json = Settings.model_fields["max_json_bytes"].default
    settings = api_world.settings.model_copy(update={"max_version_files": FILE_LIMIT,
                                                     "max_json_bytes": default_json})
    with TestClient(create_app(settings)) as client:
        client.headers.update(api_world.client.headers)
        yield client


def _files_archive(n: int) -> bytes:
    """config.json and `n` more one-byte files."""
    return _archive(*(_member(f"shard-{i:05d}.bin") for i in range(n)))


# --------------------------------------------------------------------------------------------
# A version's files: bounded in number, left out of lists
# --------------------------------------------------------------------------------------------


def test_upload_over_the_file_limit_is_refused(api_world: ApiWorld, limited: TestClient) -> None:
    url = f"/v1/models/{api_world.model}/versions:upload"
    with api_world.unchanged():
        doc = assert_problem(limited.post(url, content=_files_archive(FILE_LIMIT)), 413)
    assert f"at most {FILE_LIMIT} files" in doc["detail"]
    # the limit itself is allowed
    r = limited.post(url, content=_files_archive(FILE_LIMIT - 1))
    assert r.status_code == 201, r.text
    assert len(r.json()["files"]) == FILE_LIMIT


def test_source_over_the_file_limit_is_refused(api_world: ApiWorld, limited: TestClient) -> None:
    src = api_world.source_root / "many-files"
    src.mkdir()
    (src / "config.json").write_text("{}")
    for i in range(FILE_LIMIT):
        (src / f"shard-{i}.bin").write_bytes(b"x")
    with api_world.unchanged():
        assert_problem(limited.post("/v1/models", json={"name": "many-files",
                                                        "source": {"path": str(src)}}), 413)


def test_version_lists_leave_files_out(api_world: ApiWorld) -> None:
    """A version of many files (2000 here) makes a list answer no larger than one of few:
    lists leave `files` out (and do not read them); the version itself has them."""
    c, m = api_world.client, api_world.model
    r = c.post(f"/v1/models/{m}/versions:upload", content=_files_archive(2000))
    assert r.status_code == 201, r.text
    number = r.json()["version"]
    listed = c.get(f"/v1/models/{m}/versions", params={"limit": 500})
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert number in [v["version"] for v in items]
    assert all("files" not in v for v in items)
    assert len(listed.content) < 1000 * len(items)  # 2000 file entries would be ~200 kB
    assert {"version", "status", "size_bytes", "created_at"} <= set(items[0])
    one = c.get(f"/v1/models/{m}/versions/{number}").json()
    assert len(one["files"]) == 2001


# --------------------------------------------------------------------------------------------
# Problem documents never echo input; every key and nesting is bounded
# --------------------------------------------------------------------------------------------


def _longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)


def test_problem_documents_do_not_echo_input(api_world: ApiWorld, limited: TestClient) -> None:
    m = api_world.model
    forget = f"/v1/models/{m}/forget-requests"
    cases: list[tuple[str, str, Any, str]] = [  # method, url, JSON body, the echoed char
        ("POST", forget, {"items": QA, "params": {"k" * 3_000_000: 1}}, "k"),
        ("POST", forget, {"items": QA, "params": {"alpha": "v" * 99_000}}, "v"),
        ("POST", forget, {"items": QA, "params": {"epochs": "v" * 99_000}}, "v"),
        ("POST", forget, {"items": QA, "u" * 3_000_000: 1}, "u"),
        ("POST", "/v1/models", {"name": "echo", "default_params": {"k" * 3_000_000: 1}}, "k"),
        ("POST", "/v1/models", {"name": "echo", "default_params": {"lr": "v" * 99_000}}, "v"),
        ("GET", f"/v1/models/{'n' * 8000}", None, "n"),
        ("GET", f"/v1/models/{m}/versions/{'r' * 8000}", None, "r"),
        ("GET", f"/v1/models/{m}/versions/1/files/{'p' * 8000}", None, "p"),
        ("DELETE", f"/v1/models/{m}/aliases/{'a' * 8000}", None, "a"),
        ("GET", f"/v1/forget-requests/{'i' * 8000}", None, "i"),
        ("GET", f"/v1/jobs/{'j' * 8000}", None, "j"),
    ]
    with api_world.unchanged():
        for method, url, body, char in cases:
            r = limited.request(method, url, content=None if body is None else json.dumps(body),
                                headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith(
                "application/problem+json"), (url[:80], r.status_code)
            assert len(r.content) < 4096, (url[:80], len(r.content))
            assert _longest_run(r.text, char) <= 64, (url[:80], r.text[:300])


@pytest.mark.parametrize("where", ["item", "retain_set", "default_params", "params"])
def test_long_keys_are_refused(api_world: ApiWorld, limited: TestClient, where: str) -> None:
    """A key inside an item (or params) is bounded like any string; 1M characters here."""
    key = "k" * 1_000_000
    m = api_world.model
    url, body = {
        "item": (f"/v1/models/{m}/forget-requests", {"items": [{**QA[0], key: "x"}]}),
        "retain_set": ("/v1/models", {"name": "longkey", "retain_set": [{"text": "t", key: 1}]}),
        "default_params": ("/v1/models", {"name": "longkey", "default_params": {key: 1}}),
        "params": (f"/v1/models/{m}/forget-requests", {"items": QA, "params": {key: 1}}),
    }[where]
    with api_world.unchanged():
        doc = assert_problem(limited.post(url, content=json.dumps(body),
                                          headers={"Content-Type": "application/json"}), 422)
    assert len(json.dumps(doc)) < 4096


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("where", ["item", "retain_set", "default_params", "params"])
def test_deep_nesting_is_a_422(api_world: ApiWorld, where: str) -> None:
    """JSON nested 256 deep made pydantic fail to serialise it: a 500. It is refused."""
    deep = _nested(300)
    m = api_world.model
    url, body = {
        "item": (f"/v1/models/{m}/forget-requests", {"items": [{**QA[0], "extra": deep}]}),
        "retain_set": ("/v1/models", {"name": "deep", "retain_set": [{"text": "t", "x": deep}]}),
        "default_params": ("/v1/models", {"name": "deep", "default_params": {"x": deep}}),
        "params": (f"/v1/models/{m}/forget-requests", {"items": QA, "params": {"x": deep}}),
    }[where]
    with api_world.unchanged():
        doc = assert_problem(post_json(api_world, url, body), 422)
    assert "nested" in json.dumps(doc) or where.endswith("params")


def test_shallow_extra_fields_are_still_accepted(api_world: ApiWorld) -> None:
    r = post_json(api_world, f"/v1/models/{api_world.model}/forget-requests",
                  {"items": [{**QA[0], "meta": {"source": ["a", {"b": 1}]}, "k" * 256: 1}]})
    assert r.status_code == 202, r.text


# --------------------------------------------------------------------------------------------
# The other two 500s: a tar name that is not UTF-8, a Range of thousands of digits
# --------------------------------------------------------------------------------------------


def test_non_utf8_tar_name_is_a_422(api_world: ApiWorld) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for name in ("config.json", "caf\udce9.bin"):  # the raw byte 0xE9
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    assert b"caf\xe9.bin" in buf.getvalue()
    with api_world.unchanged():
        doc = assert_problem(api_world.client.post(
            f"/v1/models/{api_world.model}/versions:upload", content=buf.getvalue()), 422)
    assert "UTF-8" in doc["detail"]


def test_range_of_thousands_of_digits(api_world: ApiWorld) -> None:
    url = f"/v1/models/{api_world.model}/versions/1/files/model.safetensors"
    size = len(api_world.client.get(url).content)
    huge = "9" * 5000
    with api_world.unchanged():
        r = api_world.client.get(url, headers={"Range": f"bytes={huge}-"})
        assert_problem(r, 416)
        r = api_world.client.get(url, headers={"Range": f"bytes=0-{huge}"})
        assert r.status_code == 206 and len(r.content) == size
        r = api_world.client.get(url, headers={"Range": f"bytes=-{huge}"})
        assert r.status_code == 206 and len(r.content) == size
        r = api_world.client.get(url, headers={"Range": f"bytes={'0' * 5000}1-"})
        assert r.status_code == 206 and len(r.content) == size - 1


# --------------------------------------------------------------------------------------------
# Job event ids are numbered per job
# --------------------------------------------------------------------------------------------


def test_job_event_ids_are_per_job(api_world: ApiWorld) -> None:
    """Two jobs' events, written as the worker writes them (registry.jobs.add_event),
    interleaved: each job's ids are 1, 2, 3 (not one sequence over every tenant's jobs), and
    cursor pages still give every event once, in order."""
    c = api_world.client
    rid = c.post(f"/v1/models/{api_world.model}/forget-requests", json={"items": QA}
                 ).json()["id"]
    jobs = []
    with session_scope(api_world.db_url) as s:
        req = s.get(ForgetRequest, rid)
        assert req is not None
        for _ in range(2):
            job = Job(tenant_id=req.tenant_id, model_id=req.model_id, status="running",
                      method="alkn", base_version=1, forget_request_ids=[rid])
            s.add(job)
            s.flush()
            jobs.append(job.id)
    for stage in ("loading", "probing", "training"):
        for job_id in jobs:
            add_event(api_world.db_url, job_id, stage, f"{stage} of {job_id}")
    for job_id in jobs:
        first = c.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}).json()
        rest = c.get(f"/v1/jobs/{job_id}/events", params={"cursor": first["next_cursor"]}
                     ).json()
        events = first["items"] + rest["items"]
        assert [e["id"] for e in events] == [1, 2, 3]
        assert [e["stage"] for e in events] == ["loading", "probing", "training"]
        assert rest["next_cursor"] is None


# --------------------------------------------------------------------------------------------
# A slow reader holds little of the server's memory
# --------------------------------------------------------------------------------------------


class _RecordedFile:
    """A real file whose reads are recorded (the size each asked for)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        self.reads: list[int] = []

    def read(self, n: int) -> bytes:
        self.reads.append(n)
        return self.file.read(n)

    def close(self) -> None:
        self.file.close()


@pytest.mark.parametrize("slow", [True, False])
def test_a_slow_reader_gets_small_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        slow: bool) -> None:
    """The download loop reads 4 MB per thread hand-off (cheap on CPU for fast clients);
    a client slower than SLOW_SEND_S per 4 MB gets 1 MB reads from then on: two of them in
    flight, not two of 4 MB (the finding: ~6 MB of API memory per slow reader)."""
    import asyncio

    from api.routes import downloads
    from registry.store import CHUNK

    monkeypatch.setattr(downloads, "SLOW_SEND_S", 0.1, raising=False)  # 0.05 s/MB: "slow"
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(24 * CHUNK))
    recorded = _RecordedFile(path)

    async def consume() -> int:
        got = 0
        async for chunk in downloads.read_ahead(recorded):  # type: ignore[arg-type]
            got += len(chunk)
            if slow:
                await asyncio.sleep(0.05)
        return got

    assert asyncio.run(consume()) == 24 * CHUNK
    if slow:  # the read in flight when the first block was sent is the last big one
        assert recorded.reads[:2] == [downloads.FILE_READ] * 2
        assert set(recorded.reads[2:]) == {CHUNK}
    else:
        assert set(recorded.reads) == {downloads.FILE_READ}


# --------------------------------------------------------------------------------------------
# A real server: the head limit, downloads cut by a revoke
# --------------------------------------------------------------------------------------------

HEAD_LIMIT = 16 * 1024
BIG = 64 << 20  # the downloaded file: far more than the socket buffers hold


@pytest.fixture(scope="module")
def server(api_world: ApiWorld, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Path]]:
    """uvicorn serving api.app on the world's database, as the Dockerfile starts it; yields
    its URL and artifact root."""
    home = tmp_path_factory.mktemp("server")
    env = {"ALKN_HOME": str(home), "ALKN_DATABASE_URL": api_world.db_url,
           "ALKN_BROKER_URL": api_world.settings.broker_url or "",
           "ALKN_ARTIFACT_ROOT": str(home / "artifacts"), "ALKN_BOOTSTRAP_API_KEY": BOOT_KEY,
           "ALKN_MODEL_SOURCE_ROOTS": str(home), "ALKN_MAX_HEADER_BYTES": str(HEAD_LIMIT)}
    port = free_port()
    proc = start_process(["-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port",
                          str(port), "--http", HTTP_PROTOCOL], env, home / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        yield f"http://127.0.0.1:{port}", home / "artifacts"
    finally:
        stop_process(proc)
        print((home / "api.log").read_text(errors="replace")[-3000:])


def _raw_get(base: str, headers: dict[str, str]) -> bytes:
    """A GET over a plain socket (clients refuse some headers); what the server answered
    before closing the connection."""
    host, port = base.removeprefix("http://").split(":")
    head = "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # closed while we were still sending: read what it answered
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode("latin-1"))
        out = b""
        with suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def test_request_head_size_is_bounded(server: tuple[str, Path]) -> None:
    base, _ = server
    auth = {"Authorization": f"Bearer {BOOT_KEY}"}
    assert _raw_get(base, {**auth, "X-Pad": "p" * (HEAD_LIMIT // 2)}).startswith(
        b"HTTP/1.1 200")
    # One huge header and many small ones: refused before the app (and auth) sees them.
    for headers in ({"X-Pad": "p" * (20 << 20)},
                    {f"X-Pad-{i}": "p" * 100 for i in range(2000)}):
        answer = _raw_get(base, headers)
        # The 400 may be lost to the reset of a connection closed while we still send.
        assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer[:200]
        assert b"401" not in answer and len(answer) < 1024


def _upload_big(base: str, name: str) -> None:
    auth = {"Authorization": f"Bearer {BOOT_KEY}"}
    r = httpx.post(f"{base}/v1/models", json={"name": name}, headers=auth)
    assert r.status_code == 201, r.text
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, size in (("config.json", 2), ("model.safetensors", BIG)):
            info = tarfile.TarInfo(path)
            info.size = size
            tf.addfile(info, io.BytesIO(b"{}" if size == 2 else bytes(size)))
    r = httpx.post(f"{base}/v1/models/{name}/versions:upload", content=buf.getvalue(),
                   headers=auth, timeout=120)
    assert r.status_code == 201, r.text


def _revoke_elsewhere(db_url: str, artifact_root: Path, name: str) -> None:
    """Revoke as another process would (`alkn`, another API worker): the server hears of
    it only through the database."""
    with session_scope(db_url) as s:
        model = s.scalars(select(Model).where(Model.name == name)).one()
        model_versions.revoke_version(s, open_store(str(artifact_root)), model, 1)


@pytest.mark.parametrize("route,revoker", [("files/model.safetensors", "api"),
                                           ("files/model.safetensors", "elsewhere"),
                                           ("archive", "api")])
def test_revoke_cuts_a_download_in_progress(api_world: ApiWorld, server: tuple[str, Path],
                                            route: str, revoker: str) -> None:
    """A slow download started before the revoke stops short of the file: the server closes
    the connection within about a second of the revoke (the socket buffers aside), so the
    client sees an incomplete body, never the whole file."""
    base, artifact_root = server
    name = f"big-{uuid.uuid4().hex[:8]}"
    _upload_big(base, name)
    auth = {"Authorization": f"Bearer {BOOT_KEY}"}
    received = 0
    with httpx.Client(headers=auth, timeout=30) as client, pytest.raises(
            httpx.RemoteProtocolError), \
            client.stream("GET", f"{base}/v1/models/{name}/versions/1/{route}") as r:
        assert r.status_code == 200
        total = int(r.headers["content-length"])
        assert total >= BIG
        for chunk in r.iter_raw(1 << 20):
            received += len(chunk)
            if received == len(chunk):  # after the first MB: revoke, then read slowly on
                if revoker == "api":
                    rv = httpx.post(f"{base}/v1/models/{name}/versions/1:revoke", headers=auth)
                    assert rv.status_code == 200, rv.text
                else:
                    _revoke_elsewhere(api_world.db_url, artifact_root, name)
                time.sleep(2.0)
            time.sleep(0.01)
    assert 0 < received < total / 2, (received, total)
