"""GET /: the try-on page (service/static/), and the example images it offers.

The page calls the public API with fetch and FormData as a shop's frontend
would, so it doubles as the example of calling the service from a browser.
Everything it needs is served from here: it works offline. TRYON_DEMO_PAGE=false
leaves these routes out (then / is the usual JSON 404).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...examples import EXAMPLES
from ..errors import ApiError

STATIC = Path(__file__).resolve().parents[2] / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg",
               ".json": "application/json"}
# The page's own files only: scripts and styles from here, images also as blob: and data: URLs
# (results), and requests to any service the user points the page at.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; connect-src 'self' http: https:; "
                           "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

page = APIRouter(tags=["page"], include_in_schema=False)


def _file(folder: Path, name: str) -> FileResponse:
    """A file directly inside ``folder`` with a known type, or the JSON 404."""
    path = folder / name
    if "/" in name or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise ApiError(404, "not_found", f"no such file: {name}")
    # Revalidated every time (ETag): a page upgraded with the service is never mixed with stale parts.
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


@page.get("/")
async def index() -> FileResponse:
    response = _file(STATIC, "index.html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@page.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    return _file(STATIC, name)


@page.get("/examples/{name}")
async def example_image(name: str) -> FileResponse:
    return _file(EXAMPLES, name)
