"""Aliases of a model's versions: a name that points at a ready version, set or moved and
deleted (a version reference accepts an alias wherever it accepts a number)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from registry import catalog
from registry import versions as model_versions

from ..auth import TenantDep
from ..deps import SessionDep
from ..schemas import AliasIn, AliasOut, problems
from ..strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute,
                   prefix="/v1/models/{name}", tags=["aliases"], responses=problems(401, 404))


@router.put("/aliases/{alias}", response_model=AliasOut, responses=problems(409, 422))
def set_alias(name: str, alias: str, body: AliasIn, session: SessionDep,
              tenant: TenantDep) -> AliasOut:
    """Point `alias` at a ready version (created or moved)."""
    model = catalog.get_model(session, tenant, name)
    row = model_versions.set_alias(session, model, alias, body.version)
    session.commit()
    return AliasOut(alias=row.name, version=row.version)


@router.delete("/aliases/{alias}", status_code=204, response_class=Response)
def delete_alias(name: str, alias: str, session: SessionDep, tenant: TenantDep) -> Response:
    model = catalog.get_model(session, tenant, name)
    model_versions.delete_alias(session, model, alias)
    session.commit()
    return Response(status_code=204)
