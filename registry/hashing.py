"""Keyed hashes of what clients sent: HMAC-SHA256 under the deployment's hash secret.

What is kept of purged forget items (`item_hashes`) and of an Idempotency-Key's request body
(`request_hash`) is a hash of the client's data. A plain sha256 would let anyone who reads
it (a database dump, a backup, an API response) confirm a guessed item by hashing it; an HMAC
can only be recomputed with the secret.

Construction (README): the canonical JSON of the value (`json.dumps(value, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`, UTF-8), then
`hmac.new(secret, canonical, hashlib.sha256).hexdigest()`, where `secret` is the UTF-8
bytes of ALKN_HASH_SECRET, or of the generated secret (64 hex digits).

Where the generated secret lives: in the database (table `deployment_secrets`, row `hash`,
made by migration 0005, or here the first time it is missing), not under ALKN_HOME. Every
process of a deployment shares the database and nothing else: the API replicas and the
workers of docker-compose have filesystems of their own, so a secret made up per host
would give an Idempotency-Key retry that reaches another replica a different hash (a false
409) and make `item_hashes` depend on which worker's sweep purged the request. The price:
whoever holds a copy of the database holds the secret next to the hashes, so against a
stolen database or backup only ALKN_HASH_SECRET (kept out of the database, the same in
every process) protects. SECURITY.md says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .db import session_scope
from .models import DeploymentSecret, utcnow

SECRET_NAME = "hash"


def canonical_json(value: Any) -> bytes:
    """Keys sorted, no whitespace, UTF-8 (not ASCII-escaped): '{"answer":"..","question":".."}'."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def keyed_hash(secret: bytes, value: Any) -> str:
    """HMAC-SHA256 hex of the value's canonical JSON."""
    return hmac.new(secret, canonical_json(value), hashlib.sha256).hexdigest()


def new_secret() -> str:
    return secrets.token_hex(32)


def hash_secret(url: str, configured: str | None) -> bytes:
    """ALKN_HASH_SECRET when set, else the deployment's generated secret (made if missing)."""
    if configured:
        return configured.encode("utf-8")
    return _stored_secret(url)


@lru_cache
def _stored_secret(url: str) -> bytes:
    with session_scope(url) as s:
        value = s.scalar(select(DeploymentSecret.value)
                         .where(DeploymentSecret.name == SECRET_NAME))
        if value is None:  # a database made without migration 0005's row
            insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
            s.execute(insert(DeploymentSecret)
                      .values(name=SECRET_NAME, value=new_secret(), created_at=utcnow())
                      .on_conflict_do_nothing())  # another process made it first: take that
            value = s.scalars(select(DeploymentSecret.value)
                              .where(DeploymentSecret.name == SECRET_NAME)).one()
    return value.encode("utf-8")
