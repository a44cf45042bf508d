"""Settings from environment variables prefixed ALKN_ (documented in the README)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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
    max_version_files: int = Field(
        default=10_000, ge=1, description="most files a version may hold (uploads and "
        "registrations past it answer 413, before anything is published)")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="most bytes of a request's line and headers; "
        "past it the server answers 400 and closes the connection, before the app sees it")
    queue: str = "gpu"
    queue_routes: str = Field(
        default="", description="GB:queue pairs, e.g. '40:gpu-40g,80:gpu-80g': a model with "
        "min_gpu_memory_gb goes to the smallest queue whose GPUs have as much (the largest if "
        "none); the others to ALKN_QUEUE")
    lease_seconds: int = 120
    dispatch_interval: float = 0.5
    register_demo: bool = True
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one readable line; json: one object per line")
    log_level: str = "INFO"
    worker_metrics_port: int | None = Field(
        default=None, description="a Celery worker serves Prometheus /metrics on this port")
    job_heartbeat_timeout: float = Field(
        default=300.0, gt=0, description="a running job with no progress for this many s is "
        "presumed hung: its lease is taken back and it is requeued")
    sweep_interval: float = Field(
        default=30.0, gt=0, description="s between the dispatcher's sweeps (stranded "
        "lineages, hung jobs, forget-data retention)")
    job_time_limit: float = Field(
        default=6 * 3600.0, gt=0, description="s a job may run (per attempt) before the "
        "worker kills its process and fails it with time_limit_exceeded")
    max_queued_per_tenant: int = Field(
        default=1000, ge=1, description="a tenant's unfinished (queued or running) forget "
        "requests and evaluation / registration jobs; one more answers 429")
    forget_data_retention: str = Field(
        default="7d", description="how long a finished request keeps its items before they "
        "are purged to hashes: seconds, or a number with s, m, h or d")
    hash_secret: str | None = Field(
        default=None, description="key of the HMACs of purged items and idempotent request "
        "bodies; unset: a secret generated once and kept in the database")
    register_inline_bytes: int = Field(
        default=2**30, ge=0, description="a registered source up to this size is copied "
        "inside the request (201); a larger one by a registration job (202, poll the job)")
    archive_link_seconds: int = Field(
        default=600, ge=10, le=7 * 86400, description="how long a signed archive link "
        "(POST .../versions/{ref}:archive-link, the dashboard's download) works")
    idempotency_ttl: str = Field(
        default="24h", description="how long an Idempotency-Key's first answer is replayed "
        "(then the sweep deletes it): seconds, or a number with s, m, h or d")
    template_time_limit: float = Field(
        default=10.0, gt=0, description="s one chat template render may take before it is "
        "stopped and the job fails (invalid_input)")
    template_output_limit: int = Field(
        default=1_000_000, gt=0, description="characters a rendered chat template may have")
    template_memory_limit: int = Field(
        default=2**30, gt=0, description="bytes of memory a chat template render may use")

    @field_validator("forget_data_retention", "idempotency_ttl")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def forget_data_retention_s(self) -> float:
        return parse_duration(self.forget_data_retention)

    @property
    def idempotency_ttl_s(self) -> float:
        return parse_duration(self.idempotency_ttl)

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
        """ALKN_MODEL_SOURCE_ROOTS (default: the working directory and ALKN_HOME). The
        artifact store is never a source, whatever these say (registry/source_roots.py)."""
        if self.model_source_roots:
            return [Path(p).resolve() for p in self.model_source_roots.split(":") if p]
        return [Path(os.getcwd()).resolve(), self.home.resolve()]

    @property
    def local_artifact_root(self) -> Path | None:
        """The artifact store's directory; None for an S3 store."""
        root = self.resolved_artifact_root
        return None if root.startswith("s3://") else Path(root).resolve()


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str) -> float:
    """Seconds of "90", "90s", "15m", "12h" or "7d"; ValueError for anything else."""
    text = value.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 15m, 12h, 7d)") \
            from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"a duration must be finite and >= 0, got {value!r}")
    return seconds


@lru_cache
def get_settings() -> Settings:
    return Settings()
