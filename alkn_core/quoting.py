"""How a client's input is quoted in an error message: its repr, cut to at most 64
characters, so that a 3 MB key or a 100 kB value is never sent back (nor logged) whole."""

from __future__ import annotations

import reprlib
from typing import Any

QUOTE_LIMIT = 64


def quoted(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)`, its first `limit` characters and "..." when longer. Strings are cut
    before their repr is made and containers are shown by reprlib (a few elements), so a
    huge value costs no huge repr."""
    text = repr(value[:limit + 1]) if isinstance(value, str | bytes) else reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
