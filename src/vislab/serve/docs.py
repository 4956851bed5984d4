"""The API docs of `vislab serve`: `/openapi.json` and a Swagger UI page at `/docs`, offline.

FastAPI's own `/docs` loads Swagger UI from a CDN, so on a lab machine without a network it
is a blank page; here its JavaScript and CSS come from the `fastapi-offline` package, each
file by a fixed route (no request names a path), and the page's Content-Security-Policy
lets it talk to this server only. The spec lists the served models, so it and the page
answer only with the server's token, as the API does (the page at `/` keeps the token in a
cookie that Swagger UI's requests carry). ReDoc is not served: one docs page is enough.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from vislab.serve.csp import inline_hashes

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
ASSETS = {  # a file in fastapi_offline/static, served as /docs/NAME -> its media type
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def asset_path(name: str) -> Any:
    """The installed Swagger UI file `name` (a Traversable in the fastapi-offline package)."""
    return resources.files("fastapi_offline").joinpath("static", name)


def docs_html(title: str) -> str:
    """Swagger UI's page with every URL on this server; validatorUrl null stops Swagger UI
    from asking an online validator about the spec."""
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{title} - API docs",
        swagger_js_url=f"{DOCS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    ).body.decode("utf-8")


def docs_policy(html: str) -> str:
    """Scripts from this server and the page's one inline script (by hash); every request
    the page makes goes to this server, so it works, and leaks nothing, without a network."""
    return (
        f"default-src 'none'; script-src 'self' {inline_hashes(html, 'script')}; style-src 'self'; "
        "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def add_docs(app: FastAPI, require_token: Callable[[Request], None]) -> None:
    """Route `/openapi.json`, `/docs` and Swagger UI's files on `app` (made with
    `openapi_url=None, docs_url=None, redoc_url=None`); the first two need the token."""
    page = docs_html(app.title)
    headers = {
        "Content-Security-Policy": docs_policy(page),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        require_token(request)
        return JSONResponse(app.openapi())

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        try:
            require_token(request)
        except HTTPException as err:  # a browser sends no header: its way in is the page's cookie
            raise HTTPException(err.status_code, f"{err.detail}; in a browser, enter it on the page at / first", err.headers) from None
        return HTMLResponse(page, headers=headers)

    for name, media_type in ASSETS.items():
        app.add_api_route(f"{DOCS_URL}/{name}", asset_route(name, media_type), methods=["GET"], include_in_schema=False)


def asset_route(name: str, media_type: str) -> Callable[[], Any]:
    """A route answering one fixed Swagger UI file (public: it says nothing about the models)."""
    path = asset_path(name)

    async def asset() -> FileResponse:
        return FileResponse(str(path), media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    return asset
