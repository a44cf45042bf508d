"""Where a tenant may register a model from (`POST /v1/models` `source.path`).

A tenant's own roots (`tenants.source_roots`, set with `alkn keys create --tenant T
--source-root DIR` or `alkn tenants roots T DIR...`) when it has any, else
ALKN_MODEL_SOURCE_ROOTS. The artifact store is never a source, whatever the roots say: it
holds every tenant's versions, and registering a directory of it by path would copy another
tenant's model. Every refusal is the same 422, "source.path is not an allowed model
directory": a missing path, a file, a directory outside the roots or inside the store, one
without config.json, one holding a link, device or pipe. The answer tells nothing about the
server's files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Tenant, utcnow
from .store import regular_files

REFUSAL = "source.path is not an allowed model directory"


class NotAllowed(Exception):
    """The one refusal (registry.catalog answers it as a 422 with REFUSAL)."""


def _refused() -> NotAllowed:
    return NotAllowed(REFUSAL)


def _under(path: Path, root: Path) -> bool:
    return path.is_relative_to(root)


def check_source_dir(path: str | Path, roots: Sequence[Path],
                     artifact_root: Path | None, others: Sequence[Path] = ()) -> Path:
    """The resolved model directory (symlinks resolved first, so a link inside a root cannot
    lead out of it), or NotAllowed. Checked before anything is copied: config.json,
    and nothing but regular files and real directories (a link could lead out of the roots,
    a FIFO blocks the copy, a device never ends it). `others`: other tenants' own roots; a
    directory under one of them is theirs unless one of `roots` lies at or inside that root
    too (a tenant's root inside the global roots stays its own)."""
    try:
        resolved = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: an embedded NUL
        raise _refused() from None
    mine = [r.resolve() for r in roots if _under(resolved, r.resolve())]
    if not mine:
        raise _refused()
    for other in (o.resolve() for o in others):
        if _under(resolved, other) and not any(_under(r, other) for r in mine):
            raise _refused()
    if artifact_root is not None and _under(resolved, artifact_root.resolve()):
        raise _refused()
    try:
        if not resolved.is_dir() or not (resolved / "config.json").is_file():
            raise _refused()
        for _ in regular_files(resolved):
            pass
    except (OSError, ValueError):
        raise _refused() from None
    return resolved


def tenant_roots(session: Session, tenant_id: str, global_roots: Sequence[Path]) -> list[Path]:
    """The roots `tenant_id` may register from: its own, else the global ones."""
    own = session.scalar(select(Tenant.source_roots).where(Tenant.id == tenant_id))
    return [Path(p) for p in own] if own else list(global_roots)


def others_roots(session: Session, tenant_id: str) -> list[Path]:
    """Every other tenant's own roots (check_source_dir's `others`)."""
    return [Path(p) for roots in session.scalars(select(Tenant.source_roots).where(
        Tenant.id != tenant_id, Tenant.source_roots.is_not(None))) for p in roots or ()]


def set_tenant_roots(session: Session, tenant_name: str, dirs: Sequence[str | Path],
                     artifact_root: Path | None) -> Tenant:
    """Give the tenant (created if missing) exactly these roots; none: the global ones
    again. Each must be an existing directory, not inside the artifact store (ValueError).
    The caller commits."""
    roots: list[str] = []
    for d in dirs:
        resolved = Path(d).expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"source root {str(d)!r} is not a directory")
        # A root that holds the store is fine: registering from the store is refused anyway.
        if artifact_root is not None and _under(resolved, artifact_root.resolve()):
            raise ValueError(f"source root {str(d)!r} lies inside the artifact store")
        roots.append(str(resolved))
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name, created_at=utcnow())
        session.add(tenant)
    tenant.source_roots = roots or None
    session.flush()
    return tenant


def list_tenant_roots(session: Session) -> list[tuple[str, list[str] | None]]:
    """(tenant name, its roots or None for the global ones), by name."""
    return [(name, roots) for name, roots in session.execute(
        select(Tenant.name, Tenant.source_roots).order_by(Tenant.name))]
