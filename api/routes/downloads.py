"""Downloads of a ready version: one file (ETag = its sha256, Range to resume, If-None-Match)
or the whole directory as a tar built while streaming; reads run in threads ahead of the
socket, and a download is cut when its version is revoked."""

from __future__ import annotations

import asyncio
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from alkn_core.quoting import quoted
from registry import catalog
from registry import versions as model_versions
from registry.errors import Conflict, NotFound
from registry.models import Model, Version
from registry.store import CHUNK, ArtifactStore

from .. import download_links
from ..auth import TenantDep
from ..deps import SessionDep, StoreDep
from ..revocation import revocations
from ..schemas import BINARY_BODY, ArchiveLinkOut, problems

# A local file is read this much per thread hand-off (two such reads in flight at most)...
FILE_READ = 4 * CHUNK
# ...unless sending one took longer than this: a slow reader then gets CHUNK reads, so that
# it holds two CHUNKs of the server's memory rather than two FILE_READs.
SLOW_SEND_S = 1.0

router = APIRouter(prefix="/v1/models/{name}", tags=["versions"], responses=problems(401, 404))
# Signed archive links: no key (the link is the credential, for a limited time).
links_router = APIRouter(tags=["versions"])


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
    version = model_versions.require_ready(model_versions.resolve_version(session, model, ref))
    entry = next((f for f in version.files or [] if f["path"] == path), None)
    if entry is None:
        raise NotFound(f"version {version.number} has no file {quoted(path)}")
    if not store.exists(version.storage_key, path):  # revoked since the row was read
        raise Conflict(f"version {version.number} is no longer available")
    return version, entry


def _file_headers(entry: dict[str, Any]) -> dict[str, str]:
    filename = quote(entry["path"].rsplit("/", 1)[-1])
    return {"ETag": f'"{entry["sha256"]}"', "Accept-Ranges": "bytes",
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            # Content-addressed: the same URL of a ready version never changes its bytes.
            "Cache-Control": "private, max-age=3600"}


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the file", "content": {"application/octet-stream": BINARY_BODY}},
    206: {"description": "the requested byte range",
          "content": {"application/octet-stream": BINARY_BODY}},
    304: {"description": "If-None-Match matched the ETag"},
    **problems(409, 416),
}


@router.get("/versions/{ref}/files/{path:path}", response_class=StreamingResponse,
            responses=_FILE_RESPONSES)
def download_file(name: str, ref: str, path: str, request: Request, session: SessionDep,
                  store: StoreDep, tenant: TenantDep) -> Response:
    """One file of the version, streamed; `ETag` is its sha256; `Range` resumes."""
    version, entry = _ready_file(session, store, tenant, name, ref, path)
    return file_response(request, store, version, entry)


@router.head("/versions/{ref}/files/{path:path}", include_in_schema=False)
def head_file(name: str, ref: str, path: str, session: SessionDep, store: StoreDep,
              tenant: TenantDep) -> Response:
    _, entry = _ready_file(session, store, tenant, name, ref, path)
    return file_head(entry)


def file_head(entry: dict[str, Any], extra: dict[str, str] | None = None) -> Response:
    """The headers a GET of the file would send, without its body."""
    headers = {**_file_headers(entry), "Content-Length": str(entry["size"]),
               "Content-Type": "application/octet-stream", **(extra or {})}
    return Response(status_code=200, headers=headers)


def file_response(request: Request, store: ArtifactStore, version: Version,
                  entry: dict[str, Any], extra: dict[str, str] | None = None) -> Response:
    """A version's file streamed: If-None-Match (304), Range and If-Range (206, 416), cut
    when the version is revoked meanwhile. `extra`: more headers."""
    size = int(entry["size"])
    headers = {**_file_headers(entry), **(extra or {})}
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
    body = revocations(request).guard(
        read_ahead(store.open_range(version.storage_key, entry["path"], start, end)),
        version.id) if size else iter(())
    return StreamingResponse(body, status_code=status, headers=headers,
                             media_type="application/octet-stream")


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
                             "content": {"application/x-tar": BINARY_BODY}}, **problems(409)})
def download_archive(name: str, ref: str, request: Request, session: SessionDep,
                     store: StoreDep, tenant: TenantDep) -> Response:
    """The whole directory as an uncompressed tar, built while streaming (files are read
    chunk by chunk, never whole); unpack it and load with from_pretrained."""
    model = catalog.get_model(session, tenant, name)
    version = model_versions.require_ready(model_versions.resolve_version(session, model, ref))
    return archive_response(request, store, model, version)


@router.post("/versions/{ref}:archive-link", response_model=ArchiveLinkOut,
             responses=problems(409))
def archive_link(name: str, ref: str, request: Request, session: SessionDep,
                 tenant: TenantDep) -> ArchiveLinkOut:
    """A link to the version's tar that works without the key (a browser's download, a
    `curl` on another host) until `expires_at` (ALKN_ARCHIVE_LINK_SECONDS); it names one
    ready version and stops working once that version is revoked."""
    model = catalog.get_model(session, tenant, name)
    version = model_versions.require_ready(model_versions.resolve_version(session, model, ref))
    settings = request.app.state.settings
    token, expires = download_links.sign(request.app.state.db_url, settings.hash_secret,
                                         tenant, model.id, version.number,
                                         settings.archive_link_seconds)
    return ArchiveLinkOut(url=f"/v1/archive-links/{token}", expires_at=expires)


@links_router.get("/v1/archive-links/{token}", response_class=StreamingResponse,
                  responses={200: {"description": "the version's directory as a tar",
                                   "content": {"application/x-tar": BINARY_BODY}},
                             **problems(404, 409, 410)})
def download_archive_by_link(token: str, request: Request, session: SessionDep,
                             store: StoreDep) -> Response:
    """The tar a link from `:archive-link` names, without a key (410 once it expired)."""
    link = download_links.verify(request.app.state.db_url,
                                 request.app.state.settings.hash_secret, token)
    model = session.get(Model, link.model_id)
    if model is None or model.tenant_id != link.tenant_id:
        raise NotFound("the link's model no longer exists")
    version = model_versions.require_ready(model_versions.get_version(session, model,
                                                                      link.version))
    return archive_response(request, store, model, version)


def archive_response(request: Request, store: ArtifactStore, model: Model,
                     version: Version) -> Response:
    if version.files and not store.exists(version.storage_key, version.files[0]["path"]):
        raise Conflict(f"version {version.number} is no longer available")
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
    return StreamingResponse(revocations(request).guard(body, version.id), headers=headers,
                             media_type="application/x-tar")
