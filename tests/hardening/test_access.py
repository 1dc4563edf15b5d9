"""What the service never does: fetch client URLs, unpickle client data, load weights unsafely,
log image bytes. A static scan of app/ plus a log capture of real requests. And which browser
pages may call it: the CORS preflight and the headers on errors."""

from __future__ import annotations

import ast
import base64
import logging
from pathlib import Path

import pytest
from PIL import Image

from tests.api.conftest import image_bytes, serving, tiny_app

APP_DIR = Path(__file__).resolve().parents[2] / "app"
SERVER_PACKAGES = ("api", "service", "cam", "models")  # the client is clients/python, outside app/
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "dill",
    "marshal",
    "shelve",
    "joblib",
    "requests",
    "urllib.request",
    "http.client",
    "aiohttp",
}


def server_sources() -> list[Path]:
    files = [p for pkg in SERVER_PACKAGES for p in (APP_DIR / pkg).rglob("*.py")]
    files += [APP_DIR / name for name in ("main.py", "server.py", "config.py", "errors.py")]
    assert len(files) > 30
    return files


def test_the_server_imports_no_unpickler_and_no_http_client() -> None:
    found = []
    for path in server_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [
                f"{path.relative_to(APP_DIR)}:{node.lineno} {n}" for n in names if n in UNSAFE_MODULES or n.startswith("httpx")
            ]
    assert found == [], "the server must not unpickle client data or fetch URLs"


def test_every_torch_load_is_weights_only() -> None:
    calls = []
    for path in server_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    flags = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
                    calls.append((f"{path.relative_to(APP_DIR)}:{node.lineno}", ok))
    assert calls, "expected the weight loader's torch.load"
    assert all(ok for _, ok in calls), calls


@pytest.mark.anyio
async def test_a_url_as_the_image_is_refused_not_fetched(cat_photo: Image.Image) -> None:
    async with serving(tiny_app()) as client:
        for url in ("http://127.0.0.1:9/cat.png", "file:///etc/passwd"):
            response = await client.post("/v1/predict", json={"image": url})
            assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_image"
            response = await client.post("/v1/predict", files={"image": ("x", url.encode())})
            assert response.status_code == 422


@pytest.mark.anyio
async def test_the_log_holds_no_image_bytes(cat_photo: Image.Image, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    photo = image_bytes(cat_photo.resize((64, 43)))
    b64 = base64.b64encode(photo).decode()
    broken = photo[: len(photo) // 2]
    async with serving(tiny_app(log_level="debug")) as client:
        await client.post("/v1/predict", files={"image": ("c.png", photo)})
        await client.post("/v1/explain", json={"image": b64, "max_channels": 4})
        await client.post("/v1/explain", json={"image": base64.b64encode(broken).decode(), "top_k": 0})
        await client.post("/v1/predict", files={"image": ("c.png", broken)})
        await client.post("/v1/predict", json={"image": b64 + "!!"})
    text = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert len(caplog.records) > 0
    for needle in (b64[40:80], base64.b64encode(broken).decode()[40:80], repr(photo[20:40])[2:-1]):
        assert needle not in text


# ---- CORS: what a browser's preflight gets --------------------------------------------------

ORIGIN = "http://localhost:3000"
KEY = "s3cret-key-123"
PREFLIGHTS = [
    # (case, origin, method, requested headers, status, body: Starlette's CORSMiddleware says why)
    ("allowed", ORIGIN, "POST", "Content-Type, X-API-Key", 200, "OK"),
    ("other-origin", "http://evil.example", "POST", "Content-Type", 400, "Disallowed CORS origin"),
    ("lookalike-origin", "http://localhost:3000.evil.example", "POST", None, 400, "Disallowed CORS origin"),
    ("other-method", ORIGIN, "DELETE", None, 400, "Disallowed CORS method"),
    ("other-header", ORIGIN, "POST", "X-Forwarded-User", 400, "Disallowed CORS headers"),
]


def csv_set(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("origin", "method", "requested", "status", "text"), [p[1:] for p in PREFLIGHTS], ids=[p[0] for p in PREFLIGHTS]
)
async def test_a_preflight_is_answered_for_allowed_origins_only(
    origin: str, method: str, requested: str | None, status: int, text: str
) -> None:
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if requested:
        headers["Access-Control-Request-Headers"] = requested
    # with an API key set: a browser sends its preflight without the key, so it must not need one
    async with serving(tiny_app(cors_origins=ORIGIN, api_key=KEY)) as client:
        response = await client.options("/v1/explain", headers=headers)
    assert (response.status_code, response.text) == (status, text)
    # the browser sends the request only if all three headers admit it
    origin_ok = response.headers.get("access-control-allow-origin") == origin
    method_ok = method.lower() in csv_set(response.headers.get("access-control-allow-methods"))
    headers_ok = csv_set(requested) <= csv_set(response.headers.get("access-control-allow-headers"))
    assert (origin_ok, method_ok, headers_ok) == (origin == ORIGIN, method == "POST", requested != "X-Forwarded-User")
    if status == 200:
        assert response.headers["access-control-max-age"] == "600"


@pytest.mark.anyio
async def test_errors_reach_an_allowed_origin_and_nothing_reaches_another() -> None:
    """A browser lets the page read a 401 or 413 only if the error carries the CORS headers."""
    big = b"x" * 2_000_000
    async with serving(tiny_app(cors_origins=ORIGIN, api_key=KEY, max_upload_bytes=1024)) as client:
        unauthorized = await client.get("/v1/models", headers={"Origin": ORIGIN})
        too_large = await client.post(
            "/v1/predict", content=big, headers={"Origin": ORIGIN, "X-API-Key": KEY, "Content-Type": "application/json"}
        )
        elsewhere = await client.get("/v1/models", headers={"Origin": "http://evil.example", "X-API-Key": KEY})
    for response, status in ((unauthorized, 401), (too_large, 413)):
        assert response.status_code == status, response.text
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in response.headers["access-control-expose-headers"].lower()
        assert set(response.json()) == {"error"}
    assert elsewhere.status_code == 200  # CORS is the browser's rule: the server answers, without the header
    assert "access-control-allow-origin" not in elsewhere.headers
