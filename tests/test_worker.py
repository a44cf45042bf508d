"""The worker: lineage lease, job building and merging, running jobs, the outbox dispatcher.

Against the machine's PostgreSQL and Redis. Rows are written with the ORM (no API), the base
version is a tiny Llama trained in a fixture on four fictitious people and published to a
local artifact store. One test runs a real Celery worker process (its own dispatcher
publishes the outbox); the others call `run_lineage_once` in this process, where a crash or
a cancel can be placed exactly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select, update

from config.settings import Settings
from registry import jobs
from registry import outbox as outbox_rows
from registry.db import session_scope
from registry.models import (
    ForgetRequest,
    Job,
    JobEvent,
    Model,
    Outbox,
    Version,
    utcnow,
)
from registry.store import LocalStore

from .services import (
    add_model_row,
    drop_pg_database,
    free_port,
    fresh_pg_database,
    start_process,
    stop_process,
)

# Small enough for 2 CPU cores; lr suits a 0.13M-parameter model (docs/algorithm.md: ~100x a 7B's).
# alpha 1: two epochs make too weak a task vector for alkn's default alpha "auto" to reach
# its target (tests/test_calibration.py runs the worker with "auto").
PARAMS: dict[str, Any] = {"epochs": 2, "batch_size": 4, "grad_accum": 1, "lr": 1e-3,
                          "max_length": 64, "mask_rule": "retain_safe", "alpha": 1.0}
FINISHED = ("succeeded", "failed", "cancelled")
# What `register` gives a model by default: these tests are about the service, not about
# selectivity, so no repair after the negation (tests/test_selectivity.py, test_quality.py
# and test_calibration.py run it; ~0.4 s of each job here, 5 s of the lineage test).
SERVICE_PARAMS: dict[str, Any] = {**PARAMS, "repair_steps": 0}
# World facts in the models' general-knowledge set: evaluation before and after (greedy
# answers for ROUGE-L) was most of a job's time with all 103.
GENERAL_ITEMS = 16


@dataclass
class World:
    model_dir: Path
    people: list[str]
    items: dict[str, list[dict[str, str]]]  # person -> QA
    general: list[dict[str, str]]


_WORLD: list[World] = []  # built once per session, also for the modules that import it


@pytest.fixture(scope="session")
def worker_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A tiny Llama (hidden 64) trained on four fictitious people (~4 s on 2 cores);
    answer probability ~0.84 on each, so forgetting is measurable."""
    if not _WORLD:
        _WORLD.append(_build_world(tmp_path_factory.mktemp("worker_model") / "base"))
    return _WORLD[0]


def _build_world(out: Path) -> World:
    from transformers import LlamaForCausalLM

    from alkn_core.demo_corpus import generate_corpus
    from alkn_core.demo_model import build_tokenizer, corpus_texts, tiny_llama_config
    from alkn_core.train import finetune

    corpus = generate_corpus(people=4, holdout_people=0, seed=3)
    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size=512)
    items: dict[str, list[dict[str, str]]] = {}
    for r in corpus.full:
        items.setdefault(r["person"], []).append({"question": r["question"],
                                                  "answer": r["answer"]})
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), "test", tokenizer))
    finetune(model, tokenizer, [i for group in items.values() for i in group],
             {"lr": 3e-3, "epochs": 40, "batch_size": 16, "grad_accum": 1,
              "warmup_ratio": 0.05})
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    general = [{"question": r["question"], "answer": r["answer"]}
               for r in corpus.world_facts_perturbed[:GENERAL_ITEMS]]
    return World(out, corpus.people("full"), items, general)


# --------------------------------------------------------------------------------------------
# Rows, as the API would write them
# --------------------------------------------------------------------------------------------


def register(url: str, store: LocalStore, world: World,
             default_params: dict[str, Any] | None = None) -> str:
    """A model whose version 1 is the fixture model; retain set = the last person; default
    params SERVICE_PARAMS unless given."""
    with session_scope(url) as s:
        model = add_model_row(
            s, f"t-{uuid.uuid4().hex[:10]}", f"m-{uuid.uuid4().hex[:8]}",
            qa_template="Question: {question}\nAnswer: {answer}",
            default_params=dict(SERVICE_PARAMS if default_params is None else default_params),
            retain_set=world.items[world.people[3]], eval_sets={"world_facts": world.general})
        key = f"{model.id}/v1-base"
        files = store.publish_dir(world.model_dir, key)
        s.add(Version(model_id=model.id, number=1, status="ready", storage_key=key,
                      files=[f.as_dict() for f in files], size_bytes=sum(f.size for f in files)))
        return model.id


def submit(url: str, model_id: str, items: list[dict[str, Any]], *,
           params: dict[str, Any] | None = None, method: str = "alkn",
           base_version: int | None = None, cancel_requested: bool = False,
           outbox: bool = False) -> str:
    """A queued forget request (and its outbox row when `outbox`), in one transaction."""
    with session_scope(url) as s:
        model = s.get(Model, model_id)
        assert model is not None
        seq = (s.scalar(select(func.max(ForgetRequest.seq))
                        .where(ForgetRequest.model_id == model_id)) or 0) + 1
        req = ForgetRequest(tenant_id=model.tenant_id, model_id=model_id, status="queued",
                            method=method, params=params or {}, base_version=base_version,
                            items=items, item_count=len(items), seq=seq,
                            progress=dict(jobs.QUEUED_PROGRESS),
                            cancel_requested=cancel_requested)
        s.add(req)
        if outbox:
            outbox_rows.enqueue_lineage(s, model_id)
        s.flush()
        return req.id


def get(url: str, cls: Any, key: Any) -> Any:
    with session_scope(url) as s:
        return s.get(cls, key)


def versions(url: str, model_id: str) -> list[Version]:
    with session_scope(url) as s:
        return list(s.scalars(select(Version).where(Version.model_id == model_id)
                              .order_by(Version.number)))


def wait_finished(url: str, ids: list[str], timeout: float = 120.0) -> list[ForgetRequest]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [get(url, ForgetRequest, i) for i in ids]
        if all(r.status in FINISHED for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError([(r.status, r.progress) for r in rows])
        time.sleep(0.2)


def state_task_index(store: LocalStore, version: Version) -> int:
    from alkn_core import UnlearnState

    return UnlearnState.load(store.local_dir(version.storage_key + "-state")).task_index


@pytest.fixture()
def env(module_pg_url: str, tmp_path: Path) -> tuple[Settings, LocalStore]:
    # The module's own database: a lineage yields to other tenants' waiting requests
    # (registry.jobs.yield_turn), and other modules leave some queued in theirs.
    settings = Settings(database_url=module_pg_url, artifact_root=str(tmp_path / "artifacts"),
                        home=tmp_path, queue="unused")
    return settings, LocalStore(settings.resolved_artifact_root)


# --------------------------------------------------------------------------------------------
# A real worker process: successive requests, and requests arriving while a job runs
# --------------------------------------------------------------------------------------------


def test_worker_process_runs_a_lineage(pg_url: str, redis_url: str, tmp_path: Path,
                                       worker_world: World) -> None:
    store = LocalStore(tmp_path / "artifacts")
    queue = f"worker-test-{uuid.uuid4().hex[:8]}"
    proc_env = {"ALKN_DATABASE_URL": pg_url, "ALKN_BROKER_URL": redis_url,
                "ALKN_ARTIFACT_ROOT": str(store.root), "ALKN_QUEUE": queue,
                "ALKN_HOME": str(tmp_path), "ALKN_DISPATCH_INTERVAL": "0.1"}
    model_id = register(pg_url, store, worker_world)
    people, items = worker_world.people, worker_world.items
    log = tmp_path / "worker.log"
    proc = start_process(["-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "-P",
                          "solo", "--concurrency", "1", "-l", "info"], proc_env, log)
    try:
        # Three successive requests on disjoint items: v2, v3, v4, each on the last.
        done = []
        for k in range(3):
            rid = submit(pg_url, model_id, items[people[0]][6 * k: 6 * k + 6], outbox=True)
            (req,) = wait_finished(pg_url, [rid])
            assert req.status == "succeeded", req.error
            done.append(req)
        assert [r.result_version for r in done] == [2, 3, 4]
        vs = versions(pg_url, model_id)
        assert [(v.number, v.parent_version) for v in vs] == [(1, None), (2, 1), (3, 2), (4, 3)]
        for k, v in enumerate(vs[1:]):
            assert v.status == "ready" and v.has_state and v.method == "alkn"
            assert v.forget_request_ids == [done[k].id] and v.job_id == done[k].job_id
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= \
                {f["path"] for f in v.files}
            assert v.size_bytes == sum(f["size"] for f in v.files)
            assert state_task_index(store, v) == k + 1  # the ALKN state is carried on
        job = get(pg_url, Job, done[0].job_id)
        assert job.status == "succeeded" and job.result_version == 2 and job.attempts == 1
        assert set(job.metrics["before"]) == {"forget", "retain", "eval/world_facts",
                                              "model_utility", "model_utility_skipped"}
        assert job.metrics["after"]["model_utility"] is not None
        assert {"rouge_l", "truth_ratio", "items"} <= set(job.metrics["after"]["retain"])
        # The continual view: the third job also measures the first two tasks' forget sets,
        # and they stay forgotten.
        third = get(pg_url, Job, done[2].job_id)
        assert {"task/v2", "task/v3"} <= set(third.metrics["after"])
        for name in ("task/v2", "task/v3"):
            assert third.metrics["after"][name]["probability"] < \
                job.metrics["before"]["forget"]["probability"]
        forget_before = job.metrics["before"]["forget"]["probability"]
        assert forget_before > 0.6
        assert job.metrics["after"]["forget"]["probability"] < forget_before
        assert job.timings["training"] > 0 and job.timings["total"] > 0
        assert done[0].metrics == {"before": job.metrics["before"],
                                   "after": job.metrics["after"]}
        assert job.metrics["unlearning"]["task_index"] == 0
        assert done[0].progress == {"stage": "done", "step": 1, "total_steps": 1,
                                    "fraction": 1.0}
        with session_scope(pg_url) as s:
            stages = list(s.scalars(select(JobEvent.stage).where(JobEvent.job_id == job.id)
                                    .order_by(JobEvent.id)))
        assert stages == ["queued", "loading", "evaluating", "probing", "training",
                          "negating", "evaluating", "saving", "done"]

        # A request that runs long, and two more submitted while it runs: they are merged
        # into the next job, built on its result (never a second job on the same base).
        long_id = submit(pg_url, model_id, items[people[1]], params={"epochs": 3},
                         outbox=True)
        deadline = time.monotonic() + 60
        while get(pg_url, ForgetRequest, long_id).status == "queued":
            assert time.monotonic() < deadline, "the worker never started the request"
            time.sleep(0.05)
        b = submit(pg_url, model_id, items[people[2]][:5], outbox=True)
        c = submit(pg_url, model_id, items[people[2]][5:10], outbox=True)
        first, rb, rc = wait_finished(pg_url, [long_id, b, c])
        assert first.status == rb.status == rc.status == "succeeded"
        assert rb.job_id == rc.job_id != first.job_id
        merged = get(pg_url, Job, rb.job_id)
        assert merged.base_version == first.result_version == 5
        assert merged.forget_request_ids == [b, c] and rb.result_version == 6
        assert set(rb.metrics["before"]["forget"]) >= {"probability", "items"}
        assert rb.metrics["before"]["forget"]["items"] == 5  # its own items, not the job's
        with session_scope(pg_url) as s:
            bases = list(s.scalars(select(Job.base_version).where(Job.model_id == model_id)))
        assert sorted(bases) == [1, 2, 3, 4, 5]
        deadline = time.monotonic() + 30
        while get(pg_url, Model, model_id).lease_owner is not None:  # released after the last
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with session_scope(pg_url) as s:
            assert s.scalar(select(func.count()).select_from(Outbox).where(
                Outbox.published_at.is_(None),
                Outbox.payload["model_id"].as_string() == model_id)) == 0
    finally:
        stop_process(proc)
        print("--- worker.log (tail)\n" + log.read_text()[-4000:])


# --------------------------------------------------------------------------------------------
# In-process: cancel, failure, crash and redelivery
# --------------------------------------------------------------------------------------------


def test_cancel_of_a_queued_request_is_skipped(env: tuple[Settings, LocalStore],
                                               worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    person = worker_world.items[worker_world.people[0]]
    r1 = submit(url, model_id, person[:4])
    r2 = submit(url, model_id, person[4:8], cancel_requested=True)
    r3 = submit(url, model_id, person[8:12])
    from worker.runner import run_lineage_once

    assert run_lineage_once(settings, model_id, "w-1", store=store) == 1
    a, b, c = (get(url, ForgetRequest, r) for r in (r1, r2, r3))
    assert b.status == "cancelled" and b.job_id is None and b.finished_at is not None
    assert a.status == c.status == "succeeded" and a.job_id == c.job_id
    vs = versions(url, model_id)
    assert [v.number for v in vs] == [1, 2] and vs[1].forget_request_ids == [r1, r3]


def test_failed_job_leaves_the_lineage_usable(env: tuple[Settings, LocalStore],
                                              worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    person = worker_world.items[worker_world.people[1]]
    too_long = [{"question": " ".join(["Where was the author born again?"] * 12),
                 "answer": "In a city."}]
    bad = submit(url, model_id, too_long, params={"max_length": 32})
    good = submit(url, model_id, person[:6])  # other params: not merged with the bad one
    from worker.runner import run_lineage_once

    assert run_lineage_once(settings, model_id, "w-1", store=store) == 2
    failed, ok = get(url, ForgetRequest, bad), get(url, ForgetRequest, good)
    assert failed.status == "failed" and failed.result_version is None
    assert failed.error["type"] == "invalid_input"
    assert "max_length=32" in failed.error["message"] and "Traceback" not in \
        failed.error["message"]
    job = get(url, Job, failed.job_id)
    assert job.status == "failed" and job.error == failed.error and job.finished_at
    assert ok.status == "succeeded" and ok.result_version == 2
    assert get(url, Version, versions(url, model_id)[1].id).parent_version == 1
    model = get(url, Model, model_id)
    assert model.lease_owner is None and model.lease_until is None


class SimulatedCrash(BaseException):
    """Not an Exception: like a killed process, nothing in the job handles it."""


def test_crash_and_rerun_never_make_a_second_version(
        env: tuple[Settings, LocalStore], worker_world: World, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import runner

    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    rid = submit(url, model_id, worker_world.items[worker_world.people[2]][:6])

    # The job's process dies once after the files were published, before the version row
    # was committed (the marker file tells the next attempt's process not to).
    real_publish = jobs.publish_version
    crashed = tmp_path / "crashed"

    def crash_once(*args: Any, **kwargs: Any) -> Any:
        if not crashed.exists():
            crashed.touch()
            raise SimulatedCrash()
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(jobs, "publish_version", crash_once)
    # The worker survives its job's process: it runs the job again at once, as attempt 2.
    assert runner.run_lineage_once(settings, model_id, "w-1", store=store) == 2
    assert crashed.exists()
    job = get(url, Job, get(url, ForgetRequest, rid).job_id)
    assert job.status == "succeeded" and job.attempts == 2 and job.result_version == 2
    assert [v.number for v in versions(url, model_id)] == [1, 2]
    with session_scope(url) as s:
        stages = list(s.scalars(select(JobEvent.stage).where(JobEvent.job_id == job.id)
                                .order_by(JobEvent.id)))
    assert stages.count("retry") == 1 and stages.count("saving") == 2

    # A lineage whose lease another (live) worker holds is left alone.
    more = submit(url, model_id, worker_world.items[worker_world.people[2]][6:9])
    with session_scope(url) as s:
        s.execute(update(Model).where(Model.id == model_id).values(
            lease_owner="w-live", lease_until=utcnow() + timedelta(seconds=60)))
    assert runner.run_lineage_once(settings, model_id, "w-2", store=store) == 0
    assert get(url, ForgetRequest, more).status == "queued"
    with session_scope(url) as s:
        s.execute(update(ForgetRequest).where(ForgetRequest.id == more)
                  .values(status="cancelled"))
        s.execute(update(Model).where(Model.id == model_id).values(
            lease_owner=None, lease_until=None))

    # Redelivered after success (crash between commit and ack): nothing to do.
    assert runner.run_lineage_once(settings, model_id, "w-3", store=store) == 0
    # Publishing the same job again finds its version instead of making a second one.
    v2 = versions(url, model_id)[1]
    again = jobs.publish_version(url, job.id, storage_key="elsewhere", files=[],
                                 has_state=False, metrics={}, request_metrics={}, timings={})
    assert again.version == 2 and not again.created
    assert [v.number for v in versions(url, model_id)] == [1, 2]
    assert get(url, Version, v2.id).storage_key == v2.storage_key
    # The crashed attempt's files lie under a key of their own that no row references
    # (garbage, never a half-visible version); the rerun wrote its own.
    keys = {p.name for p in (store.root / model_id).iterdir()}
    ours = Path(v2.storage_key).name
    assert {"v1-base", ours, ours + "-state"} < keys and len(keys) == 5
    assert store.exists(v2.storage_key, "model.safetensors")
    assert get(url, Model, model_id).lease_owner is None


def test_cancel_while_running(env: tuple[Settings, LocalStore], worker_world: World,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two merged requests; one is cancelled while the job runs: the job stops, nothing is
    published, that request is cancelled and the other runs in the next job."""
    from worker import runner

    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    person = worker_world.items[worker_world.people[0]]
    keep = submit(url, model_id, person[:5])
    drop = submit(url, model_id, person[5:10])
    real_evaluate = runner.evaluate
    calls: list[int] = []

    def evaluate_then_cancel(*args: Any, **kwargs: Any) -> Any:
        if not calls:  # the API's cancel of a running request, mid-job
            with session_scope(url) as s:
                s.execute(update(ForgetRequest).where(ForgetRequest.id == drop)
                          .values(cancel_requested=True))
        calls.append(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", evaluate_then_cancel)
    assert runner.run_lineage_once(settings, model_id, "w-1", store=store) == 2
    kept, dropped = get(url, ForgetRequest, keep), get(url, ForgetRequest, drop)
    assert dropped.status == "cancelled" and dropped.result_version is None
    first = get(url, Job, dropped.job_id)
    assert first.status == "cancelled" and first.result_version is None
    assert kept.status == "succeeded" and kept.job_id != first.id
    vs = versions(url, model_id)
    assert [v.number for v in vs] == [1, 2] and vs[1].forget_request_ids == [keep]
    # Nothing of the cancelled job reached the store.
    assert sorted(p.name for p in (store.root / model_id).iterdir()) == \
        sorted(["v1-base", Path(vs[1].storage_key).name, Path(vs[1].storage_key).name
                + "-state"])


# --------------------------------------------------------------------------------------------
# Job building, lease and sweeper (no model work)
# --------------------------------------------------------------------------------------------


def test_merge_preserves_submission_order(env: tuple[Settings, LocalStore],
                                          worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    item = [{"question": "Who?", "answer": "Nobody."}]
    r1 = submit(url, model_id, item)
    r2 = submit(url, model_id, item, params={"lr": 1e-3})  # = the model default: same job
    r3 = submit(url, model_id, item, params={"epochs": 1})
    r4 = submit(url, model_id, item)  # same as r1, but after r3: not merged over it
    r5 = submit(url, model_id, item, base_version=1)  # explicit base: another job
    r6 = submit(url, model_id, item, params={"nonsense": 1})
    r7 = submit(url, model_id, item, base_version=9)
    assert jobs.take_lease(url, model_id, "me", 60)
    assert not jobs.take_lease(url, model_id, "other", 60)
    groups = []
    while (spec := jobs.next_job(url, model_id)) is not None:
        groups.append(spec.request_ids)
        assert spec.params["epochs"] == (1 if spec.request_ids == [r3] else 2)
        assert spec.params["qa_template"].startswith("Question:")
        assert spec.base_version == 1 and not spec.base_state
        jobs.fail_job(url, spec.job_id, jobs.JobError("test", "not run"))
    assert groups == [[r1, r2], [r3], [r4], [r5]]
    bad, missing = get(url, ForgetRequest, r6), get(url, ForgetRequest, r7)
    assert bad.status == "failed" and bad.error["type"] == "invalid_params"
    assert "nonsense" in bad.error["message"] and bad.job_id is None
    assert missing.status == "failed" and missing.error["type"] == "base_version_unavailable"
    jobs.release_lease(url, model_id, "other")  # not the owner: no effect
    assert not jobs.take_lease(url, model_id, "other", 60)
    jobs.release_lease(url, model_id, "me")
    assert jobs.take_lease(url, model_id, "other", 60)
    jobs.release_lease(url, model_id, "other")


def test_sweeper_reenqueues_stranded_lineages(env: tuple[Settings, LocalStore],
                                              worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    rid = submit(url, model_id, [{"question": "Who?", "answer": "Nobody."}])
    assert model_id not in jobs.stranded_lineages(url)  # just submitted: its task is coming
    assert model_id in jobs.stranded_lineages(url, queued_for=0)
    assert jobs.take_lease(url, model_id, "holder", 60)
    assert model_id not in jobs.stranded_lineages(url, queued_for=0)  # someone works on it
    jobs.release_lease(url, model_id, "holder")
    assert model_id in jobs.sweep_stranded(url, queued_for=0)
    assert model_id not in jobs.sweep_stranded(url, queued_for=0)  # once per quiet period
    with session_scope(url) as s:
        rows = list(s.scalars(select(Outbox).where(
            Outbox.payload["model_id"].as_string() == model_id)))
        assert [(r.task, r.payload) for r in rows] == [
            ("worker.tasks.run_lineage", {"model_id": model_id})]
        s.execute(update(ForgetRequest).where(ForgetRequest.id == rid)
                  .values(status="cancelled"))
        s.delete(rows[0])


# --------------------------------------------------------------------------------------------
# Outbox dispatcher: nothing lost while the broker is down
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def own_pg() -> Iterator[str]:
    """A database of its own: publish_pending sends every unpublished row it sees."""
    from registry.migrate import upgrade

    url = fresh_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(url)


def test_outbox_survives_a_broker_outage(own_pg: str, redis_url: str) -> None:
    import redis

    from worker.app import make_app
    from worker.dispatcher import publish_pending

    queue = f"outbox-test-{uuid.uuid4().hex[:8]}"
    with session_scope(own_pg) as s:
        for payload in ({"model_id": "m0"}, ["not", "kwargs"], {"model_id": "m1"},
                        {"model_id": "m2"}):
            s.add(Outbox(task="worker.tasks.run_lineage", payload=payload))
    down = make_app(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", queue=queue))
    t = time.monotonic()
    assert publish_pending(own_pg, down, queue=queue) == 0
    assert publish_pending(own_pg, down, queue=queue) == 0
    assert time.monotonic() - t < 20  # a down broker is noticed fast
    with session_scope(own_pg) as s:
        rows = list(s.scalars(select(Outbox).order_by(Outbox.id)))
    assert all(r.published_at is None for r in rows)
    assert rows[0].attempts == 2 and "Error" in (rows[0].last_error or "")
    assert rows[1].attempts == 0  # the round stops at the first refusal

    up = make_app(Settings(broker_url=redis_url, queue=queue))
    assert publish_pending(own_pg, up, limit=2, queue=queue) == 1
    assert publish_pending(own_pg, up, queue=queue) == 2  # a bad row holds nothing back
    assert publish_pending(own_pg, up, queue=queue) == 0
    with session_scope(own_pg) as s:
        rows = list(s.scalars(select(Outbox).order_by(Outbox.id)))
    good = [rows[0], *rows[2:]]
    assert all(r.published_at is not None and r.last_error is None for r in good)
    assert rows[1].published_at is None and rows[1].attempts == 3 and rows[1].last_error
    stamps = [r.published_at for r in good]
    assert stamps == sorted(stamps)  # in id order
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue) == 3  # the messages are in the broker's queue
    client.delete(queue)


def test_dispatcher_thread_publishes_and_sweeps(own_pg: str, redis_url: str) -> None:
    """The thread a worker runs: new outbox rows go out within a poll interval, and a
    lineage with an old queued request and no lease gets a fresh task from the sweeper."""
    import redis

    from worker.app import make_app
    from worker.dispatcher import Dispatcher

    queue = f"dispatch-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=own_pg, broker_url=redis_url, queue=queue)
    with session_scope(own_pg) as s:
        model = add_model_row(s, "t", "m")
        s.add(ForgetRequest(tenant_id=model.tenant_id, model_id=model.id, method="alkn",
                            items=[{"text": "x"}], item_count=1, seq=1,
                            created_at=utcnow() - timedelta(minutes=5)))
        s.add(Outbox(task="worker.tasks.run_lineage", payload={"model_id": "other"}))
        model_id = model.id
    dispatcher = Dispatcher(make_app(settings), settings, interval=0.05, sweep_interval=0.2,
                            stranded_after=60)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            with session_scope(own_pg) as s:
                rows = list(s.scalars(select(Outbox).order_by(Outbox.id)))
            if len(rows) == 2 and all(r.published_at for r in rows):
                break
            assert time.monotonic() < deadline, [(r.payload, r.published_at) for r in rows]
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    assert not dispatcher.running
    assert rows[1].payload == {"model_id": model_id}  # the sweeper's row, then published
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue) == 2
    client.delete(queue)


def test_jobs_go_to_the_queue_of_their_gpu_size(own_pg: str, redis_url: str) -> None:
    """ALKN_QUEUE_ROUTES: a model that needs 60 GB goes to the 80 GB workers' queue, one
    that needs 20 GB to the 40 GB queue, one with no need to the default queue, one that
    needs more than any route to the largest."""
    import redis

    from worker.app import make_app
    from worker.dispatcher import publish_pending
    from worker.queue_routing import parse_routes, queue_for

    tag = uuid.uuid4().hex[:8]
    default, q40, q80 = f"gpu-{tag}", f"gpu-40g-{tag}", f"gpu-80g-{tag}"
    routes = f"80:{q80}, 40:{q40}"
    assert parse_routes(routes) == [(40, q40), (80, q80)]
    with pytest.raises(ValueError, match="not GB:queue"):
        parse_routes("80gb:big")
    assert queue_for(None, parse_routes(routes), default) == default
    assert queue_for(8, [], default) == default
    with session_scope(own_pg) as s:
        ids = {}
        for name, need in (("big", 60), ("mid", 20), ("any", None), ("huge", 500)):
            ids[name] = add_model_row(s, f"t-{tag}-{name}", name, min_gpu_memory_gb=need).id
            s.add(Outbox(task="worker.tasks.run_lineage", payload={"model_id": ids[name]}))
    app = make_app(Settings(broker_url=redis_url, queue=default))
    assert publish_pending(own_pg, app, queue=default, queue_routes=routes) == 4
    client = redis.Redis.from_url(redis_url)
    try:
        assert (client.llen(q80), client.llen(q40), client.llen(default)) == (2, 1, 1)
    finally:
        client.delete(default, q40, q80)
