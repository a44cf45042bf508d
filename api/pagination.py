"""Keyset pagination: an opaque cursor holding the (created_at, id) of the last item shown.

Keyset rather than offset: rows inserted while a client pages never shift or repeat items.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from registry.catalog import as_utc
from registry.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

R = TypeVar("R")


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: tuple[datetime, Any] | None


def encode_cursor(created_at: datetime, row_id: Any) -> str:
    ts = as_utc(created_at)
    assert ts is not None
    raw = json.dumps([ts.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, row_id = json.loads(raw)
        when = as_utc(datetime.fromisoformat(ts))
        assert when is not None and isinstance(row_id, str | int)
        return when, row_id
    except (binascii.Error, ValueError, TypeError, AssertionError, OverflowError):
        # OverflowError: a year-1 time stamp with a positive offset cannot be made UTC.
        raise _bad_cursor() from None


def _bad_cursor() -> Invalid:
    return Invalid("invalid cursor: pass back the next_cursor of the previous page",
                   loc=["query", "cursor"])


def _storable(value: Any, kind: type) -> bool:
    """A crafted cursor may hold an id of the wrong type, out of range, with a NUL byte or
    an unpaired surrogate: comparing that with the column is a database error, not a 422."""
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and "\x00" not in value and value.isascii()


def page_params(limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
                cursor: Annotated[str | None, Query(max_length=512)] = None) -> PageParams:
    return PageParams(limit, decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageParams, Depends(page_params)]


def paginate(session: Session, query: Select[R], created: InstrumentedAttribute[Any],
             ident: InstrumentedAttribute[Any], page: PageParams) -> tuple[list[R], str | None]:
    """One page of `query` in (created, ident) order and the cursor of the next page."""
    if page.after is not None:
        ts, last = page.after
        if not _storable(last, ident.type.python_type):
            raise _bad_cursor()
        # Spelled out instead of a row-value comparison, which SQLite and Postgres treat alike
        # only in recent versions.
        query = query.where(or_(created > ts, and_(created == ts, ident > last)))
    rows = list(session.scalars(query.order_by(created, ident).limit(page.limit + 1)))
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[:page.limit]
    last_row = rows[-1]
    return rows, encode_cursor(getattr(last_row, created.key), getattr(last_row, ident.key))
