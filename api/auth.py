"""Bearer API keys. Only the sha256 of a key is stored; a key maps to one tenant."""

from __future__ import annotations

import hashlib
import logging
import secrets
from functools import partial
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import read_connection
from registry.models import ApiKey, Tenant, utcnow

from .read_cache import ReadCache

log = logging.getLogger("api")

KEY_PREFIX = "alkn_"
DEFAULT_TENANT = "default"

# auto_error=False: we answer 401 (not FastAPI's 403) as a problem document ourselves;
# the scheme is still published in /openapi.json.
_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_label(key: str) -> str:
    """What is stored in clear to tell keys apart: for our keys the first 12 characters
    (`alkn_` and 7 of 32 random ones); for any other key (a chosen bootstrap key, which may
    be short) none of its characters, only the start of its hash."""
    if key.startswith(KEY_PREFIX) and len(key) >= 32:
        return key[:12]
    return "sha256:" + hash_key(key)[:8]


def revoke_api_keys(session: Session, key_or_label: str) -> list[ApiKey]:
    """Revoke the key given whole, or every live key with this label (see `key_label`);
    the caller commits. A serving API stops accepting it at once (the row change is
    notified to its cache)."""
    rows = list(session.scalars(select(ApiKey).where(
        ApiKey.revoked_at.is_(None),
        (ApiKey.key_hash == hash_key(key_or_label)) | (ApiKey.prefix == key_or_label))))
    for row in rows:
        row.revoked_at = utcnow()
    session.flush()
    return rows


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, tenant_name: str) -> str:
    """A new key for `tenant_name` (created if missing). The caller commits; the key is
    returned once and never stored in clear."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(24)  # 32 url-safe characters, 192 bits
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key_label(key),
                       created_at=utcnow()))
    session.flush()
    return key


def ensure_bootstrap_key(session: Session, key: str) -> None:
    """Make exactly `key` valid for tenant `default` (idempotent; un-revokes it). The caller
    commits."""
    if not key:
        return
    if len(key) < 16:
        log.warning("ALKN_BOOTSTRAP_API_KEY is shorter than 16 characters: easy to guess")
    tenant = get_or_create_tenant(session, DEFAULT_TENANT)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None:
        session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key_label(key),
                           created_at=utcnow()))
    else:
        row.tenant_id = tenant.id
        row.revoked_at = None
        row.prefix = key_label(key)  # rows written before labels stopped holding key text
    session.flush()


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
