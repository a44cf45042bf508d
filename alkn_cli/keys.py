"""`alkn keys create|list|revoke` and `alkn tenants list|roots`: API keys and the directories a
tenant may register models from (run on a host with the database, not over HTTP)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .common import get_settings, migrate


def add_parsers(sub: Any) -> None:
    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="print a new API key for a tenant")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--source-root", action="append", metavar="DIR",
                    help="the tenant may register models only from under DIR (repeatable; "
                         "replaces its roots; default: ALKN_MODEL_SOURCE_ROOTS)")
    kc.set_defaults(handler=lambda a: keys_create(a.tenant, a.source_root))
    kl = ksub.add_parser("list", help="labels, tenants and state of the keys (never the keys)")
    kl.add_argument("--tenant")
    kl.set_defaults(handler=lambda a: keys_list(a.tenant))
    kr = ksub.add_parser("revoke", help="revoke a key at once: the key, or its label")
    kr.add_argument("key_or_label")
    kr.set_defaults(handler=lambda a: keys_revoke(a.key_or_label))
    t = sub.add_parser("tenants", help="tenants and their model source roots")
    tsub = t.add_subparsers(dest="tenants_command", required=True)
    tsub.add_parser("list", help="each tenant and its source roots").set_defaults(
        handler=lambda a: tenants_list())
    tr = tsub.add_parser("roots", help="set a tenant's source roots (none: the global ones)")
    tr.add_argument("tenant")
    tr.add_argument("dirs", nargs="*", metavar="DIR")
    tr.set_defaults(handler=lambda a: tenants_roots(a.tenant, a.dirs))


def keys_create(tenant: str, roots: Sequence[str] | None) -> int:
    """A new key; with `roots`, the tenant's source roots become exactly these."""
    from registry.db import session_scope
    from registry.keys import create_api_key

    migrate()
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        key = create_api_key(session, tenant)
        if roots and _set_roots(session, tenant, roots):
            return 2  # nothing committed: the key is not printed
    print(key)
    return 0


def _set_roots(session: Any, tenant: str, roots: Sequence[str]) -> int:
    """Set the tenant's source roots; 2 (and the session rolled back) when one is refused."""
    from registry.source_roots import set_tenant_roots

    try:
        set_tenant_roots(session, tenant, roots, get_settings().local_artifact_root)
    except ValueError as e:
        session.rollback()
        print(f"alkn: {e}", file=sys.stderr)
        return 2
    return 0


def tenants_roots(tenant: str, roots: Sequence[str]) -> int:
    from registry.db import session_scope

    migrate()
    with session_scope(get_settings().resolved_database_url) as session:
        if _set_roots(session, tenant, roots):
            return 2
    print(f"{tenant}: " + (", ".join(roots) if roots else "global ALKN_MODEL_SOURCE_ROOTS"))
    return 0


def tenants_list() -> int:
    from registry.db import session_scope
    from registry.source_roots import list_tenant_roots

    migrate()
    with session_scope(get_settings().resolved_database_url) as session:
        for name, roots in list_tenant_roots(session):
            print(f"{name:20s}  " + (":".join(roots) if roots else "(global source roots)"))
    return 0


def keys_list(tenant: str | None) -> int:
    from sqlalchemy import select

    from registry.db import session_scope
    from registry.models import ApiKey, Tenant

    migrate()
    with session_scope(get_settings().resolved_database_url) as session:
        query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
        if tenant is not None:
            query = query.where(Tenant.name == tenant)
        for key, name in session.execute(query.order_by(ApiKey.created_at)):
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            print(f"{key.prefix:16s}  {name:20s}  {key.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def keys_revoke(key_or_label: str) -> int:
    from registry.db import session_scope
    from registry.keys import revoke_api_keys

    migrate()
    with session_scope(get_settings().resolved_database_url) as session:
        rows = revoke_api_keys(session, key_or_label)
    if not rows:
        print("no active key matches (give the whole key or its label from "
              "'alkn keys list')", file=sys.stderr)
        return 1
    print(f"revoked {len(rows)} key(s): {', '.join(r.prefix for r in rows)}")
    return 0
