"""`alkn serve` (the API and a worker child on the embedded default), `alkn worker` (a Celery
worker: production runs one per GPU host), `alkn migrate`, `alkn gc`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .common import get_settings, migrate

DEMO_MODEL = "demo"
# Bounds a request's line and headers (ALKN_MAX_HEADER_BYTES); the Dockerfile names it too.
HTTP_PROTOCOL = "api.http_protocol:BoundedHttpToolsProtocol"
# The loop settings the demo model is registered with: a 3.7M-parameter model needs a far
# larger lr than a 7B one (docs/benchmarks.md, bench/lr_probe.py).
DEMO_DEFAULT_PARAMS: dict[str, Any] = {"lr": 2e-3, "epochs": 5, "batch_size": 8,
                                       "grad_accum": 1, "max_length": 128}


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("serve", help="API and a worker on the embedded default")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(handler=lambda a: serve(a.host, a.port))
    w = sub.add_parser("worker", help="a Celery worker (production: one per GPU host)")
    w.add_argument("celery_args", nargs=argparse.REMAINDER, help="passed to celery")
    w.set_defaults(handler=lambda a: run_worker(a.celery_args))
    sub.add_parser("migrate", help="bring the database to the newest schema").set_defaults(
        handler=lambda a: migrate_command())
    g = sub.add_parser("gc", help="delete artifact keys no version points to")
    g.add_argument("--older-than", type=float, default=24 * 3600.0, help="seconds")
    g.set_defaults(handler=lambda a: gc(a.older_than))


def migrate_command() -> int:
    migrate()
    print(json.dumps({"migrated": get_settings().resolved_database_url.split("@")[-1]}))
    return 0


def gc(older_than: float) -> int:
    from registry.gc import collect_orphans
    from registry.store import open_store

    s = get_settings()
    deleted = collect_orphans(s.resolved_database_url, open_store(s.resolved_artifact_root),
                              older_than)
    print(json.dumps({"deleted": deleted}))
    return 0


def run_worker(celery_args: Sequence[str]) -> int:
    os.execv(sys.executable, worker_command(get_settings(), celery_args))
    return 2  # not reached: execv replaces the process


def register_demo(settings: Any) -> bool:
    """Register the committed demo model as `demo` for tenant `default` (once)."""
    from alkn_core.demo_model import demo_model_dir, demo_registration_sets
    from registry.catalog import register_model, tenant_named
    from registry.db import session_scope
    from registry.models import Model
    from registry.store import open_store

    sets = demo_registration_sets()
    with session_scope(settings.resolved_database_url) as session:
        tenant = tenant_named(session, "default")
        if session.query(Model).filter_by(tenant_id=tenant.id, name=DEMO_MODEL).count():
            return False
        register_model(
            session, open_store(settings.resolved_artifact_root), tenant.id, DEMO_MODEL,
            demo_model_dir(), description="Tiny Llama trained on 50 fictitious people",
            qa_template="Question: {question}\nAnswer: {answer}",
            default_params=DEMO_DEFAULT_PARAMS, retain_set=sets["retain"],
            holdout_set=sets["holdout"], eval_sets=sets["eval_sets"])
    return True


def worker_command(settings: Any, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", settings.queue,
            "--concurrency", "1", "-l", "info", *extra]


def _die_with_parent() -> None:
    """In the worker child: get SIGTERM if `alkn serve` dies without cleaning up (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(host: str, port: int) -> int:
    """API + a worker child process on the embedded default (or whatever ALKN_* says)."""
    import uvicorn

    settings = get_settings()
    migrate()
    if settings.register_demo and register_demo(settings):
        print("registered the demo model as 'demo'")
    embedded = not settings.broker_url
    extra = ["-P", "solo"] if embedded else []
    worker = subprocess.Popen(worker_command(settings, extra), start_new_session=True,
                              env={**os.environ, "ALKN_HOME": str(settings.home)},
                              preexec_fn=_die_with_parent)
    url = f"http://{host}:{port}"
    key_hint = ("ALKN_BOOTSTRAP_API_KEY is valid for tenant 'default'"
                if settings.bootstrap_api_key
                else "get an API key: alkn keys create --tenant default")
    print(f"ALKN service on {url}  (docs: {url}/docs)\n{key_hint}", flush=True)
    # uvicorn re-raises the signal that stopped it once it has shut down; turning SIGTERM
    # into SystemExit lets the `finally` below stop the worker first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from observability.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    # JSON: uvicorn's own loggers propagate to the root handler set up just above.
    log_config: Any = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    try:
        # The protocol bounds a request's head (httptools has no bound of its own).
        uvicorn.run("api.app:app", host=host, port=port, log_level="info",
                    log_config=log_config, http=HTTP_PROTOCOL,
                    h11_max_incomplete_event_size=settings.max_header_bytes)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
    return 0
