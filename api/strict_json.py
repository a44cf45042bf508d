"""Request bodies whose JSON objects hold a key twice are refused (400, like malformed JSON).

Python's json keeps the last of duplicate keys; another parser in front of the service (a
gateway, a WAF, an audit log) may keep the first, and the two would then disagree about what
was asked (`{"name": "a", "name": "b"}`). Every router of the API uses `StrictJSONRoute`,
whose request parses the body with a hook that refuses a repeated key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from alkn_core.quoting import quoted

# JSONDecodeError's position when none is known: api.errors leaves "at character N" out.
NO_POSITION = -1


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            error = json.JSONDecodeError(f"key {quoted(key)} appears twice in one object",
                                         "", 0)
            error.pos = NO_POSITION
            raise error
        out[key] = value
    return out


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_unique)
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict
