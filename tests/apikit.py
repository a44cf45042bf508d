"""A running API on a database of the test module's own, and what the hostile-input,
tenancy and schemathesis tests check with it: the database's rows, the artifact
store's files, raw (un-normalised) request paths.

`api_world` is a module-scoped fixture (registered by conftest): each test module that uses
it gets a fresh PostgreSQL database, artifact store and source root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from config.settings import Settings
from registry.db import get_engine

BOOT_KEY = "alkn_world_bootstrap_key_0123456789"
QA = [{"question": "Where was Ilsa born?", "answer": "Ilsa was born in Port Tavrin."},
      {"question": "What does Ilsa do?", "answer": "Ilsa is a glassblower."}]
MAX_JSON_BYTES = 64 * 1024
MAX_UPLOAD_BYTES = 1 << 20
# Columns that a read may legitimately change, per table, left out of `unchanged`'s
# snapshot. None at present (an API key has no last-used time, say).
VOLATILE_COLUMNS: dict[str, set[str]] = {}


def write_model_dir(d: Path) -> Path:
    """The smallest directory registration accepts (config.json) plus a weights file."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "model.safetensors").write_bytes(os.urandom(2048))
    return d


@dataclass
class ApiWorld:
    app: FastAPI
    client: TestClient  # authenticated as the bootstrap key (tenant "default")
    settings: Settings
    db_url: str
    source_root: Path  # the only ALKN_MODEL_SOURCE_ROOTS entry
    model_dir: Path  # a valid model directory under it
    model: str  # a model of tenant "default" with a retain set and ready version 1

    @property
    def artifact_root(self) -> Path:
        return Path(self.settings.resolved_artifact_root)

    def row_counts(self) -> dict[str, int]:
        """Rows in every table (the Alembic bookkeeping aside)."""
        engine = get_engine(self.db_url)
        with engine.connect() as conn:
            tables = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
            return {t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                    for t in tables}

    @cached_property
    def _row_queries(self) -> dict[str, tuple[sa.TextClause, bool]]:
        """Per table (the Alembic bookkeeping aside): the query of its rows, in key order,
        without VOLATILE_COLUMNS, and whether it has a key (the schema does not change)."""
        with get_engine(self.db_url).connect() as conn:
            inspector = sa.inspect(conn)
            out: dict[str, tuple[sa.TextClause, bool]] = {}
            for t in sorted(inspector.get_table_names()):
                if t == "alembic_version":
                    continue
                skip = VOLATILE_COLUMNS.get(t, set())
                cols = [c["name"] for c in inspector.get_columns(t) if c["name"] not in skip]
                keys = inspector.get_pk_constraint(t)["constrained_columns"]
                # By the key (json columns cannot be compared in PostgreSQL); a table
                # without one is sorted here.
                out[t] = (sa.text("SELECT {} FROM \"{}\"{}".format(
                    ", ".join(f'"{c}"' for c in cols), t,
                    " ORDER BY " + ", ".join(f'"{c}"' for c in keys) if keys else "")),
                    bool(keys))
            return out

    def table_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, as tuples of its columns: an UPDATE shows, not only an
        INSERT or a DELETE."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        with get_engine(self.db_url).connect() as conn:
            for t, (query, keyed) in self._row_queries.items():
                rows = [tuple(row) for row in conn.execute(query)]
                out[t] = rows if keyed else sorted(rows, key=repr)
        return out

    def store_files(self) -> dict[str, int]:
        """Every entry under the artifact root (staging included), with its size."""
        return {p.relative_to(self.artifact_root).as_posix(): p.lstat().st_size
                for p in sorted(self.artifact_root.rglob("*"))}

    def snapshot(self) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, int]]:
        """What a refused request must leave as it was: every row's content, stored files."""
        return self.table_rows(), self.store_files()

    @contextmanager
    def unchanged(self) -> Iterator[None]:
        """Asserts that the block wrote no row (inserted, updated or deleted) and no file
        (staging included)."""
        rows, files = self.snapshot()
        yield
        rows_after, files_after = self.snapshot()
        changed = {t: {"before": [r for r in rows.get(t, []) if r not in after],
                       "after": [r for r in after if r not in rows.get(t, [])]}
                   for t, after in rows_after.items() if after != rows.get(t)}
        assert not changed, f"a refused request changed rows: {changed}"
        assert files_after == files, "a refused request wrote or removed a file"


def raw_request(app: FastAPI, method: str, raw_path: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send `raw_path` (percent-encoded as on the wire) to the app as a server hands it
    over: '..' segments untouched (HTTP clients normalise them away before sending), and
    header values as any latin-1 bytes (clients refuse some)."""
    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": unquote(path), "raw_path": path.encode("ascii"),
        "root_path": "", "query_string": query.encode("ascii"), "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in {"host": "testserver", "content-length": str(len(body)),
                                 **(headers or {})}.items()],
    }
    status = 0
    out_headers: dict[str, str] = {}
    body = bytearray()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await anyio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.update({k.decode("latin-1"): v.decode("latin-1")
                                for k, v in message.get("headers", [])})
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    async def call() -> None:
        await app(scope, receive, send)

    anyio.run(call)
    return status, out_headers, bytes(body)


@pytest.fixture(scope="module")
def api_world(module_pg_url: str, redis_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    home = tmp_path_factory.mktemp("world")
    source_root = home / "sources"
    model_dir = write_model_dir(source_root / "tiny")
    settings = Settings(home=home, database_url=module_pg_url, broker_url=redis_url,
                        artifact_root=str(home / "artifacts"),
                        model_source_roots=str(source_root), bootstrap_api_key=BOOT_KEY,
                        max_json_bytes=MAX_JSON_BYTES, max_upload_bytes=MAX_UPLOAD_BYTES)
    app = create_app(settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {BOOT_KEY}"
        r = client.post("/v1/models", json={"name": "world", "source": {"path": str(model_dir)},
                                            "retain_set": QA[1:]})
        assert r.status_code == 201, r.text
        yield ApiWorld(app, client, settings, module_pg_url, source_root, model_dir, "world")
