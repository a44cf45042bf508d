"""Versions of a model: list, get, upload, file and archive downloads, aliases, revoke,
evaluation (read, and a full evaluation on demand)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session, defer
from starlette.requests import ClientDisconnect

from alkn_core.quoting import quoted
from registry import catalog
from registry.evaluations import enqueue_evaluation, latest_full_evaluation
from registry.models import Version
from registry.store import CHUNK, ArtifactStore, LocalStore

from .. import idempotency, views
from ..auth import TenantDep
from ..deps import SessionDep, SettingsDep, StoreDep
from ..idempotency import Created, IdempotencyKey
from ..pagination import PageDep, paginate
from ..revocation import RevocationWatch
from ..schemas import (
    AliasIn,
    AliasOut,
    JobOut,
    Page,
    VersionOut,
    VersionSummaryOut,
    problems,
)

# A local file is read this much per thread hand-off (two such reads in flight at most)...
FILE_READ = 4 * CHUNK
# ...unless sending one took longer than this: a slow reader then gets CHUNK reads, so that
# it holds two CHUNKs of the server's memory rather than two FILE_READs.
SLOW_SEND_S = 1.0

router = APIRouter(prefix="/v1/models/{name}", tags=["versions"], responses=problems(401, 404))

UPLOAD_SUFFIX = "/versions:upload"
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def is_upload_path(path: str) -> bool:
    """The upload route takes ALKN_MAX_UPLOAD_BYTES; every other body ALKN_MAX_JSON_BYTES."""
    return path.startswith("/v1/models/") and path.endswith(UPLOAD_SUFFIX)


def _version_out(version: Version, model_name: str) -> dict[str, Any]:
    return VersionOut.model_validate(views.version_dict(version, model_name)
                                     ).model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


@router.get("/versions", response_model=Page[VersionSummaryOut], responses=problems(422))
def list_versions(name: str, session: SessionDep, tenant: TenantDep,
                  page: PageDep) -> dict[str, Any]:
    """Versions without their `files` (not even read from the database): a version may
    hold ALKN_MAX_VERSION_FILES files; GET .../versions/{ref} lists them."""
    model = catalog.get_model(session, tenant, name)
    query = catalog.versions_query(model).options(defer(Version.files))
    rows, next_cursor = paginate(session, query, Version.created_at, Version.id, page)
    return {"items": [views.version_dict(v, model.name, files=False) for v in rows],
            "next_cursor": next_cursor}


@router.post(
    "/versions:upload", status_code=201, response_model=VersionOut,
    responses=problems(409, 413, 422),
    openapi_extra={"requestBody": {"required": True, "description": (
        "a .tar or .tar.gz of a Hugging Face model directory (config.json at the top or "
        "inside one top-level directory)"), "content": {
        "application/x-tar": _BINARY, "application/gzip": _BINARY,
        "application/octet-stream": _BINARY}}})
async def upload_version(name: str, request: Request, session: SessionDep, store: StoreDep,
                         settings: SettingsDep, tenant: TenantDep,
                         idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """A new root version (no parent) from an uploaded archive."""
    model = await run_in_threadpool(catalog.get_model, session, tenant, name)
    # On the store's filesystem when local, so the extracted files are published by rename.
    tmp = store.staging_dir() if isinstance(store, LocalStore) else \
        Path(tempfile.mkdtemp(prefix="alkn-upload-"))
    try:
        archive = tmp / "upload.tar"
        digest = hashlib.sha256()
        received = 0
        buffer = bytearray()
        with archive.open("wb") as f:
            try:
                async for chunk in request.stream():
                    digest.update(chunk)
                    received += len(chunk)
                    buffer += chunk
                    if len(buffer) >= CHUNK:  # disk writes off the event loop, in big pieces
                        await run_in_threadpool(f.write, bytes(buffer))
                        buffer.clear()
            except ClientDisconnect:
                raise HTTPException(400, "the upload was interrupted") from None
            await run_in_threadpool(f.write, bytes(buffer))
        if received == 0:
            raise catalog.Invalid("empty body: send a .tar or .tar.gz of a model directory",
                                  loc=["body"])

        def create() -> Created:
            version = catalog.register_upload(session, store, model, archive,
                                              max_bytes=settings.max_upload_bytes,
                                              max_files=settings.max_version_files)
            return Created(201, _version_out(version, model.name), {
                "Location": f"/v1/models/{model.name}/versions/{version.number}"})

        return await run_in_threadpool(
            idempotency.run, session, tenant, idempotency_key, f"POST {request.url.path}",
            digest.hexdigest(), create, lambda: catalog.commit_or_discard(session, store),
            lambda: catalog.discard_published(session, store))
    finally:
        await run_in_threadpool(shutil.rmtree, tmp, True)


@router.get("/versions/{ref}", response_model=VersionOut)
def get_version(name: str, ref: str, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    """`ref`: a version number, `latest` (newest ready) or an alias."""
    model = catalog.get_model(session, tenant, name)
    return views.version_dict(catalog.resolve_version(session, model, ref), model.name)


@router.post("/versions/{ref}:revoke", response_model=VersionOut, responses=problems(409))
def revoke_version(name: str, ref: str, request: Request, session: SessionDep,
                   store: StoreDep, tenant: TenantDep) -> dict[str, Any]:
    """Delete the version's files (and ALKN state) from the store; the row stays, revoked.
    Downloads of it still running are cut (at once in this process, within a second in
    any other)."""
    model = catalog.get_model(session, tenant, name)
    version = catalog.revoke_version(session, store, model, ref)
    _watch(request).mark_revoked(version.id)
    return views.version_dict(version, model.name)


@router.post("/versions/{ref}:evaluate", status_code=202, response_model=JobOut,
             responses={**problems(409),
                        200: {"model": JobOut, "description": "an evaluation of the version "
                                                              "already queued or running"}})
def evaluate_version(name: str, ref: str, session: SessionDep,
                     tenant: TenantDep) -> JSONResponse:
    """Queue a full evaluation of the version: every item of the model's retain, holdout and
    general sets and of every forget request on its lineage (jobs measure fixed samples).
    A job of its own (`kind` "evaluate", no new version): poll `GET /v1/jobs/{id}`, whose
    `metrics.evaluation` holds the numbers. While one is queued or running for the version,
    that job is returned."""
    model = catalog.get_model(session, tenant, name)
    version = catalog.resolve_version(session, model, ref)
    job, created = enqueue_evaluation(session, model, version)
    session.commit()
    session.refresh(job)
    body = JobOut.model_validate(views.job_dict(job, model.name)).model_dump(mode="json")
    return JSONResponse(body, status_code=202 if created else 200,
                        headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/versions/{ref}/evaluation", response_model=dict[str, Any])
def get_evaluation(name: str, ref: str, session: SessionDep,
                   tenant: TenantDep) -> dict[str, Any]:
    """The evaluation of the version: the newest full evaluation of it
    (`POST .../versions/{ref}:evaluate`) if one succeeded, else what the job that made it
    measured after unlearning (its metrics when no evaluation was stored); 404 when it has
    none (a registered or uploaded root version never evaluated)."""
    model = catalog.get_model(session, tenant, name)
    version = catalog.resolve_version(session, model, ref)
    full = latest_full_evaluation(session, model.id, version.number)
    return full if full is not None else catalog.version_evaluation(version)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


class _Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end) inclusive of a single `bytes=` range, None to send the whole file
    (no header, another unit, several ranges or a malformed one: RFC 9110 lets us ignore
    those); raises _Unsatisfiable when no byte of the file is in the range."""
    if not header or not header.strip().lower().startswith("bytes="):
        return None
    spec = header.strip()[6:].strip()
    first, sep, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    # ASCII digits only: str.isdigit() is also true for '²' (a latin-1 header byte), which
    # int() refuses.
    if "," in spec or not sep or not (first.isascii() and last.isascii()) \
            or not (first.isdigit() or first == "") \
            or not (last.isdigit() or last == "") or (first == last == ""):
        return None
    if first == "":  # suffix: the last N bytes
        length = _byte_number(last)
        if length == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - length), size - 1
    start = _byte_number(first)
    end = _byte_number(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(end, size - 1)


def _byte_number(digits: str) -> int:
    """A byte position of a Range header: past 19 digits it is beyond any file (and int()
    refuses strings of more than 4300 digits), so it counts as 10**19."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else 10**19


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _ready_file(session: Session, store: ArtifactStore, tenant: str, name: str, ref: str,
                path: str) -> tuple[Version, dict[str, Any]]:
    model = catalog.get_model(session, tenant, name)
    version = catalog.require_ready(catalog.resolve_version(session, model, ref))
    entry = next((f for f in version.files or [] if f["path"] == path), None)
    if entry is None:
        raise catalog.NotFound(f"version {version.number} has no file {quoted(path)}")
    if not store.exists(version.storage_key, path):  # revoked since the row was read
        raise catalog.Conflict(f"version {version.number} is no longer available")
    return version, entry


def _watch(request: Request) -> RevocationWatch:
    watch: RevocationWatch = request.app.state.revocations
    return watch


def _file_headers(entry: dict[str, Any]) -> dict[str, str]:
    filename = quote(entry["path"].rsplit("/", 1)[-1])
    return {"ETag": f'"{entry["sha256"]}"', "Accept-Ranges": "bytes",
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            # Content-addressed: the same URL of a ready version never changes its bytes.
            "Cache-Control": "private, max-age=3600"}


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the file", "content": {"application/octet-stream": _BINARY}},
    206: {"description": "the requested byte range",
          "content": {"application/octet-stream": _BINARY}},
    304: {"description": "If-None-Match matched the ETag"},
    **problems(409, 416),
}


@router.get("/versions/{ref}/files/{path:path}", response_class=StreamingResponse,
            responses=_FILE_RESPONSES)
def download_file(name: str, ref: str, path: str, request: Request, session: SessionDep,
                  store: StoreDep, tenant: TenantDep) -> Response:
    """One file of the version, streamed; `ETag` is its sha256; `Range` resumes."""
    version, entry = _ready_file(session, store, tenant, name, ref, path)
    size = int(entry["size"])
    headers = _file_headers(entry)
    if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    rng_header = request.headers.get("range") if if_range in (None, headers["ETag"]) else None
    try:
        rng = parse_range(rng_header, size)
    except _Unsatisfiable:
        raise HTTPException(416, f"range not satisfiable (file size {size})",
                            headers={"Content-Range": f"bytes */{size}"}) from None
    if rng is None:
        start, end, status = 0, size - 1, 200
    else:
        (start, end), status = rng, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    body = _watch(request).guard(
        read_ahead(store.open_range(version.storage_key, path, start, end)), version.id) \
        if size else iter(())
    return StreamingResponse(body, status_code=status, headers=headers,
                             media_type="application/octet-stream")


@router.head("/versions/{ref}/files/{path:path}", include_in_schema=False)
def head_file(name: str, ref: str, path: str, session: SessionDep, store: StoreDep,
              tenant: TenantDep) -> Response:
    _, entry = _ready_file(session, store, tenant, name, ref, path)
    headers = {**_file_headers(entry), "Content-Length": str(entry["size"]),
               "Content-Type": "application/octet-stream"}
    return Response(status_code=200, headers=headers)


async def read_ahead(chunks: Iterator[bytes]) -> AsyncIterator[bytes | memoryview]:
    """The chunks of a blocking iterator without blocking the event loop: each read runs in
    a thread, the next one while the current chunk is being sent, so disk (or S3) and socket
    work at the same time. A local file (`read(n)`) is read `FILE_READ` bytes per thread
    hand-off and sent in CHUNK slices: a hand-off per 1 MB chunk cost more CPU than
    sending it. A client that took more than SLOW_SEND_S to take one such read gets CHUNK
    reads from then on (it holds 2 MB of memory, not 8)."""
    read = getattr(chunks, "read", None)
    size = FILE_READ

    def fetch() -> bytes | None:
        if read is not None:
            return read(size) or None  # b"": the end
        return next(chunks, None)

    pending: asyncio.Future[bytes | None] = asyncio.ensure_future(run_in_threadpool(fetch))
    try:
        while (data := await pending) is not None:
            pending = asyncio.ensure_future(run_in_threadpool(fetch))
            if read is None:
                if data:  # an iterator may yield b"" (a tar member's empty padding)
                    yield data
                continue
            started = time.monotonic()
            view = memoryview(data)
            for i in range(0, len(data), CHUNK):
                yield view[i:i + CHUNK]
            del view, data  # not held while the next read is awaited
            if time.monotonic() - started > SLOW_SEND_S:
                size = CHUNK
    finally:  # client gone or stream done: let the read in flight finish, then close
        await asyncio.gather(pending, return_exceptions=True)
        close = getattr(chunks, "close", None)
        if close is not None:
            await run_in_threadpool(close)


def _tar_stream(store: ArtifactStore, key: str, members: list[tuple[bytes, str, int]]
                ) -> Iterator[bytes]:
    for header, path, size in members:
        yield header
        sent = 0
        for chunk in store.open_range(key, path):
            sent += len(chunk)
            yield chunk
        if sent != size:  # the store no longer matches the row: cut, never a corrupt tar
            raise RuntimeError(f"artifact {key}/{path} is {sent} bytes, expected {size}")
        yield b"\0" * (-size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # end-of-archive marker


@router.get("/versions/{ref}/archive", response_class=StreamingResponse,
            responses={200: {"description": "the version's directory as a tar",
                             "content": {"application/x-tar": _BINARY}}, **problems(409)})
def download_archive(name: str, ref: str, request: Request, session: SessionDep,
                     store: StoreDep, tenant: TenantDep) -> Response:
    """The whole directory as an uncompressed tar, built while streaming (files are read
    chunk by chunk, never whole); unpack it and load with from_pretrained."""
    model = catalog.get_model(session, tenant, name)
    version = catalog.require_ready(catalog.resolve_version(session, model, ref))
    if version.files and not store.exists(version.storage_key, version.files[0]["path"]):
        raise catalog.Conflict(f"version {version.number} is no longer available")
    created = catalog.as_utc(version.created_at)
    mtime = int(created.timestamp()) if created else 0
    members = []
    for f in version.files or []:
        info = tarfile.TarInfo(f["path"])
        info.size, info.mtime, info.mode, info.type = int(f["size"]), mtime, 0o644, tarfile.REGTYPE
        # PAX: long paths and files over 8 GiB need no special casing.
        members.append((info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"),
                        f["path"], int(f["size"])))
    length = sum(len(h) + s + (-s % tarfile.BLOCKSIZE) for h, _, s in members) \
        + 2 * tarfile.BLOCKSIZE
    filename = quote(f"{model.name}-v{version.number}.tar")
    headers = {"Content-Length": str(length),
               "Content-Disposition": f"attachment; filename*=UTF-8''{filename}"}
    body = read_ahead(_tar_stream(store, version.storage_key, members))
    return StreamingResponse(_watch(request).guard(body, version.id), headers=headers,
                             media_type="application/x-tar")


# --------------------------------------------------------------------------------------------
# Aliases
# --------------------------------------------------------------------------------------------


@router.put("/aliases/{alias}", response_model=AliasOut, tags=["aliases"],
            responses=problems(409, 422))
def set_alias(name: str, alias: str, body: AliasIn, session: SessionDep,
              tenant: TenantDep) -> AliasOut:
    """Point `alias` at a ready version (created or moved)."""
    model = catalog.get_model(session, tenant, name)
    row = catalog.set_alias(session, model, alias, body.version)
    session.commit()
    return AliasOut(alias=row.name, version=row.version)


@router.delete("/aliases/{alias}", status_code=204, response_class=Response, tags=["aliases"])
def delete_alias(name: str, alias: str, session: SessionDep, tenant: TenantDep) -> Response:
    model = catalog.get_model(session, tenant, name)
    catalog.delete_alias(session, model, alias)
    session.commit()
    return Response(status_code=204)
