"""Decoding uploads: formats, modes, orientation, limits checked before pixels are decoded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.imaging.images import ImageLimits, decode_image

LIMITS = ImageLimits(max_bytes=5_000_000, max_megapixels=40)


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("RGB", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("P", "GIF"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("1", "BMP"),
    ],
)
def test_modes_become_rgb(cat_photo: Image.Image, mode: str, fmt: str) -> None:
    image = decode_image(encode(cat_photo.resize((40, 30)).convert(mode), fmt), LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_transparent_pixels_become_white() -> None:
    image = decode_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"), LIMITS)
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation(cat_photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270
    image = decode_image(encode(cat_photo.resize((40, 30)), "JPEG", exif=exif.tobytes()), LIMITS)
    assert image.size == (30, 40)


def test_pixel_limit_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # 25 MP
    loaded: list[bool] = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(True))
    with pytest.raises(ImageTooLarge, match="25.0 megapixels; the limit is 10 megapixels"):
        decode_image(bomb, ImageLimits(max_bytes=5_000_000, max_megapixels=10))
    assert loaded == []  # no pixel was decoded


def test_byte_limit() -> None:
    with pytest.raises(ImageTooLarge, match="limit is 2000 bytes"):
        decode_image(b"x" * 3000, ImageLimits(max_bytes=2000, max_megapixels=1))


@pytest.mark.parametrize(
    ("data", "error"),
    [(b"", InvalidImage), (b"GIF89a-garbage", InvalidImage), (b"hello world", InvalidImage)],
)
def test_not_images(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, LIMITS)


def test_unsupported_format(cat_photo: Image.Image) -> None:
    with pytest.raises(UnsupportedMediaType, match="TIFF"):
        decode_image(encode(cat_photo.resize((8, 8)), "TIFF"), LIMITS)


def test_aspect_ratio_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    strip = encode(Image.new("L", (1, 2000)), "PNG")
    loaded: list[bool] = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(True))
    with pytest.raises(InvalidImage, match=r"1x2000, an aspect ratio of 2,000.0:1; the limit is 50:1"):
        decode_image(strip, ImageLimits(max_bytes=5_000_000, max_megapixels=40, max_aspect_ratio=50))
    assert loaded == []


def test_without_an_aspect_limit_a_strip_decodes() -> None:
    assert decode_image(encode(Image.new("L", (1, 2000)), "PNG"), LIMITS).size == (1, 2000)


def test_pillows_bomb_limit_is_not_what_refuses_a_huge_image() -> None:
    huge = encode(Image.new("1", (15_000, 13_000)), "PNG")  # 195 MP: over twice Pillow's limit
    with pytest.raises(ImageTooLarge, match="195.0 megapixels; the limit is 40 megapixels"):
        decode_image(huge, LIMITS)
    assert Image.MAX_IMAGE_PIXELS is not None  # lifted only while the header was read
