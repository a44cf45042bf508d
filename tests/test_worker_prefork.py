"""The production command line: `celery -A worker.app worker -Q <queue>` with its default
prefork pool (the job runs in a forked child, the dispatcher in the parent)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from registry.models import Model
from registry.store import LocalStore

from .services import start_process, stop_process
from .test_worker import World, get, register, submit, versions, wait_finished
from .test_worker import worker_world as worker_world  # noqa: F401  (the fixture)


def test_prefork_worker_runs_a_request(pg_url: str, redis_url: str, tmp_path: Path,
                                       worker_world: World) -> None:  # noqa: F811
    store = LocalStore(tmp_path / "artifacts")
    queue = f"prefork-test-{uuid.uuid4().hex[:8]}"
    env = {"ALKN_DATABASE_URL": pg_url, "ALKN_BROKER_URL": redis_url,
           "ALKN_ARTIFACT_ROOT": str(store.root), "ALKN_QUEUE": queue,
           "ALKN_HOME": str(tmp_path), "ALKN_DISPATCH_INTERVAL": "0.1"}
    model_id = register(pg_url, store, worker_world)
    rid = submit(pg_url, model_id, worker_world.items[worker_world.people[1]][:6], outbox=True)
    log = tmp_path / "worker.log"
    proc = start_process(["-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "-l",
                          "info"], env, log)
    try:
        (req,) = wait_finished(pg_url, [rid], timeout=120)
        assert req.status == "succeeded", req.error
        assert [v.number for v in versions(pg_url, model_id)] == [1, 2]
        deadline = time.monotonic() + 30
        while get(pg_url, Model, model_id).lease_owner is not None:  # the task's last step
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # The job ran in a forked pool child (whose own lines, e.g. "Task ... succeeded",
        # follow the lease's release: the job's lines come from its child, "alkn-job").
        while "ForkPoolWorker" not in log.read_text():
            assert time.monotonic() < deadline, "no line of a ForkPoolWorker in the log"
            time.sleep(0.1)
    finally:
        stop_process(proc)
        print("--- worker.log (tail)\n" + log.read_text()[-4000:])
