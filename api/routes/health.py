"""Liveness and readiness (no auth)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from registry.db import get_engine

from ..deps import get_store
from ..errors import PROBLEM_JSON, problem_body
from ..schemas import HealthOut, ReadyOut, problems

log = logging.getLogger("api")
router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


def check_broker(url: str, timeout: float = CHECK_TIMEOUT_S) -> str:
    """'ok' when the Celery broker at `url` answers, 'skipped' for a transport we cannot
    check cheaply; raises otherwise. Cheap: one ping, no Celery import."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        import redis  # only the web tier's readiness needs it; keeps import api cheap

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                      socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    if scheme == "sqla+sqlite":
        # kombu creates the file on first use: the directory must exist and be writable.
        path = unquote(url.split(":///", 1)[1]) if ":///" in url else ""
        directory = Path(path).parent if path else Path(".")
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise OSError("broker directory missing or not writable")
        return "ok"
    if scheme in ("amqp", "amqps", "pyamqp"):
        parts = urlsplit(url)
        port = parts.port or (5671 if scheme == "amqps" else 5672)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return "ok"
    return "skipped"


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut,
            responses={503: {**problems(503)[503],
                             "description": "a dependency is down; `checks` says which"}})
def readyz(request: Request) -> ReadyOut | JSONResponse:
    settings = request.app.state.settings
    checks: dict[str, str] = {}

    def run(name: str, fn: Callable[[], str]) -> None:
        try:
            checks[name] = fn()
        except Exception as e:  # a probe: any failure means "not ready"
            log.warning("readiness check %s failed: %s: %s", name, type(e).__name__, e)
            checks[name] = "unavailable"

    def database() -> str:
        with get_engine(request.app.state.db_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"

    def store() -> str:
        get_store(request).ping()
        return "ok"

    run("database", database)
    run("store", store)
    run("broker", lambda: check_broker(settings.resolved_broker_url))
    if all(v in ("ok", "skipped") for v in checks.values()):
        return ReadyOut(status="ok", checks=checks)
    failed = ", ".join(k for k, v in checks.items() if v == "unavailable")
    body = problem_body(503, f"not ready: {failed} unavailable", checks=checks)
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)
