"""The run page (`/ui/runs/{run_id}`) and the front page (`/`), for people rather than trainers.

The HTML is the same for every run and carries no data: its script polls the /v1 JSON endpoints
with the token the user typed (kept in sessionStorage) and draws the charts as inline SVG, so
the page works offline and shows exactly what the token may read. The store keeps no index of
runs (listing would scan the keyspace), so `/` asks for a run id instead of listing runs.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from budget_service.routes import RunIdPath
from budget_service.schemas import RUN_ID_PATTERN

router = APIRouter(include_in_schema=False)

# Scripts from this origin only (no inline script, nothing from elsewhere), fetches to it only.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


@cache
def _asset(name: str) -> str:
    return (files("budget_service") / "static" / name).read_text(encoding="utf-8")


def _serve(name: str) -> Response:
    media_type = _TYPES[name[name.rindex(".") :]]
    return Response(_asset(name), media_type=media_type, headers=_HEADERS)


@router.get("/", response_class=HTMLResponse)
async def index() -> Response:
    return _serve("index.html")


@router.get("/ui/runs")
async def open_run(run_id: Annotated[str, Query(pattern=RUN_ID_PATTERN)]) -> RedirectResponse:
    """The front page's form: `?run_id=X` -> the run page of X."""
    return RedirectResponse(f"/ui/runs/{quote(run_id, safe='')}", status_code=303)


@router.get("/ui/runs/{run_id}", response_class=HTMLResponse)
async def run_page(run_id: RunIdPath) -> Response:
    return _serve("run.html")


@router.get("/ui/run.js")
async def run_script() -> Response:
    return _serve("run.js")


@router.get("/ui/ui.css")
async def stylesheet() -> Response:
    return _serve("ui.css")
