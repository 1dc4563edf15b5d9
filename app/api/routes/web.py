"""The demo page: ``GET /`` and ``/static/...`` when app/web/static/index.html exists."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "web" / "static"


def mount_demo_page(app: FastAPI, static_dir: Path = STATIC_DIR) -> bool:
    """Serve the demo page if it exists; returns whether it was mounted."""
    index = static_dir / "index.html"
    if not index.is_file():
        return False
    router = APIRouter(tags=["web"])

    @router.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    return True
