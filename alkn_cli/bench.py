"""`alkn bench NAME ...`: bench/NAME.py of the source checkout, every later argument its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmarks of the source checkout (bench/)")
    b.add_argument("bench_command", metavar="NAME",
                   help="continual: the paper's protocol (alkn bench continual --help)")
    b.set_defaults(handler=lambda a: run_bench(a.bench_command, []))


def run_bench(name: str, rest: list[str]) -> int:
    """bench/<name>.py of the checkout this command was installed from (the benchmarks are
    not part of an installed package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if not path.is_file() or spec is None or spec.loader is None:
        print(f"alkn bench {name}: {path} not found (run from a source checkout)",
              file=sys.stderr)
        return 2
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return int(module.main(rest) or 0)
