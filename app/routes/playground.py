"""GET /playground (the page and its script and style) and GET /, which leads a browser there.

The page is plain HTML, CSS and JavaScript from app/static, served by the app itself with a
Content-Security-Policy that allows nothing from another host and no inline script or style.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

router = APIRouter(tags=["playground"])

STATIC = Path(__file__).resolve().parent.parent / "static"
FILES = {"playground.js": "text/javascript", "playground.css": "text/css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}


@router.get("/playground", response_class=FileResponse, summary="The playground page")
async def playground() -> FileResponse:
    """A page that scores text, shows next words and streams generation, in the browser."""
    return FileResponse(STATIC / "playground.html", media_type="text/html", headers=HEADERS)


@router.get("/playground/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    """The page's script and style sheet."""
    if name not in FILES:
        raise HTTPException(404)
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)


@router.get("/", summary="A browser goes to the playground; other clients get the links",
            response_model=None)
async def root(request: Request) -> Response:
    """307 to /playground when the client accepts HTML; else where the API is described."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/playground", status_code=307)
    return JSONResponse({"playground": "/playground", "docs": "/docs",
                         "openapi": "/openapi.json"})
