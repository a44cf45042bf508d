"""The API on the embedded default (SQLite file + local store): the main paths only."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from config.settings import Settings
from registry.migrate import upgrade

KEY = "alkn_sqlite_bootstrap_key_000000"
QA = [{"question": "Where was Ilsa born?", "answer": "In Port Tavrin."}]


def test_embedded_sqlite_round_trip(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "src" / "model"
    src.mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "llama"}')
    weights = os.urandom(3000)
    (src / "model.safetensors").write_bytes(weights)
    settings = Settings(home=home, model_source_roots=str(tmp_path / "src"),
                        bootstrap_api_key=KEY, broker_url=None, database_url=None,
                        artifact_root=None)
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        assert c.get("/readyz").json()["checks"] == {"database": "ok", "store": "ok",
                                                     "broker": "ok"}
        for name in ("a", "b", "c"):
            body = {"name": name, "retain_set": QA,
                    **({"source": {"path": str(src)}} if name == "a" else {})}
            assert c.post("/v1/models", json=body).status_code == 201
        page = c.get("/v1/models", params={"limit": 2}).json()
        rest = c.get("/v1/models", params={"cursor": page["next_cursor"]}).json()
        assert [m["name"] for m in page["items"] + rest["items"]] == ["a", "b", "c"]
        assert page["items"][0]["created_at"].endswith("Z")

        r = c.get("/v1/models/a/versions/latest/files/model.safetensors",
                  headers={"Range": "bytes=100-"})
        assert r.status_code == 206 and r.content == weights[100:]
        with tarfile.open(fileobj=io.BytesIO(c.get("/v1/models/a/versions/1/archive").content)
                          ) as tf:
            member = tf.extractfile("model.safetensors")
            assert member is not None and member.read() == weights

        ids = [c.post("/v1/models/a/forget-requests", json={"items": QA}).json()["id"]
               for _ in range(3)]
        assert c.post(f"/v1/forget-requests/{ids[0]}:cancel").json()["status"] == "cancelled"
        queued = c.get("/v1/forget-requests", params={"model": "a", "status": "queued",
                                                      "limit": 1}).json()
        more = c.get("/v1/forget-requests", params={"model": "a", "status": "queued",
                                                    "cursor": queued["next_cursor"]}).json()
        assert [x["id"] for x in queued["items"] + more["items"]] == ids[1:]

        assert c.post("/v1/models/a/versions/1:revoke").json()["status"] == "revoked"
        assert c.get("/v1/models/a/versions/1/archive").status_code == 409
