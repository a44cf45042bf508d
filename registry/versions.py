"""A model's versions and aliases: list, resolve a reference (a number, an alias or
"latest"), alias, revoke, and a version's stored evaluation. Functions flush but do not commit,
except `revoke_version` (its bytes are deleted only after the row says so)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from alkn_core.quoting import quoted

from .catalog import lock_model
from .errors import Conflict, Invalid, NotFound
from .models import Alias, Job, Model, Version, utcnow
from .store import ArtifactStore

ALIAS_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}")  # starts with a letter: never a number
RESERVED_REFS = frozenset({"latest"})
ACTIVE_JOB_STATUSES = ("queued", "running")
# Version numbers are PostgreSQL integers: a larger number is simply not a version.
MAX_VERSION = 2**31 - 1
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def versions_query(model: Model) -> Select[Version]:
    return select(Version).where(Version.model_id == model.id)


def latest_ready(session: Session, model: Model) -> Version | None:
    return session.scalar(select(Version)
                          .where(Version.model_id == model.id, Version.status == "ready")
                          .order_by(Version.number.desc()).limit(1))


def get_version(session: Session, model: Model, number: int | str) -> Version:
    """Version `number` (an int, or a string of ASCII digits as a path gives it)."""
    # Longer than MAX_VERSION's digits cannot be a version; int() of a huge string would
    # also hit Python's 4300-digit limit (ValueError).
    if isinstance(number, str) and len(number.lstrip("0")) <= len(str(MAX_VERSION)):
        number = int(number)  # leading zeros as before: "0001" is version 1
    if isinstance(number, str) or not 1 <= number <= MAX_VERSION:  # out of the column's range
        raise NotFound(f"model {model.name!r} has no version {quoted(number)}")
    version = session.scalar(select(Version).where(Version.model_id == model.id,
                                                   Version.number == number))
    if version is None:
        raise NotFound(f"model {model.name!r} has no version {number}")
    return version


def resolve_version(session: Session, model: Model, ref: str | int) -> Version:
    """`ref` is a version number, `latest` (the newest ready version) or an alias."""
    # ASCII digits only: str.isdigit() is also true for '²', which int() refuses.
    if isinstance(ref, int) or (ref.isascii() and ref.isdigit()):
        return get_version(session, model, ref)
    if ref == "latest":
        version = latest_ready(session, model)
        if version is None:
            raise NotFound(f"model {model.name!r} has no ready version")
        return version
    number = session.scalar(select(Alias.version).where(Alias.model_id == model.id,
                                                        Alias.name == ref)) \
        if ALIAS_RE.fullmatch(ref) else None
    if number is None:
        raise NotFound(f"model {model.name!r} has no version or alias {quoted(ref)}")
    return get_version(session, model, number)


def commit_sha(version: Version) -> str:
    """The version as a Hugging Face commit: 40 hex digits, fixed for the version's bytes
    (its model, number and storage key)."""
    raw = f"{version.model_id}/{version.number}/{version.storage_key}"
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()


def resolve_revision(session: Session, model: Model, revision: str) -> Version:
    """A Hugging Face revision: `main` (the newest ready version), `v<N>`, an alias, or a
    version's commit sha (`commit_sha`); NotFound otherwise."""
    if revision == "main":
        return resolve_version(session, model, "latest")
    if revision[:1] == "v" and revision[1:].isascii() and revision[1:].isdigit():
        return get_version(session, model, revision[1:])
    if COMMIT_RE.fullmatch(revision):
        for version in session.scalars(versions_query(model)):
            if commit_sha(version) == revision:
                return version
        raise NotFound(f"model {model.name!r} has no commit {revision}")
    if revision.isascii() and revision.isdigit():  # a number is not a revision name here
        raise NotFound(f"model {model.name!r} has no revision {quoted(revision)}; "
                       f"versions are v<N>")
    return resolve_version(session, model, revision)


def require_ready(version: Version) -> Version:
    if version.status != "ready":
        raise Conflict(f"version {version.number} is {version.status}, not ready")
    return version


def aliases_of(session: Session, model_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    ids = list(model_ids)
    if ids:
        for a in session.scalars(select(Alias).where(Alias.model_id.in_(ids))
                                 .order_by(Alias.name)):
            out.setdefault(a.model_id, {})[a.name] = a.version
    return out


def latest_numbers(session: Session, model_ids: Iterable[str]) -> dict[str, int]:
    ids = list(model_ids)
    if not ids:
        return {}
    rows = session.execute(select(Version.model_id, func.max(Version.number))
                           .where(Version.model_id.in_(ids), Version.status == "ready")
                           .group_by(Version.model_id))
    return {mid: n for mid, n in rows}


def set_alias(session: Session, model: Model, alias: str, number: int) -> Alias:
    if not ALIAS_RE.fullmatch(alias) or alias in RESERVED_REFS:
        raise Invalid("alias must match [a-z][a-z0-9._-]{0,63} and not be 'latest'",
                      loc=["path", "alias"])
    require_ready(get_version(session, model, number))
    row = session.get(Alias, (model.id, alias))
    if row is None:
        row = Alias(model_id=model.id, name=alias, version=number)
        session.add(row)
    else:
        row.version = number
    session.flush()
    return row


def delete_alias(session: Session, model: Model, alias: str) -> None:
    row = session.get(Alias, (model.id, alias)) if ALIAS_RE.fullmatch(alias) else None
    if row is None:
        raise NotFound(f"model {model.name!r} has no alias {quoted(alias)}")
    session.delete(row)
    session.flush()


def revoke_version(session: Session, store: ArtifactStore, model: Model, ref: str | int) -> Version:
    """Mark the version revoked, COMMIT, then delete its bytes and ALKN state.

    The row stays (lineage, audit). Revoking an already revoked version deletes its bytes
    again, so a deletion that failed half-way can be retried. 409 while a queued or running
    job starts from it.
    """
    lock_model(session, model.id)
    version = resolve_version(session, model, ref)
    # The version row too: a worker that locks its base version while creating a job is
    # ordered with us, so it never starts from bytes we are deleting.
    version = session.scalars(select(Version).where(Version.id == version.id).with_for_update()
                              .execution_options(populate_existing=True)).one()
    busy = session.scalar(select(Job.id).where(Job.model_id == model.id,
                                               Job.base_version == version.number,
                                               Job.status.in_(ACTIVE_JOB_STATUSES)).limit(1))
    if busy is not None:
        raise Conflict(f"version {version.number} is the base of job {busy}, which has not "
                       "finished; cancel it or wait")
    if version.status == "pending":
        raise Conflict(f"version {version.number} is still being written")
    if version.status != "revoked":
        version.status = "revoked"
        version.revoked_at = utcnow()
    session.commit()
    store.delete(version.storage_key)
    store.delete(version.storage_key + "-state")
    return version


def version_evaluation(version: Version) -> dict[str, Any]:
    if version.evaluation:
        return version.evaluation
    if version.metrics:
        return version.metrics
    raise NotFound(f"version {version.number} has no evaluation (it has not been evaluated)")
