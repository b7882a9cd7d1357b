"""The API docs: the OpenAPI schema at /openapi.json and Swagger UI at /docs, its files served from static/
(vendored: the page works without the internet). With API keys on, both need a key (auth.KeyCheck.docs)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def add_docs(app: FastAPI, authorised) -> None:
    """/docs, /openapi.json and the Swagger UI files (/static/docs/...) on `app`; `authorised`: the docs' key check."""
    app.mount("/static/docs", StaticFiles(directory=STATIC), name="docs-files")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorised)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(authorised)])
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that serves us under a prefix
        key = request.query_params.get("key")  # opened as /docs?key=KEY: the page fetches the schema with it
        schema = f"{root}/openapi.json" + (f"?key={quote(key, safe='')}" if key else "")
        return get_swagger_ui_html(openapi_url=schema, title=f"{app.title} API docs",
                                   swagger_js_url=f"{root}/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/static/docs/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/static/docs/favicon-32x32.png")
