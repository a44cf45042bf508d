"""bench/memory.py's smoke test (tiny model): the per-component table in both widths, the
projections to 1B, 8B and 70B, a measured peak per method and the RATIO line."""

from __future__ import annotations

import re
import subprocess
import sys

from .services import ROOT


def test_memory_bench_prints_its_table_projections_and_ratio() -> None:
    # each measured method is a process of its own: the smoke test measures the RATIO's two
    out = subprocess.run([sys.executable, "bench/memory.py", "--size", "tiny", "--forget", "8",
                          "--batch-size", "4", "--measure", "plain,alkn"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for row in ("  AdamW moments (2)", "ALKN score (bf16)", "task vector tau",
                "peak bytes per parameter"):
        assert text.count(row) == 2, row  # fp32 and bf16 tables
    assert re.search(r"^8B\s+64 GB\s+\d+ GB\s+\d+ GB", text, re.M), text
    assert "70B" in text
    for method in ("plain", "alkn"):
        assert re.search(rf"^  {method}\s+[\d.]+ MiB", text, re.M), method
    assert re.search(r"^RATIO memory alkn/plain = \d+\.\d\d", text, re.M)
