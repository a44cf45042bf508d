"""The worker on the embedded default: SQLite database, kombu's SQLAlchemy transport on a
SQLite file as the broker, a local artifact directory — no server at all."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from registry.migrate import upgrade
from registry.models import Job, Version
from registry.store import LocalStore

from .services import start_process, stop_process
from .test_worker import World, get, register, submit, versions, wait_finished
from .test_worker import worker_world as worker_world  # noqa: F401  (the fixture)


def test_embedded_worker_runs_a_request(tmp_path: Path, worker_world: World) -> None:  # noqa: F811
    settings = Settings(home=tmp_path, queue="gpu")
    url = settings.resolved_database_url
    assert url.startswith("sqlite:///") and settings.resolved_broker_url.startswith("sqla+sqlite")
    upgrade(url)
    store = LocalStore(settings.resolved_artifact_root)
    model_id = register(url, store, worker_world)
    rid = submit(url, model_id, worker_world.items[worker_world.people[0]][:6], outbox=True)
    # Empty values fall back to the defaults under ALKN_HOME (whatever this shell exports).
    env = {"ALKN_HOME": str(tmp_path), "ALKN_DATABASE_URL": "", "ALKN_BROKER_URL": "",
           "ALKN_ARTIFACT_ROOT": "", "ALKN_QUEUE": "gpu", "ALKN_DISPATCH_INTERVAL": "0.1"}
    log = tmp_path / "worker.log"
    proc = start_process(["-m", "celery", "-A", "worker.app", "worker", "-Q", "gpu", "-P",
                          "solo", "--concurrency", "1", "-l", "info"], env, log)
    try:
        (req,) = wait_finished(url, [rid], timeout=120)
        assert req.status == "succeeded", req.error
        assert req.result_version == 2
        v = versions(url, model_id)[-1]
        assert v.number == 2 and v.parent_version == 1 and v.has_state
        assert store.exists(v.storage_key, "model.safetensors")
        job = get(url, Job, req.job_id)
        assert job.metrics["after"]["forget"]["probability"] < \
            job.metrics["before"]["forget"]["probability"]
        assert get(url, Version, v.id).status == "ready"
        assert (tmp_path / "broker.db").is_file()
    finally:
        stop_process(proc)
        print("--- worker.log (tail)\n" + log.read_text()[-4000:])
