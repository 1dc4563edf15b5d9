"""What may be uploaded as an image, and how it becomes the ``image`` form field.

An http(s) URL is fetched by the client (``ScoreCamClient.explain("https://.../cat.jpg")``) with
the same httpx client and retries, never with the API key, and capped at ``max_image_bytes``: the
service only ever receives bytes, so it never fetches a URL on a caller's behalf.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import IO, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

import httpx

from scorecam_client.errors import ImageDownloadError


@runtime_checkable
class PILImageLike(Protocol):
    """What the client uses of a ``PIL.Image.Image`` (typed without importing Pillow)."""

    @property
    def mode(self) -> str: ...

    @property
    def size(self) -> tuple[int, int]: ...

    def save(self, fp: IO[bytes], format: str | None = None) -> None: ...


ImageInput = str | Path | bytes | bytearray | memoryview | IO[bytes] | PILImageLike
"""A path or an http(s) URL, encoded image bytes, a binary file object, or a PIL image (sent as PNG)."""

Upload = tuple[str, bytes, str]
"""The ``image`` form field: (file name, bytes, content type)."""

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # the service's default upload limit (SCORECAM_MAX_UPLOAD_BYTES)
CREDENTIAL_HEADERS = ("X-API-Key", "Authorization")  # the service's key is for the service, not for image hosts

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
}


def is_url(image: object) -> bool:
    """Whether ``image`` is an http(s) URL to fetch (a str; a ``Path`` is always a local file)."""
    return isinstance(image, str) and image[:8].lower().startswith(("http://", "https://"))


def image_file(image: ImageInput) -> Upload:
    """Any accepted image input -> (file name, bytes, content type) for the ``image`` field.

    PIL images are recognised by their ``save``/``mode`` attributes, so Pillow is not imported
    (nor required) unless the caller already uses it.
    """
    if is_url(image):
        raise TypeError("an image URL is fetched by the client (ScoreCamClient), not by image_file")
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
    raise TypeError(f"image must be a path, an http(s) URL, bytes, a PIL image or a binary file, not {type(image).__name__}")


def content_type(suffix: str) -> str:
    return CONTENT_TYPES.get(suffix.lower(), "application/octet-stream")


def without_credentials(request: httpx.Request) -> httpx.Request:
    """The download request minus the API key the client's headers carry for the service."""
    for name in CREDENTIAL_HEADERS:
        request.headers.pop(name, None)
    return request


class Download:
    """The body of an image URL's answer, refused as soon as it passes ``limit`` bytes.

    The sync and async clients feed it the chunks they read, so both apply the same checks; a
    declared Content-Length over the limit is refused before any chunk is read.
    """

    def __init__(self, url: str, limit: int) -> None:
        self.url = url
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def check(self, response: httpx.Response) -> None:
        """Refuse a failed answer, or one that declares more than the limit."""
        if not response.is_success:
            raise ImageDownloadError(
                f"the image URL {self.url} answered HTTP {response.status_code}", url=self.url, status=response.status_code
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise self._too_large(f"{declared} bytes")

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise self._too_large(f"over {self.limit} bytes")
        self.chunks.append(chunk)

    def upload(self, response: httpx.Response) -> Upload:
        """The form field: the URL path's last name, the answer's image type (else the name's)."""
        name = PurePosixPath(unquote(urlsplit(str(response.url)).path)).name or "image"
        declared = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        kind = declared if declared.startswith("image/") else content_type(PurePosixPath(name).suffix)
        return name, b"".join(self.chunks), kind

    def _too_large(self, size: str) -> ImageDownloadError:
        return ImageDownloadError(
            f"the image at {self.url} is {size}; the client's max_image_bytes is {self.limit} "
            "(raise it, or download the image yourself)",
            url=self.url,
        )
