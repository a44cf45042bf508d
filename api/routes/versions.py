"""Versions of a model: list, get, upload, revoke, evaluation (read, and a full evaluation on
demand). Downloads: downloads.py; aliases: aliases.py."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import defer
from starlette.requests import ClientDisconnect

from registry import catalog
from registry import versions as model_versions
from registry.errors import Invalid
from registry.evaluations import enqueue_evaluation, latest_full_evaluation
from registry.models import Version
from registry.store import CHUNK, LocalStore

from .. import idempotency, views
from ..auth import TenantDep
from ..deps import SessionDep, SettingsDep, StoreDep
from ..idempotency import Created, IdempotencyKey
from ..pagination import PageDep, paginate
from ..revocation import revocations
from ..schemas import (
    BINARY_BODY,
    JobOut,
    Page,
    VersionOut,
    VersionSummaryOut,
    problems,
)
from ..strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute,
                   prefix="/v1/models/{name}", tags=["versions"], responses=problems(401, 404))

UPLOAD_SUFFIX = "/versions:upload"


def is_upload_path(path: str) -> bool:
    """The upload route takes ALKN_MAX_UPLOAD_BYTES; every other body ALKN_MAX_JSON_BYTES."""
    return path.startswith("/v1/models/") and path.endswith(UPLOAD_SUFFIX)


def _version_out(version: Version, model_name: str) -> dict[str, Any]:
    return views.version_out(version, model_name).model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


@router.get("/versions", response_model=Page[VersionSummaryOut], responses=problems(422))
def list_versions(name: str, session: SessionDep, tenant: TenantDep,
                  page: PageDep) -> dict[str, Any]:
    """Versions without their `files` (not even read from the database): a version may
    hold ALKN_MAX_VERSION_FILES files; GET .../versions/{ref} lists them."""
    model = catalog.get_model(session, tenant, name)
    query = model_versions.versions_query(model).options(defer(Version.files))
    rows, next_cursor = paginate(session, query, Version.created_at, Version.id, page)
    return {"items": [views.version_summary_out(v, model.name) for v in rows],
            "next_cursor": next_cursor}


@router.post(
    "/versions:upload", status_code=201, response_model=VersionOut,
    responses=problems(409, 413, 422),
    openapi_extra={"requestBody": {"required": True, "description": (
        "a .tar or .tar.gz of a Hugging Face model directory (config.json at the top or "
        "inside one top-level directory)"), "content": {
        "application/x-tar": BINARY_BODY, "application/gzip": BINARY_BODY,
        "application/octet-stream": BINARY_BODY}}})
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
            raise Invalid("empty body: send a .tar or .tar.gz of a model directory",
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
def get_version(name: str, ref: str, session: SessionDep, tenant: TenantDep) -> VersionOut:
    """`ref`: a version number, `latest` (newest ready) or an alias."""
    model = catalog.get_model(session, tenant, name)
    return views.version_out(model_versions.resolve_version(session, model, ref), model.name)


@router.post("/versions/{ref}:revoke", response_model=VersionOut, responses=problems(409))
def revoke_version(name: str, ref: str, request: Request, session: SessionDep,
                   store: StoreDep, tenant: TenantDep) -> VersionOut:
    """Delete the version's files (and ALKN state) from the store; the row stays, revoked.
    Downloads of it still running are cut (at once in this process, within a second in
    any other)."""
    model = catalog.get_model(session, tenant, name)
    version = model_versions.revoke_version(session, store, model, ref)
    revocations(request).mark_revoked(version.id)
    return views.version_out(version, model.name)


@router.post("/versions/{ref}:evaluate", status_code=202, response_model=JobOut,
             responses={**problems(409, 429),
                        200: {"model": JobOut, "description": "an evaluation of the version "
                                                              "already queued or running"}})
def evaluate_version(name: str, ref: str, session: SessionDep, settings: SettingsDep,
                     tenant: TenantDep) -> JSONResponse:
    """Queue a full evaluation of the version: every item of the model's retain, holdout and
    general sets and of every forget request on its lineage (jobs measure fixed samples).
    A job of its own (`kind` "evaluate", no new version): poll `GET /v1/jobs/{id}`, whose
    `metrics.evaluation` holds the numbers. While one is queued or running for the version,
    that job is returned. It counts toward ALKN_MAX_QUEUED_PER_TENANT (429 past it)."""
    model = catalog.get_model(session, tenant, name)
    version = model_versions.resolve_version(session, model, ref)
    job, created = enqueue_evaluation(session, model, version,
                                      max_queued=settings.max_queued_per_tenant)
    session.commit()
    session.refresh(job)
    body = views.job_out(job, model.name).model_dump(mode="json")
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
    version = model_versions.resolve_version(session, model, ref)
    full = latest_full_evaluation(session, model.id, version.number)
    return full if full is not None else model_versions.version_evaluation(version)
