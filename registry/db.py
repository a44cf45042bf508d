"""Engine and sessions. One engine per process (per database URL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


@lru_cache
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets the API read while the worker writes; foreign keys are off by default.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # Deleted content is overwritten with zeros, not left in the file: a purge must
            # leave no forget text behind (registry/erasure.py).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    # No pre-ping (a round trip on every checkout): a connection the server dropped fails
    # one request, SQLAlchemy then invalidates the pool, and recycling bounds idle age.
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)


@lru_cache
def _factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on error."""
    session = _factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def new_session(url: str) -> Session:
    return _factory(url)()


@contextmanager
def read_connection(url: str) -> Iterator[Connection]:
    """A pooled connection in autocommit mode, for single-statement reads: no BEGIN and
    ROLLBACK round trips around the one query (the hot status-polling path)."""
    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn
