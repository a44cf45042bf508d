"""How the client commands print: JSON documents, and tables for lists."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO


def dump(doc: Any, out: TextIO) -> None:
    print(json.dumps(doc, indent=2, default=str), file=out)


def opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def table(header: Sequence[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    for row in [list(header), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
