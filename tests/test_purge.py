"""Gone means gone: after the retention purge, forget text is in no byte of the database's
files; what is kept of it is an HMAC under the deployment's secret; idempotency records
expire.

A request holding a distinctive marker is submitted through the API (with an
Idempotency-Key), run to the end by the real job runner (`run_lineage_once`: job rows,
events, metrics, versions are written as in production) and purged by the dispatcher's
sweep. The database's files are then read as bytes: on SQLite the database file and its
WAL, on PostgreSQL every file of the database's directory (heap, TOAST, indexes, catalogs;
the tables' own files are found with `pg_relation_filepath` under `SHOW data_directory`).
Before the purge the marker must be found there (the search sees what it looks for).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from config.settings import Settings
from registry.db import get_engine, session_scope
from registry.keys import create_api_key
from registry.migrate import upgrade
from registry.models import ForgetRequest, IdempotencyRecord, Model, Tenant, utcnow
from registry.store import LocalStore
from worker.dispatcher import Dispatcher
from worker.runner import run_lineage_once

from .services import migrated_pg_database
from .test_worker import World, register
from .test_worker import worker_world as worker_world  # noqa: F401  (the fixture)


def canonical(value: Any) -> bytes:
    """The README's canonical form, written out here independently of the code."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def hmac_hex(secret: str, value: Any) -> str:
    return hmac.new(secret.encode("utf-8"), canonical(value), hashlib.sha256).hexdigest()


def marked_items(marker: str, person: list[dict[str, str]]) -> list[dict[str, str]]:
    """Two of the fixture's QA with the marker in them, and a long text item (random, so
    PostgreSQL cannot compress it: it goes to TOAST as is; SQLite to overflow pages) with
    the marker every 400 characters (a copy inside every TOAST chunk)."""
    long_text = "".join(secrets.token_urlsafe(300) + f" {marker} " for _ in range(30))
    return [{"question": person[0]["question"], "answer": f"{person[0]['answer']} {marker}"},
            {"question": f"Who is {marker}?", "answer": person[1]["answer"]},
            {"text": long_text}]


def run_and_purge(settings: Settings, world: World, marker: str, before_purge: Any,
                  after_purge: Any = None) -> dict[str, Any]:
    """Submit the marked request through the API (with an Idempotency-Key), run its job,
    call `before_purge()`, purge it with the dispatcher's sweep, then call `after_purge()`
    while the API still runs (its pooled connections open: SQLite deletes the WAL when the
    last connection closes, which a running service never does). Returns the request as
    the API shows it afterwards."""
    url = settings.resolved_database_url
    store = LocalStore(settings.resolved_artifact_root)
    model_id = register(url, store, world)
    with session_scope(url) as s:
        model = s.get(Model, model_id)
        tenant = s.get(Tenant, model.tenant_id)
        key = create_api_key(s, tenant.name)
        name = model.name
    items = marked_items(marker, world.items[world.people[0]])
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        r = client.post(f"/v1/models/{name}/forget-requests", json={"items": items},
                        headers={"Idempotency-Key": str(uuid.uuid4())})
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        assert run_lineage_once(settings, model_id, store=store) >= 1
        done = client.get(f"/v1/forget-requests/{rid}").json()
        assert done["status"] == "succeeded", done
        before_purge()
        Dispatcher(None, settings).sweep()
        shown = client.get(f"/v1/forget-requests/{rid}").json()
        if after_purge is not None:
            after_purge()
    assert shown["items_purged_at"] and len(shown["item_hashes"]) == len(items)
    assert marker not in json.dumps(shown)
    with session_scope(url) as s:
        assert s.get(ForgetRequest, rid).items == []
    return {"request": shown, "items": items}


def assert_marker(files: list[Path], marker: str, present: bool, url: str | None = None
                  ) -> None:
    found = [p for p in files if p.is_file() and marker.encode() in p.read_bytes()]
    relations: list[str | None] = []
    if bool(found) != present and found and url is not None:  # which tables, to say
        with get_engine(url).connect() as conn:
            relations = [conn.execute(sa.text(
                "SELECT relname FROM pg_class WHERE pg_relation_filenode(oid) = :n"),
                {"n": int(p.name.split(".")[0].split("_")[0])}).scalar() for p in found]
    assert bool(found) == present, (f"marker {'not ' if present else ''}found", found,
                                    relations)


# --------------------------------------------------------------------------------------------
# SQLite: the database file and its WAL
# --------------------------------------------------------------------------------------------


def test_purged_text_is_in_no_byte_of_the_sqlite_files(tmp_path: Path,
                                                        worker_world: World) -> None:  # noqa: F811
    marker = f"PurgeMarker{uuid.uuid4().hex[:12]}"
    settings = Settings(home=tmp_path, database_url=None, artifact_root=None, broker_url=None,
                        forget_data_retention="0s", lease_seconds=60)
    url = settings.resolved_database_url
    upgrade(url)
    db = Path(url.removeprefix("sqlite:///"))
    files = [db, db.with_name(db.name + "-wal")]
    with get_engine(url).connect() as conn:  # set on every connection (a build may not)
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar_one() == 1
    run_and_purge(settings, worker_world, marker,
                  lambda: assert_marker(files, marker, present=True),
                  lambda: assert_marker(files, marker, present=False))


# --------------------------------------------------------------------------------------------
# PostgreSQL: every file of the database's directory
# --------------------------------------------------------------------------------------------


@pytest.fixture
def own_pg() -> Iterator[str]:
    with migrated_pg_database() as url:  # per test: erasure state is per database
        yield url


def pg_database_files(url: str) -> list[Path]:
    """The files of the database's directory, after a CHECKPOINT has written every page;
    the forget_requests and forget items tables (and their TOAST) are among them."""
    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CHECKPOINT"))
        data_dir = Path(conn.execute(sa.text("SHOW data_directory")).scalar_one())
        paths = [conn.execute(sa.text("SELECT pg_relation_filepath(:t)"), {"t": t}).scalar_one()
                 for t in ("forget_requests", "jobs", "job_events", "idempotency_keys")]
        toast = conn.execute(sa.text(
            "SELECT pg_relation_filepath(reltoastrelid) FROM pg_class "
            "WHERE relname = 'forget_requests'")).scalar_one()
    directory = data_dir / Path(paths[0]).parent
    try:
        files = sorted(directory.iterdir())
    except OSError:
        pytest.skip(f"the PostgreSQL data directory {directory} is not readable here")
    assert {data_dir / p for p in [*paths, toast]} <= set(files)
    return files


def pg_settings(url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, database_url=url, artifact_root=str(tmp_path / "artifacts"),
                    forget_data_retention="0s", lease_seconds=60)


def test_purged_text_is_in_no_byte_of_the_postgresql_files(own_pg: str, tmp_path: Path,
                                                            worker_world: World  # noqa: F811
                                                            ) -> None:
    marker = f"PurgeMarker{uuid.uuid4().hex[:12]}"
    settings = pg_settings(own_pg, tmp_path)
    run_and_purge(settings, worker_world, marker,
                  lambda: assert_marker(pg_database_files(own_pg), marker, present=True))
    # On a busy machine the erasure may wait for the next sweeps (its 2 s lock timeout, an
    # older snapshot in this database): that is the design; the bytes must go by then.
    erased_by_sweep(settings)
    assert_marker(pg_database_files(own_pg), marker, present=False, url=own_pg)


def erased_by_sweep(settings: Settings, within: float = 60.0) -> None:
    from registry.erasure import erase_pending

    url = settings.resolved_database_url
    deadline = time.monotonic() + within
    while erase_pending(url) and time.monotonic() < deadline:
        time.sleep(1.0)
        Dispatcher(None, settings).sweep()
    assert not erase_pending(url), f"the erasure still waits after {within} s of sweeps"


def purge_while_held(settings: Settings, world: World, holder_url: str, statement: str,
                     isolation: str, while_held: Callable[[], None] | None = None
                     ) -> tuple[str, bool]:
    """Purge a marked request while a connection to `holder_url` has run `statement` in a
    transaction opened before the purge (at `isolation`); that transaction ends after
    `while_held`. Returns the marker and whether the erasure was still pending right after
    the purge, while it was open."""
    from registry.erasure import erase_pending

    marker = f"PurgeMarker{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(holder_url)
    holder = engine.connect().execution_options(isolation_level=isolation)
    try:
        run_and_purge(settings, world, marker,
                      lambda: holder.execute(sa.text(statement)).scalar_one())
        pending = erase_pending(settings.resolved_database_url)
        if while_held is not None:
            while_held()
        holder.rollback()
    finally:
        holder.close()
        engine.dispose()
    return marker, pending


def test_an_old_snapshot_delays_the_erasure_until_it_ends(own_pg: str, tmp_path: Path,
                                                          worker_world: World  # noqa: F811
                                                          ) -> None:
    """VACUUM FULL would copy rows a snapshot older than the purge still sees into the new
    files: the erasure waits for that snapshot to end (the sweeps after it then erase)."""
    settings = pg_settings(own_pg, tmp_path)
    # a snapshot, and no lock on forget_items
    marker, pending = purge_while_held(settings, worker_world, own_pg,
                                       "SELECT count(*) FROM jobs", "REPEATABLE READ")
    assert pending
    erased_by_sweep(settings)  # once it ended (and any parallel test's older writer)
    assert_marker(pg_database_files(own_pg), marker, present=False)


def test_a_snapshot_in_another_database_does_not_delay_the_erasure(
        own_pg: str, tmp_path: Path, worker_world: World) -> None:  # noqa: F811
    """A snapshot in another database of the cluster (another service's; a parallel test's)
    does not hold back this database's vacuum horizon: the purge erases while it is open.
    (Right after the purge a parallel test's writer, older than the purge, may still hold
    the erasure back for a sweep or two: the sweeps go on while the snapshot stays open.)"""
    settings = pg_settings(own_pg, tmp_path)
    with migrated_pg_database() as other_url:
        marker, _ = purge_while_held(settings, worker_world, other_url,
                                     "SELECT count(*) FROM jobs", "REPEATABLE READ",
                                     while_held=lambda: erased_by_sweep(settings))
    assert_marker(pg_database_files(own_pg), marker, present=False)


@pytest.mark.parametrize("where", ["another database", "this database"])
def test_a_running_transaction_older_than_the_purge_delays_the_erasure(
        own_pg: str, tmp_path: Path, worker_world: World, where: str) -> None:  # noqa: F811
    """A transaction that holds a transaction id from before the purge, in any database of
    the cluster (idle in READ COMMITTED: no backend_xmin), bounds VACUUM FULL's horizon: it
    would copy the purged row into the new file. The erasure waits for it to end."""
    settings = pg_settings(own_pg, tmp_path)
    with (migrated_pg_database() if where == "another database"
          else contextlib.nullcontext(own_pg)) as holder_url:
        marker, pending = purge_while_held(settings, worker_world, holder_url,
                                           "SELECT pg_current_xact_id()", "READ COMMITTED")
    assert pending
    erased_by_sweep(settings)  # once it ended (and any parallel test's older writer)
    assert_marker(pg_database_files(own_pg), marker, present=False, url=own_pg)


# --------------------------------------------------------------------------------------------
# HMACs and idempotency records
# --------------------------------------------------------------------------------------------


def add_finished_request(url: str, items: list[dict[str, Any]]) -> str:
    with session_scope(url) as s:
        model = s.scalars(select(Model)).first()
        req = ForgetRequest(tenant_id=model.tenant_id, model_id=model.id, status="succeeded",
                            method="alkn", items=items, item_count=len(items),
                            finished_at=utcnow() - timedelta(hours=1))
        s.add(req)
        s.flush()
        return req.id


def test_item_hashes_are_hmacs_under_the_deployment_secret(own_pg: str, tmp_path: Path) -> None:
    from .services import add_model_row

    with session_scope(own_pg) as s:
        add_model_row(s, "hashes", "m")
    items = [{"question": "Wo wohnt Zoë?", "answer": "In Köln."}, {"text": "Zoë, 42 ⚑"}]
    sha = [hashlib.sha256(canonical(i)).hexdigest() for i in items]

    def purged(settings: Settings) -> list[str]:
        rid = add_finished_request(own_pg, items)
        Dispatcher(None, settings).sweep()
        with session_scope(own_pg) as s:
            return list(s.get(ForgetRequest, rid).item_hashes)

    base = dict(home=tmp_path, database_url=own_pg, artifact_root=str(tmp_path / "a"),
                forget_data_retention="1m")
    configured = Settings(**base, hash_secret="a secret of the operator's")
    assert purged(configured) == [hmac_hex("a secret of the operator's", i) for i in items]
    assert purged(configured) == purged(configured)  # stable for a given secret
    assert purged(Settings(**base, hash_secret="another")) != purged(configured)
    # Unset: the secret generated once for the deployment, kept in its database.
    with session_scope(own_pg) as s:
        stored = s.execute(sa.text("SELECT value FROM deployment_secrets WHERE name = 'hash'")
                           ).scalar_one()
    assert len(stored) == 64
    generated = purged(Settings(**base))
    assert generated == [hmac_hex(stored, i) for i in items] == purged(Settings(**base))
    assert not set(generated) & set(sha)  # never the plain sha256


def test_idempotency_records_hold_an_hmac_and_expire(own_pg: str, tmp_path: Path,
                                                     worker_world: World  # noqa: F811
                                                     ) -> None:
    assert Settings().idempotency_ttl_s == 24 * 3600  # the default
    with pytest.raises(ValueError, match="duration"):
        Settings(idempotency_ttl="a day")
    secret = "idempotency test secret"
    settings = Settings(home=tmp_path, database_url=own_pg, hash_secret=secret,
                        artifact_root=str(tmp_path / "artifacts"))
    model_id = register(own_pg, LocalStore(settings.resolved_artifact_root), worker_world)
    with session_scope(own_pg) as s:
        model = s.get(Model, model_id)
        key = create_api_key(s, s.get(Tenant, model.tenant_id).name)
        name = model.name
    body = {"items": worker_world.items[worker_world.people[0]][:2]}
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        first = [client.post(f"/v1/models/{name}/forget-requests", json=body,
                             headers={"Idempotency-Key": k}) for k in ("old", "new")]
        assert all(r.status_code == 202 for r in first)
        with session_scope(own_pg) as s:
            records = {r.key: r for r in s.scalars(select(IdempotencyRecord))}
        assert {r.request_hash for r in records.values()} == {hmac_hex(secret, body)}
        assert hashlib.sha256(canonical(body)).hexdigest() != hmac_hex(secret, body)
        # Within the TTL the first answer is replayed.
        again = client.post(f"/v1/models/{name}/forget-requests", json=body,
                            headers={"Idempotency-Key": "old"})
        assert again.json()["id"] == first[0].json()["id"]
        with session_scope(own_pg) as s:
            s.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == "old")
                      .values(created_at=sa.func.now() - timedelta(hours=24, seconds=1)))
            s.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == "new")
                      .values(created_at=sa.func.now() - timedelta(hours=23)))
        Dispatcher(None, settings).sweep()
        with session_scope(own_pg) as s:
            assert [r.key for r in s.scalars(select(IdempotencyRecord))] == ["new"]
        # Expired: the key is free again (a new request, not the old answer).
        later = client.post(f"/v1/models/{name}/forget-requests", json=body,
                            headers={"Idempotency-Key": "old"})
        assert later.status_code == 202 and later.json()["id"] != first[0].json()["id"]
