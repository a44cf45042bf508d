"""The service's app plus one bare route returning a constant, served by the same server
(bench/api.py compares the two)."""

from __future__ import annotations

from api.app import create_app

app = create_app()


@app.get("/bench/constant", include_in_schema=False)
def constant() -> dict[str, str]:
    return {"status": "ok"}
