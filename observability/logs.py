"""Log formats with the request and job ids of the moment (the API's middleware sets the
request id per request, the worker the job id per job; asyncio tasks and run_in_threadpool copy
the context).

`ALKN_LOG_FORMAT=json` writes one JSON object per line (`ts`, `level`, `logger`, `message`,
`request_id`, `job_id`, `exc`); `text` (the default) one readable line with the same ids.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Set by the API's middleware per request and by the worker per job; every log record
# made meanwhile carries them (asyncio tasks and run_in_threadpool copy the context).
REQUEST_ID: ContextVar[str | None] = ContextVar("alkn_request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("alkn_job_id", default=None)

LOG_FORMATS = ("text", "json")
# uvicorn's access records carry these args (client, method, path, http version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def _ids(record: logging.LogRecord) -> dict[str, str]:
    out = {}
    rid = getattr(record, "request_id", None) or REQUEST_ID.get()
    if rid:
        out["request_id"] = rid
    jid = getattr(record, "job_id", None) or JOB_ID.get()
    if jid:
        out["job_id"] = jid
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line; json.dumps escapes whatever a message holds (no forged
    log lines from client input)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
            **_ids(record),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            out["http"] = dict(zip(_ACCESS_FIELDS, args, strict=True))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger [request_id=... job_id=...] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(alkn_ids)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = _ids(record)
        record.alkn_ids = " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" \
            if ids else ""
        return super().format(record)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"ALKN_LOG_FORMAT must be one of {LOG_FORMATS}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


class _AlknHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring twice replaces it instead of adding a second one."""


def configure_logging(fmt: str, level: str = "INFO") -> None:
    """Root gets one handler of ours (stderr) in `fmt`, and the handlers uvicorn installed on
    its own loggers get the same formatter. Idempotent. In text mode a root logger that
    already has handlers (pytest's, an embedding application's) is left alone."""
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _AlknHandler)]
    if fmt == "json" or ours or not root.handlers:
        for h in ours:
            root.removeHandler(h)
        handler = _AlknHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(level.upper())
    if fmt == "json":
        use_formatter(formatter, "uvicorn", "uvicorn.error", "uvicorn.access")


def use_formatter(formatter: logging.Formatter, *loggers: str | logging.Logger) -> None:
    """Give every handler of these loggers `formatter` (servers install their own)."""
    for name in loggers:
        logger = logging.getLogger(name) if isinstance(name, str) else name
        for handler in logger.handlers:
            handler.setFormatter(formatter)
