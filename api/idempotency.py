"""Idempotency-Key on POSTs that create: the first answer is stored in the same transaction
as what it created, and replayed for the same key and body; another body is a 409. The
record holds an HMAC of the body (registry/hashing.py), never the body, and is deleted by
the sweep ALKN_IDEMPOTENCY_TTL after it was written (registry/retention.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Header, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry.hashing import hash_secret, keyed_hash
from registry.models import IdempotencyRecord, utcnow

IdempotencyKey = Annotated[str | None, Header(
    # Printable ASCII (a structured-field string): a NUL byte would be a database error.
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$",
    description="retrying with the same key and body returns the first answer")]


@dataclass
class Created:
    """What a creating route answers: status, JSON body and extra headers (Location)."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status_code, headers=self.headers)


def json_hash(request: Request, payload: Any) -> str:
    """HMAC of a JSON body under the deployment's hash secret; ignores key order and
    whitespace. Keyed: a forget request's body is personal data, and a plain hash of it
    would confirm a guessed body to whoever reads the record."""
    state = request.app.state
    return keyed_hash(hash_secret(state.db_url, state.settings.hash_secret), payload)


def _replay(session: Session, tenant_id: str, key: str, route: str,
            request_hash: str) -> JSONResponse | None:
    rec = session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key))
    if rec is None:
        return None
    if rec.route != route or rec.request_hash != request_hash:
        raise HTTPException(409, "Idempotency-Key was already used with a different request")
    stored = rec.response
    return Created(rec.status_code, stored.get("body", {}), stored.get("headers", {})).response()


def run(session: Session, tenant_id: str, key: str | None, route: str, request_hash: str,
        create: Callable[[], Created], commit: Callable[[], None] | None = None,
        abort: Callable[[], None] | None = None) -> JSONResponse:
    """Replay a stored answer, or `create` and `commit` it together with its record.

    `abort` undoes a failed `create` (default: roll back; the registry routes also delete
    bytes they published); `commit` must undo itself when it fails.
    """
    commit = commit or session.commit
    abort = abort or session.rollback
    if key is not None:
        replay = _replay(session, tenant_id, key, route, request_hash)
        if replay is not None:
            return replay
    try:
        created = create()
    except BaseException:
        abort()
        raise
    if key is None:
        commit()
        return created.response()
    session.add(IdempotencyRecord(
        tenant_id=tenant_id, key=key, route=route, request_hash=request_hash,
        status_code=created.status_code,
        response={"body": created.body, "headers": created.headers}, created_at=utcnow()))
    try:
        commit()
    except IntegrityError:
        # A concurrent retry with the same key committed first: ours is rolled back whole
        # (commit() discards it), answer as that one did.
        session.rollback()
        replay = _replay(session, tenant_id, key, route, request_hash)
        if replay is None:
            raise
        return replay
    return created.response()
