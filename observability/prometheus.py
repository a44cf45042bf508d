"""The Prometheus registry a scrape reads: the process's own, or (several uvicorn workers, a
prefork Celery pool) one that sums every process's metric files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def scrape_registry(own: Any, extra: Sequence[Any] = ()) -> Any:
    """The registry a scrape reads: `own` (which holds `extra` too) in a single process; with
    PROMETHEUS_MULTIPROC_DIR set (several uvicorn workers, a prefork Celery pool) a fresh one
    that sums every process's metric files, plus the `extra` collectors (computed at scrape
    time, not per process)."""
    from prometheus_client import CollectorRegistry, multiprocess

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return own
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    for collector in extra:
        registry.register(collector)
    return registry
