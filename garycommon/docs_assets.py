"""Swagger UI for a service's `/docs` from files shipped in this package, so the page renders with no internet.

FastAPI's own `/docs` loads its script and style from a CDN; a self-hosted box without internet (or a browser that
blocks third-party scripts) got a blank page. `install_offline_docs(app)` swaps that route (and drops `/redoc`, whose
script also lives on a CDN) for one that serves the vendored Swagger UI from `/docs-assets/` (see web/vendor.mjs).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "docs_static"
ASSETS_PATH = "/docs-assets"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png",
               ".txt": "text/plain; charset=utf-8"}
CACHE = "public, max-age=86400"


@lru_cache(maxsize=1)
def assets() -> dict[str, tuple[bytes, str]]:
    """The shipped files by name, read once (only these names are served: no client path reaches the disk)."""
    return {p.name: (p.read_bytes(), MEDIA_TYPES[p.suffix]) for p in STATIC.iterdir()
            if p.is_file() and p.suffix in MEDIA_TYPES}


def install_offline_docs(app: FastAPI) -> None:
    """Replace `app`'s CDN-based `/docs` (and `/redoc`) with Swagger UI served from this package."""
    docs_url = app.docs_url or "/docs"
    oauth_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    stale = {docs_url, oauth_url, app.redoc_url}
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path in stale)]
    app.docs_url, app.redoc_url = docs_url, None

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - docs",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            oauth2_redirect_url=root + oauth_url,
            swagger_ui_parameters={"validatorUrl": None},  # the online validator badge would call out
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def asset(name: str) -> Response:
        found = assets().get(name)
        if found is None:
            return JSONResponse({"error": f"no docs asset {name!r}", "code": "NOT_FOUND"}, status_code=404)
        body, media = found
        return Response(body, media_type=media, headers={"Cache-Control": CACHE})

    app.add_api_route(docs_url, docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(oauth_url, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(ASSETS_PATH + "/{name}", asset, methods=["GET"], include_in_schema=False)
