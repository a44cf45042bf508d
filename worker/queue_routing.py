"""Which worker queue a model's jobs go to: workers are started per GPU size, each on the
queues of every size it can hold (`-Q gpu,gpu-40g,gpu-80g` on an 80 GB GPU), and a model that
needs `min_gpu_memory_gb` goes to the smallest queue whose GPUs have as much.

ALKN_QUEUE_ROUTES: "GB:queue" pairs ("40:gpu-40g,80:gpu-80g"). A model without a need, or
without routes, goes to ALKN_QUEUE; one that needs more than every route, to the largest
(its jobs may then run out of memory: the job says so)."""

from __future__ import annotations


def parse_routes(spec: str) -> list[tuple[int, str]]:
    """[(GB, queue)] sorted by size; ValueError names a malformed pair."""
    routes = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        size, sep, queue = part.partition(":")
        if not sep or not size.strip().isdigit() or not queue.strip():
            raise ValueError(f"ALKN_QUEUE_ROUTES: {part!r} is not GB:queue")
        routes.append((int(size), queue.strip()))
    return sorted(routes)


def queue_for(min_gpu_memory_gb: int | None, routes: list[tuple[int, str]],
              default: str) -> str:
    if min_gpu_memory_gb is None or not routes:
        return default
    for size, queue in routes:
        if size >= min_gpu_memory_gb:
            return queue
    return routes[-1][1]
