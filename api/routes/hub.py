"""The Hugging Face Hub's read API for model repos, so that `huggingface_hub`
(`snapshot_download`, `hf_hub_download`), `transformers`' `from_pretrained` with
`HF_ENDPOINT` and other Hub clients read versions unchanged.

A repo id is `<tenant>/<model>`; a revision is `main` (the newest ready version), `v<N>`, an
alias, or a version's commit sha (what repo info answers, 40 hex digits); the token is the
API key. Another tenant's repo is not found (404), like a model that does not exist. Errors
carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound), which is how
its clients tell a missing optional file from a missing repo.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from alkn_core.quoting import quoted
from registry import catalog
from registry import versions as model_versions
from registry.errors import NotFound, RegistryError
from registry.models import Model, Tenant, Version
from registry.store import ArtifactStore

from ..auth import TenantDep
from ..deps import SessionDep, StoreDep
from ..schemas import BINARY_BODY, problems
from ..strict_json import StrictJSONRoute
from .downloads import file_head, file_response

router = APIRouter(route_class=StrictJSONRoute,
                   tags=["hugging face hub"], responses=problems(401, 404))


def _hub_error(exc: RegistryError, code: str) -> RegistryError:
    # A header holds printable ASCII only: a name from the URL may hold anything.
    message = "".join(c if " " <= c <= "~" else "?" for c in exc.message[:200])
    exc.headers = {"X-Error-Code": code,  # type: ignore[attr-defined]
                   "X-Error-Message": message}
    return exc


def _repo(session: Session, tenant: str, namespace: str, name: str) -> Model:
    """The repo `<namespace>/<name>` of the key's tenant; another tenant's is not found."""
    owner = session.get(Tenant, tenant)
    try:
        if owner is None or owner.name != namespace:
            raise NotFound(f"repository {quoted(f'{namespace}/{name}')} not found")
        return catalog.get_model(session, tenant, name)
    except NotFound as exc:
        raise _hub_error(exc, "RepoNotFound") from None


def _revision(session: Session, model: Model, revision: str) -> Version:
    try:
        version = model_versions.resolve_revision(session, model, revision)
    except NotFound as exc:
        raise _hub_error(exc, "RevisionNotFound") from None
    if version.status != "ready":  # revoked, or not published yet: no files to read
        raise _hub_error(NotFound(f"revision {quoted(revision)} is version {version.number}, "
                                  f"which is {version.status}"), "RevisionNotFound")
    return version


def _hub_time(dt: datetime | None) -> str | None:
    """A time as the Hub writes it (UTC, milliseconds, "Z"), which its clients parse."""
    utc = catalog.as_utc(dt)
    return None if utc is None else utc.strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{utc.microsecond // 1000:03d}Z"


def _info(namespace: str, model: Model, version: Version) -> dict[str, Any]:
    created = _hub_time(version.created_at)
    return {
        "id": f"{namespace}/{model.name}", "modelId": f"{namespace}/{model.name}",
        "author": namespace, "sha": model_versions.commit_sha(version),
        "lastModified": created, "createdAt": created,
        "private": True, "gated": False, "disabled": False, "library_name": "transformers",
        "tags": ["transformers", "alkn", f"version:{version.number}"],
        "siblings": [{"rfilename": f["path"]} for f in version.files or []],
    }


@router.get("/api/models/{namespace}/{name}", include_in_schema=True)
def repo_info(namespace: str, name: str, session: SessionDep,
              tenant: TenantDep) -> dict[str, Any]:
    """The repo at `main`: its newest ready version."""
    model = _repo(session, tenant, namespace, name)
    return _info(namespace, model, _revision(session, model, "main"))


@router.get("/api/models/{namespace}/{name}/revision/{revision}")
def repo_info_at(namespace: str, name: str, revision: str, session: SessionDep,
                 tenant: TenantDep) -> dict[str, Any]:
    """The repo at a revision: `sha` is the version's commit, `siblings` its files."""
    model = _repo(session, tenant, namespace, name)
    return _info(namespace, model, _revision(session, model, revision))


@router.get("/api/models/{namespace}/{name}/tree/{revision}")
@router.get("/api/models/{namespace}/{name}/tree/{revision}/{path:path}")
def repo_tree(namespace: str, name: str, revision: str, session: SessionDep,
              tenant: TenantDep, path: str = "") -> list[dict[str, Any]]:
    """The files of a revision (under `path`), as the Hub lists a tree: every file is an LFS
    file whose oid is its sha256. One page, however many files."""
    model = _repo(session, tenant, namespace, name)
    version = _revision(session, model, revision)
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    files = [f for f in version.files or [] if f["path"].startswith(prefix)]
    if prefix and not files:
        raise _hub_error(NotFound(f"no path {quoted(path)} in version {version.number}"),
                         "EntryNotFound")
    return [{"type": "file", "path": f["path"], "size": int(f["size"]), "oid": f["sha256"],
             "lfs": {"oid": f["sha256"], "size": int(f["size"]), "pointerSize": 0}}
            for f in files]


def _entry(store: ArtifactStore, version: Version, path: str) -> dict[str, Any]:
    entry = next((f for f in version.files or [] if f["path"] == path), None)
    if entry is None or not store.exists(version.storage_key, path):
        raise _hub_error(NotFound(f"version {version.number} has no file {quoted(path)}"),
                         "EntryNotFound")
    return entry


def _resolve(session: Session, store: ArtifactStore, tenant: str, namespace: str, name: str,
             revision: str, path: str) -> tuple[Version, dict[str, Any], dict[str, str]]:
    model = _repo(session, tenant, namespace, name)
    version = _revision(session, model, revision)
    entry = _entry(store, version, path)
    return version, entry, {"X-Repo-Commit": model_versions.commit_sha(version),
                            "X-Linked-Size": str(entry["size"])}


@router.get("/{namespace}/{name}/resolve/{revision}/{path:path}",
            response_class=Response,
            responses={200: {"description": "the file",
                             "content": {"application/octet-stream": BINARY_BODY}},
                       206: {"description": "the requested byte range",
                             "content": {"application/octet-stream": BINARY_BODY}},
                       **problems(416)})
def resolve_file(namespace: str, name: str, revision: str, path: str, request: Request,
                 session: SessionDep, store: StoreDep, tenant: TenantDep) -> Response:
    """A file of the repo at a revision: `X-Repo-Commit`, `ETag` (its sha256) and `Range`,
    as the Hub serves it."""
    version, entry, extra = _resolve(session, store, tenant, namespace, name, revision, path)
    return file_response(request, store, version, entry, extra)


@router.head("/{namespace}/{name}/resolve/{revision}/{path:path}", include_in_schema=False)
def resolve_head(namespace: str, name: str, revision: str, path: str, session: SessionDep,
                 store: StoreDep, tenant: TenantDep) -> Response:
    _, entry, extra = _resolve(session, store, tenant, namespace, name, revision, path)
    return file_head(entry, extra)
