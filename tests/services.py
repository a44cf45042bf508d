"""Fixtures for tests that need the real PostgreSQL and Redis of this machine.

Each test session gets its own fresh, migrated PostgreSQL database and its own Redis
database number (flushed), so runs never see each other's rows or messages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

PG_ADMIN = os.environ.get("ALKN_TEST_PG_ADMIN",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("ALKN_TEST_REDIS", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parent.parent
HTTP_PROTOCOL = "api.http_protocol:BoundedHttpToolsProtocol"  # as the Dockerfile serves


def fresh_pg_database() -> str:
    """Create an empty database; returns its URL."""
    name = f"alkn_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    from registry.db import get_engine

    get_engine(url).dispose()
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def migrated_pg_database() -> Iterator[str]:
    """A fresh database with the schema of migrations/, dropped afterwards."""
    from registry.migrate import upgrade

    url = fresh_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with migrated_pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A database of the test module's own: row counts and dumps see only its rows."""
    with migrated_pg_database() as url:
        yield url


def add_model_row(session: Any, tenant_name: str, model_name: str, **fields: Any) -> Any:
    """A tenant and a model of it, written as the API would (the session is flushed, so
    both have their ids); `fields` are more Model columns."""
    from registry.models import Model, Tenant

    tenant = Tenant(name=tenant_name)
    session.add(tenant)
    session.flush()
    model = Model(tenant_id=tenant.id, name=model_name,
                  **{"qa_template": "{question} {answer}", **fields})
    session.add(model)
    session.flush()
    return model


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    # A database number of our own, flushed before and after: pid-based, and under
    # pytest-xdist one per worker of the run (workers gw0, gw1, ... share a parent).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    base = os.getppid() if worker else os.getpid()
    url = f"{REDIS}/{1 + (base + int(worker[2:] or 0)) % 15}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout} s")
        time.sleep(0.1)


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child process with the given environment added, output to `log`."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    handle = log.open("wb")
    return subprocess.Popen([sys.executable, *args], env=full_env, stdout=handle,
                            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


@contextmanager
def api_and_worker(env: dict[str, str], home: Path, pool: list[str]
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """uvicorn serving api.app on a free port and a Celery worker on env["ALKN_QUEUE"] (pool
    options `pool`), logging to home/api.log and home/worker.log. Yields (base URL, worker
    process) once the API answers; stops both and prints their logs' tails afterwards."""
    port = free_port()
    api = start_process(["-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port",
                         str(port), "--http", HTTP_PROTOCOL], env, home / "api.log")
    worker = start_process(["-m", "celery", "-A", "worker.app", "worker", "-Q",
                            env["ALKN_QUEUE"], *pool, "-l", "info"], env, home / "worker.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        yield f"http://127.0.0.1:{port}", worker
    finally:
        stop_process(api)
        stop_process(worker)
        for log in ("api.log", "worker.log"):
            print(f"--- {log} (tail)\n" + (home / log).read_text(errors="replace")[-3000:])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------------------------
# Faults: a database connection that can be cut, a Redis of our own, a filesystem that fills
# --------------------------------------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder from a free local port to `upstream`. `cut()` closes the listener (new
    connections are refused, as by a stopped server) and resets every open connection;
    `restore()` listens on the same port again. Stands between the service and the
    machine's PostgreSQL, which the other tests keep using."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        if self._listener is not None:
            with suppress(OSError):  # wakes the blocked accept() (close() alone does not)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._drop(s)

    def restore(self) -> None:
        if self._listener is None:
            self.start()

    close = cut


class RedisServer:
    """A redis-server of our own on a free port (never the machine's 6379), without
    persistence: stopping it is a broker outage that also loses what it held."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        import redis

        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise TimeoutError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@contextmanager
def small_tmpfs(path: Path, size: str = "64m") -> Iterator[bool]:
    """Mount a tmpfs of `size` at `path` (a filesystem that can really fill up); yields
    False, leaving a plain directory, where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_filesystem(path: Path) -> Path:
    """Take every free byte of the filesystem holding `path`; returns the file to delete."""
    filler = path / ".filler"
    st = os.statvfs(path)
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize)
    return filler
