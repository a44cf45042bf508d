"""Bearer API keys on every route: the request's tenant, or 401 (keys are made and stored by
registry/keys.py)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from registry.db import read_connection
from registry.keys import hash_key
from registry.models import ApiKey

from .read_cache import ReadCache

# auto_error=False: we answer 401 (not FastAPI's 403) as a problem document ourselves;
# the scheme is still published in /openapi.json.
_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _lookup_tenant(db_url: str, digest: str) -> str | None:
    with read_connection(db_url) as conn:
        return conn.execute(select(ApiKey.tenant_id).where(
            ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))).scalar()


async def require_tenant(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                Depends(_bearer)]) -> str:
    """The tenant id of the request's API key, or 401. Async: a cached key costs no thread
    hand-off and no database round trip. The cache drops a key as soon as its row changes
    (api.read_cache), so a revoked key stops working at once."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    cache: ReadCache = request.app.state.read_cache
    digest = hash_key(credentials.credentials)
    tenant_id: str | None = await cache.load(
        "k:" + digest, partial(_lookup_tenant, request.app.state.db_url, digest))
    if tenant_id is None:
        raise _unauthorized("invalid or revoked API key")
    return tenant_id


TenantDep = Annotated[str, Depends(require_tenant)]
