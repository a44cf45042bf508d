"""Signed links to a version's archive: the link is the credential, for a limited time, so a
browser can download without sending the API key (a plain <a href>) and a tar can be fetched
on a host that holds no key.

A token is `<payload>.<signature>`: the payload is the URL-safe base64 of
`{"t": tenant id, "m": model id, "v": version number, "e": expiry (Unix seconds)}`, the
signature the hex HMAC-SHA256 of `archive-link:` + payload under the deployment's hash
secret (registry/hashing.py). A bad or foreign token is a 404 (nothing about why), an
expired one a 410. A link names one version: once it is revoked the download is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import HTTPException

from registry.hashing import hash_secret

_DOMAIN = b"archive-link:"


@dataclass(frozen=True)
class ArchiveLink:
    tenant_id: str
    model_id: str
    version: int
    expires: int


def _signature(secret: bytes, payload: str) -> str:
    return hmac.new(secret, _DOMAIN + payload.encode(), hashlib.sha256).hexdigest()


def sign(db_url: str, configured_secret: str | None, tenant_id: str, model_id: str,
         version: int, seconds: int) -> tuple[str, datetime]:
    """A token for the archive of `version`, valid `seconds` from now, and its expiry."""
    expires = int(time.time()) + seconds
    raw = json.dumps({"t": tenant_id, "m": model_id, "v": version, "e": expires},
                     separators=(",", ":")).encode()
    payload = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    token = f"{payload}.{_signature(hash_secret(db_url, configured_secret), payload)}"
    return token, datetime.fromtimestamp(expires, UTC)


def verify(db_url: str, configured_secret: str | None, token: str) -> ArchiveLink:
    """The link a token names; 404 when it is not one of ours, 410 once it expired."""
    not_found = HTTPException(404, "no such archive link")
    payload, _, signature = token.partition(".")
    expected = _signature(hash_secret(db_url, configured_secret), payload)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise not_found
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        link = ArchiveLink(str(data["t"]), str(data["m"]), int(data["v"]), int(data["e"]))
    except (ValueError, KeyError, TypeError):
        raise not_found from None
    if link.expires < time.time():
        raise HTTPException(410, "this archive link has expired: ask for a new one")
    return link
