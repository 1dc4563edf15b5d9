"""The demo page is served when app/web/static/index.html exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.routes.web import STATIC_DIR, mount_demo_page

from .conftest import serving, tiny_app


def test_demo_page_and_static_files(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>demo</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    app = FastAPI()
    assert mount_demo_page(app, tmp_path)
    with TestClient(app) as client:
        page = client.get("/")
        script = client.get("/static/app.js")
    assert page.status_code == 200 and "demo" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert script.text == "console.log(1)"


def test_no_page_no_route(tmp_path: Path) -> None:
    app = FastAPI()
    assert not mount_demo_page(app, tmp_path)
    with TestClient(app) as client:
        assert client.get("/").status_code == 404


@pytest.mark.anyio
async def test_the_app_serves_the_bundled_page() -> None:
    if not (STATIC_DIR / "index.html").is_file():
        pytest.skip("app/web/static/index.html is not there (written by the ui work)")
    async with serving(tiny_app()) as client:
        page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
