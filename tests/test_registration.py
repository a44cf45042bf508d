"""Registration off the request path: a source larger than ALKN_REGISTER_INLINE_BYTES is
copied by a job (202, the job to poll), never inside the HTTP request; the job publishes
version 1 with the source's bytes, or fails saying why (and leaves no version)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alkn_client import ApiError, Client, RegistrationFailed
from api.app import create_app
from registry.store import LocalStore
from worker.runner import run_lineage_once

from .apikit import BOOT_KEY, ApiWorld
from .services import free_port, wait_http


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_large_source_is_registered_by_a_job(api_world: ApiWorld) -> None:
    settings = api_world.settings.model_copy(update={"register_inline_bytes": 0})
    store = LocalStore(settings.resolved_artifact_root)
    bad = api_world.source_root / "with-a-link"
    shutil.copytree(api_world.model_dir, bad)
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {BOOT_KEY}"
        r = c.post("/v1/models", json={"name": "large",
                                       "source": {"path": str(api_world.model_dir)}})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["kind"] == "register" and job["status"] == "queued"
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        model = c.get("/v1/models/large").json()
        assert model["latest_version"] is None  # until the job has copied it

        assert run_lineage_once(settings, model["id"], "w-register", store=store) == 1
        done = c.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded" and done["result_version"] == 1, done
        stages = {e["stage"] for e in c.get(f"/v1/jobs/{job['id']}/events").json()["items"]}
        assert {"copying", "saving", "done"} <= stages
        version = c.get("/v1/models/large/versions/1").json()
        assert version["status"] == "ready" and version["parent_version"] is None
        source = {p.relative_to(api_world.model_dir).as_posix(): _sha(p)
                  for p in api_world.model_dir.rglob("*") if p.is_file()}
        assert {f["path"]: f["sha256"] for f in version["files"]} == source
        assert c.get("/v1/models/large").json()["latest_version"] == 1

        # A link refused at submission (422) that appears in the source after it: the job
        # fails saying so, and no version is made.
        r = c.post("/v1/models", json={"name": "linked", "source": {"path": str(bad)}})
        assert r.status_code == 202, r.text
        os.symlink("/etc/hostname", bad / "notes.txt")
        assert c.post("/v1/models", json={"name": "linked-2", "source": {"path": str(bad)}}
                      ).status_code == 422
        linked = c.get("/v1/models/linked").json()
        run_lineage_once(settings, linked["id"], "w-register", store=store)
        failed = c.get(f"/v1/jobs/{r.json()['id']}").json()
        assert failed["status"] == "failed" and failed["error"]["type"] == "invalid_input"
        assert "notes.txt" in failed["error"]["message"], failed["error"]
        assert "/etc" not in failed["error"]["message"]
        assert c.get("/v1/models/linked/versions").json()["items"] == []


def test_the_client_waits_for_a_registration_job(api_world: ApiWorld) -> None:
    """Client.register_model on a 202: it polls the job (a worker runs it meanwhile) and
    returns the model with its version 1; a failed job raises RegistrationFailed."""
    import uvicorn

    settings = api_world.settings.model_copy(update={"register_inline_bytes": 0})
    store = LocalStore(settings.resolved_artifact_root)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{port}"

    def work(name: str, meanwhile: Callable[[], object] = lambda: None) -> None:
        """Once the model exists (its registration job queued), `meanwhile`, then a worker's
        turn on its lineage."""
        deadline = time.monotonic() + 60
        with Client(url, BOOT_KEY) as me:
            while time.monotonic() < deadline:
                try:
                    model_id = me.get_model(name).id
                except ApiError:
                    time.sleep(0.05)
                    continue
                meanwhile()
                run_lineage_once(settings, model_id, "w-client", store=store)
                return

    try:
        wait_http(f"{url}/healthz", timeout=60)
        with Client(url, BOOT_KEY) as alkn:
            worker = threading.Thread(target=work, args=("by-client",))
            worker.start()
            model = alkn.register_model("by-client", source_path=str(api_world.model_dir),
                                        timeout=60)
            worker.join()
            assert model.name == "by-client" and model.latest_version == 1

            gone = api_world.source_root / "vanishing"
            shutil.copytree(api_world.model_dir, gone)

            # gone after the submission checked it, before the job copies it
            worker = threading.Thread(target=work,
                                      args=("vanishing", lambda: shutil.rmtree(gone)))
            worker.start()
            with pytest.raises(RegistrationFailed, match="no longer there") as failed:
                alkn.register_model("vanishing", source_path=str(gone), timeout=60)
            worker.join()
            assert failed.value.job.status == "failed"
    finally:
        server.should_exit = True
        serving.join(timeout=30)
