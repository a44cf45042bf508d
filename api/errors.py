"""RFC 9457 problem documents for every error, the request body limit, and the catch-all.

Clients only ever see a status, a short title, a detail written for them and (for
validation failures) `errors`; exceptions, SQL and server paths go to the log only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.errors import RegistryError

from .strict_json import NO_POSITION

log = logging.getLogger("api")

PROBLEM_JSON = "application/problem+json"

SLUGS = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 409: "conflict", 413: "content-too-large",
    416: "range-not-satisfiable", 422: "validation-error", 429: "too-many-requests",
    500: "internal-error",
    503: "unavailable",
}


def problem_type(status: int) -> str:
    slug = SLUGS.get(status)
    return f"urn:alkn:problem:{slug}" if slug else "about:blank"


def problem_body(status: int, detail: str, *, title: str | None = None,
                 errors: list[dict[str, Any]] | None = None,
                 type_: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type_ or problem_type(status),
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return body


def problem(status: int, detail: str, *, headers: dict[str, str] | None = None,
            **kwargs: Any) -> JSONResponse:
    return JSONResponse(problem_body(status, detail, **kwargs), status_code=status,
                        headers=headers, media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# --------------------------------------------------------------------------------------------
# Exception handlers
# --------------------------------------------------------------------------------------------


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 304 or exc.status_code < 200:  # no body allowed
        return Response(status_code=exc.status_code, headers=headers)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    return problem(exc.status_code, detail, headers=headers)


def _loc(loc: Any) -> list[str | int]:
    # A loc can hold a client's dict key: shown escaped and cut, never echoed raw.
    return [p if isinstance(p, int) else _quote(str(p)) for p in (loc or ())]


def _quote(part: str, limit: int = 64) -> str:
    if part.isprintable() and len(part) <= limit:
        return part
    escaped = part.encode("unicode_escape", "backslashreplace").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        reason = (bad_json.get("ctx") or {}).get("error", "invalid JSON")
        pos = _loc(bad_json.get("loc"))[-1:] or ["?"]
        where = "" if pos[0] == NO_POSITION else f" (at character {pos[0]})"
        return problem(400, f"malformed JSON body: {reason}{where}", title="Malformed JSON")
    # loc/msg/type only: the rejected input could be large or sensitive.
    out = [{"loc": _loc(e.get("loc")), "msg": str(e.get("msg", "")),
            "type": str(e.get("type", ""))} for e in errors]
    first = out[0] if out else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return problem(422, f"{where}: {first['msg']}" if where else str(first["msg"]),
                   errors=out)


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    errors = None
    if exc.status == 422:
        errors = [{"loc": exc.loc or [], "msg": exc.message, "type": "value_error"}]
    return problem(exc.status, exc.message, errors=errors,
                   headers=getattr(exc, "headers", None))


async def _integrity(request: Request, exc: Exception) -> Response:
    # A concurrent request won a unique constraint (same name, same idempotency key...).
    log.info("integrity conflict on %s %s: %s", request.method, request.url.path,
             type(exc).__name__)
    return problem(409, "the request conflicts with a concurrent change; retry it")


async def _data(request: Request, exc: Exception) -> Response:
    # The database refused a value (a NUL byte, a number out of range): the client's input,
    # which validation should have refused first; logged so that the gap gets closed.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path,
                type(getattr(exc, "orig", exc)).__name__)
    return problem(422, "a value in the request cannot be stored (out of range, or it holds "
                        "a NUL byte)", errors=[])


async def _database(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        log.error("database unavailable on %s %s: %s", request.method, request.url.path,
                  exc.orig)
        return problem(503, "the database is unavailable; retry later",
                       headers={"Retry-After": "5"})
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; it has been logged")


def install(app: FastAPI, max_json_bytes: int, max_upload_bytes: int,
            is_upload: Callable[[str], bool]) -> None:
    """Register the handlers and the two middlewares on `app`. The catch-all is the
    CatchAllMiddleware rather than an `Exception` handler, which Starlette would re-raise
    into the server after answering (a second, noisier log of the same error)."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(DataError, _data)
    app.add_exception_handler(DBAPIError, _database)
    # Added last = outermost: the catch-all also sees what the body limit lets through.
    app.add_middleware(BodyLimitMiddleware, max_json_bytes=max_json_bytes,
                       max_upload_bytes=max_upload_bytes, is_upload=is_upload)
    app.add_middleware(CatchAllMiddleware)
    _document_problems(app)


# --------------------------------------------------------------------------------------------
# OpenAPI: the error answers every route can give, as the problem documents they are
# --------------------------------------------------------------------------------------------

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_GENERIC = {
    400: "malformed JSON or an interrupted body",
    401: "missing or invalid API key",
    413: "body too large",
    422: "validation failed (`errors` lists why)",
    503: "the database is unavailable; retry later",
}


def _problem_response(status: int) -> dict[str, Any]:
    return {"description": _GENERIC[status],
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the statuses the handlers and middlewares above answer on every route (so that a
    new route is documented without thinking of it): 422 for any parameter or body, 400 and
    413 for any body, 401 and 503 under /v1; and replace FastAPI's default 422
    (HTTPValidationError, application/json), which is never what a client gets."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            statuses = set()
            if operation.get("parameters") or "requestBody" in operation:
                statuses.add(422)
            if "requestBody" in operation:
                statuses |= {400, 413}
            if path.startswith("/v1/"):
                statuses |= {401, 503}
            default_422 = responses.get("422", {}).get("content", {}).get("application/json")
            if default_422 and "HTTPValidationError" in str(default_422.get("schema")):
                del responses["422"]
            for status in statuses:
                responses.setdefault(str(status), _problem_response(status))
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in str(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema


def _document_problems(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------
# Middlewares (pure ASGI: no buffering of bodies)
# --------------------------------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised from receive(); an HTTPException so FastAPI's body reader passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


async def _send_problem(send: Send, status: int, detail: str,
                        headers: dict[str, str] | None = None) -> None:
    body = json.dumps(problem_body(status, detail)).encode()
    raw = [(b"content-type", PROBLEM_JSON.encode()),
           (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for a Content-Length over the limit before reading anything, and for a chunked
    body as soon as the bytes received pass it (the upload route has its own limit)."""

    def __init__(self, app: ASGIApp, max_json_bytes: int, max_upload_bytes: int,
                 is_upload: Callable[[str], bool]) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes
        self.is_upload = is_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if self.is_upload(scope["path"]) else self.max_json_bytes
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_problem(send, 400, "invalid Content-Length header")
                    return
        if declared is not None and declared > limit:
            await _send_problem(send, 413, f"request body larger than {limit} bytes",
                                {"Connection": "close"})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


class ResponseCut(Exception):
    """Raised from a streaming body to end it on purpose before its Content-Length (a
    download of a version revoked meanwhile): the server closes the connection."""


class CatchAllMiddleware:
    """Any exception that escapes the handlers becomes a plain 500 problem (logged here),
    unless the response had already started (then the connection is cut)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                if isinstance(exc, ResponseCut):
                    log.warning("response cut on %s %s: %s", scope.get("method"),
                                scope.get("path"), exc)
                else:
                    log.error("error after the response started on %s %s",
                              scope.get("method"), scope.get("path"), exc_info=exc)
                raise
            if isinstance(exc, BodyTooLarge):  # raised outside FastAPI's handlers
                await _send_problem(send, 413, str(exc.detail), {"Connection": "close"})
                return
            log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"),
                      exc_info=exc)
            await _send_problem(send, 500, "internal error; it has been logged")
