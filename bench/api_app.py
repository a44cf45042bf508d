"""The service's app plus one bare route returning a constant, served by the same server
(bench/api.py compares the two)."""

from __future__ import annotations

from api.app import create_app

app = create_app()


# async: the cheapest route FastAPI serves (a sync one would add a thread hand-off and make
# the comparison easier than it should be).
@app.get("/bench/constant", include_in_schema=False)
async def constant() -> dict[str, str]:
    return {"status": "ok"}
