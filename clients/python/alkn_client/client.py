"""`Client` (httpx.Client) and `AsyncClient` (httpx.AsyncClient): one method per route of
docs/api.md plus `wait` and `download`. Each method is a one-line hand-off to _core (what to
send, how to read the answer) or a plan; the two classes only differ in how they perform
I/O, so the behaviour cannot drift apart."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar, Unpack

import httpx

from . import _core as api
from ._core import (
    Action,
    Call,
    Item,
    ListFilters,
    ModelFields,
    Plan,
    Sleep,
    Stream,
    SubmitFields,
)
from ._download import Download, ProgressCallback, archive_plan, download_plan
from .models import (
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
Ref = str | int
UploadSource = bytes | str | os.PathLike[str] | IO[bytes]
DEFAULT_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 3600.0


class Client:
    """Synchronous client. `base_url` defaults to $ALKN_URL (else http://127.0.0.1:8000),
    `api_key` to $ALKN_API_KEY (None is enough for /healthz and /readyz only).

    Errors: `ApiError` (status + problem document) for error answers; httpx's transport
    errors (`httpx.ConnectError`...) when the server cannot be reached.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        config = api.client_config(base_url, api_key, timeout, headers)
        self.base_url = config["base_url"]
        self._http = httpx.Client(**config, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- performing actions -----------------------------------------------------------------

    def _call(self, call: Call[T]) -> T:
        if call.upload is None:
            return call.parse(self._http.request(**call.request_args()))
        try:
            return call.parse(self._http.request(**call.request_args(),
                                                 content=call.upload.chunks()))
        finally:
            call.upload.close()

    def _stream(self, action: Stream) -> None:
        with self._http.stream(**action.call.request_args()) as resp:
            if resp.is_error:
                resp.read()  # the problem document
            api.begin_stream(resp, action.sink)
            with closing(action.sink):
                for chunk in resp.iter_bytes():
                    action.sink.write(chunk)

    def _perform(self, action: Action) -> Any:
        if isinstance(action, Sleep):
            time.sleep(action.seconds)
            return None
        if isinstance(action, Stream):
            return self._stream(action)
        return self._call(action)

    def _attempt(self, action: Action) -> tuple[Any, Exception | None]:
        try:
            return self._perform(action), None
        except Exception as exc:  # handed to the plan, which may retry or re-raise
            return None, exc

    def _run(self, plan: Plan[T]) -> T:
        """Drive a plan: perform what it yields, send back the result or throw the error."""
        finished, step = api.advance(plan)
        while not finished:
            finished, step = api.advance(plan, *self._attempt(step))
        return step  # type: ignore[no-any-return]

    def _pages(self, call: Call[Page[T]] | None) -> Iterator[T]:
        while call is not None:
            page = self._call(call)
            yield from page.items
            call = api.next_page(call, page)

    # -- health -----------------------------------------------------------------------------

    def health(self) -> Health:
        """`GET /healthz`."""
        return self._call(api.health())

    def ready(self) -> Readiness:
        """`GET /readyz`: `ready` is False (with `checks`) on 503 rather than an error."""
        return self._call(api.ready())

    # -- models and versions ----------------------------------------------------------------

    def register_model(self, name: str, *, timeout: float = WAIT_TIMEOUT_S,
                       **fields: Unpack[ModelFields]) -> Model:
        """`POST /v1/models`; `source_path` is a model directory readable by the server. A
        source the server copies in a registration job (202) is waited for (`timeout` s;
        `RegistrationFailed` if the job fails)."""
        return self._run(api.register_plan(name, fields, timeout))

    def list_models(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Model]:
        return self._call(api.list_models(limit, cursor))

    def iter_models(self, *, page_size: int | None = None) -> Iterator[Model]:
        """Every model, following `next_cursor` page after page."""
        return self._pages(api.list_models(page_size, None))

    def get_model(self, name: str) -> Model:
        return self._call(api.get_model(name))

    def list_versions(self, name: str, *, limit: int | None = None,
                      cursor: str | None = None) -> Page[Version]:
        return self._call(api.list_versions(name, limit, cursor))

    def iter_versions(self, name: str, *, page_size: int | None = None) -> Iterator[Version]:
        return self._pages(api.list_versions(name, page_size, None))

    def get_version(self, name: str, ref: Ref = "latest") -> Version:
        """`ref`: a version number, `latest` or an alias."""
        return self._call(api.get_version(name, ref))

    def upload_version(self, name: str, source: UploadSource, *,
                       idempotency_key: str | None = None) -> Version:
        """A new root version from a .tar/.tar.gz (bytes, path or open file) or a model
        directory (packed into a tar on the fly)."""
        return self._call(api.upload_version(name, api.open_upload(source), idempotency_key))

    def read_file(self, name: str, ref: Ref, path: str) -> bytes:
        """One file of a version, whole in memory (see `download` for big ones)."""
        return self._call(api.file_call(name, ref, path))

    def download_archive(self, name: str, ref: Ref, dest: str | os.PathLike[str]) -> Path:
        """The version's directory as a tar written to `dest`."""
        return self._run(archive_plan(name, ref, Path(dest)))

    def revoke_version(self, name: str, ref: Ref) -> Version:
        return self._call(api.revoke_version(name, ref))

    def evaluate_version(self, name: str, ref: Ref) -> Job:
        """Queue a full evaluation of the version (a job of its own: poll `get_job`; its
        `metrics.evaluation` holds the numbers once it succeeded)."""
        return self._call(api.evaluate_version(name, ref))

    def get_evaluation(self, name: str, ref: Ref) -> dict[str, Any]:
        return self._call(api.get_evaluation(name, ref))

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return self._call(api.set_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        self._call(api.delete_alias(name, alias))

    # -- forget requests and jobs -----------------------------------------------------------

    def submit(self, model: str, items: list[Item],
               **fields: Unpack[SubmitFields]) -> ForgetRequest:
        """`POST /v1/models/{model}/forget-requests` (202); `idempotency_key` makes a retry
        return the first answer."""
        return self._call(api.submit(model, items, fields))

    def get_request(self, request_id: str) -> ForgetRequest:
        return self._call(api.get_request(request_id))

    def list_requests(self, *, limit: int | None = None, cursor: str | None = None,
                      **filters: Unpack[ListFilters]) -> Page[ForgetRequest]:
        return self._call(api.list_requests(filters, limit, cursor))

    def iter_requests(self, *, page_size: int | None = None,
                      **filters: Unpack[ListFilters]) -> Iterator[ForgetRequest]:
        """Every forget request (filtered by `model`, `status`), page after page."""
        return self._pages(api.list_requests(filters, page_size, None))

    def cancel_request(self, request_id: str) -> ForgetRequest:
        return self._call(api.cancel_request(request_id))

    def list_jobs(self, *, limit: int | None = None, cursor: str | None = None,
                  **filters: Unpack[ListFilters]) -> Page[Job]:
        return self._call(api.list_jobs(filters, limit, cursor))

    def iter_jobs(self, *, page_size: int | None = None,
                  **filters: Unpack[ListFilters]) -> Iterator[Job]:
        return self._pages(api.list_jobs(filters, page_size, None))

    def get_job(self, job_id: str) -> Job:
        return self._call(api.get_job(job_id))

    def job_events(self, job_id: str, *, limit: int | None = None,
                   cursor: str | None = None) -> Page[JobEvent]:
        return self._call(api.job_events(job_id, limit, cursor))

    def iter_job_events(self, job_id: str, *, page_size: int | None = None
                        ) -> Iterator[JobEvent]:
        return self._pages(api.job_events(job_id, page_size, None))

    # -- waiting and downloading ------------------------------------------------------------

    def wait(self, request_id: str, *, timeout: float = WAIT_TIMEOUT_S, poll: float = 0.5,
             max_poll: float = 5.0, on_update: Callable[[ForgetRequest], None] | None = None,
             raise_on_failure: bool = False) -> ForgetRequest:
        """Poll until the request is succeeded, failed or cancelled and return it (the
        delay doubles from `poll` up to `max_poll`); `WaitTimeout` after `timeout` s;
        `raise_on_failure`: `RequestFailed` when it ended failed or cancelled."""
        return self._run(api.wait_plan(request_id, timeout, poll, max_poll, on_update,
                                       raise_on_failure))

    def download(self, name: str, ref: Ref, dest_dir: str | os.PathLike[str], *,
                 progress: ProgressCallback | None = None, retries: int = 3) -> Download:
        """Every file of the version into `dest_dir`: resumed from `<file>.part` with
        Range, checked against the listed sha256 (`ChecksumMismatch`, file deleted),
        renamed into place. Files already there with the right sha256 are kept."""
        return self._run(download_plan(name, ref, Path(dest_dir), progress, retries))


async def _chunks(call: Call[Any]) -> AsyncIterator[bytes]:
    """An upload's file read off the event loop."""
    assert call.upload is not None
    chunks = call.upload.chunks()
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


class AsyncClient:
    """The asynchronous twin of `Client`: the same methods, awaited (`iter_*` are async
    iterators)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        config = api.client_config(base_url, api_key, timeout, headers)
        self.base_url = config["base_url"]
        self._http = httpx.AsyncClient(**config, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- performing actions -----------------------------------------------------------------

    async def _call(self, call: Call[T]) -> T:
        if call.upload is None:
            return call.parse(await self._http.request(**call.request_args()))
        try:
            return call.parse(await self._http.request(**call.request_args(),
                                                       content=_chunks(call)))
        finally:
            call.upload.close()

    async def _stream(self, action: Stream) -> None:
        async with self._http.stream(**action.call.request_args()) as resp:
            if resp.is_error:
                await resp.aread()
            api.begin_stream(resp, action.sink)
            with closing(action.sink):
                async for chunk in resp.aiter_bytes():
                    action.sink.write(chunk)

    async def _perform(self, action: Action) -> Any:
        if isinstance(action, Sleep):
            await asyncio.sleep(action.seconds)
            return None
        if isinstance(action, Stream):
            return await self._stream(action)
        return await self._call(action)

    async def _attempt(self, action: Action) -> tuple[Any, Exception | None]:
        try:
            return await self._perform(action), None
        except Exception as exc:
            return None, exc

    async def _run(self, plan: Plan[T]) -> T:
        finished, step = api.advance(plan)
        while not finished:
            finished, step = api.advance(plan, *await self._attempt(step))
        return step  # type: ignore[no-any-return]

    async def _pages(self, call: Call[Page[T]] | None) -> AsyncIterator[T]:
        while call is not None:
            page = await self._call(call)
            for item in page.items:
                yield item
            call = api.next_page(call, page)

    # -- the routes (see Client for what each does) -----------------------------------------

    async def health(self) -> Health:
        return await self._call(api.health())

    async def ready(self) -> Readiness:
        return await self._call(api.ready())

    async def register_model(self, name: str, *, timeout: float = WAIT_TIMEOUT_S,
                             **fields: Unpack[ModelFields]) -> Model:
        return await self._run(api.register_plan(name, fields, timeout))

    async def list_models(self, *, limit: int | None = None,
                          cursor: str | None = None) -> Page[Model]:
        return await self._call(api.list_models(limit, cursor))

    def iter_models(self, *, page_size: int | None = None) -> AsyncIterator[Model]:
        return self._pages(api.list_models(page_size, None))

    async def get_model(self, name: str) -> Model:
        return await self._call(api.get_model(name))

    async def list_versions(self, name: str, *, limit: int | None = None,
                            cursor: str | None = None) -> Page[Version]:
        return await self._call(api.list_versions(name, limit, cursor))

    def iter_versions(self, name: str, *, page_size: int | None = None
                      ) -> AsyncIterator[Version]:
        return self._pages(api.list_versions(name, page_size, None))

    async def get_version(self, name: str, ref: Ref = "latest") -> Version:
        return await self._call(api.get_version(name, ref))

    async def upload_version(self, name: str, source: UploadSource, *,
                             idempotency_key: str | None = None) -> Version:
        upload = await asyncio.to_thread(api.open_upload, source)  # may tar a directory
        return await self._call(api.upload_version(name, upload, idempotency_key))

    async def read_file(self, name: str, ref: Ref, path: str) -> bytes:
        return await self._call(api.file_call(name, ref, path))

    async def download_archive(self, name: str, ref: Ref,
                               dest: str | os.PathLike[str]) -> Path:
        return await self._run(archive_plan(name, ref, Path(dest)))

    async def revoke_version(self, name: str, ref: Ref) -> Version:
        return await self._call(api.revoke_version(name, ref))

    async def evaluate_version(self, name: str, ref: Ref) -> Job:
        return await self._call(api.evaluate_version(name, ref))

    async def get_evaluation(self, name: str, ref: Ref) -> dict[str, Any]:
        return await self._call(api.get_evaluation(name, ref))

    async def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return await self._call(api.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._call(api.delete_alias(name, alias))

    async def submit(self, model: str, items: list[Item],
                     **fields: Unpack[SubmitFields]) -> ForgetRequest:
        return await self._call(api.submit(model, items, fields))

    async def get_request(self, request_id: str) -> ForgetRequest:
        return await self._call(api.get_request(request_id))

    async def list_requests(self, *, limit: int | None = None, cursor: str | None = None,
                            **filters: Unpack[ListFilters]) -> Page[ForgetRequest]:
        return await self._call(api.list_requests(filters, limit, cursor))

    def iter_requests(self, *, page_size: int | None = None,
                      **filters: Unpack[ListFilters]) -> AsyncIterator[ForgetRequest]:
        return self._pages(api.list_requests(filters, page_size, None))

    async def cancel_request(self, request_id: str) -> ForgetRequest:
        return await self._call(api.cancel_request(request_id))

    async def list_jobs(self, *, limit: int | None = None, cursor: str | None = None,
                        **filters: Unpack[ListFilters]) -> Page[Job]:
        return await self._call(api.list_jobs(filters, limit, cursor))

    def iter_jobs(self, *, page_size: int | None = None,
                  **filters: Unpack[ListFilters]) -> AsyncIterator[Job]:
        return self._pages(api.list_jobs(filters, page_size, None))

    async def get_job(self, job_id: str) -> Job:
        return await self._call(api.get_job(job_id))

    async def job_events(self, job_id: str, *, limit: int | None = None,
                         cursor: str | None = None) -> Page[JobEvent]:
        return await self._call(api.job_events(job_id, limit, cursor))

    def iter_job_events(self, job_id: str, *, page_size: int | None = None
                        ) -> AsyncIterator[JobEvent]:
        return self._pages(api.job_events(job_id, page_size, None))

    async def wait(self, request_id: str, *, timeout: float = WAIT_TIMEOUT_S,
                   poll: float = 0.5, max_poll: float = 5.0,
                   on_update: Callable[[ForgetRequest], None] | None = None,
                   raise_on_failure: bool = False) -> ForgetRequest:
        return await self._run(api.wait_plan(request_id, timeout, poll, max_poll, on_update,
                                             raise_on_failure))

    async def download(self, name: str, ref: Ref, dest_dir: str | os.PathLike[str], *,
                       progress: ProgressCallback | None = None,
                       retries: int = 3) -> Download:
        return await self._run(download_plan(name, ref, Path(dest_dir), progress, retries))
