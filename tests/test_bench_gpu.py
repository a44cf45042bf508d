"""bench/gpu.py's smoke test: its tiny size on CPU, the same code path a GPU run takes (a
random-initialised Llama, ALKN's probing, scored and masked steps beside plain ones)."""

from __future__ import annotations

import json
import subprocess
import sys

from .services import ROOT


def test_gpu_bench_runs_its_tiny_size_on_cpu() -> None:
    out = subprocess.run([sys.executable, "bench/gpu.py", "--size", "tiny", "--batch", "2",
                          "--seq", "32", "--rounds", "2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["plain", "alkn"]
    for r in rows:
        assert r["params"] > 0 and r["step_s"] > 0 and r["tokens_per_s"] > 0
    assert any(line.startswith("RATIO step alkn/plain = ") for line in lines)
    assert any(line.startswith("RATIO memory alkn/plain = ") for line in lines)
