"""What may be uploaded as an image, and how it becomes the ``image`` form field."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Protocol, runtime_checkable


@runtime_checkable
class PILImageLike(Protocol):
    """What the client uses of a ``PIL.Image.Image`` (typed without importing Pillow)."""

    @property
    def mode(self) -> str: ...

    @property
    def size(self) -> tuple[int, int]: ...

    def save(self, fp: IO[bytes], format: str | None = None) -> None: ...


ImageInput = str | Path | bytes | bytearray | memoryview | IO[bytes] | PILImageLike
"""A path, encoded image bytes, a binary file object, or a PIL image (sent as PNG; needs Pillow)."""

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
}


def image_file(image: ImageInput) -> tuple[str, bytes, str]:
    """Any accepted image input -> (file name, bytes, content type) for the ``image`` field.

    PIL images are recognised by their ``save``/``mode`` attributes, so Pillow is not imported
    (nor required) unless the caller already uses it.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes(), content_type(path.suffix)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image), "application/octet-stream"
    if isinstance(image, PILImageLike):  # has save, mode and size
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "image.png", buffer.getvalue(), "image/png"
    if hasattr(image, "read"):
        name = Path(getattr(image, "name", "image") or "image").name
        return name, image.read(), content_type(Path(name).suffix)
    raise TypeError(f"image must be a path, bytes, a PIL image or a binary file, not {type(image).__name__}")


def content_type(suffix: str) -> str:
    return CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")
