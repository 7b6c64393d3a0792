"""``GET /dashboard``: the live dashboard, static files shipped in the package.

The page itself is public; the data it draws comes from ``/v1/network/stream``
and the playground from ``/v1/chat/completions``, which need an API key when
the router has auth on (the page asks for one and keeps it in localStorage).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "dashboard"

router = APIRouter(include_in_schema=False)
static = StaticFiles(directory=STATIC_DIR)


@router.get("/dashboard")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard")
