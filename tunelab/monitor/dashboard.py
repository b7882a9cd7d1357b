"""GET /dashboard: one self-contained HTML page (uPlot vendored inline, no CDN) that polls /v1/monitor."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    page = (HERE / "dashboard.html").read_text(encoding="utf-8")
    js = (HERE / "static" / "uPlot.iife.min.js").read_text(encoding="utf-8")
    css = (HERE / "static" / "uPlot.min.css").read_text(encoding="utf-8")
    return page.replace("/*UPLOT_CSS*/", css).replace("/*UPLOT_JS*/", js)
