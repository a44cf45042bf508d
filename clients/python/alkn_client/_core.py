"""What the sync and the async client share: every route as a `Call` (request + parser), the
problem-document handling, and the multi-request operations written once as plans.

A plan is a generator that yields actions (`Call`, `Stream`, `Sleep`) and receives their
results; `Client` and `AsyncClient` only differ in how they perform an action (with or
without `await`), so `wait`, pagination and `download` exist once, here and in _download.py.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypedDict, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from .errors import ApiError, RegistrationFailed, RequestFailed, WaitTimeout
from .models import (
    FINISHED,
    Alias,
    ForgetRequest,
    Health,
    Job,
    JobEvent,
    Model,
    Page,
    Readiness,
    Version,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Item = dict[str, Any]

CHUNK = 1 << 20
DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "alkn-client/0.1"


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    upload: Upload | None = None

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments of httpx's request()/stream() (the body of an upload apart)."""
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        params = {k: v for k, v in self.params.items() if v is not None}
        if params:
            args["params"] = params
        if self.json is not None:
            args["json"] = self.json
        if self.headers:
            args["headers"] = self.headers
        return args


class Sink(Protocol):
    """Where a streamed body goes: `start` sees the status and headers, then `write` every
    chunk; `close` runs whatever happened (the bytes written so far stay for a resume)."""

    def start(self, status: int, headers: httpx.Headers) -> None: ...

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Stream:
    call: Call[Any]
    sink: Sink


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Call[Any] | Stream | Sleep
Plan = Generator[Action, Any, T]


@dataclass
class Upload:
    """A request body read from an open file in chunks (never whole in memory)."""

    file: IO[bytes]
    size: int
    content_type: str
    owned: bool  # opened here, so closed here; a caller's file stays open

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.file.read(CHUNK):
            yield chunk

    def close(self) -> None:
        if self.owned:
            self.file.close()


def open_upload(source: bytes | str | os.PathLike[str] | IO[bytes]) -> Upload:
    """A .tar / .tar.gz (bytes, a path, an open binary file) or a model directory, which is
    packed into a temporary tar first."""
    owned = True
    if isinstance(source, bytes):
        f: IO[bytes] = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            # Lives until the upload is sent (Upload.close); gone from disk once closed.
            f = tempfile.TemporaryFile()  # noqa: SIM115
            with tarfile.open(fileobj=f, mode="w") as tar:
                for child in sorted(path.iterdir()):
                    tar.add(child, arcname=child.name)
        else:
            f = path.open("rb")
    else:
        f, owned = source, False
    start = f.tell() if not owned else 0
    size = f.seek(0, os.SEEK_END) - start
    f.seek(start)
    gzip = f.read(2) == b"\x1f\x8b"
    f.seek(start)
    return Upload(f, size, "application/gzip" if gzip else "application/x-tar", owned)


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def raise_for_problem(resp: httpx.Response) -> None:
    """ApiError for an error status, carrying the problem document (or a stand-in built
    from the body when a proxy answered with something else). The body must be read."""
    if resp.status_code < 400:
        return
    try:
        problem = resp.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"type": "about:blank", "status": resp.status_code,
                   "title": resp.reason_phrase, "detail": resp.text.strip()[:500]}
    raise ApiError(resp.status_code, problem, method=resp.request.method,
                   url=str(resp.request.url))


def _parse_as(kind: type[M]) -> Callable[[httpx.Response], M]:
    def parse(resp: httpx.Response) -> M:
        raise_for_problem(resp)
        return kind.model_validate(resp.json())

    return parse


def _parse_json(resp: httpx.Response) -> Any:
    raise_for_problem(resp)
    return resp.json()


def _parse_bytes(resp: httpx.Response) -> bytes:
    raise_for_problem(resp)
    return resp.content


def _parse_nothing(resp: httpx.Response) -> None:
    raise_for_problem(resp)


def _parse_readiness(resp: httpx.Response) -> Readiness:
    if resp.status_code != 503:  # 503 is the answer "not ready", with `checks`
        raise_for_problem(resp)
    try:
        body = resp.json()
    except ValueError:  # a proxy's 503 page
        body = {"detail": resp.text.strip()[:500]}
    return Readiness(ready=resp.status_code == 200, checks=body.get("checks") or {},
                     detail=body.get("detail"))


def _parse_events(resp: httpx.Response) -> Page[JobEvent]:
    raise_for_problem(resp)
    body = resp.json()
    if isinstance(body, list):  # docs/api.md shows a bare list; the server answers a page
        body = {"items": body, "next_cursor": None}
    return Page[JobEvent].model_validate(body)


# --------------------------------------------------------------------------------------------
# Routes (docs/api.md)
# --------------------------------------------------------------------------------------------


class ModelFields(TypedDict, total=False):
    """Optional fields of `register_model` (see docs/api.md); `idempotency_key` is the header."""

    source_path: str
    description: str
    qa_template: str
    default_params: dict[str, Any]
    retain_set: list[Item]
    holdout_set: list[Item]
    eval_sets: dict[str, list[Item]]
    eval_max_items: int
    eval_detail_items: int
    min_gpu_memory_gb: int
    idempotency_key: str


class SubmitFields(TypedDict, total=False):
    method: str
    params: dict[str, Any]
    base_version: int
    idempotency_key: str


class ListFilters(TypedDict, total=False):
    """Filters of the forget request and job lists."""

    model: str
    status: str


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _idem(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


def _version_path(name: str, ref: str | int) -> str:
    return f"/v1/models/{_seg(name)}/versions/{_seg(ref)}"


def health() -> Call[Health]:
    return Call("GET", "/healthz", _parse_as(Health))


def ready() -> Call[Readiness]:
    return Call("GET", "/readyz", _parse_readiness)


def register_model(name: str, fields: ModelFields) -> Call[Model | Job]:
    body: dict[str, Any] = {"name": name}
    values: dict[str, Any] = dict(fields)
    key = values.pop("idempotency_key", None)
    source = values.pop("source_path", None)
    if source is not None:
        body["source"] = {"path": str(source)}
    # Only what was given: the server's defaults apply, and a retry hashes the same body.
    body.update({k: v for k, v in values.items() if v is not None})
    return Call("POST", "/v1/models", _parse_registration, json=body, headers=_idem(key))


def _parse_registration(resp: httpx.Response) -> Model | Job:
    """201: the model; 202: the registration job copying a large source."""
    raise_for_problem(resp)
    return Job.model_validate(resp.json()) if resp.status_code == 202 else \
        Model.model_validate(resp.json())


def register_plan(name: str, fields: ModelFields, timeout: float) -> Plan[Model]:
    """Register, and when the server copies the source in a job (202) wait for it: the
    model once its version 1 is there; RegistrationFailed if the job did not succeed."""
    answer = yield register_model(name, fields)
    if isinstance(answer, Model):
        return answer
    job: Job = answer
    deadline = time.monotonic() + timeout
    delay = 0.5
    while job.status not in FINISHED:
        if time.monotonic() > deadline:
            raise RegistrationFailed(job, f"still {job.status} after {timeout:g} s")
        yield Sleep(delay)
        delay = min(delay * 2, 5.0)
        job = yield get_job(job.id)
    if job.status != "succeeded":
        raise RegistrationFailed(job)
    model: Model = yield get_model(name)
    return model


def list_models(limit: int | None, cursor: str | None) -> Call[Page[Model]]:
    return Call("GET", "/v1/models", _parse_as(Page[Model]),
                params={"limit": limit, "cursor": cursor})


def get_model(name: str) -> Call[Model]:
    return Call("GET", f"/v1/models/{_seg(name)}", _parse_as(Model))


def list_versions(name: str, limit: int | None, cursor: str | None) -> Call[Page[Version]]:
    return Call("GET", f"/v1/models/{_seg(name)}/versions", _parse_as(Page[Version]),
                params={"limit": limit, "cursor": cursor})


def get_version(name: str, ref: str | int) -> Call[Version]:
    return Call("GET", _version_path(name, ref), _parse_as(Version))


def upload_version(name: str, upload: Upload, idempotency_key: str | None) -> Call[Version]:
    headers = {"Content-Type": upload.content_type, "Content-Length": str(upload.size),
               **_idem(idempotency_key)}
    return Call("POST", f"/v1/models/{_seg(name)}/versions:upload", _parse_as(Version),
                headers=headers, upload=upload)


def file_call(name: str, ref: str | int, path: str,
              headers: dict[str, str] | None = None) -> Call[bytes]:
    return Call("GET", f"{_version_path(name, ref)}/files/{quote(path, safe='/')}",
                _parse_bytes, headers=headers or {})


def archive_call(name: str, ref: str | int) -> Call[None]:
    return Call("GET", f"{_version_path(name, ref)}/archive", _parse_nothing)


def revoke_version(name: str, ref: str | int) -> Call[Version]:
    return Call("POST", f"{_version_path(name, ref)}:revoke", _parse_as(Version))


def evaluate_version(name: str, ref: str | int) -> Call[Job]:
    return Call("POST", f"{_version_path(name, ref)}:evaluate", _parse_as(Job))


def get_evaluation(name: str, ref: str | int) -> Call[dict[str, Any]]:
    return Call("GET", f"{_version_path(name, ref)}/evaluation", _parse_json)


def set_alias(name: str, alias: str, version: int) -> Call[Alias]:
    return Call("PUT", f"/v1/models/{_seg(name)}/aliases/{_seg(alias)}", _parse_as(Alias),
                json={"version": version})


def delete_alias(name: str, alias: str) -> Call[None]:
    return Call("DELETE", f"/v1/models/{_seg(name)}/aliases/{_seg(alias)}", _parse_nothing)


def submit(model: str, items: list[Item], fields: SubmitFields) -> Call[ForgetRequest]:
    values: dict[str, Any] = dict(fields)
    key = values.pop("idempotency_key", None)
    body = {"items": items, **{k: v for k, v in values.items() if v is not None}}
    return Call("POST", f"/v1/models/{_seg(model)}/forget-requests", _parse_as(ForgetRequest),
                json=body, headers=_idem(key))


def get_request(request_id: str) -> Call[ForgetRequest]:
    return Call("GET", f"/v1/forget-requests/{_seg(request_id)}", _parse_as(ForgetRequest))


def list_requests(filters: ListFilters, limit: int | None,
                  cursor: str | None) -> Call[Page[ForgetRequest]]:
    return Call("GET", "/v1/forget-requests", _parse_as(Page[ForgetRequest]),
                params={**filters, "limit": limit, "cursor": cursor})


def cancel_request(request_id: str) -> Call[ForgetRequest]:
    return Call("POST", f"/v1/forget-requests/{_seg(request_id)}:cancel",
                _parse_as(ForgetRequest))


def list_jobs(filters: ListFilters, limit: int | None, cursor: str | None) -> Call[Page[Job]]:
    return Call("GET", "/v1/jobs", _parse_as(Page[Job]),
                params={**filters, "limit": limit, "cursor": cursor})


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{_seg(job_id)}", _parse_as(Job))


def job_events(job_id: str, limit: int | None, cursor: str | None) -> Call[Page[JobEvent]]:
    return Call("GET", f"/v1/jobs/{_seg(job_id)}/events", _parse_events,
                params={"limit": limit, "cursor": cursor})


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def next_page(call: Call[Page[T]], page: Page[T]) -> Call[Page[T]] | None:
    """The call of the page after `page`, None after the last one."""
    if not page.next_cursor:
        return None
    return replace(call, params={**call.params, "cursor": page.next_cursor})


def wait_plan(request_id: str, timeout: float, poll: float, max_poll: float,
              on_update: Callable[[ForgetRequest], None] | None,
              raise_on_failure: bool = False) -> Plan[ForgetRequest]:
    """Poll until the request is finished; the delay doubles up to `max_poll` so a long job
    costs few requests and a short one is seen finishing soon. `raise_on_failure`:
    RequestFailed when it ended failed or cancelled."""
    deadline = time.monotonic() + timeout
    delay = max(poll, 0.05)
    while True:
        req: ForgetRequest = yield get_request(request_id)
        if on_update is not None:
            on_update(req)
        if req.finished:
            if raise_on_failure and req.status != "succeeded":
                raise RequestFailed(req)
            return req
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(req, timeout)
        yield Sleep(min(delay, left))
        delay = min(delay * 2, max_poll)


def advance(plan: Plan[T], value: Any = None,
            error: Exception | None = None) -> tuple[bool, Any]:
    """Send an action's result (or throw its error) into `plan`: (True, what the plan
    returned) when it is done, else (False, its next action)."""
    try:
        return False, (plan.throw(error) if error is not None else plan.send(value))
    except StopIteration as done:
        return True, done.value


def begin_stream(resp: httpx.Response, sink: Sink) -> None:
    """ApiError for an error answer (its body read by the caller), else hand the status and
    headers to the sink."""
    raise_for_problem(resp)
    sink.start(resp.status_code, resp.headers)


def client_config(base_url: str | None, api_key: str | None, timeout: float,
                  headers: dict[str, str] | None) -> dict[str, Any]:
    """Keyword arguments of httpx.Client / httpx.AsyncClient. No URL: $ALKN_URL, else
    DEFAULT_URL; no key: $ALKN_API_KEY (none is fine for /healthz and /readyz)."""
    base_url = base_url or os.environ.get("ALKN_URL") or DEFAULT_URL
    api_key = api_key if api_key is not None else os.environ.get("ALKN_API_KEY")
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    if api_key:
        all_headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url.rstrip("/"), "headers": all_headers,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0))}
