"""Settings from environment variables prefixed ALKN_ (documented in the README)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALKN_", extra="ignore")

    home: Path = Field(default=Path(".alkn"), description="root of the embedded default")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///$ALKN_HOME/alkn.db")
    broker_url: str | None = Field(
        default=None, description="Celery broker; default SQLAlchemy transport on SQLite")
    artifact_root: str | None = Field(
        default=None, description="directory or s3://bucket/prefix; default $ALKN_HOME/artifacts")
    model_source_roots: str | None = Field(
        default=None, description="':'-separated dirs a model source.path may lie under")
    bootstrap_api_key: str | None = None
    max_json_bytes: int = 32 * 2**20
    max_upload_bytes: int = 8 * 2**30
    queue: str = "gpu"
    lease_seconds: int = 120
    dispatch_interval: float = 0.5
    register_demo: bool = True

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'alkn.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root or str((self.home / "artifacts").resolve())

    @property
    def source_roots(self) -> list[Path]:
        if self.model_source_roots:
            return [Path(p).resolve() for p in self.model_source_roots.split(":") if p]
        return [Path(os.getcwd()).resolve(), self.home.resolve()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
