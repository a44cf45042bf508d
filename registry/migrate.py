"""Run the Alembic migrations programmatically (`alkn migrate`, service start, tests)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest schema (idempotent)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    inline_items = _has_inline_items(url)
    command.upgrade(alembic_config(url), "head")
    if inline_items:
        _rewrite_after_items_moved(url)


def _has_inline_items(url: str) -> bool:
    """forget_requests still has its items column (a schema before migration 0005)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return inspector.has_table("forget_requests") and any(
                c["name"] == "items" for c in inspector.get_columns("forget_requests"))
    finally:
        engine.dispose()


def _rewrite_after_items_moved(url: str) -> None:
    """Migration 0005 moved the items to forget_items and dropped the column; the old values
    (and items purged before) stay in forget_requests' files until it is rewritten. VACUUM
    cannot run in a transaction, hence here and not in the migration."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("VACUUM FULL forget_requests")
            else:
                conn.exec_driver_sql("VACUUM")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
