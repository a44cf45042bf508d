"""Torch-free operations on tenants and their models: register (from a directory or an
uploaded archive), look up, lock (used by the API and CLI). Versions and aliases:
versions.py.

Functions flush but do not commit, so a caller can add its own rows (an idempotency record)
to the same transaction; bytes they publish are remembered on the session and
`commit_or_discard` deletes them again if the transaction fails. `revoke_version` is the one
exception: it commits itself, because its bytes must be deleted only after the row says so.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from alkn_core.items import validate_items
from alkn_core.methods import ALL_PARAMS
from alkn_core.params import DEFAULT_QA_TEMPLATE, validate
from alkn_core.quoting import quoted
from archive_safety.tar import ArchiveTooLarge, UnsafeArchive, extract_tar

from .errors import Conflict, Invalid, NotFound, TooLarge
from .model_files import InvalidModelFiles, check_model_dir
from .models import Model, Tenant, Version, utcnow
from .source_roots import REFUSAL, NotAllowed, check_source_dir
from .store import ArtifactStore, FileInfo, LocalStore, regular_files

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

_PUBLISHED = "alkn_published_keys"  # session.info entry: store keys written this transaction


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they are UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise Invalid(f"{what} must match [a-z0-9][a-z0-9._-]{{0,63}}", loc=["body", what])
    return name


def _validated_sets(retain_set: Any, holdout_set: Any, eval_sets: Any
                    ) -> tuple[list[Any], list[Any], dict[str, Any]]:
    def items(value: Any, what: str) -> list[Any]:
        try:
            return validate_items(value or [], what)
        except ValueError as e:
            raise Invalid(str(e), loc=["body", what]) from None

    sets = eval_sets or {}
    if not isinstance(sets, dict):
        raise Invalid("eval_sets must map a set name to a list of items", loc=["body", "eval_sets"])
    return (items(retain_set, "retain_set"), items(holdout_set, "holdout_set"),
            {str(k): items(v, f"eval_sets.{k}") for k, v in sets.items()})


def validate_default_params(params: dict[str, Any] | None, qa_template: str) -> dict[str, Any]:
    """A model's defaults: any method's keys, each checked like a request param."""
    try:
        validate(ALL_PARAMS, {"qa_template": qa_template})
    except ValueError as e:
        raise Invalid(str(e), loc=["body", "qa_template"]) from None
    try:
        # any method's keys: each request then takes the ones its method knows
        validate(ALL_PARAMS, params or {})
    except ValueError as e:
        raise Invalid(str(e), loc=["body", "default_params"]) from None
    return dict(params or {})


def _remember_published(session: Session, key: str) -> None:
    session.info.setdefault(_PUBLISHED, []).append(key)


def discard_published(session: Session, store: ArtifactStore) -> None:
    """Roll back and delete the bytes published in this transaction (nothing points to them)."""
    session.rollback()
    for key in session.info.pop(_PUBLISHED, []):
        try:
            store.delete(key)
        except Exception:  # an orphan costs disk space only; the failure is what matters
            log.exception("could not delete unpublished artifact %s", key)


def commit_or_discard(session: Session, store: ArtifactStore) -> None:
    try:
        session.commit()
    except BaseException:
        discard_published(session, store)
        raise
    session.info.pop(_PUBLISHED, None)


def lock_model(session: Session, model_id: str) -> None:
    """Serialise writers of one lineage: a row lock of the model (SQLAlchemy renders nothing
    on SQLite, whose writers are serial anyway)."""
    session.execute(select(Model.id).where(Model.id == model_id).with_for_update())


def _short_id() -> str:
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def tenant_named(session: Session, name: str) -> Tenant:
    """The tenant of that name, created (and flushed) when there is none."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def get_model(session: Session, tenant_id: str, name: str) -> Model:
    # A name no model can have is not looked up (a NUL byte would be a database error).
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise NotFound(f"model {quoted(name)} not found")
    model = session.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == name))
    if model is None:
        raise NotFound(f"model {quoted(name)} not found")
    return model


def models_query(tenant_id: str) -> Select[Model]:
    return select(Model).where(Model.tenant_id == tenant_id)


def register_model(session: Session, store: ArtifactStore, tenant_id: str, name: str,
                   source_dir: Path | None, description: str = "",
                   qa_template: str = DEFAULT_QA_TEMPLATE,
                   default_params: dict[str, Any] | None = None,
                   retain_set: list[Any] | None = None, holdout_set: list[Any] | None = None,
                   eval_sets: dict[str, Any] | None = None, *,
                   allowed_roots: Sequence[Path] | None = None,
                   max_files: int | None = None, eval_max_items: int | None = None,
                   eval_detail_items: int | None = None,
                   min_gpu_memory_gb: int | None = None) -> Model:
    """A new model; its source directory (if any) is copied into the store as version 1.

    `allowed_roots` (the API passes the tenant's roots, registry.source_roots) restricts
    where the source may lie; None trusts the caller (the CLI registering the bundled demo
    model). A source inside a local artifact store is refused either way. A source of more
    than `max_files` files is TooLarge. Without a source the model has no version until one
    is uploaded.
    """
    check_name(name)
    defaults = validate_default_params(default_params, qa_template)
    retain, holdout, evals = _validated_sets(retain_set, holdout_set, eval_sets)
    src = checked_source(store, source_dir, allowed_roots) if source_dir is not None else None
    # Checked before the (possibly long) copy; the unique constraint still guards races.
    if session.scalar(select(Model.id).where(Model.tenant_id == tenant_id, Model.name == name)):
        raise Conflict(f"model {name!r} already exists", loc=["body", "name"])

    model = Model(id=str(uuid.uuid4()), tenant_id=tenant_id, name=name,
                  description=description or "", qa_template=qa_template,
                  default_params=defaults, retain_set=retain, holdout_set=holdout,
                  eval_sets=evals, eval_max_items=eval_max_items,
                  eval_detail_items=eval_detail_items, min_gpu_memory_gb=min_gpu_memory_gb,
                  created_at=utcnow())
    session.add(model)
    if src is not None:
        key = f"{model.id}/v1-{_short_id()}"
        files = _publish(session, store, src, key, max_files)
        session.add(_root_version(model, 1, key, files))
    session.flush()
    return model


def checked_source(store: ArtifactStore, source_dir: Path,
                   allowed_roots: Sequence[Path] | None, others: Sequence[Path] = ()) -> Path:
    """The source directory, resolved, if it lies under `allowed_roots` (None: trusted), not
    under another tenant's own root (`others`, source_roots.check_source_dir) and not
    inside a local artifact store; Invalid otherwise (saying nothing of the host)."""
    roots = allowed_roots if allowed_roots is not None else [Path(source_dir).resolve()]
    try:
        return check_source_dir(source_dir, roots,
                                store.root if isinstance(store, LocalStore) else None, others)
    except NotAllowed:
        raise Invalid(REFUSAL, loc=["body", "source", "path"]) from None


def _publish(session: Session, store: ArtifactStore, src: Path, key: str,
             max_files: int | None = None) -> list[FileInfo]:
    _remember_published(session, key)  # before: a failed publish may leave a partial copy
    try:
        if max_files is not None:  # counted up to the first file past the bound
            check_file_count(sum(1 for _ in islice(regular_files(src), max_files + 1)),
                             max_files)
        files = store.publish_dir(src, key)
    except ValueError as e:  # scan_dir refuses links and special files
        raise Invalid(f"the model directory holds something other than regular files: {e}"
                      ) from None
    if not any(f.path == "config.json" for f in files):
        raise Invalid("the model directory has no config.json (not a Hugging Face model)")
    return files


def _root_version(model: Model, number: int, key: str, files: list[FileInfo]) -> Version:
    return Version(model_id=model.id, number=number, status="ready", parent_version=None,
                   job_id=None, forget_request_ids=[], method=None,
                   size_bytes=sum(f.size for f in files), files=[f.as_dict() for f in files],
                   storage_key=key, has_state=False, created_at=utcnow())


# --------------------------------------------------------------------------------------------
# Upload of a tar / tar.gz
# --------------------------------------------------------------------------------------------


def check_file_count(count: int, max_files: int) -> None:
    """A version holds at most `max_files` files (ALKN_MAX_VERSION_FILES): its file list is
    part of every answer about it."""
    if count > max_files:
        raise TooLarge(f"a version may hold at most {max_files} files")


def _model_root(extracted: Path) -> Path:
    """config.json at the top, or inside the archive's single top-level directory."""
    if (extracted / "config.json").is_file():
        return extracted
    entries = list(extracted.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    raise Invalid("the archive has no config.json at its top (not a Hugging Face model)")


def register_upload(session: Session, store: ArtifactStore, model: Model, archive: Path, *,
                    max_bytes: int | None = None, max_files: int | None = None) -> Version:
    """A new root version (no parent) of `model` from a .tar / .tar.gz file (at most
    `max_bytes` of content in at most `max_files` files)."""
    # Extracted on the store's filesystem when local, so publishing is a rename.
    staging = store.staging_dir() if isinstance(store, LocalStore) else \
        Path(tempfile.mkdtemp(prefix="alkn-upload-"))
    try:
        try:
            extract_tar(archive, staging, max_bytes, max_files)
        except ArchiveTooLarge as e:
            raise TooLarge(str(e)) from None
        except UnsafeArchive as e:
            raise Invalid(str(e)) from None
        root = _model_root(staging)
        try:  # a version naming files outside itself is never stored
            check_model_dir(root, loadable=False)
        except InvalidModelFiles as e:
            raise Invalid(str(e)) from None
        key = f"{model.id}/root-{uuid.uuid4().hex[:12]}"
        files = _publish(session, store, root, key, max_files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published by rename
    # The number is taken under the model lock, after the slow part.
    lock_model(session, model.id)
    number = (session.scalar(select(func.max(Version.number))
                             .where(Version.model_id == model.id)) or 0) + 1
    version = _root_version(model, number, key, files)
    session.add(version)
    session.flush()
    return version
