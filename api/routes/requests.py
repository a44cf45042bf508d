"""Forget (deletion) requests: submit, list, get, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from registry import catalog
from registry import forget_requests as forget
from registry.db import read_connection
from registry.models import ForgetRequest

from .. import idempotency, views
from ..auth import TenantDep
from ..deps import SessionDep, SettingsDep
from ..idempotency import Created, IdempotencyKey
from ..pagination import PageDep, paginate
from ..read_cache import ReadCache
from ..schemas import (
    ForgetRequestCreate,
    ForgetRequestOut,
    Page,
    RequestItemsOut,
    RequestStatus,
    problems,
)
from ..strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute,
                   tags=["forget requests"], responses=problems(401, 404))


def request_out(session: Session, req: ForgetRequest) -> dict[str, Any]:
    return views.request_outs(session, [req])[0].model_dump(mode="json")


@router.post("/v1/models/{name}/forget-requests", status_code=202,
             response_model=ForgetRequestOut, responses=problems(400, 409, 413, 422, 429))
def submit(name: str, body: ForgetRequestCreate, request: Request, session: SessionDep,
           tenant: TenantDep, settings: SettingsDep,
           idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Queue the deletion of `items` from the model; poll the `Location` for progress.
    429 (with `Retry-After`) when the tenant already has ALKN_MAX_QUEUED_PER_TENANT
    unfinished requests."""
    model = catalog.get_model(session, tenant, name)

    def create() -> Created:
        req = forget.submit_forget_request(session, tenant, model, body.items, body.method,
                                           body.params, body.base_version,
                                           max_queued=settings.max_queued_per_tenant)
        return Created(202, request_out(session, req),
                       {"Location": f"/v1/forget-requests/{req.id}"})

    return idempotency.run(
        session, tenant, idempotency_key, f"POST {request.url.path}",
        idempotency.json_hash(request, body.model_dump(mode="json", exclude_unset=True)), create)


@router.get("/v1/forget-requests", response_model=Page[ForgetRequestOut],
            responses=problems(422))
def list_requests(session: SessionDep, tenant: TenantDep, page: PageDep,
                  model: str | None = Query(default=None, description="model name"),
                  status: RequestStatus | None = None) -> dict[str, Any]:
    model_id = catalog.get_model(session, tenant, model).id if model is not None else None
    rows, next_cursor = paginate(session, forget.requests_query(tenant, model_id, status),
                                 ForgetRequest.created_at, ForgetRequest.id, page)
    return {"items": views.request_outs(session, rows), "next_cursor": next_cursor}


def _status_body(db_url: str, tenant: str, request_id: str) -> bytes:
    with read_connection(db_url) as conn:
        view = views.request_row_out(forget.request_view(conn, tenant, request_id))
    return view.model_dump_json().encode()


@router.get("/v1/forget-requests/{request_id}", response_model=ForgetRequestOut)
async def get_request(request_id: str, request: Request, tenant: TenantDep) -> Response:
    """Clients poll this. Async, and served from the change-notified cache when it holds
    the request (no thread hand-off, no database round trip); otherwise one read."""
    cache: ReadCache = request.app.state.read_cache

    def read() -> tuple[str, bytes]:
        return tenant, _status_body(request.app.state.db_url, tenant, request_id)

    _, body = await cache.load("r:" + request_id, read, flight=("r", tenant, request_id),
                               fresh=lambda hit: hit[0] == tenant)
    return Response(body, media_type="application/json")


@router.get("/v1/forget-requests/{request_id}/items", response_model=RequestItemsOut,
            responses=problems(410))
def request_items(request_id: str, session: SessionDep, tenant: TenantDep) -> RequestItemsOut:
    """The request's items as submitted, while the service keeps them
    (ALKN_FORGET_DATA_RETENTION); 410 once they were purged (`item_hashes` of the request
    is what is left)."""
    req = forget.get_request(session, tenant, request_id)
    if req.items_purged_at is not None:
        raise HTTPException(410, f"the items of request {req.id} were purged at "
                                 f"{catalog.as_utc(req.items_purged_at):%Y-%m-%d %H:%M:%S}Z; "
                                 "their keyed hashes are the request's item_hashes")
    return RequestItemsOut(id=req.id, items=list(req.items))


@router.post("/v1/forget-requests/{request_id}:cancel", response_model=ForgetRequestOut,
             responses=problems(409))
def cancel_request(request_id: str, request: Request, session: SessionDep,
                   tenant: TenantDep) -> ForgetRequestOut:
    """A queued request is cancelled at once; a running one gets `cancel_requested` and
    its job stops at the next step; a finished one answers 409."""
    req = forget.cancel_request(session, tenant, request_id)
    session.commit()
    # The change notification follows; dropping it here too means our own client's next
    # poll reads its cancel even if that poll beats the notification.
    request.app.state.read_cache.invalidate("r:" + request_id)
    return views.request_outs(session, [req])[0]
