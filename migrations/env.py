"""Alembic environment: the URL is the service's own (ALKN_DATABASE_URL or the default)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from config.settings import get_settings
from registry.models import Base

config = context.config
url = config.attributes.get("url") or get_settings().resolved_database_url


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(conn) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=conn, target_metadata=Base.metadata,
                      render_as_batch=conn.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
