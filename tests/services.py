"""Fixtures for tests that need the real PostgreSQL and Redis of this machine.

Each test session gets its own fresh, migrated PostgreSQL database and its own Redis
database number (flushed), so runs never see each other's rows or messages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN = os.environ.get("ALKN_TEST_PG_ADMIN",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("ALKN_TEST_REDIS", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    # A database number of our own (pid-based), flushed before and after.
    url = f"{REDIS}/{1 + os.getpid() % 15}"
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


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
