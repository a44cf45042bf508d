"""What a job evaluates, against the machine's PostgreSQL and the worker code run in this
process (`run_lineage_once`): fixed samples of the model's size, a job's "before" read from
its base version's stored scores (so it equals the previous job's "after" on every shared
set, and only the new forget set is measured), and full evaluations on demand."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from config.settings import Settings
from registry.db import session_scope
from registry.evaluations import enqueue_evaluation, latest_full_evaluation
from registry.jobs.build import lineage_chain, repair_rounds_seen
from registry.models import Job, JobEvent, Model, Version
from registry.store import LocalStore
from worker.runner import run_lineage_once

from .test_worker import World, env, get, register, submit, worker_world

__all__ = ["env", "worker_world"]  # fixtures, used by name

NOT_SETS = ("model_utility", "model_utility_skipped")


def _jobs(url: str, model_id: str) -> list[Job]:
    with session_scope(url) as s:
        return list(s.scalars(select(Job).where(Job.model_id == model_id)
                              .order_by(Job.created_at)))


def _first_eval_steps(url: str, job_id: str) -> int:
    """Batches the job's "before" evaluation ran (its first evaluating event says so)."""
    with session_scope(url) as s:
        data = s.scalar(select(JobEvent.data).where(JobEvent.job_id == job_id,
                                                    JobEvent.stage == "evaluating")
                        .order_by(JobEvent.seq).limit(1))
    assert data is not None and data["phase"] == "before"
    return int(data["total_steps"])


def _scores(url: str, model_id: str) -> dict[int, Any]:
    with session_scope(url) as s:
        return dict(s.execute(select(Version.number, Version.item_scores)
                              .where(Version.model_id == model_id)).all())


def test_before_is_the_base_versions_after_on_fixed_samples(
        env: tuple[Settings, LocalStore], worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    retain = worker_world.items[worker_world.people[3]]
    with session_scope(url) as s:  # samples smaller than the sets
        s.execute(update(Model).where(Model.id == model_id)
                  .values(eval_max_items=len(retain) - 4, eval_detail_items=5))
    items = worker_world.items[worker_world.people[0]]
    for k in range(3):
        submit(url, model_id, items[4 * k: 4 * k + 4])
        assert run_lineage_once(settings, model_id, "w-1", store=store) == 1
    jobs = _jobs(url, model_id)
    assert [j.status for j in jobs] == ["succeeded"] * 3

    for prev, nxt in zip(jobs, jobs[1:], strict=False):
        shared = (set(prev.metrics["after"]) & set(nxt.metrics["before"])) - {"forget",
                                                                             *NOT_SETS}
        assert {"retain", "eval/world_facts"} <= shared
        for name in shared:
            assert nxt.metrics["before"][name] == prev.metrics["after"][name], name
        assert nxt.metrics["before"]["model_utility"] == prev.metrics["after"]["model_utility"]
    assert {"task/v2", "task/v3"} <= set(jobs[2].metrics["before"])
    # the first job measured its base in full; later ones only their new forget set
    assert _first_eval_steps(url, jobs[0].id) > 2 * _first_eval_steps(url, jobs[1].id)

    r = jobs[2].metrics["after"]["retain"]
    assert (r["items"], r["of"], r["detail_items"]) == (len(retain) - 4, len(retain), 5)
    assert r["rouge_l_items"] == 5 and r["probability_items"] == len(retain) - 4
    scores = _scores(url, model_id)
    assert all(scores[n] and scores[n]["items"] for n in (1, 2, 3, 4))  # v1 from job 1
    with session_scope(url) as s:  # the next job's lineage, newest first; no repair ran
        chain = lineage_chain(s, model_id, s.scalars(select(Version).where(
            Version.model_id == model_id, Version.number == 4)).one())
        assert [v.number for v in chain] == [4, 3, 2, 1]
        assert repair_rounds_seen(chain) is None

    # progress: stages named before/after, an ETA once under way
    with session_scope(url) as s:
        phases = [d.get("phase") for d in s.scalars(
            select(JobEvent.data).where(JobEvent.job_id == jobs[2].id,
                                        JobEvent.stage == "evaluating")
            .order_by(JobEvent.seq))]
    assert phases == ["before", "after"]


def test_full_evaluation_on_demand_is_a_job_of_its_own(
        env: tuple[Settings, LocalStore], worker_world: World) -> None:
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    with session_scope(url) as s:
        s.execute(update(Model).where(Model.id == model_id)
                  .values(eval_max_items=3, eval_detail_items=2))
    submit(url, model_id, worker_world.items[worker_world.people[0]][:4])
    assert run_lineage_once(settings, model_id, "w-1", store=store) == 1

    with session_scope(url) as s:
        model = s.get(Model, model_id)
        v2 = s.scalar(select(Version).where(Version.model_id == model_id,
                                            Version.number == 2))
        assert model is not None and v2 is not None
        job, created = enqueue_evaluation(s, model, v2)
        again, created_again = enqueue_evaluation(s, model, v2)
        job_id = job.id
    assert created and not created_again and again.id == job_id
    assert run_lineage_once(settings, model_id, "w-1", store=store) == 1

    job = get(url, Job, job_id)
    assert job.status == "succeeded" and job.kind == "evaluate", job.error
    assert job.result_version is None and job.metrics["full"] is True
    ev = job.metrics["evaluation"]
    retain = worker_world.items[worker_world.people[3]]
    assert ev["retain"]["items"] == ev["retain"]["of"] == len(retain)  # every item
    assert ev["retain"]["rouge_l_items"] == len(retain)
    assert ev["task/v2"]["items"] == 4 and ev["model_utility"] is not None
    assert max(_scores(url, model_id)) == 2  # no new version
    with session_scope(url) as s:  # what GET .../versions/2/evaluation answers now
        assert latest_full_evaluation(s, model_id, 2) == ev
        assert latest_full_evaluation(s, model_id, 1) is None
    # the version's stored scores now cover every item: a later job reads them
    assert len(_scores(url, model_id)[2]["items"]) >= len(retain) + 4


def test_a_job_that_changes_no_weight_measures_nothing_after(
        env: tuple[Settings, LocalStore], worker_world: World) -> None:
    """Forget items already at the target (here: a target above their probability): the
    calibrated alpha is 0, no weight changes, and the "after" numbers are the "before" ones,
    read back instead of measured again."""
    settings, store = env
    url = settings.resolved_database_url
    model_id = register(url, store, worker_world)
    submit(url, model_id, worker_world.items[worker_world.people[0]][:4],
           params={"alpha": "auto", "target_forget_prob": 0.999, "repair_steps": 5})
    assert run_lineage_once(settings, model_id, "w-1", store=store) == 1
    (job,) = _jobs(url, model_id)
    assert job.status == "succeeded", job.error
    un = job.metrics["unlearning"]
    assert un["alpha"] == 0 and un["weights_unchanged"] is True
    assert un["repair"]["rounds"] == [] and un["repair"]["skipped"]
    assert job.metrics["after"] == job.metrics["before"]
    with session_scope(url) as s:
        after_steps = [d["total_steps"] for d in s.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job.id,
                                        JobEvent.stage == "evaluating"))
                       if d.get("phase") == "after"]
    assert all(n == 0 for n in after_steps), after_steps
    scores = _scores(url, model_id)
    assert scores[2]["items"] == scores[1]["items"]  # v1's, measured once by job 1
