"""The `alkn` command: one module per command group, each adding its subcommands (with their
handler) to the parser; `main` parses and calls the handler. Exit codes: 0 ok, 1 failed,
2 usage, 3 a version below its quality floor (`status --watch`), 130 interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, client, keys, service, training

# The command groups, in the order `alkn --help` lists them.
GROUPS = (service, keys, training, bench, client)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="alkn", description="ALKN-as-a-service")
    sub = ap.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # every later argument is the benchmark's own (`alkn bench --help` is this parser's)
    if len(argv) >= 2 and argv[0] == "bench" and not argv[1].startswith("-"):
        return bench.run_bench(argv[1], argv[2:])
    args = parser().parse_args(argv)
    return int(args.handler(args))
