"""What the command groups share: the settings and bringing the database to the newest
schema (every command that touches the database does it first)."""

from __future__ import annotations

from typing import Any


def get_settings() -> Any:
    from config import settings

    return settings.get_settings()


def migrate() -> None:
    from registry.migrate import upgrade

    s = get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(s.resolved_database_url)
