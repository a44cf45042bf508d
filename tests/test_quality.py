"""The quality gate (issue 13): every published version says how much of everything else it
kept against the lineage's first version, below the utility floor loudly (its `quality`
block, a `quality_gate_failed` event, alkn_quality_gate_failed_total), never by failing the
deletion; `utility_floor` is validated like every param.

The API (FastAPI's TestClient) on a PostgreSQL database of this module's own, the tiny model
of tests/test_worker.py registered through it as version 1, and the worker's
`run_lineage_once` in this process (its Prometheus counters are this process's). Two real
jobs on one lineage: a fixed large alpha that wrecks the model (v2, below the floor set at
registration), then a gentle request with its own floor (v3, measured against v1 through the
first job's "before").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.app import create_app
from config.settings import Settings
from registry.store import LocalStore

from .test_worker import PARAMS, World
from .test_worker import worker_world as worker_world  # noqa: F401  (the fixture)

KEY = "quality-test-bootstrap-key-0123456789"
COUNTER = "alkn_quality_gate_failed_total"
# A fixed alpha this large turns the tiny model's task vector into noise on everything.
WRECK = {"alpha": 3.0}
# Half a step: it forgets a little and keeps nearly everything; a floor of 0 always holds.
GENTLE = {"alpha": 0.5, "utility_floor": 0.0}
REGISTERED_FLOOR = 0.9


@dataclass
class Gate:
    client: TestClient
    settings: Settings
    store: LocalStore
    model: str
    model_id: str
    world: World

    def submit(self, items: list[dict[str, Any]], params: dict[str, Any]) -> str:
        r = self.client.post(f"/v1/models/{self.model}/forget-requests",
                             json={"items": items, "method": "task_vector", "params": params})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def run(self, request_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Run the lineage in this process; the request, its job and its version as the API
        shows them."""
        from worker.runner import run_lineage_once

        assert run_lineage_once(self.settings, self.model_id, "quality-w", store=self.store) == 1
        req = self.client.get(f"/v1/forget-requests/{request_id}").json()
        assert req["status"] == "succeeded", req["error"]
        job = self.client.get(f"/v1/jobs/{req['job_id']}").json()
        version = self.client.get(
            f"/v1/models/{self.model}/versions/{req['result_version']}").json()
        return req, job, version

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.client.get(f"/v1/jobs/{job_id}/events?limit=500").json()["items"])


def counted(reason: str) -> float:
    return REGISTRY.get_sample_value(COUNTER, {"reason": reason}) or 0.0


def _counts() -> dict[str, float]:
    return {r: counted(r) for r in ("retain_probability", "model_utility", "target_missed")}


@pytest.fixture(scope="module")
def gate(module_pg_url: str, tmp_path_factory: pytest.TempPathFactory,
         worker_world: World) -> Iterator[Gate]:  # noqa: F811
    home = tmp_path_factory.mktemp("quality")
    settings = Settings(home=home, database_url=module_pg_url,
                        artifact_root=str(home / "artifacts"),
                        model_source_roots=str(worker_world.model_dir.parent),
                        bootstrap_api_key=KEY, queue=f"quality-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        people = worker_world.items
        r = client.post("/v1/models", json={
            "name": "gate", "source": {"path": str(worker_world.model_dir)},
            "default_params": {**PARAMS, "utility_floor": REGISTERED_FLOOR},
            "retain_set": people[worker_world.people[3]][:6],
            # Another trained person: the world facts score 0 on this model (utility 0).
            "eval_sets": {"other_people": people[worker_world.people[2]][:4]}})
        assert r.status_code == 201, r.text
        yield Gate(client, settings, LocalStore(settings.resolved_artifact_root), "gate",
                   r.json()["id"], worker_world)


@dataclass
class Runs:
    wrecked: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]  # request, job, version
    counts_before: dict[str, float]
    counts_after_wreck: dict[str, float]
    gentle: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    counts_after_gentle: dict[str, float]


@pytest.fixture(scope="module")
def runs(gate: Gate) -> Runs:
    items = gate.world.items[gate.world.people[0]]
    counts_before = _counts()
    wrecked = gate.run(gate.submit(items[:4], WRECK))
    counts_after_wreck = _counts()
    gentle = gate.run(gate.submit(items[4:8], GENTLE))
    return Runs(wrecked, counts_before, counts_after_wreck, gentle, _counts())


def test_below_the_floor_is_published_and_says_so(gate: Gate, runs: Runs) -> None:
    req, job, version = runs.wrecked
    # Forgetting wins: the deletion happened and the version is served.
    assert req["result_version"] == 2 and job["status"] == "succeeded"
    assert version["status"] == "ready"
    q = job["quality"]
    assert q is not None and version["quality"] == q
    assert job["params"]["utility_floor"] == REGISTERED_FLOOR  # the model's default
    assert q["floor"] == REGISTERED_FLOOR and q["passed"] is False
    # The first job of the lineage: its own "before" measured version 1.
    assert q["reference"] == {"version": 1, "source": "this_job_before", "job_id": None}
    before, after = job["metrics"]["before"], job["metrics"]["after"]
    assert q["retain_probability_ratio"] == pytest.approx(
        after["retain"]["probability"] / before["retain"]["probability"])
    assert q["model_utility_ratio"] == pytest.approx(
        after["model_utility"] / before["model_utility"])
    low = {r for r, ratio in (("retain_probability", q["retain_probability_ratio"]),
                              ("model_utility", q["model_utility_ratio"]))
           if ratio < REGISTERED_FLOOR}
    assert low and q["reasons"] == [r for r in ("retain_probability", "model_utility")
                                    if r in low]
    assert q["target_met"] is None  # a fixed alpha has no forgetting target

    # One event, before "done", naming the ratio and the floor.
    events = gate.events(job["id"])
    stages = [e["stage"] for e in events]
    assert stages.count("quality_gate_failed") == 1
    assert stages.index("quality_gate_failed") < stages.index("done")
    (event,) = [e for e in events if e["stage"] == "quality_gate_failed"]
    assert f"below the floor {REGISTERED_FLOOR:g}" in event["message"]
    assert "of version 1's" in event["message"] and "published" in event["message"]
    assert event["data"]["reasons"] == q["reasons"] and "kept" not in event["data"]

    # Counted once per reason, in the process that ran the job.
    for reason in ("retain_probability", "model_utility", "target_missed"):
        expected = runs.counts_before[reason] + (1 if reason in q["reasons"] else 0)
        assert runs.counts_after_wreck[reason] == expected, reason


def test_a_request_that_can_meet_its_floor_passes(gate: Gate, runs: Runs) -> None:
    req, job, version = runs.gentle
    first_job = runs.wrecked[1]
    assert req["result_version"] == 3 and version["parent_version"] == 2
    q = job["quality"]
    assert q["floor"] == 0.0 and q["passed"] is True and q["reasons"] == []
    assert q["message"].startswith("quality gate passed")
    assert version["quality"] == q
    assert "quality_gate_failed" not in [e["stage"] for e in gate.events(job["id"])]
    assert runs.counts_after_gentle == runs.counts_after_wreck
    # Measured against version 1 (the first job's "before"), not against its base v2.
    assert q["reference"] == {"version": 1, "source": "job_before", "job_id": first_job["id"]}
    first = first_job["metrics"]["before"]
    after = job["metrics"]["after"]
    assert q["retain_probability_ratio"] == pytest.approx(
        after["retain"]["probability"] / first["retain"]["probability"])
    assert q["model_utility_ratio"] == pytest.approx(
        after["model_utility"] / first["model_utility"])


def test_collateral_damage_per_set_in_the_job_metrics(gate: Gate, runs: Runs) -> None:
    for _, job, _ in (runs.wrecked, runs.gentle):
        kept = job["metrics"]["kept"]
        assert kept == job["quality"]["kept"]
        before, after = job["metrics"]["before"], job["metrics"]["after"]
        people = kept["people_not_requested"]
        assert people["set"] == "retain" and people["items"] == 6
        assert people["requested_items"] == 0  # the retain person was never requested
        p = people["probability"]
        assert p["before"] == before["retain"]["probability"]
        assert p["after"] == after["retain"]["probability"]
        assert p["vs_before"] == pytest.approx(p["after"] / p["before"])
        assert set(kept["general"]) == {"other_people"}
        general = kept["general"]["other_people"]
        assert general["items"] == 4
        assert general["rouge_l"]["after"] == after["eval/other_people"]["rouge_l"]
        assert general["probability"]["vs_first"] == pytest.approx(
            general["probability"]["after"] / general["probability"]["first"])
        mu = kept["model_utility"]
        assert mu["vs_first"] == pytest.approx(job["quality"]["model_utility_ratio"])
    # The second job kept most of what its base had, but is measured against v1 as well.
    second = runs.gentle[1]["metrics"]["kept"]["people_not_requested"]["probability"]
    assert second["first"] == runs.wrecked[1]["metrics"]["before"]["retain"]["probability"]
    assert second["before"] == runs.wrecked[1]["metrics"]["after"]["retain"]["probability"]


@pytest.mark.parametrize(("floor", "why"), [(1.5, "must be <= 1"), (-0.1, "must be >= 0"),
                                            ("high", "must be a number"),
                                            (None, "must be a number"),
                                            (True, "must be a number")])
def test_utility_floor_is_validated(gate: Gate, floor: Any, why: str) -> None:
    items = gate.world.items[gate.world.people[1]][:2]
    r = gate.client.post(f"/v1/models/{gate.model}/forget-requests",
                         json={"items": items, "params": {"utility_floor": floor}})
    assert r.status_code == 422, r.text
    assert f"param 'utility_floor' {why}" in r.json()["detail"]
    r = gate.client.post("/v1/models", json={
        "name": f"bad-floor-{uuid.uuid4().hex[:6]}", "default_params": {"utility_floor": floor}})
    assert r.status_code == 422, r.text
    assert f"param 'utility_floor' {why}" in r.json()["detail"]


def test_utility_floor_accepted_for_every_method(gate: Gate) -> None:
    from alkn_core.methods import METHOD_DEFAULTS

    items = gate.world.items[gate.world.people[1]][:2]
    for method in METHOD_DEFAULTS:
        for floor in (0, 1, 0.5):
            r = gate.client.post(f"/v1/models/{gate.model}/forget-requests",
                                 json={"items": items, "method": method,
                                       "params": {"utility_floor": floor}})
            assert r.status_code == 202, (method, r.text)
            assert gate.client.post(f"/v1/forget-requests/{r.json()['id']}:cancel"
                                    ).status_code == 200


def test_target_met_from_the_unlearning_stats() -> None:
    """Which forgetting target counts: the method's own verdict when it gives one, else the
    alpha search's numbers; a missed target fails the gate whatever the ratios."""
    from registry.jobs import JobSpec
    from worker.quality import assess

    spec = JobSpec(job_id="j", model_id="m", method="alkn", params={"utility_floor": 0.5},
                   base_version=1, base_storage_key="k", base_state=False, request_ids=[],
                   request_items={}, retain_set=[], eval_sets={}, attempts=1)
    ev = {"retain": {"probability": 0.8, "items": 1}, "model_utility": 0.6}
    missed = {"calibration": {"target": 0.01, "forget_prob": 0.05, "target_source": "holdout"}}
    q = assess(spec, ev, ev, missed)
    assert q["passed"] is False and q["reasons"] == ["target_missed"]
    assert q["target_met"] is False and q["forget_target"]["target"] == 0.01
    assert "forget probability 0.05 > target 0.01" in q["message"]
    met = {**missed, "target_met": True, "quality": {"escalations": 1}}
    q = assess(spec, ev, ev, met)
    assert q["passed"] is True and q["target_met"] is True and q["search"] == {"escalations": 1}
    assert q["retain_probability_ratio"] == 1.0 and q["model_utility_ratio"] == 1.0
    q = assess(spec, ev, {**ev, "model_utility": 0.0}, {})
    assert q["reasons"] == ["model_utility"] and q["target_met"] is None
    # A reference of 0 (or none) measures nothing: no ratio, no failure on it.
    q = assess(spec, {**ev, "model_utility": 0.0}, {**ev, "model_utility": 0.0}, {})
    assert q["model_utility_ratio"] is None and q["passed"] is True
