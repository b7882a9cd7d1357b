"""The server's pages: self-contained HTML (uPlot and the shared stylesheet inlined, no CDN) that polls the API.

GET /dashboard is the monitor's page (polls /v1/monitor); applications add their own (the finance app's /finance).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent


@lru_cache(maxsize=8)
def page_html(path: Path) -> str:
    """The page at `path` with its /*UPLOT_CSS*/, /*UPLOT_JS*/ and /*PAGE_CSS*/ placeholders filled in."""
    page = path.read_text(encoding="utf-8")
    for mark, name in (("/*UPLOT_CSS*/", "uPlot.min.css"), ("/*UPLOT_JS*/", "uPlot.iife.min.js"), ("/*PAGE_CSS*/", "page.css")):
        page = page.replace(mark, (HERE / "static" / name).read_text(encoding="utf-8"))
    return page


def dashboard_html() -> str:
    return page_html(HERE / "dashboard.html")
