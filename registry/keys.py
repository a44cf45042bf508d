"""API keys: created, revoked, and the bootstrap key; only the sha256 of a key is stored and a
key maps to one tenant. Functions flush, the caller commits. The API checks keys
(api/auth.py); the `alkn keys` commands manage them."""

from __future__ import annotations

import hashlib
import logging
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .catalog import tenant_named
from .models import ApiKey, utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "alkn_"
DEFAULT_TENANT = "default"


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


def create_api_key(session: Session, tenant_name: str) -> str:
    """A new key for `tenant_name` (created if missing). The caller commits; the key is
    returned once and never stored in clear."""
    tenant = tenant_named(session, tenant_name)
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
    tenant = tenant_named(session, DEFAULT_TENANT)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None:
        session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key_label(key),
                           created_at=utcnow()))
    else:
        row.tenant_id = tenant.id
        row.revoked_at = None
        row.prefix = key_label(key)  # rows written before labels stopped holding key text
    session.flush()
