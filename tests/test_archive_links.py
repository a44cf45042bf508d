"""Signed archive links (what the dashboard's download uses) and a request's items while
they are retained (what its request page shows)."""

from __future__ import annotations

import io
import tarfile

from sqlalchemy import select

from api import download_links
from registry.db import session_scope
from registry.hashing import hash_secret
from registry.models import Tenant
from registry.retention import purge_forget_items

from .apikit import QA, ApiWorld


def test_archive_link_works_without_the_key_until_it_expires(api_world: ApiWorld) -> None:
    c, model = api_world.client, api_world.model
    r = c.post(f"/v1/models/{model}/versions/1:archive-link")
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith("/v1/archive-links/") and r.json()["expires_at"]
    anonymous = {"Authorization": ""}
    r = c.get(url, headers=anonymous)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content)
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert "config.json" in tar.getnames()

    token = url.rsplit("/", 1)[1]
    payload, _, signature = token.partition(".")
    for bad in (payload + "." + "0" * 64, payload[:-2] + "xx." + signature, "nonsense", ""):
        r = c.get(f"/v1/archive-links/{bad}", headers=anonymous)
        assert r.status_code in (404, 405) and "Traceback" not in r.text, (bad, r.text)
        if bad:
            assert r.headers["content-type"].startswith("application/problem+json")
    model_row_id = c.get(f"/v1/models/{model}").json()["id"]
    with session_scope(api_world.db_url) as s:
        tenant = s.scalar(select(Tenant.id).where(Tenant.name == "default"))
    assert tenant is not None
    expired, _ = download_links.sign(api_world.db_url, None, tenant, model_row_id, 1, -1)
    r = c.get(f"/v1/archive-links/{expired}", headers=anonymous)
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    # Another tenant's model id in a link signed by us is still refused by the model check.
    foreign, _ = download_links.sign(api_world.db_url, None, "another-tenant", model_row_id,
                                     1, 60)
    assert c.get(f"/v1/archive-links/{foreign}", headers=anonymous).status_code == 404


def test_request_items_while_retained_then_410(api_world: ApiWorld) -> None:
    c = api_world.client
    r = c.post(f"/v1/models/{api_world.model}/forget-requests", json={"items": QA[:2]})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    r = c.get(f"/v1/forget-requests/{rid}/items")
    assert r.status_code == 200 and r.json() == {"id": rid, "items": QA[:2]}
    assert c.post(f"/v1/forget-requests/{rid}:cancel").status_code == 200
    secret = hash_secret(api_world.db_url, None)
    assert rid in purge_forget_items(api_world.db_url, 0, secret)
    r = c.get(f"/v1/forget-requests/{rid}/items")
    assert r.status_code == 410 and "purged" in r.json()["detail"], r.text
    assert c.get("/v1/forget-requests/00000000-0000-0000-0000-000000000000/items"
                 ).status_code == 404
