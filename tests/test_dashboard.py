"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Python
Playwright), and the live service's observability after the job it runs.

One `alkn serve` for the module, on its embedded default (SQLite, a serverless broker),
as a user starts it: the demo model is registered as `demo`, JSON logs, and the worker
serves Prometheus on a port of its own. In the browser: log in with a key (a wrong one is
refused first), open the demo model (version 1, nothing evaluated), submit a forget request
on it through the form (four facts of one demo person, uploaded as a JSON Lines file), watch
its job move through its stages to `succeeded` without a page reload (below the utility floor
it asked for: a red badge and the quality card), then see version 2 in the lineage (with the
red badge) with its points on the forget and utility charts and its evaluation table; the
same pages on a phone-sized screen. One real job in all, on `demo` with its registered
retain, holdout and evaluation sets: about 20 s on two cores, nearly all of it the
evaluation before and after; the service runs torch on one thread, which keeps that time
when another process shares the cores. A second model, registered by the test without
files, only carries a hostile description (shown as text, never run).

Screenshots go to tests/artifacts/ (ignored by git); docs/dashboard.png (in the README) is a
copy of `model-after-job.png`.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .services import ROOT, free_port, start_process, stop_process, wait_http

KEY = "dashboard-test-bootstrap-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ARTIFACTS = ROOT / "tests" / "artifacts"
# Shown as text, never run or parsed as markup.
HOSTILE = 'hostile <img src=x onerror="window.__xss=1"> & <b>bold</b>'
# The demo job: ~20 s on two cores, idle or not (one torch thread: see `service`).
JOB_TIMEOUT_MS = 240_000
# The forget request: four facts of the first person of the demo's forget split.
N_FORGET = 4
# Its params: a fixed alpha, and a utility floor that no forgetting meets (issue 13: the
# version is served all the same, with a red badge); no repair (10 of the job's 30 s; it
# would not meet that floor either).
PARAMS = {"alpha": 1.0, "utility_floor": 0.999, "repair_steps": 0}


@dataclass
class Service:
    url: str
    worker_metrics: str
    log: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("dashboard_svc")
    port, metrics_port = free_port(), free_port()
    env = {"ALKN_HOME": str(home), "ALKN_DATABASE_URL": "", "ALKN_BROKER_URL": "",
           "ALKN_ARTIFACT_ROOT": "", "ALKN_BOOTSTRAP_API_KEY": KEY, "ALKN_DISPATCH_INTERVAL": "0.1",
           "ALKN_LOG_FORMAT": "json", "ALKN_WORKER_METRICS_PORT": str(metrics_port),
           # One torch thread: about as fast on two idle cores for this model, and ~9 s
           # instead of 1-2 minutes per evaluation when another process keeps a core busy
           # (two OpenMP threads then wait on each other at every operation).
           "OMP_NUM_THREADS": "1"}
    log = home / "serve.log"
    proc = start_process(["-m", "alkn_cli", "serve", "--port", str(port)], env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        yield Service(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                      log)
    finally:
        stop_process(proc, timeout=60)
        print("--- serve.log (tail)\n" + log.read_text()[-4000:])


@pytest.fixture(scope="module")
def hostile(service: Service) -> str:
    """A model without versions (no files to copy): only its description matters."""
    r = httpx.post(f"{service.url}/v1/models", headers=AUTH, timeout=60,
                   json={"name": "hostile", "description": HOSTILE})
    assert r.status_code == 201, r.text
    return "hostile"


def demo_forget_items() -> list[dict[str, str]]:
    """The first N_FORGET facts of the first person in the demo's forget split, as QA items."""
    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.demo_model import demo_data_dir

    rows = read_jsonl(demo_data_dir() / "forget10.json")
    person = rows[0]["person"]
    items = [{"question": r["question"], "answer": r["answer"]} for r in rows
             if r["person"] == person][:N_FORGET]
    assert len(items) == N_FORGET
    return items


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(apt-get install -y chromium)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python Playwright is missing: pip install -e '.[test]' (never "
                    "`playwright install`: the tests drive /usr/bin/chromium)", pytrace=False)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_dashboard_submit_and_watch_a_job(service: Service, hostile: str, browser: Any,
                                          tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # Not signed in: the login form. A wrong key is refused there and then.
    page.goto(service.url + "/")
    page.wait_for_selector("#login")
    assert not page.locator("#nav").is_visible()  # `hidden` holds against `display: flex`
    page.fill("#api-key", "not-a-key")
    page.click("#login button[type=submit]")
    page.get_by_role("alert").get_by_text("not valid").wait_for()
    page.fill("#api-key", KEY)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#models")
    assert [e for e in errors if "401" not in e] == []  # the browser logs the refused key
    errors.clear()
    assert page.evaluate("sessionStorage.getItem('alkn.apiKey')") == KEY
    assert page.evaluate("localStorage.getItem('alkn.apiKey')") is None
    names = page.locator("#models a.model-link").all_inner_texts()
    assert {"demo", hostile} <= set(names)
    # One row group under the header (rows line up with it), and nothing more to load.
    assert page.locator("#models > tbody > tr").count() == len(names)
    assert not page.get_by_role("button", name="Load more").is_visible()
    # Server text is text: the description shows literally, nothing in it ran.
    assert HOSTILE in page.locator("#models").inner_text()
    assert page.locator("#models img, #models b").count() == 0
    _shot(page, "models.png")

    # The demo model (registered by `alkn serve`): version 1, nothing evaluated yet.
    page.click("#models a.model-link:text-is('demo')")
    page.wait_for_selector("#lineage tr[data-version='1']")
    assert "ready" in page.locator("#lineage tr[data-version='1']").inner_text()
    assert "No evaluations yet" in page.locator("#chart-forget").inner_text()
    _shot(page, "demo-model.png")

    # Submit on the demo model through the form, the items uploaded as a JSON Lines file.
    # The demo's default parameters, alpha fixed (its default today): no calibration search;
    # a utility floor no forgetting meets, so the version is served with a red badge.
    page.click("#submit-link")
    items = demo_forget_items()
    jsonl = tmp_path / "forget.jsonl"
    jsonl.write_text("".join(json.dumps(i) + "\n" for i in items))
    page.set_input_files("#items-file", str(jsonl))
    # A locator assertion, not wait_for_function: the page's CSP forbids the eval that
    # polling a string predicate needs (it failed whenever the first check came too early).
    expect(page.locator("#items")).to_have_value(re.compile("question"))
    page.fill("#params", json.dumps(PARAMS))
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    page.click("#submit-form button[type=submit]")

    # The job page, updated in place until the job has succeeded.
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f-]{36}$"), timeout=60_000)
    job_id = page.url.rsplit("/", 1)[1]
    stages: set[str] = set()
    page.wait_for_selector("#stage")
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while True:
        # One read per round: the status may change between two reads.
        status = page.locator("#job-status [data-status]").get_attribute("data-status")
        if status == "succeeded":
            break
        assert status in ("queued", "running"), page.locator("main").inner_text()
        stages.add(page.locator("#stage").inner_text())
        assert time.monotonic() < deadline, f"job {job_id} still {status}: {stages}"
        page.wait_for_timeout(300)
    assert page.evaluate("window.__sameDocument") is True
    assert len(stages - {"queued"}) >= 2, stages  # it moved through stages while we watched
    events = page.locator("#events").inner_text()
    assert "training" in events and "saving" in events
    assert "→ v2" in page.locator("main").inner_text()
    # Below its floor: a red badge by the status and the quality card saying why.
    quality = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers=AUTH).json()["quality"]
    assert quality["passed"] is False
    assert page.locator("h1 [data-quality='failed']").is_visible()
    assert page.locator("h1 .s-quality-failed").evaluate(
        "e => getComputedStyle(e).backgroundColor") == "rgb(220, 38, 38)"
    assert quality["message"] in page.locator("#quality").inner_text()
    assert "below the floor 0.999" in page.locator("#quality").inner_text()
    assert "quality_gate_failed" in events
    _shot(page, "job-succeeded.png")
    # The demo forgot: the forget items' answer probability fell (the job page's table).
    metrics = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers=AUTH).json()["metrics"]
    before, after = (metrics[k]["forget"]["probability"] for k in ("before", "after"))
    assert after < before / 2, (before, after)
    assert metrics["after"]["forget"]["items"] == N_FORGET

    # The new version in the lineage, made by our request, and its point on the charts.
    page.click("#result-version")
    page.wait_for_selector("#lineage tr[data-version='2']")
    row = page.locator("#lineage tr[data-version='2']")
    assert "succeeded" not in row.inner_text() and "ready" in row.inner_text()
    assert "v1" in row.inner_text() and "alkn" in row.inner_text()
    assert row.locator("[data-quality='failed']").count() == 1
    assert page.locator("#lineage tr[data-version='1'] [data-quality]").count() == 0
    assert page.locator("#jobs [data-quality='failed']").count() == 1
    request_ids = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers=AUTH
                            ).json()["forget_request_ids"]
    assert row.locator(f"a[href='#/requests/{request_ids[0]}']").count() == 1
    for chart in ("#chart-forget", "#chart-utility"):
        page.wait_for_selector(f"{chart} canvas")
    assert "forget set of v2" in page.locator("#chart-forget").inner_text()
    assert "model utility" in page.locator("#chart-utility").inner_text()
    row.get_by_role("button", name="evaluation").click()
    page.wait_for_selector("#version-detail table.evaluation")
    assert "forget" in page.locator("#version-detail").inner_text()
    _shot(page, "model-after-job.png")
    assert errors == [] and page.evaluate("window.__xss") is None

    # On a phone: one column, nothing wider than the screen (tables scroll inside).
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                has_touch=True, device_scale_factor=2)
    mobile = phone.new_page()
    mobile.goto(service.url + "/")
    mobile.evaluate(f"sessionStorage.setItem('alkn.apiKey', {json.dumps(KEY)})")
    mobile.goto(service.url + "/#/models/demo")
    mobile.wait_for_selector("#chart-forget canvas")
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(mobile, "model-phone.png")
    mobile.goto(service.url + f"/#/jobs/{job_id}")
    mobile.wait_for_selector("#job-status [data-status='succeeded']")
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(mobile, "job-phone.png")
    phone.close()
    ctx.close()


# --------------------------------------------------------------------------------------------
# The live service's metrics and logs, after the job
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_job(service: Service) -> str:
    """The demo job the browser test ran; one submitted here if it did not run (deselected)."""
    def succeeded() -> list[dict[str, Any]]:
        return httpx.get(f"{service.url}/v1/jobs", params={"status": "succeeded"},
                         headers=AUTH).json()["items"]

    if not succeeded():
        r = httpx.post(f"{service.url}/v1/models/demo/forget-requests", headers=AUTH,
                       json={"items": demo_forget_items(), "params": PARAMS})
        assert r.status_code == 202, r.text
        from alkn_client import Client

        with Client(service.url, KEY) as c:
            assert c.wait(r.json()["id"], timeout=JOB_TIMEOUT_MS / 1000,
                          poll=0.3).status == "succeeded"
    (job,) = succeeded()
    # Read it once as the job page does (test_live_metrics counts these reads).
    assert httpx.get(f"{service.url}/v1/jobs/{job['id']}", headers=AUTH).status_code == 200
    return str(job["id"])


def _value(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_live_metrics_after_the_job(service: Service, finished_job: str) -> None:
    api = httpx.get(f"{service.url}/metrics").text
    assert _value(api, "alkn_jobs", status="succeeded") == 1
    assert _value(api, "alkn_queue_depth", kind="forget_requests") == 0
    assert _value(api, "alkn_outbox_unpublished") == 0
    assert _value(api, "alkn_outbox_lag_seconds") == 0
    polled = _value(api, "alkn_http_requests_total", method="GET", route="/v1/jobs/{job_id}",
                    status="200")
    assert polled and polled >= 1
    for _ in range(3):
        httpx.get(f"{service.url}/v1/jobs/{finished_job}", headers=AUTH)
    again = httpx.get(f"{service.url}/metrics").text
    assert _value(again, "alkn_http_requests_total", method="GET", route="/v1/jobs/{job_id}",
                  status="200") == polled + 3

    # The worker's own endpoint (multiprocess files summed by its main process).
    worker = httpx.get(service.worker_metrics).text
    assert _value(worker, "alkn_worker_jobs_total", status="succeeded") == 1
    for stage in ("loading", "evaluating_before", "training", "evaluating_after", "saving"):
        assert _value(worker, "alkn_job_stage_duration_seconds_count", stage=stage) == 1, stage
    assert (_value(worker, "alkn_job_duration_seconds_sum", status="succeeded") or 0) > 0
    assert _value(worker, "alkn_worker_jobs_running") == 0
    # The job's version missed its floor (PARAMS): counted once per reason, by the pool child.
    reasons = httpx.get(f"{service.url}/v1/jobs/{finished_job}", headers=AUTH
                        ).json()["quality"]["reasons"]
    assert reasons
    for reason in ("retain_probability", "model_utility", "target_missed"):
        expected = 1 if reason in reasons else None
        assert _value(worker, "alkn_quality_gate_failed_total", reason=reason) == expected


def test_live_json_logs_carry_request_and_job_ids(service: Service, finished_job: str) -> None:
    rid = "dashboard-test-trace-7"
    r = httpx.get(f"{service.url}/v1/models/demo", headers={**AUTH, "X-Request-ID": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    lines: list[dict[str, Any]] = []
    for _ in range(50):  # the access line is written just after the response
        lines = [json.loads(line) for line in service.log.read_text().splitlines()
                 if line.startswith("{")]
        if any(x.get("request_id") == rid for x in lines):
            break
        httpx.get(f"{service.url}/healthz")
    (access,) = [x for x in lines if x.get("request_id") == rid]
    assert access["logger"] == "uvicorn.access" and access["http"]["status"] == 200
    assert access["http"]["path"] == "/v1/models/demo"
    # The worker's lines about the job carry its id; uvicorn's and Celery's are JSON too.
    job_lines = [x for x in lines if x.get("job_id") == finished_job]
    assert any("version" in x["message"] for x in job_lines), job_lines[-5:]
    assert {"uvicorn.error", "celery.worker.consumer.connection"} & {x["logger"] for x in lines}
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)


def test_readme_screenshot_is_a_dashboard_shot() -> None:
    """docs/dashboard.png is committed (the README shows it): refresh it from
    tests/artifacts/model-after-job.png when the page changes."""
    shot = ROOT / "docs" / "dashboard.png"
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "docs/dashboard.png" in (ROOT / "README.md").read_text()


def test_dashboard_version_and_request_actions(service: Service, finished_job: str,
                                               browser: Any, tmp_path: Path) -> None:
    """Download (a signed archive link), alias set and delete, revoke with a confirmation
    (dismissed: nothing happens; accepted: the version is struck through), and a request's
    items on its page."""
    ctx = browser.new_context(accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(service.url + "/")
    page.evaluate(f"sessionStorage.setItem('alkn.apiKey', {json.dumps(KEY)})")
    page.goto(service.url + "/#/models/demo")
    v2 = "#lineage tr[data-version='2']"
    page.wait_for_selector(v2)

    with page.expect_download() as download:
        page.locator(f"{v2} .action-download").click()
    saved = tmp_path / "demo-v2.tar"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "demo-v2.tar"
    with tarfile.open(saved) as tar:
        assert {"config.json", "model.safetensors", "README.md"} <= set(tar.getnames())

    page.once("dialog", lambda d: d.accept("golden"))
    page.locator(f"{v2} .action-alias").click()
    page.wait_for_selector(f"{v2} [data-alias='golden']")
    page.once("dialog", lambda d: d.dismiss())
    page.locator(f"{v2} [data-alias='golden'] .action-unalias").click()
    page.wait_for_timeout(500)
    assert page.locator(f"{v2} [data-alias='golden']").count() == 1  # dismissed: kept
    page.once("dialog", lambda d: d.accept())
    page.locator(f"{v2} [data-alias='golden'] .action-unalias").click()
    page.wait_for_selector(f"{v2} [data-alias='golden']", state="detached")

    v1 = "#lineage tr[data-version='1']"
    messages: list[str] = []
    page.once("dialog", lambda d: (messages.append(d.message), d.dismiss()))
    page.locator(f"{v1} .action-revoke").click()
    page.wait_for_timeout(500)
    assert "deleted" in messages[0] and page.locator(f"{v1}.revoked").count() == 0
    page.once("dialog", lambda d: d.accept())
    page.locator(f"{v1} .action-revoke").click()
    page.wait_for_selector(f"{v1}.revoked")
    assert page.locator(f"{v1} [data-status='revoked']").count() == 1
    assert page.locator(f"{v1} td").first.evaluate(
        "e => getComputedStyle(e).textDecorationLine") == "line-through"
    assert page.locator(f"{v1} .action-download").count() == 0
    r = httpx.get(f"{service.url}/v1/models/demo/versions/1", headers=AUTH)
    assert r.json()["status"] == "revoked"
    _shot(page, "model-actions.png")

    request_id = httpx.get(f"{service.url}/v1/jobs/{finished_job}", headers=AUTH
                           ).json()["forget_request_ids"][0]
    page.goto(service.url + f"/#/requests/{request_id}")
    page.wait_for_selector("#items")
    shown = page.locator("#items").inner_text()
    for item in demo_forget_items():
        assert item["question"] in shown and item["answer"] in shown
    assert page.locator("#cancel-request").count() == 0  # finished: nothing to cancel
    assert errors == []
    ctx.close()
