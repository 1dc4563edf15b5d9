"""Domain errors of the service.

The core (app/cam, app/models) and the worker raise these; the web layer maps them to an HTTP
status and one JSON error shape in one place (app/api/errors.py). Each error carries a stable
machine-readable ``code`` and a message that says what was wrong and what is valid.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ScoreCamError(Exception):
    """Base class of every error the service raises on purpose."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


MAX_ECHO_CHARS = 80  # longest piece of the caller's input an error message quotes


def quoted(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message never echoes a 100 KB name back."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def close_matches(name: str, valid: Iterable[str], limit: int = 5) -> str:
    """A short "did you mean" hint, or the list of valid names when nothing is close."""
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=limit, cutoff=0.5)
    if near:
        return "did you mean " + ", ".join(repr(n) for n in near) + "?"
    shown = ", ".join(repr(v) for v in valid[:20])
    more = f" (and {len(valid) - 20} more)" if len(valid) > 20 else ""
    return f"valid names: {shown}{more}"


class UnknownModel(ScoreCamError):
    code = "unknown_model"

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown model {quoted(name)}; {close_matches(name[:200], valid)}")
        self.name = name


class UnknownLayer(ScoreCamError):
    code = "unknown_layer"

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown layer {quoted(name)}; {close_matches(name[:200], valid)}")
        self.name = name


class UnsupportedLayer(ScoreCamError):
    """The layer exists but the method cannot run there (Recipro-CAM needs the network after it)."""

    code = "unsupported_layer"

    def __init__(self, method: str, name: str, valid: Iterable[str]) -> None:
        valid = list(valid)
        shown = ", ".join(repr(v) for v in valid) if valid else "none (this model declares no head)"
        super().__init__(f"{method} cannot explain layer {quoted(name)}: layers that support it: {shown}")
        self.name = name
        self.valid = valid


class UnsupportedMethod(ScoreCamError):
    """The model cannot run the method at all (Grad-CAM on an exported model has no gradients)."""

    code = "unsupported_method"


class InvalidOption(ScoreCamError):
    """An option has a value outside its valid range or set."""

    code = "invalid_option"


class InvalidImage(ScoreCamError):
    """The bytes are not an image we can decode, or the image is unusable."""

    code = "invalid_image"


class ImageTooLarge(ScoreCamError):
    """An upload or a decoded image exceeds the configured limits."""

    code = "too_large"


class UnsupportedMediaType(ScoreCamError):
    code = "unsupported_media_type"


class WeightsNotFound(ScoreCamError):
    """A model's weights are neither local nor in the torch hub cache, and downloads are off."""

    code = "weights_not_found"


class ModelLoadFailed(ScoreCamError):
    """A configured model could not be loaded at start-up: the message names it and the fix."""

    code = "model_load_failed"


class RetryLater(ScoreCamError):
    """A refusal that passes: the same request may succeed after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(RetryLater):
    """Backpressure: the worker has more pending work than it accepts."""

    code = "queue_full"


class DeadlineExceeded(ScoreCamError):
    code = "deadline_exceeded"


class Cancelled(ScoreCamError):
    """Work stopped because the caller asked (for example a client that disconnected)."""

    code = "cancelled"


class ServiceUnavailable(RetryLater):
    """The worker is not running (starting, restarting or shutting down)."""

    code = "unavailable"


class DeviceFailed(ServiceUnavailable):
    """The device failed in a way that poisons the worker's CUDA context (a device-side assert, an
    illegal address): the worker process exits and a new one replaces it, so a retry succeeds."""

    code = "device_failed"


class DeviceUnavailable(ModelLoadFailed):
    """The configured device (SCORECAM_DEVICE) does not exist on this machine: no model can load there."""

    code = "device_unavailable"


class NonFiniteOutput(ScoreCamError):
    """The model gave inf or NaN logits even in fp32, where a map or a metric would be read from them."""

    code = "non_finite_output"


class InternalError(ScoreCamError):
    """An unexpected failure while computing one request (a bug or a device error)."""

    code = "internal_error"

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id
