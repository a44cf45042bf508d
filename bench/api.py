"""API throughput and latency on the production configuration, side by side in one run.

1. `GET /v1/forget-requests/{id}` (auth, then the change-notified cache or one PostgreSQL
   read) next to a bare async FastAPI route that returns a constant, served by the same
   uvicorn process with the same settings, at 64 concurrent connections over loopback (wrk,
   one thread); the two alternate in rounds. Throughput and p50/p99 latency (medians of the
   rounds; each round's p99 is printed too), and their ratio. With --server-cpu N the
   server runs alone on CPU N: wrk, this script and every other process that may move
   (PostgreSQL, Redis, ...) go to the other CPUs for these rounds, then back.
2. Download of a 200 MB version file through the API (curl) next to reading the same file
   from disk, alternating, with the file's pages dropped from the page cache before each
   (posix_fadvise DONTNEED), so both read the disk. Ratio of throughputs. The downloads
   run on every CPU.

Needs the machine's PostgreSQL (a fresh database is created and dropped) and Redis.

    python bench/api.py [--seconds 10] [--connections 64] [--size-mb 200] [--server-cpu 1]

Needs wrk and curl (Debian: apt-get install wrk curl).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "bench-api-key-0123456789abcdef"
TARGET_STATUS = 0.5
TARGET_P99_MS = 50.0
TARGET_DOWNLOAD = 0.7


def _wrk(url: str, seconds: int, connections: int, headers: dict[str, str]
         ) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from wrk: a C load generator, so the client is not the
    bottleneck; one thread, so on two cores the server keeps one to itself."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{url}: non-2xx answers\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return rps, pct("50"), pct("99")


def _evict(path: Path) -> None:
    """Drop the file's pages from the page cache, so each read really comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _download(url: str, headers: dict[str, str], path: Path) -> float:
    _evict(path)
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    return float(subprocess.run([*cmd, url], capture_output=True, text=True,
                                check=True).stdout)


def _disk(path: Path) -> float:
    _evict(path)
    total = 0
    start = time.perf_counter()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total / (time.perf_counter() - start)


def _isolate(server_pid: int, cpu: int) -> dict[int, set[int]]:
    """Move every other process that may run on `cpu` (PostgreSQL, Redis, ...) to the other
    CPUs, so that the server has it alone; their old affinities, to restore."""
    others = set(range(os.cpu_count() or 1)) - {cpu}
    moved: dict[int, set[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (server_pid, os.getpid()):
            continue
        pid = int(name)
        try:
            if os.readlink(f"/proc/{pid}/exe") and cpu in (old := os.sched_getaffinity(pid)):
                os.sched_setaffinity(pid, others)
                moved[pid] = old
        except OSError:  # kernel threads, processes that ended, pinned ones
            continue
    return moved


def _restore(moved: dict[int, set[int]]) -> None:
    for pid, cpus in moved.items():
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            continue


def _pin(server_pid: int, cpu: int | None) -> None:
    """Every thread of the server on `cpu` (threads it starts later inherit it); this
    process and so wrk and curl on the other CPUs. None: everything back on every CPU."""
    every = set(range(os.cpu_count() or 1))
    for tid in os.listdir(f"/proc/{server_pid}/task"):
        os.sched_setaffinity(int(tid), every if cpu is None else {cpu})
    others = every - {cpu}
    if others:
        os.sched_setaffinity(0, others)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10, help="per route per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--server-cpu", type=int, default=None,
                    help="during the GET rounds, pin the server (--workers 1) to this CPU and "
                         "wrk to the others, so the load generator does not steal its core")
    return ap.parse_args()


def _model_dir(tmp: Path, size_mb: int) -> Path:
    model_dir = tmp / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    with (model_dir / "blob.bin").open("wb") as f:  # incompressible, like weights
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    return model_dir


def _get_rounds(args: argparse.Namespace, base: str, auth: dict[str, str], server_pid: int,
                status_url: str) -> dict[str, tuple[float, ...]]:
    """The status route against a bare route, alternating rounds; medians per route."""
    runs: dict[str, list[tuple[float, float, float]]] = {"status": [], "constant": []}
    moved = _isolate(server_pid, args.server_cpu) if args.server_cpu is not None else {}
    try:
        for _ in range(args.rounds):  # alternate, so noise hits both alike
            for name, url in (("status", status_url), ("constant", f"{base}/bench/constant")):
                runs[name].append(_wrk(url, args.seconds, args.connections, auth))
    finally:
        _restore(moved)
    pinned = "" if args.server_cpu is None else f", server pinned to CPU {args.server_cpu}"
    print(f"GET at {args.connections} connections (wrk), {args.rounds} rounds x "
          f"{args.seconds} s, uvicorn --workers {args.workers}{pinned}")
    summary = {}
    for name, rows in runs.items():
        summary[name] = tuple(statistics.median(r[i] for r in rows) for i in range(3))
        print(f"  {name:9s} {summary[name][0]:8.0f} req/s   p50 {summary[name][1]:6.1f} ms"
              f"   p99 {summary[name][2]:6.1f} ms   (medians of rounds; p99 by round: "
              f"{', '.join(f'{r[2]:.0f}' for r in rows)})")
    return summary


def _download_rates(args: argparse.Namespace, base: str, auth: dict[str, str], tmp: Path
                    ) -> tuple[float, float]:
    """Medians of 5 downloads through the API and of 5 reads of the file from disk."""
    import httpx

    blob = httpx.get(f"{base}/v1/models/bench/versions/1", headers=auth, timeout=120).json()
    assert any(f["path"] == "blob.bin" for f in blob["files"])
    on_disk = next((tmp / "artifacts").rglob("blob.bin"))
    api_rates, disk_rates = [], []
    for _ in range(5):
        api_rates.append(_download(f"{base}/v1/models/bench/versions/1/files/blob.bin",
                                   auth, on_disk))
        disk_rates.append(_disk(on_disk))
    api_rate, disk_rate = statistics.median(api_rates), statistics.median(disk_rates)
    print(f"download of {args.size_mb} MB, page cache dropped before each, unpinned: "
          f"API (curl) {api_rate / 2**20:6.0f} MiB/s   "
          f"disk read {disk_rate / 2**20:6.0f} MiB/s")
    return api_rate, disk_rate


def _verdict(summary: dict[str, tuple[float, ...]], api_rate: float, disk_rate: float) -> int:
    status_ratio = summary["status"][0] / summary["constant"][0]
    download_ratio = api_rate / disk_rate
    print(f"\nRATIO status/bare throughput = {status_ratio:.2f} (target >= {TARGET_STATUS}),"
          f" status p99 = {summary['status'][2]:.1f} ms (target <= {TARGET_P99_MS})")
    print(f"RATIO download API/disk = {download_ratio:.2f} (target >= {TARGET_DOWNLOAD})")
    ok = (status_ratio >= TARGET_STATUS and summary["status"][2] <= TARGET_P99_MS
          and download_ratio >= TARGET_DOWNLOAD)
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def main() -> int:
    import httpx

    for tool in ("wrk", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/api.py needs {tool} (Debian: apt-get install {tool})")
    from registry.migrate import upgrade
    from tests.services import (
        HTTP_PROTOCOL,
        drop_pg_database,
        free_port,
        fresh_pg_database,
        start_process,
        stop_process,
        wait_http,
    )

    args = _parse_args()
    db = fresh_pg_database()
    upgrade(db)
    tmp = Path(tempfile.mkdtemp(prefix="alkn-bench-"))
    model_dir = _model_dir(tmp, args.size_mb)
    env = {"ALKN_DATABASE_URL": db, "ALKN_BROKER_URL": "redis://127.0.0.1:6379/14",
           "ALKN_ARTIFACT_ROOT": str(tmp / "artifacts"), "ALKN_HOME": str(tmp),
           "ALKN_MODEL_SOURCE_ROOTS": str(tmp), "ALKN_BOOTSTRAP_API_KEY": KEY}
    port = free_port()
    server = start_process(["-m", "uvicorn", "bench.api_app:app", "--host", "127.0.0.1",
                            "--port", str(port), "--workers", str(args.workers),
                            "--log-level", "warning", "--no-access-log",
                            "--http", HTTP_PROTOCOL], env, tmp / "api.log")
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        wait_http(f"{base}/healthz")
        if args.server_cpu is not None:
            _pin(server.pid, args.server_cpu)
        r = httpx.post(f"{base}/v1/models", headers=auth, timeout=300, json={
            "name": "bench", "source": {"path": str(model_dir)},
            "retain_set": [{"question": "q?", "answer": "a."}]})
        assert r.status_code == 201, r.text
        # The request is never run (no worker): only its status is read.
        r = httpx.post(f"{base}/v1/models/bench/forget-requests", headers=auth,
                       json={"items": [{"question": "Who?", "answer": "Nobody."}]})
        assert r.status_code == 202, r.text
        summary = _get_rounds(args, base, auth, server.pid,
                              f"{base}/v1/forget-requests/{r.json()['id']}")
        if args.server_cpu is not None:
            # Downloads unpinned: the server reads the next chunk in a thread while it sends
            # the current one, which needs a second CPU, as it has in any deployment.
            _pin(server.pid, None)
        return _verdict(summary, *_download_rates(args, base, auth, tmp))
    finally:
        stop_process(server)
        drop_pg_database(db)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
