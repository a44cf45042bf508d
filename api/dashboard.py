"""The dashboard: static HTML, JS and CSS (package data under api/static), served at `/`.

No auth here: the page asks for an API key and its script sends it as a Bearer header to
the JSON API, which checks it. Nothing is built at run time; the charting library (uPlot,
MIT) is vendored under api/static/vendor.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC = Path(__file__).resolve().parent / "static"
# Scripts only from here: even if some server text slipped into the page as markup, it could
# not run. Inline styles are allowed for the chart library's sizing.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' "
                               "'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # tiny and revalidated (ETag): a new release shows at once
}


def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


_files = StaticFiles(directory=STATIC)


async def static(path: str, request: Request) -> Response:
    # A route rather than a Mount: metrics label it "/static/{path}" like any route, and
    # StaticFiles still does the path checks, ETag and 304s.
    return await _files.get_response(path, request.scope)


def install(app: FastAPI) -> None:
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/static/{path:path}", static, methods=["GET", "HEAD"],
                      include_in_schema=False)
