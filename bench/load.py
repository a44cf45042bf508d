"""Load: many forget requests from many concurrent clients on one lineage.

    python bench/load.py --url http://127.0.0.1:8000 --api-key KEY --model demo \
        --requests 500 --concurrency 50

Each request forgets one made-up text item. Prints the submission rate (requests/s answered
202), the end-to-end time (first submission to last request finished), how many jobs served
them (coalescing: queued requests of one lineage are merged into one job) and whether every
request ended `succeeded` exactly once. tests/test_faults.py runs it against a real stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


def text_item(i: int) -> list[dict[str, str]]:
    return [{"text": f"Load item {i}: customer {i} lives at {i * 7919 % 10007} Elm Street."}]


@dataclass
class LoadResult:
    ids: list[str]  # in submission order
    submit_s: float  # first submission sent to last 202 received
    end_to_end_s: float  # first submission sent to every request finished
    statuses: dict[str, str]  # id -> final status
    jobs: Counter[str] = field(default_factory=Counter)  # job id -> requests it served
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (status, body) not 202

    @property
    def accepted_per_s(self) -> float:
        return len(self.ids) / self.submit_s if self.submit_s > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.ids), "rejected": len(self.rejected),
                "accepted_per_s": round(self.accepted_per_s, 1),
                "submit_s": round(self.submit_s, 2), "end_to_end_s": round(self.end_to_end_s, 2),
                "statuses": dict(Counter(self.statuses.values())), "jobs": len(self.jobs),
                "largest_job": max(self.jobs.values(), default=0)}


async def submit_all(client: httpx.AsyncClient, model: str, n: int, concurrency: int,
                     items: Callable[[int], list[dict[str, Any]]]
                     ) -> tuple[list[str], list[tuple[int, str]]]:
    """`n` submissions from `concurrency` clients working through one shared counter."""
    ids: list[str | None] = [None] * n
    rejected: list[tuple[int, str]] = []
    counter = iter(range(n))

    async def client_loop() -> None:
        for i in counter:  # each client takes the next number: no two send the same
            r = await client.post(f"/v1/models/{model}/forget-requests",
                                  json={"items": items(i)})
            if r.status_code == 202:
                ids[i] = r.json()["id"]
            else:
                rejected.append((r.status_code, r.text[:500]))

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return [i for i in ids if i is not None], rejected


async def _pages(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        r = await client.get(path, params=query)
        r.raise_for_status()
        body = r.json()
        out += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return out


async def wait_finished(client: httpx.AsyncClient, model: str, ids: list[str],
                        timeout: float, poll_s: float = 0.5) -> dict[str, dict[str, Any]]:
    """Poll the model's request list until none of `ids` is queued or running."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["id"]: r for r in await _pages(client, "/v1/forget-requests", model=model)
                if r["id"] in wanted}
        if len(rows) == len(wanted) and all(r["status"] in FINISHED for r in rows.values()):
            return rows
        if time.monotonic() > deadline:
            pending = Counter(r["status"] for r in rows.values())
            raise TimeoutError(f"not finished after {timeout} s: {dict(pending)}")
        await asyncio.sleep(poll_s)


async def run_load(base_url: str, api_key: str, model: str, *, requests: int = 500,
                   concurrency: int = 50, items: Callable[[int], list[dict[str, Any]]] = text_item,
                   timeout: float = 600.0) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {api_key}"}) as client:
        t0 = time.monotonic()
        ids, rejected = await submit_all(client, model, requests, concurrency, items)
        submit_s = time.monotonic() - t0
        rows = await wait_finished(client, model, ids, timeout)
        end_to_end_s = time.monotonic() - t0
    return LoadResult(ids=ids, submit_s=submit_s, end_to_end_s=end_to_end_s,
                      statuses={i: r["status"] for i, r in rows.items()},
                      jobs=Counter(r["job_id"] for r in rows.values() if r["job_id"]),
                      rejected=rejected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", required=True, help="a registered model with a ready version")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()
    result = asyncio.run(run_load(args.url, args.api_key, args.model, requests=args.requests,
                                  concurrency=args.concurrency, timeout=args.timeout))
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
