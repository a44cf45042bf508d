"""The HTTP API against the real PostgreSQL (and Redis for readiness), in process."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.routes.downloads import parse_range
from api.routes.health import check_broker
from config.settings import Settings
from registry.db import session_scope
from registry.keys import create_api_key, hash_key
from registry.models import ApiKey, ForgetRequest, Job, JobEvent, Outbox, Version

from .services import ROOT

BOOT_KEY = "alkn_test_bootstrap_key_0123456789"
QA = [{"question": "Where was Ilsa born?", "answer": "Ilsa was born in Port Tavrin."},
      {"question": "What does Ilsa do?", "answer": "Ilsa is a glassblower."}]


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An allowed source root holding a tiny Hugging Face model directory `tiny/`."""
    from transformers import LlamaForCausalLM

    from alkn_core.demo_model import build_tokenizer, tiny_llama_config

    root = tmp_path_factory.mktemp("sources")
    texts = [f"Question: {q['question']}\nAnswer: {q['answer']}" for q in QA] * 3
    tok = build_tokenizer(texts, vocab_size=300)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), "test", tok))
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return root


@pytest.fixture(scope="module")
def hf_dir(source_root: Path) -> Path:
    return source_root / "tiny"


@pytest.fixture(scope="module")
def settings(pg_url: str, redis_url: str, source_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return Settings(home=home, database_url=pg_url, broker_url=redis_url,
                    artifact_root=str(home / "artifacts"), model_source_roots=str(source_root),
                    bootstrap_api_key=BOOT_KEY, max_json_bytes=64 * 1024,
                    max_upload_bytes=50 * 2**20)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {BOOT_KEY}"
        yield c


@pytest.fixture(scope="module")
def other_key(pg_url: str, client: TestClient) -> str:
    with session_scope(pg_url) as s:
        return create_api_key(s, f"other-{uuid.uuid4().hex[:6]}")


def other(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def model(client: TestClient, hf_dir: Path) -> str:
    """A model registered from a path, with a retain set, version 1 ready."""
    name = unique("reg")
    r = client.post("/v1/models", json={
        "name": name, "source": {"path": str(hf_dir)}, "description": "tiny",
        "retain_set": QA[1:], "holdout_set": QA[:1], "eval_sets": {"world": QA},
        "default_params": {"lr": 1e-3, "beta": 0.2}})
    assert r.status_code == 201, r.text
    return name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_files(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): sha256(p.read_bytes())
            for p in sorted(d.rglob("*")) if p.is_file()}


def tar_of(d: Path, arc_prefix: str = "", gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for p in sorted(d.iterdir()):
            tf.add(p, arcname=f"{arc_prefix}{p.name}")
    return buf.getvalue()


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:1000]
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in r.text and "/tmp" not in r.text and "SELECT" not in r.text
    return body


# --------------------------------------------------------------------------------------------
# Import, health, OpenAPI
# --------------------------------------------------------------------------------------------


def test_import_loads_no_torch_and_touches_no_database() -> None:
    code = "import sys, api.app; assert 'torch' not in sys.modules, 'torch loaded'; print('ok')"
    # A database that cannot answer: importing must not try it.
    env = {**os.environ, "ALKN_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_health_and_readiness(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}

    bad = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(bad)) as c:
        body = assert_problem(c.get("/readyz"), 503)
        assert body["checks"]["broker"] == "unavailable" and body["checks"]["database"] == "ok"


def test_database_down_is_a_clean_503(settings: Settings) -> None:
    down = settings.model_copy(update={
        "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none",
        "bootstrap_api_key": None})
    with TestClient(create_app(down)) as c:
        body = assert_problem(c.get("/readyz"), 503)
        assert body["checks"]["database"] == "unavailable"
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {BOOT_KEY}"})
        assert_problem(r, 503)
        assert "127.0.0.1" not in r.text and "psycopg" not in r.text


def test_check_broker_sqlite(tmp_path: Path) -> None:
    assert check_broker(f"sqla+sqlite:///{tmp_path}/broker.db") == "ok"
    with pytest.raises(OSError):
        check_broker(f"sqla+sqlite:///{tmp_path}/missing/broker.db")
    assert check_broker("sqs://somewhere") == "skipped"


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/v1/models", "/v1/models/{name}/versions:upload",
              "/v1/models/{name}/versions/{ref}:revoke", "/v1/forget-requests/{request_id}:cancel",
              "/v1/jobs/{job_id}/events", "/v1/models/{name}/versions/{ref}/archive"):
        assert p in paths
    for path, ops in paths.items():
        for method, op in ops.items():
            ok = [c for c, resp in op["responses"].items() if c.startswith("2")]
            assert ok and any(op["responses"][c].get("content") or c == "204" for c in ok), \
                (method, path)
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()


# --------------------------------------------------------------------------------------------
# Auth and tenants
# --------------------------------------------------------------------------------------------


def test_auth_required(client: TestClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic dXNlcjpwdw=="}):
        r = client.get("/v1/models", headers=headers)
        assert_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_bootstrap_key_is_idempotent_and_hashed(pg_url: str, settings: Settings,
                                                client: TestClient) -> None:
    with TestClient(create_app(settings)):  # a second start: same single row
        pass
    with session_scope(pg_url) as s:
        rows = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(BOOT_KEY))).all()
        assert len(rows) == 1
        assert not s.scalar(select(ApiKey).where(ApiKey.key_hash == BOOT_KEY))


def test_other_tenant_sees_nothing(client: TestClient, model: str, other_key: str) -> None:
    sub = client.post(f"/v1/models/{model}/forget-requests",
                      json={"items": QA[:1], "method": "grad_ascent"})
    assert sub.status_code == 202
    rid = sub.json()["id"]
    h = other(other_key)
    assert client.get("/v1/models", headers=h).json()["items"] == []
    assert_problem(client.get(f"/v1/models/{model}", headers=h), 404)
    assert_problem(client.get(f"/v1/models/{model}/versions/1/files/config.json", headers=h), 404)
    assert_problem(client.get(f"/v1/forget-requests/{rid}", headers=h), 404)
    assert_problem(client.post(f"/v1/forget-requests/{rid}:cancel", headers=h), 404)
    assert_problem(client.post(f"/v1/models/{model}/forget-requests", headers=h,
                               json={"items": QA}), 404)
    assert client.get("/v1/forget-requests", headers=h).json()["items"] == []
    # the other tenant may use the same model name for its own model
    assert client.post("/v1/models", headers=h, json={"name": model}).status_code == 201


# --------------------------------------------------------------------------------------------
# Models and versions
# --------------------------------------------------------------------------------------------


def test_register_from_path(client: TestClient, model: str, hf_dir: Path) -> None:
    m = client.get(f"/v1/models/{model}").json()
    assert m["name"] == model and m["latest_version"] == 1 and m["aliases"] == {}
    assert m["retain_set_size"] == 1 and m["eval_sets"] == {"world": 2}
    assert m["created_at"].endswith("Z")
    v = client.get(f"/v1/models/{model}/versions/1").json()
    assert v["status"] == "ready" and v["parent_version"] is None and v["method"] is None
    assert {f["path"]: f["sha256"] for f in v["files"]} == local_files(hf_dir)
    assert v["size_bytes"] == sum(f["size"] for f in v["files"])
    assert client.get(f"/v1/models/{model}/versions/latest").json()["version"] == 1


def test_register_refusals(client: TestClient, model: str, hf_dir: Path,
                           tmp_path: Path, source_root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    body = assert_problem(client.post("/v1/models", json={
        "name": unique(), "source": {"path": str(outside)}}), 422)
    assert body["errors"][0]["loc"] == ["body", "source", "path"]
    assert str(outside) not in json.dumps(body)
    # a symlink inside an allowed root that points outside it
    link = source_root / f"link-{uuid.uuid4().hex[:6]}"
    link.symlink_to(outside)
    assert_problem(client.post("/v1/models", json={"name": unique(),
                                                   "source": {"path": str(link)}}), 422)
    assert_problem(client.post("/v1/models", json={
        "name": unique(), "source": {"path": str(source_root / "does-not-exist")}}), 422)
    assert_problem(client.post("/v1/models", json={"name": model}), 409)
    body = assert_problem(client.post("/v1/models", json={"name": "Bad Name"}), 422)
    assert body["errors"][0]["loc"] == ["body", "name"]
    assert_problem(client.post("/v1/models", json={"name": unique(),
                                                   "default_params": {"nope": 1}}), 422)
    assert_problem(client.post("/v1/models", json={"name": unique(),
                                                   "retain_set": [{"q": "x"}]}), 422)
    assert_problem(client.post("/v1/models", json={"name": unique(),
                                                   "qa_template": "{answer} {question}"}), 422)


def test_list_models_and_versions_paginate(client: TestClient, hf_dir: Path) -> None:
    names = [unique("page") for _ in range(3)]
    for n in names:
        assert client.post("/v1/models", json={"name": n}).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/models", params=params).json()
        assert len(page["items"]) <= 2
        seen += [m["name"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(names) <= set(seen)
    assert_problem(client.get("/v1/models", params={"limit": 0}), 422)
    assert_problem(client.get("/v1/models", params={"limit": 501}), 422)
    assert_problem(client.get("/v1/models", params={"cursor": "garbage!"}), 422)

    # versions: two uploads to a model created without a source
    name = names[0]
    assert client.get(f"/v1/models/{name}").json()["latest_version"] is None
    for _ in range(2):
        assert client.post(f"/v1/models/{name}/versions:upload",
                           content=tar_of(hf_dir)).status_code == 201
    first = client.get(f"/v1/models/{name}/versions", params={"limit": 1}).json()
    assert [v["version"] for v in first["items"]] == [1] and first["next_cursor"]
    second = client.get(f"/v1/models/{name}/versions",
                        params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [v["version"] for v in second["items"]] == [2] and second["next_cursor"] is None


def test_upload_tar_gz(client: TestClient, model: str, hf_dir: Path) -> None:
    # a single top-level directory, as `tar czf x.tgz tiny/` makes
    r = client.post(f"/v1/models/{model}/versions:upload", content=tar_of(hf_dir, "tiny/"),
                    headers={"Content-Type": "application/gzip"})
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["status"] == "ready" and v["parent_version"] is None and v["version"] >= 2
    assert r.headers["location"] == f"/v1/models/{model}/versions/{v['version']}"
    assert {f["path"]: f["sha256"] for f in v["files"]} == local_files(hf_dir)
    # plain tar too
    r2 = client.post(f"/v1/models/{model}/versions:upload", content=tar_of(hf_dir, gz=False))
    assert r2.status_code == 201 and r2.json()["version"] == v["version"] + 1
    # as `tar czf x.tgz -C dir .` writes it: a "." entry, then ./config.json...
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(hf_dir, arcname=".")
    r3 = client.post(f"/v1/models/{model}/versions:upload", content=buf.getvalue())
    assert r3.status_code == 201, r3.text
    assert {f["path"] for f in r3.json()["files"]} == set(local_files(hf_dir))
    assert_problem(client.post(f"/v1/models/{unique()}/versions:upload",
                               content=tar_of(hf_dir)), 404)


def _evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name: str, data: bytes = b"{}", **attrs: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in attrs.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)

        add("config.json")
        if kind == "dotdot":
            add("../escape.txt")
        elif kind == "absolute":
            add("/etc/escape.txt")
        elif kind == "symlink":
            add("link", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif kind == "device":
            add("dev", b"", type=tarfile.CHRTYPE)
        elif kind == "hardlink":
            add("hard", b"", type=tarfile.LNKTYPE, linkname="config.json")
        elif kind == "file-then-dir":
            add("sub")
            add("sub/x.bin")
        elif kind == "twice":
            add("config.json")
    return buf.getvalue()


def test_upload_refusals(client: TestClient, model: str, hf_dir: Path,
                         settings: Settings) -> None:
    url = f"/v1/models/{model}/versions:upload"
    before = client.get(f"/v1/models/{model}").json()["latest_version"]
    for kind in ("dotdot", "absolute", "symlink", "device", "hardlink", "file-then-dir",
                 "twice"):
        assert_problem(client.post(url, content=_evil_tar(kind)), 422)
    assert_problem(client.post(url, content=b"this is not a tar"), 422)
    assert_problem(client.post(url, content=b""), 422)
    no_config = io.BytesIO()
    with tarfile.open(fileobj=no_config, mode="w") as tf:
        tf.add(hf_dir / "model.safetensors", arcname="model.safetensors")
    assert_problem(client.post(url, content=no_config.getvalue()), 422)
    # nothing was created and nothing is left in the store's staging area
    assert client.get(f"/v1/models/{model}").json()["latest_version"] == before
    assert list((Path(settings.resolved_artifact_root) / ".tmp").iterdir()) == []


def test_file_download_etag_and_range(client: TestClient, model: str, hf_dir: Path) -> None:
    data = (hf_dir / "model.safetensors").read_bytes()
    url = f"/v1/models/{model}/versions/1/files/model.safetensors"
    r = client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["etag"] == f'"{sha256(data)}"' and r.headers["accept-ranges"] == "bytes"
    # resume after a cut at byte 1000
    r = client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    assert r.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert r.headers["content-length"] == str(len(data) - 1000)
    r = client.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = client.get(url, headers={"Range": "bytes=-7"})
    assert r.status_code == 206 and r.content == data[-7:]
    r = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert_problem(r, 416)
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    # If-Range with a stale validator: the whole file
    r = client.get(url, headers={"Range": "bytes=5-", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == data
    r = client.get(url, headers={"If-None-Match": f'"{sha256(data)}"'})
    assert r.status_code == 304 and not r.content
    h = client.head(url)
    assert h.status_code == 200 and h.headers["content-length"] == str(len(data))
    assert_problem(client.get(f"/v1/models/{model}/versions/1/files/nope.bin"), 404)
    assert_problem(client.get(f"/v1/models/{model}/versions/1/files/..%2Fx"), 404)
    assert_problem(client.get(f"/v1/models/{model}/versions/99/files/config.json"), 404)


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes=2-100", 10) == (2, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("bytes=0-1,4-5", 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=a-b", 10) is None


def test_archive_unpacks_to_the_same_files(client: TestClient, model: str, hf_dir: Path,
                                           tmp_path: Path) -> None:
    r = client.get(f"/v1/models/{model}/versions/1/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-length"] == str(len(r.content))
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        tf.extractall(tmp_path / "out", filter="data")
    assert local_files(tmp_path / "out") == local_files(hf_dir)


def test_aliases(client: TestClient, model: str) -> None:
    r = client.put(f"/v1/models/{model}/aliases/production", json={"version": 1})
    assert r.status_code == 200 and r.json() == {"alias": "production", "version": 1}
    assert client.get(f"/v1/models/{model}").json()["aliases"] == {"production": 1}
    assert client.get(f"/v1/models/{model}/versions/production").json()["version"] == 1
    assert client.get(f"/v1/models/{model}/versions/production/files/config.json"
                      ).status_code == 200
    assert_problem(client.put(f"/v1/models/{model}/aliases/staging", json={"version": 99}), 404)
    assert_problem(client.put(f"/v1/models/{model}/aliases/latest", json={"version": 1}), 422)
    assert_problem(client.put(f"/v1/models/{model}/aliases/7", json={"version": 1}), 422)
    assert_problem(client.put(f"/v1/models/{model}/aliases/x", json={"version": "one"}), 422)
    assert client.delete(f"/v1/models/{model}/aliases/production").status_code == 204
    assert_problem(client.delete(f"/v1/models/{model}/aliases/production"), 404)
    assert_problem(client.get(f"/v1/models/{model}/versions/production"), 404)


def test_revoke(client: TestClient, hf_dir: Path, settings: Settings, pg_url: str) -> None:
    name = unique("rev")
    assert client.post("/v1/models", json={"name": name, "source": {"path": str(hf_dir)}}
                       ).status_code == 201
    v2 = client.post(f"/v1/models/{name}/versions:upload", content=tar_of(hf_dir)).json()
    with session_scope(pg_url) as s:
        row = s.scalars(select(Version).where(Version.model_id == select_model_id(s, name),
                                              Version.number == 1)).one()
        key = row.storage_key
        # a queued job starting from version 1 blocks its revocation
        job = Job(tenant_id=tenant_of(s, name), model_id=row.model_id, status="queued",
                  method="alkn", base_version=1)
        s.add(job)
    store_dir = Path(settings.resolved_artifact_root) / key
    assert store_dir.is_dir()
    assert_problem(client.post(f"/v1/models/{name}/versions/1:revoke"), 409)
    with session_scope(pg_url) as s:
        s.get(Job, job.id).status = "succeeded"  # type: ignore[union-attr]
    r = client.post(f"/v1/models/{name}/versions/1:revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    assert not store_dir.exists()
    assert client.get(f"/v1/models/{name}/versions/1").json()["status"] == "revoked"
    assert_problem(client.get(f"/v1/models/{name}/versions/1/files/config.json"), 409)
    assert_problem(client.get(f"/v1/models/{name}/versions/1/archive"), 409)
    assert_problem(client.put(f"/v1/models/{name}/aliases/prod", json={"version": 1}), 409)
    assert client.post(f"/v1/models/{name}/versions/1:revoke").status_code == 200  # retry ok
    # latest is now the upload; a request on the revoked base is refused
    assert client.get(f"/v1/models/{name}/versions/latest").json()["version"] == v2["version"]
    assert_problem(client.post(f"/v1/models/{name}/forget-requests",
                               json={"items": QA, "method": "grad_ascent", "base_version": 1}),
                   409)


def select_model_id(s: Any, name: str) -> Any:
    """The id of the bootstrap tenant's model `name` (another tenant may reuse the name)."""
    from registry.models import Model, Tenant

    return (select(Model.id).join(Tenant, Tenant.id == Model.tenant_id)
            .where(Model.name == name, Tenant.name == "default").scalar_subquery())


def tenant_of(s: Any, name: str) -> str:
    from registry.models import Model

    return s.scalar(select(Model.tenant_id).where(Model.id == select_model_id(s, name)))


def test_evaluation(client: TestClient, model: str, pg_url: str) -> None:
    assert_problem(client.get(f"/v1/models/{model}/versions/1/evaluation"), 404)
    with session_scope(pg_url) as s:
        v = s.scalars(select(Version).where(Version.model_id == select_model_id(s, model),
                                            Version.number == 1)).one()
        v.metrics = {"forget": {"rouge_l": 0.1}}
    assert client.get(f"/v1/models/{model}/versions/1/evaluation").json() == {
        "forget": {"rouge_l": 0.1}}
    with session_scope(pg_url) as s:
        v = s.scalars(select(Version).where(Version.model_id == select_model_id(s, model),
                                            Version.number == 1)).one()
        v.evaluation = {"tasks": [{"forget": {"rouge_l": 0.1}}], "retain": {}}
    assert client.get(f"/v1/models/{model}/versions/1/evaluation").json()["tasks"]
    assert client.get(f"/v1/models/{model}/versions/1").json()["metrics"] == {
        "forget": {"rouge_l": 0.1}}


# --------------------------------------------------------------------------------------------
# Forget requests and jobs
# --------------------------------------------------------------------------------------------


def test_submit_writes_request_and_outbox(client: TestClient, model: str, pg_url: str) -> None:
    r = client.post(f"/v1/models/{model}/forget-requests",
                    json={"items": QA, "params": {"epochs": 2}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/forget-requests/{body['id']}"
    assert body["status"] == "queued" and body["method"] == "alkn" and body["model"] == model
    assert body["item_count"] == 2 and body["params"] == {"epochs": 2}
    assert body["progress"]["stage"] == "queued" and body["error"] is None
    assert body["base_version"] is None and body["job_id"] is None
    uuid.UUID(body["id"])
    assert client.get(r.headers["location"]).json()["id"] == body["id"]
    with session_scope(pg_url) as s:
        req = s.get(ForgetRequest, body["id"])
        assert req is not None and req.items == QA and req.seq >= 1
        boxes = s.scalars(select(Outbox).where(Outbox.created_at >= req.created_at)).all()
        assert any(b.task == "worker.tasks.run_lineage" and b.payload == {"model_id": req.model_id}
                   for b in boxes)
        seqs = s.scalars(select(ForgetRequest.seq).where(ForgetRequest.model_id == req.model_id)
                         .order_by(ForgetRequest.created_at)).all()
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_submit_refusals(client: TestClient, model: str) -> None:
    url = f"/v1/models/{model}/forget-requests"
    body = assert_problem(client.post(url, json={"items": QA, "method": "magic"}), 422)
    assert body["errors"][0]["loc"] == ["body", "method"] and "magic" in body["detail"]
    body = assert_problem(client.post(url, json={"items": QA, "params": {"lrr": 1}}), 422)
    assert body["errors"][0]["loc"] == ["body", "params"] and "lrr" in body["detail"]
    assert_problem(client.post(url, json={"items": QA, "params": {"lr": -1}}), 422)
    # the model's default 'beta' (an npo key) does not leak into an alkn request
    assert client.post(url, json={"items": QA}).status_code == 202
    assert_problem(client.post(url, json={"items": []}), 422)
    assert_problem(client.post(url, json={"items": [{"question": "q"}]}), 422)
    assert_problem(client.post(url, json={"items": QA, "extra": 1}), 422)
    assert_problem(client.post(url, json={"items": QA, "base_version": 99}), 404)
    assert_problem(client.post(f"/v1/models/{unique()}/forget-requests", json={"items": QA}),
                   404)
    # a method that needs a retain set, on a model without one
    bare = unique("bare")
    client.post("/v1/models", json={"name": bare})
    client.post(f"/v1/models/{bare}/versions:upload",
                content=client.get(f"/v1/models/{model}/versions/1/archive").content)
    body = assert_problem(client.post(f"/v1/models/{bare}/forget-requests",
                                      json={"items": QA, "method": "npo_gd"}), 422)
    assert "retain" in body["detail"]
    assert client.post(f"/v1/models/{bare}/forget-requests",
                       json={"items": QA, "method": "npo"}).status_code == 202
    nover = unique("nover")
    client.post("/v1/models", json={"name": nover})
    assert_problem(client.post(f"/v1/models/{nover}/forget-requests",
                               json={"items": QA, "method": "npo"}), 409)


def test_list_requests(client: TestClient, model: str) -> None:
    ids = [client.post(f"/v1/models/{model}/forget-requests", json={"items": QA}).json()["id"]
           for _ in range(3)]
    listed: list[str] = []
    cursor = None
    while True:
        page = client.get("/v1/forget-requests", params={
            "model": model, "status": "queued", "limit": 2,
            **({"cursor": cursor} if cursor else {})}).json()
        listed += [r["id"] for r in page["items"]]
        assert all(r["status"] == "queued" and r["model"] == model for r in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(ids) <= set(listed) and len(listed) == len(set(listed))
    assert_problem(client.get("/v1/forget-requests", params={"status": "bogus"}), 422)
    assert_problem(client.get("/v1/forget-requests", params={"model": unique()}), 404)
    assert_problem(client.get(f"/v1/forget-requests/{uuid.uuid4()}"), 404)


def test_cancel(client: TestClient, model: str, pg_url: str) -> None:
    rid = client.post(f"/v1/models/{model}/forget-requests", json={"items": QA}).json()["id"]
    r = client.post(f"/v1/forget-requests/{rid}:cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"]
    assert_problem(client.post(f"/v1/forget-requests/{rid}:cancel"), 409)
    assert_problem(client.post(f"/v1/forget-requests/{uuid.uuid4()}:cancel"), 404)

    # a request that a running job serves: cancellation is requested from the worker
    rid = client.post(f"/v1/models/{model}/forget-requests", json={"items": QA}).json()["id"]
    with session_scope(pg_url) as s:
        req = s.get(ForgetRequest, rid)
        assert req is not None
        job = Job(tenant_id=req.tenant_id, model_id=req.model_id, status="running",
                  method="alkn", base_version=1, forget_request_ids=[rid])
        s.add(job)
        s.flush()
        req.job_id, req.status = job.id, "running"
        job_id = job.id
    r = client.post(f"/v1/forget-requests/{rid}:cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert r.json()["base_version"] == 1  # the job's base once a job serves it
    assert client.get(f"/v1/jobs/{job_id}").json()["cancel_requested"] is True
    with session_scope(pg_url) as s:
        s.get(ForgetRequest, rid).status = "succeeded"  # type: ignore[union-attr]
    assert_problem(client.post(f"/v1/forget-requests/{rid}:cancel"), 409)

    # a job serving two requests stops only when both asked to
    a, b = (client.post(f"/v1/models/{model}/forget-requests", json={"items": QA}).json()["id"]
            for _ in range(2))
    with session_scope(pg_url) as s:
        ra, rb = s.get(ForgetRequest, a), s.get(ForgetRequest, b)
        assert ra is not None and rb is not None
        job = Job(tenant_id=ra.tenant_id, model_id=ra.model_id, status="running",
                  method="alkn", base_version=1, forget_request_ids=[a, b])
        s.add(job)
        s.flush()
        for fr in (ra, rb):
            fr.job_id, fr.status = job.id, "running"
        job_id = job.id
    assert client.post(f"/v1/forget-requests/{a}:cancel").json()["cancel_requested"] is True
    assert client.get(f"/v1/jobs/{job_id}").json()["cancel_requested"] is False
    assert client.post(f"/v1/forget-requests/{b}:cancel").json()["cancel_requested"] is True
    assert client.get(f"/v1/jobs/{job_id}").json()["cancel_requested"] is True


def test_jobs_and_events(client: TestClient, model: str, pg_url: str, other_key: str) -> None:
    rid = client.post(f"/v1/models/{model}/forget-requests", json={"items": QA}).json()["id"]
    with session_scope(pg_url) as s:
        req = s.get(ForgetRequest, rid)
        assert req is not None
        job = Job(tenant_id=req.tenant_id, model_id=req.model_id, status="running",
                  method="alkn", base_version=1, forget_request_ids=[rid],
                  progress={"stage": "training", "step": 3, "total_steps": 10,
                            "fraction": 0.3},
                  metrics={"before": {"forget_rouge": 1.0}}, timings={"loading": 0.5})
        s.add(job)
        s.flush()
        for i, stage in enumerate(["loading", "probing", "training"]):
            s.add(JobEvent(job_id=job.id, seq=i + 1, stage=stage, message=f"m{i}",
                           data={"i": i}))
        job_id = job.id
    j = client.get(f"/v1/jobs/{job_id}").json()
    assert j["model"] == model and j["status"] == "running" and j["forget_request_ids"] == [rid]
    assert j["progress"] == {"stage": "training", "step": 3, "total_steps": 10, "fraction": 0.3}
    assert j["metrics"]["before"] == {"forget_rouge": 1.0} and j["metrics"]["after"] is None
    assert j["timings"] == {"loading": 0.5} and j["error"] is None
    ev = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}).json()
    assert [e["stage"] for e in ev["items"]] == ["loading", "probing"]
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"cursor": ev["next_cursor"]}).json()
    assert [e["stage"] for e in rest["items"]] == ["training"] and rest["next_cursor"] is None
    assert set(ev["items"][0]) >= {"at", "stage", "message", "data"}
    assert job_id in [x["id"] for x in client.get("/v1/jobs", params={"model": model}
                                                  ).json()["items"]]
    assert_problem(client.get(f"/v1/jobs/{uuid.uuid4()}"), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}", headers=other(other_key)), 404)
    assert_problem(client.get(f"/v1/jobs/{job_id}/events", headers=other(other_key)), 404)


def test_idempotency(client: TestClient, model: str, pg_url: str, hf_dir: Path) -> None:
    url = f"/v1/models/{model}/forget-requests"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    a = client.post(url, json={"items": QA, "method": "npo"}, headers=key)
    # same body, other key order and spacing: the same answer
    b = client.post(url, content=json.dumps({"method": "npo", "items": QA}, indent=2),
                    headers={**key, "Content-Type": "application/json"})
    assert a.status_code == b.status_code == 202
    assert a.json() == b.json() and a.headers["location"] == b.headers["location"]
    with session_scope(pg_url) as s:
        assert s.get(ForgetRequest, a.json()["id"]) is not None
        n = len(s.scalars(select(ForgetRequest.id).where(ForgetRequest.method == "npo",
                                                         ForgetRequest.id == a.json()["id"]
                                                         )).all())
        assert n == 1
    assert_problem(client.post(url, json={"items": QA, "method": "grad_ascent"}, headers=key),
                   409)
    # registration replays too (and copies the model once)
    name = unique("idem")
    k2 = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"name": name, "source": {"path": str(hf_dir)}}
    r1 = client.post("/v1/models", json=body, headers=k2)
    r2 = client.post("/v1/models", json=body, headers=k2)
    assert r1.status_code == r2.status_code == 201 and r1.json()["id"] == r2.json()["id"]
    assert_problem(client.post("/v1/models", json={**body, "description": "x"}, headers=k2), 409)
    # uploads hash their bytes
    k3 = {"Idempotency-Key": uuid.uuid4().hex}
    tar = tar_of(hf_dir)
    u1 = client.post(f"/v1/models/{name}/versions:upload", content=tar, headers=k3)
    u2 = client.post(f"/v1/models/{name}/versions:upload", content=tar, headers=k3)
    assert u1.status_code == u2.status_code == 201 and u1.json() == u2.json()
    assert client.get(f"/v1/models/{name}").json()["latest_version"] == u1.json()["version"]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_error_documents(client: TestClient, model: str, settings: Settings) -> None:
    url = f"/v1/models/{model}/forget-requests"
    body = assert_problem(client.post(url, content=b'{"items": [', headers={
        "Content-Type": "application/json"}), 400)
    assert body["title"] == "Malformed JSON"
    body = assert_problem(client.post(url, json={"items": "nope", "base_version": 0}), 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "items"),
                                                         ("body", "base_version")}
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
    # over the JSON limit: declared up front, and chunked (no Content-Length)
    big = json.dumps({"items": [{"text": "x" * 1000}] * 100}).encode()
    assert len(big) > settings.max_json_bytes
    assert_problem(client.post(url, content=big, headers={"Content-Type": "application/json"}),
                   413)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    assert_problem(client.post(url, content=chunks(), headers={
        "Content-Type": "application/json"}), 413)
    assert_problem(client.get("/v1/nowhere"), 404)
    assert_problem(client.delete("/v1/models"), 405)


def test_upload_limit(settings: Settings, model: str, hf_dir: Path) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 1024})
    with TestClient(create_app(small)) as c:
        c.headers["Authorization"] = f"Bearer {BOOT_KEY}"
        url = f"/v1/models/{model}/versions:upload"
        tar = tar_of(hf_dir)
        assert_problem(c.post(url, content=tar), 413)
        assert_problem(c.post(url, content=iter([tar[i:i + 512] for i in range(0, len(tar), 512)])),
                       413)
        assert list((Path(small.resolved_artifact_root) / ".tmp").iterdir()) == []


def test_unexpected_errors_are_opaque(settings: Settings, caplog: pytest.LogCaptureFixture
                                      ) -> None:
    app = create_app(settings)

    def boom() -> dict[str, str]:
        raise RuntimeError("secret /srv/path SELECT * FROM api_keys")

    app.add_api_route("/boom", boom)
    with TestClient(app) as c:
        body = assert_problem(c.get("/boom"), 500)
    assert "secret" not in json.dumps(body)
    assert any("secret" in (r.exc_text or "") or r.exc_info for r in caplog.records)
