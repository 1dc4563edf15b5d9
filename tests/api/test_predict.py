"""POST /v1/predict: both request forms, every accepted image format and mode, top-k."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .conftest import image_bytes, serving, tiny_app

pytestmark = pytest.mark.anyio


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """A JPEG whose EXIF says 'rotate 90°': a viewer shows it with width and height swapped."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    return image_bytes(image, "JPEG", exif=exif.tobytes())


@pytest.fixture(scope="module")
def uploads(cat_photo: Image.Image) -> dict[str, bytes]:
    small = cat_photo.resize((90, 60))
    return {
        "jpeg": image_bytes(small, "JPEG"),
        "png": image_bytes(small, "PNG"),
        "webp": image_bytes(small, "WEBP"),
        "bmp": image_bytes(small, "BMP"),
        "gif": image_bytes(small.convert("P"), "GIF"),
        "grayscale": image_bytes(small.convert("L"), "PNG"),
        "palette": image_bytes(small.convert("P"), "PNG"),
        "rgba": image_bytes(small.convert("RGBA"), "PNG"),
        "cmyk": image_bytes(small.convert("CMYK"), "JPEG"),
    }


async def test_multipart_and_json_give_the_same_answer(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        form = await client.post("/v1/predict", files={"image": ("cat.png", cat_png, "image/png")}, data={"top_k": "3"})
        body = {"image": base64.b64encode(cat_png).decode(), "top_k": 3}
        as_json = await client.post("/v1/predict", json=body)
    assert form.status_code == 200, form.text
    assert as_json.status_code == 200, as_json.text
    assert form.json()["predictions"] == as_json.json()["predictions"]
    predictions = form.json()["predictions"]
    assert len(predictions) == 3
    assert set(predictions[0]) == {"class_index", "label", "score"}
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert (form.json()["width"], form.json()["height"]) == (451, 300)


async def test_every_format_and_mode_is_accepted(uploads: dict[str, bytes]) -> None:
    async with serving(tiny_app()) as client:
        for name, data in uploads.items():
            response = await client.post("/v1/predict", files={"image": (name, data)})
            assert response.status_code == 200, (name, response.text)
            assert (response.json()["width"], response.json()["height"]) == (90, 60), name


async def test_gif_uses_the_first_frame(cat_photo: Image.Image) -> None:
    frames = [cat_photo.resize((40, 30)).convert("P"), Image.new("P", (40, 30))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    async with serving(tiny_app()) as client:
        animated = await client.post("/v1/predict", files={"image": ("a.gif", buffer.getvalue())})
        first = await client.post("/v1/predict", files={"image": ("f.gif", image_bytes(frames[0], "GIF"))})
    assert animated.status_code == 200
    assert animated.json()["predictions"] == first.json()["predictions"]


async def test_exif_orientation_is_applied(cat_photo: Image.Image) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/predict", files={"image": ("r.jpg", exif_rotated_jpeg(cat_photo.resize((90, 60))))})
    assert response.status_code == 200
    assert (response.json()["width"], response.json()["height"]) == (60, 90)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"top_k": "0"}, 422, "invalid_request"),
        ({"top_k": "eleven"}, 422, "invalid_request"),
        ({"model": "tinny"}, 404, "unknown_model"),
        ({"colour": "red"}, 422, "invalid_request"),
    ],
)
async def test_bad_options(cat_png: bytes, data: dict[str, str], status: int, code: str) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/predict", files={"image": ("cat.png", cat_png)}, data=data)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_top_k_larger_than_the_classes_is_refused(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/predict", files={"image": ("cat.png", cat_png)}, data={"top_k": "11"})
    assert response.status_code == 422
    assert "between 1 and 10" in response.json()["error"]["message"]
