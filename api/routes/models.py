"""Registered models: create (from a server-side directory), list, get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from registry import catalog, forget_requests, registrations, source_roots
from registry.models import Model

from .. import idempotency, views
from ..auth import TenantDep
from ..deps import SessionDep, SettingsDep, StoreDep
from ..idempotency import Created, IdempotencyKey
from ..pagination import PageDep, paginate
from ..schemas import JobOut, ModelCreate, ModelOut, Page, problems
from ..strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute,
                   prefix="/v1/models", tags=["models"], responses=problems(401))


@router.post("", status_code=201, response_model=ModelOut,
             responses={202: {"model": JobOut, "description": "a source larger than "
                              "ALKN_REGISTER_INLINE_BYTES: the model exists, its version 1 is "
                              "copied by this registration job (`Location`: poll it)"},
                        **problems(400, 409, 413, 422, 429)})
def create_model(body: ModelCreate, request: Request, session: SessionDep, store: StoreDep,
                 settings: SettingsDep, tenant: TenantDep,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Register a model; its `source.path` directory is copied into the store as version 1.
    The path must lie under the tenant's source roots (its own, else the global ones). A
    source larger than ALKN_REGISTER_INLINE_BYTES is copied by a job: 202 with the job
    (`Location`), the model without versions until it succeeds."""

    def create() -> Created:
        roots = source_roots.tenant_roots(session, tenant, settings.source_roots)
        src = (catalog.checked_source(store, Path(body.source.path), roots,
                                      source_roots.others_roots(session, tenant))
               if body.source is not None else None)
        limit = settings.register_inline_bytes
        deferred = src is not None and registrations.source_bytes(src, limit) > limit
        if deferred:  # a registration job counts toward the tenant's unfinished work
            forget_requests.check_queue_room(session, tenant, settings.max_queued_per_tenant)
        model = catalog.register_model(
            session, store, tenant, body.name, None if deferred else src,
            body.description, body.qa_template, body.default_params, body.retain_set,
            body.holdout_set, body.eval_sets, allowed_roots=roots,
            max_files=settings.max_version_files, eval_max_items=body.eval_max_items,
            eval_detail_items=body.eval_detail_items, min_gpu_memory_gb=body.min_gpu_memory_gb)
        if deferred:
            assert src is not None
            job = registrations.enqueue_registration(session, model, src)
            return Created(202, views.job_out(job, model.name).model_dump(mode="json"),
                           {"Location": f"/v1/jobs/{job.id}"})
        out = views.model_outs(session, [model])[0]
        return Created(201, out.model_dump(mode="json"), {"Location": f"/v1/models/{model.name}"})

    return idempotency.run(
        session, tenant, idempotency_key, f"POST {request.url.path}",
        idempotency.json_hash(request, body.model_dump(mode="json", exclude_unset=True)), create,
        commit=lambda: catalog.commit_or_discard(session, store),
        abort=lambda: catalog.discard_published(session, store))


@router.get("", response_model=Page[ModelOut], responses=problems(422))
def list_models(session: SessionDep, tenant: TenantDep, page: PageDep) -> dict[str, Any]:
    rows, next_cursor = paginate(session, catalog.models_query(tenant), Model.created_at,
                                 Model.id, page)
    return {"items": views.model_outs(session, rows), "next_cursor": next_cursor}


@router.get("/{name}", response_model=ModelOut, responses=problems(404))
def get_model(name: str, session: SessionDep, tenant: TenantDep) -> ModelOut:
    model = catalog.get_model(session, tenant, name)
    return views.model_outs(session, [model])[0]
